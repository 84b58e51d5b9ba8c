// sparse_ffn_bench — the backward pass (training), against the dense backward of the same FFN.
//
//   BM_backward_<selector>_<dtype>/d:D/dff:F/g:G/density:P/batch:N   cpu::backward (dX, every weight
//                                                                     and bias gradient; learned gate: its
//                                                                     rows too), float gradients
//   BM_dense_backward_openblas_f32/d:D/dff:F/batch:N                  the dense FFN's backward with
//                                                                     OpenBLAS: dH = dY·W2, dA = dH ⊙
//                                                                     act'(A), dW2 = dYᵀH, dW1 = dAᵀX, dX =
//                                                                     dA·W1, db1, db2 (four sgemm, two per
//                                                                     weight); swiglu: dU = dH ⊙ silu(A),
//                                                                     dA = dH ⊙ U ⊙ silu'(A), dW3 = dUᵀX,
//                                                                     dX += dU·W3, db3 (six sgemm)
//
// Both start from what their forward kept (sparse: forward_cache; dense: the pre-activations A, and
// the up projections U when gated) and write every gradient. Counter `gflops`: the multiply-adds of the
// four products (2·n·d·(k·g or d_ff) each; six gated) per second. Weight copies rotate as in every
// benchmark here (≥ 4× the L3 read per rotation). --sffn_act=swiglu runs only these benchmarks (the
// forward ones are relu/silu).
#include "bench_common.hpp"

#include <string>
#include <vector>

#if defined(SPARSE_FFN_BENCH_OPENBLAS)
#include <cblas.h>
#endif

namespace bench {

namespace {

template <class P>
void BM_backward(benchmark::State& state, sf::index_t d, sf::index_t f, int density, sf::index_t n) {
  using T = typename P::dtype;
  using Sel = typename P::selector;
  constexpr int G = P::block_size;
  constexpr bool gate = std::is_same<Sel, sf::select::learned_gate>::value;
  const sf::index_t B = f / G, k = std::max<sf::index_t>(1, (B * density + 50) / 100);
  const int copies = sparse_copies_for(packed_bytes<T>(d, f, P::gated), double(k) / double(B), n);
  auto models = get_sparse<T>(d, f, G, copies, P::gated);
  const auto x = random_x(n, d, 7), dy = random_x(n, d, 11);
  std::vector<float> y(x.size()), dx(x.size());
  std::vector<sf::token_id_t> ids(static_cast<std::size_t>(n));
  for (sf::index_t t = 0; t < n; ++t) ids[static_cast<std::size_t>(t)] = (t * 7919 + 13) % 50000;
  sf::route_args args;
  args.k = k;
  args.token_ids = ids.data();
  args.vocab_size = 50000;
  const auto nk = static_cast<std::size_t>(n * k);
  std::vector<sf::block_index_t> blocks(nk);
  std::vector<float> weights(nk), pre(nk * G), up(P::gated ? nk * G : 0),
      logits(gate ? static_cast<std::size_t>(n * B) : 0);
  // The learned gate's forward keeps its logits too (forward_cache::logits), as a training step would.
  const sf::forward_cache cache{blocks.data(), weights.data(), pre.data(), P::gated ? up.data() : nullptr,
                                gate ? logits.data() : nullptr};
  sf::cpu::workspace ws;
  // Every copy holds the same weights, so the cache of copy 0's forward serves them all.
  sf::cpu::forward<P>(models->copies[0].view(), n, x.data(), y.data(), args, &cache, &ws);
  sf::ffn_grads grads(models->copies[0].layout(), gate);
  sf::cpu::backward_args ba;
  ba.k = k;
  // One untimed call first: it sizes the workspace (the timed calls allocate nothing).
  sf::cpu::backward<P>(models->copies[0].view(), n, x.data(), dy.data(), cache, dx.data(), grads.view(), ba,
                       &ws);
  std::size_t i = 0;
  const std::size_t C = static_cast<std::size_t>(copies);
  for (auto _ : state) {
    sf::cpu::backward<P>(models->copies[i++ % C].view(), n, x.data(), dy.data(), cache, dx.data(),
                         grads.view(), ba, &ws);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  const double flops = 4.0 * 2.0 * double(n) * double(k * G) * double(d) * (P::gated ? 1.5 : 1.0);
  state.counters["gflops"] =
      benchmark::Counter(flops * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["density"] = double(k) / double(B);
  state.counters["copies"] = static_cast<double>(C);
}

#if defined(SPARSE_FFN_BENCH_OPENBLAS)
void BM_dense_backward_openblas(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n) {
  const bool relu = g_act == "relu", gated = g_act == "swiglu";
  auto models = get_dense_copies(d, f, gated);
  const auto x = random_x(n, d, 7), dy = random_x(n, d, 11);
  // What the forward keeps: the pre-activations A (and U, gated) of copy 0; every copy is the same size
  // and kind.
  std::vector<float> a(static_cast<std::size_t>(n * f)), u(gated ? a.size() : 0), h(a.size()), dh(a.size()),
      du(u.size()), dx(x.size());
  {
    const auto& m = models->copies[0].ffn;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(f), int(d), 1.0f, x.data(), int(d),
                m.w1.data(), int(d), 0.0f, a.data(), int(f));
    if (gated)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(f), int(d), 1.0f, x.data(), int(d),
                  m.w3.data(), int(d), 0.0f, u.data(), int(f));
  }
  for (std::size_t e = 0; e < a.size(); ++e)
    h[e] = gated ? sf::act::silu::apply(a[e]) * u[e]
                 : (relu ? sf::act::relu::apply(a[e]) : sf::act::silu::apply(a[e]));
  std::vector<float> dw1(static_cast<std::size_t>(f * d)), dw2(dw1.size()), dw3(gated ? dw1.size() : 0),
      db1(static_cast<std::size_t>(f)), db3(gated ? db1.size() : 0), db2(static_cast<std::size_t>(d));
  std::size_t next = 0;
  auto step = [&] {
    const auto& m = models->copies[next++ % models->copies.size()].ffn;
    // dH = dY · W2 (W2: [d × d_ff])
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(f), int(d), 1.0f, dy.data(), int(d),
                m.w2.data(), int(f), 0.0f, dh.data(), int(f));
#pragma omp parallel for schedule(static)
    for (std::size_t e = 0; e < dh.size(); ++e) {
      if (gated) {
        sf::activation_backward<sf::act::swiglu>(a[e], u[e], dh[e], dh[e], du[e]);  // dA, dU
      } else {
        dh[e] *= relu ? sf::act::relu::grad(a[e]) : sf::act::silu::grad(a[e]);
      }
    }
    // dW2 = dYᵀ · H [d × d_ff]; dW1 = dAᵀ · X [d_ff × d]; dX = dA · W1 [n × d] (gated: dW3 = dUᵀ · X,
    // dX += dU · W3)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(d), int(f), int(n), 1.0f, dy.data(), int(d),
                h.data(), int(f), 0.0f, dw2.data(), int(f));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(f), int(d), int(n), 1.0f, dh.data(), int(f),
                x.data(), int(d), 0.0f, dw1.data(), int(d));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(d), int(f), 1.0f, dh.data(), int(f),
                m.w1.data(), int(d), 0.0f, dx.data(), int(d));
    if (gated) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(f), int(d), int(n), 1.0f, du.data(), int(f),
                  x.data(), int(d), 0.0f, dw3.data(), int(d));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(d), int(f), 1.0f, du.data(), int(f),
                  m.w3.data(), int(d), 1.0f, dx.data(), int(d));
      column_sums(du.data(), n, f, db3.data());
    }
    column_sums(dh.data(), n, f, db1.data());
    column_sums(dy.data(), n, d, db2.data());
  };
  step();  // untimed: OpenBLAS's buffers and the outputs' first touch
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(dx.data());
    benchmark::DoNotOptimize(dw1.data());
    benchmark::ClobberMemory();
  }
  const double flops = (gated ? 6.0 : 4.0) * 2.0 * double(n) * double(f) * double(d);
  state.counters["gflops"] =
      benchmark::Counter(flops * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["density"] = 1.0;
}
#endif

const shape k_backward_shapes[] = {{4096, 16384}};
const int k_backward_batches[] = {64, 512};

template <class S, class T, class A>
void register_backward_one(const char* sel, const char* dt) {
  constexpr int g = 64;
  for (const shape& s : k_backward_shapes)
    for (int p : {25})
      for (int n : k_backward_batches) {
        const std::string name = std::string("BM_backward_") + sel + "_" + dt + "/d:" + std::to_string(s.d) +
                                 "/dff:" + std::to_string(s.f) + "/g:" + std::to_string(g) +
                                 "/density:" + std::to_string(p) + "/batch:" + std::to_string(n);
        benchmark::RegisterBenchmark(name.c_str(), BM_backward<sf::policy<g, S, T, A>>, s.d, s.f, p,
                                     sf::index_t{n})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
}

template <class A>
void register_backward_act() {
  register_backward_one<sf::select::avg_k, float, A>("avg_k", "f32");
  register_backward_one<sf::select::avg_k, sf::bfloat16_t, A>("avg_k", "bf16");
  register_backward_one<sf::select::learned_gate, float, A>("learned_gate", "f32");
  register_backward_one<sf::select::learned_gate, sf::bfloat16_t, A>("learned_gate", "bf16");
}

}  // namespace

#if defined(SPARSE_FFN_BENCH_ONEDNN)
void register_dense_backward_onednn();  // bench_onednn.cpp
#endif

void register_backward(const std::string& act) {
#if defined(SPARSE_FFN_BENCH_ONEDNN)
  register_dense_backward_onednn();
#endif
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
  for (const shape& s : k_backward_shapes)
    for (int n : k_backward_batches)
      benchmark::RegisterBenchmark(("BM_dense_backward_openblas_f32/d:" + std::to_string(s.d) +
                                    "/dff:" + std::to_string(s.f) + "/batch:" + std::to_string(n))
                                       .c_str(),
                                   BM_dense_backward_openblas, s.d, s.f, sf::index_t{n})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
#endif
  if (act == "relu")
    register_backward_act<sf::act::relu>();
  else if (act == "silu")
    register_backward_act<sf::act::silu>();
  else
    register_backward_act<sf::act::swiglu>();
}

}  // namespace bench
