// sparse_ffn_bench — CPU benchmarks (Google Benchmark).
//
//   BM_stream_read                                       bytes/s of a plain vector sum over 1 GiB
//   BM_dense_openblas_f32/d:D/dff:F/batch:N              dense FFN with OpenBLAS sgemv/sgemm
//   BM_sparse_<selector>_<dtype>/d:D/dff:F/g:G/density:P/batch:N
//
// All in one binary so ratios come from one run (bench/report.py computes them from the JSON).
// Counters: bytes_per_second on the bytes actually touched (selector data + keys of the blocks the
// batch selected + the value rows that were read: rows whose activation is zero for every token of
// the block are skipped by the kernel and not counted), `density` (k / B), `touched` (fraction of
// blocks the batch used). Every benchmark rotates over enough weight copies that the working set is
// ≥ 4× the L3, so no run is served from cache. Threads: OpenMP's (OMP_NUM_THREADS), for us and OpenBLAS.
//
// Extra flags (before Google Benchmark's): --sffn_act=relu|silu (activation of the sparse and dense
// FFNs, default relu), --sffn_l3_mib=N (cache size to defeat, default 36).
#include <benchmark/benchmark.h>

#include <sparse_ffn/sparse_ffn.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
#include <cblas.h>
#endif

namespace sf = sparse_ffn;

namespace {

std::string g_act = "relu";
double g_l3_bytes = 36.0 * 1024 * 1024;

struct shape {
  sf::index_t d, f;
};
const shape k_shapes[] = {{768, 3072}, {4096, 11008}, {4096, 16384}};
const int k_block_sizes[] = {16, 32, 64, 128};
const int k_densities[] = {12, 25, 50};
const int k_batches[] = {1, 8, 64};

/// Number of weight copies so that copies * bytes >= 4 * L3 (at least 1).
int copies_for(double bytes) {
  return std::max(1, static_cast<int>(std::ceil(4.0 * g_l3_bytes / bytes)));
}

/// Fast deterministic fill (normal-ish: sum of uniforms), scaled.
void fill(float* p, std::size_t n, std::uint64_t seed, float scale) {
#pragma omp parallel
  {
#if SPARSE_FFN_HAS_OPENMP
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    std::uint64_t s =
        seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(tid) * 0xbf58476d1ce4e5b9ull + 1;
    const std::size_t lo = n * tid / nth, hi = n * (tid + 1) / nth;
    for (std::size_t i = lo; i < hi; ++i) {
      float acc = 0;
      for (int r = 0; r < 3; ++r) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        acc += static_cast<float>(s >> 40) * (1.0f / 16777216.0f) - 0.5f;
      }
      p[i] = acc * 2.0f * scale;  // variance of the sum of 3 uniforms is 1/4
    }
  }
}

/// A dense float FFN (relu or silu: not gated), as OpenBLAS and pack() read it.
struct dense_model {
  sf::dense_ffn<float> ffn;
  dense_model(sf::index_t d, sf::index_t f, std::uint64_t seed) : ffn(d, f, false, true) {
    fill(ffn.w1.data(), ffn.w1.size(), seed, 1.0f / std::sqrt(float(d)));
    fill(ffn.w2.data(), ffn.w2.size(), seed + 1, 1.0f / std::sqrt(float(f)));
    fill(ffn.b1.data(), ffn.b1.size(), seed + 2, 0.1f);
    fill(ffn.b2.data(), ffn.b2.size(), seed + 3, 0.1f);
  }
};

/// Packed copies of one configuration (cached: the suite reuses them across batches/selectors).
template <class T>
struct sparse_models {
  std::vector<sf::blocked_ffn<T>> copies;
};

struct cache_t {
  std::string key;
  std::shared_ptr<void> value;
};
cache_t g_dense_cache, g_sparse_cache;

template <class V, class Make>
std::shared_ptr<V> cached(cache_t& c, const std::string& key, Make&& make) {
  if (c.key != key) {
    c.value.reset();  // free the previous configuration before building the next
    c.value = std::shared_ptr<void>(make());
    c.key = key;
  }
  return std::static_pointer_cast<V>(c.value);
}

template <class T>
std::shared_ptr<sparse_models<T>> get_sparse(sf::index_t d, sf::index_t f, int g) {
  const std::string key =
      std::to_string(d) + "x" + std::to_string(f) + "/" + sf::dtype_traits<T>::name + "/" + std::to_string(g);
  return cached<sparse_models<T>>(g_sparse_cache, key, [&] {
    auto* m = new sparse_models<T>();
    const double bytes = 2.0 * double(d) * double(f) * sizeof(T);
    const int copies = copies_for(bytes);
    const sf::index_t B = f / g;
    std::vector<float> gate(static_cast<std::size_t>(B * d));
    fill(gate.data(), gate.size(), 99, 1.0f / std::sqrt(float(d)));
    for (int c = 0; c < copies; ++c) {
      dense_model dense(d, f, 1000 + 17 * static_cast<std::uint64_t>(c));
      sf::pack_options po;
      po.g = g;
      po.gate_w = gate.data();
      m->copies.push_back(sf::pack<T>(dense.ffn.view(), po));
    }
    return m;
  });
}

std::vector<float> random_x(sf::index_t n, sf::index_t d, std::uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(n * d));
  fill(x.data(), x.size(), seed, 1.0f);
  return x;
}

// ---- stream read ----------------------------------------------------------------------------------
void BM_stream_read(benchmark::State& state) {
  const std::size_t n = std::size_t{1} << 28;  // 1 GiB of float
  std::unique_ptr<float[]> buf(new float[n]);
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) buf[i] = 1.0f;
  using V = sf::cpu::simd<sf::cpu::isa::native>;
  for (auto _ : state) {
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
#if SPARSE_FFN_HAS_OPENMP
      const std::size_t tid = static_cast<std::size_t>(omp_get_thread_num()),
                        nth = static_cast<std::size_t>(omp_get_num_threads());
#else
      const std::size_t tid = 0, nth = 1;
#endif
      // Four independent sequential streams per thread with software prefetch 1 KiB ahead: the
      // best plain read we found on this machine (one stream without prefetch is ~25% slower).
      const std::size_t per = n / nth, len = per / 4 / V::width * V::width;
      const float* base = buf.get() + per * tid;
      const V::reg one = V::set1(1.0f);
      V::reg a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
      for (std::size_t i = 0; i < len; i += V::width) {
        V::prefetch(base + i + 256);
        V::prefetch(base + len + i + 256);
        V::prefetch(base + 2 * len + i + 256);
        V::prefetch(base + 3 * len + i + 256);
        a0 = V::fma(one, V::load(base + i), a0);
        a1 = V::fma(one, V::load(base + len + i), a1);
        a2 = V::fma(one, V::load(base + 2 * len + i), a2);
        a3 = V::fma(one, V::load(base + 3 * len + i), a3);
      }
      total += V::hsum(a0) + V::hsum(a1) + V::hsum(a2) + V::hsum(a3);
    }
    benchmark::DoNotOptimize(total);
  }
  const std::size_t read = n / 64 * 64;  // what the loop reads (n is a multiple of 4 * 16 * threads here)
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(read * sizeof(float)));
}

// ---- dense OpenBLAS baseline ----------------------------------------------------------------------
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
struct dense_copies {
  std::vector<dense_model> copies;
};

void BM_dense_openblas(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n) {
  const std::string key = std::to_string(d) + "x" + std::to_string(f);
  auto models = cached<dense_copies>(g_dense_cache, key, [&] {
    auto* m = new dense_copies();
    const int copies = copies_for(2.0 * double(d) * double(f) * 4);
    for (int c = 0; c < copies; ++c) m->copies.emplace_back(d, f, 1000 + 17 * static_cast<std::uint64_t>(c));
    return m;
  });
  const auto x = random_x(n, d, 7);
  std::vector<float> h(static_cast<std::size_t>(n * f)), y(static_cast<std::size_t>(n * d));
  const bool relu = g_act == "relu";
  std::size_t next = 0;
  for (auto _ : state) {
    const auto& m = models->copies[next++ % models->copies.size()].ffn;
    for (sf::index_t t = 0; t < n; ++t) std::memcpy(&h[static_cast<std::size_t>(t * f)], m.b1.data(), f * 4);
    for (sf::index_t t = 0; t < n; ++t) std::memcpy(&y[static_cast<std::size_t>(t * d)], m.b2.data(), d * 4);
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(f), int(d), 1.0f, m.w1.data(), int(d), x.data(), 1, 1.0f,
                  h.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(f), int(d), 1.0f, x.data(), int(d),
                  m.w1.data(), int(d), 1.0f, h.data(), int(f));
    }
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < h.size(); ++i)
      h[i] = relu ? sf::act::relu::apply(h[i]) : sf::act::silu::apply(h[i]);
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(d), int(f), 1.0f, m.w2.data(), int(f), h.data(), 1, 1.0f,
                  y.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(d), int(f), 1.0f, h.data(), int(f),
                  m.w2.data(), int(f), 1.0f, y.data(), int(d));
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * d * f * 4);
  state.counters["density"] = 1.0;
}
#endif

// ---- sparse ---------------------------------------------------------------------------------------

/// Bytes a forward touches: selector rows (linear) or all keys (oracle), selected blocks' keys, and
/// the value rows with a nonzero activation for some token of the block (what the kernel reads).
template <class P>
double bytes_touched(const sf::blocked_ffn_view<typename P::dtype>& w, sf::index_t n, sf::index_t k,
                     const std::vector<sf::block_index_t>& blocks, const std::vector<float>& pre,
                     double* touched_frac) {
  using T = typename P::dtype;
  const auto& l = w.layout;
  const double row = double(l.ld) * sizeof(T);
  double bytes = 0;
  if (P::selector::scoring == sf::scoring_kind::linear) bytes += double(l.num_blocks) * row;
  if (P::selector::scoring == sf::scoring_kind::dense) bytes += double(l.d_ff) * row;
  std::vector<char> used(static_cast<std::size_t>(l.num_blocks), 0),
      row_used(static_cast<std::size_t>(l.d_ff), 0);
  for (sf::index_t t = 0; t < n; ++t)
    for (sf::index_t j = 0; j < k; ++j) {
      const auto b = blocks[static_cast<std::size_t>(t * k + j)];
      used[static_cast<std::size_t>(b)] = 1;
      for (sf::index_t i = 0; i < l.g; ++i)
        if (sf::activate<typename P::activation>(pre[static_cast<std::size_t>((t * k + j) * l.g + i)],
                                                 0.0f) != 0.0f)
          row_used[static_cast<std::size_t>(b * l.g + i)] = 1;
    }
  double nb = 0;
  for (sf::index_t b = 0; b < l.num_blocks; ++b)
    if (used[static_cast<std::size_t>(b)]) {
      nb += 1;
      if (P::selector::scoring != sf::scoring_kind::dense) bytes += double(l.g) * row;  // keys
      for (sf::index_t i = 0; i < l.g; ++i)
        bytes += row_used[static_cast<std::size_t>(b * l.g + i)] ? row : 0.0;
    }
  *touched_frac = nb / double(l.num_blocks);
  return bytes;
}

template <class P>
void BM_sparse(benchmark::State& state, sf::index_t d, sf::index_t f, int density, sf::index_t n) {
  using T = typename P::dtype;
  constexpr int G = P::block_size;
  auto models = get_sparse<T>(d, f, G);
  const sf::index_t B = f / G, k = std::max<sf::index_t>(1, (B * density + 50) / 100);
  const auto x = random_x(n, d, 7);
  std::vector<float> y(static_cast<std::size_t>(n * d));
  std::vector<sf::token_id_t> ids(static_cast<std::size_t>(n));
  for (sf::index_t t = 0; t < n; ++t) ids[static_cast<std::size_t>(t)] = (t * 7919 + 13) % 50000;
  sf::route_args args;
  args.k = k;
  args.token_ids = ids.data();
  args.vocab_size = 50000;
  sf::cpu::workspace ws;

  // Bytes touched, from one untimed run with the forward cache (routing + pre-activations).
  std::vector<sf::block_index_t> blocks(static_cast<std::size_t>(n * k));
  std::vector<float> pre(static_cast<std::size_t>(n * k * G));
  sf::forward_cache cache{blocks.data(), nullptr, pre.data(), nullptr};
  sf::cpu::forward<P>(models->copies[0].view(), n, x.data(), y.data(), args, &cache, &ws);
  double touched = 0;
  const double bytes = bytes_touched<P>(models->copies[0].view(), n, k, blocks, pre, &touched);

  std::size_t next = 0;
  for (auto _ : state) {
    const auto w = models->copies[next++ % models->copies.size()].view();
    sf::cpu::forward<P>(w, n, x.data(), y.data(), args, nullptr, &ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * bytes));
  state.counters["density"] = double(k) / double(B);
  state.counters["touched"] = touched;
}

template <class S, class T, class A>
void register_sparse(const char* sel, const char* dt) {
  for (const shape& s : k_shapes)
    for (int g : k_block_sizes)
      for (int p : k_densities)
        for (int n : k_batches) {
          const std::string name = std::string("BM_sparse_") + sel + "_" + dt + "/d:" + std::to_string(s.d) +
                                   "/dff:" + std::to_string(s.f) + "/g:" + std::to_string(g) +
                                   "/density:" + std::to_string(p) + "/batch:" + std::to_string(n);
          auto reg = [&](auto gc) {
            using P = sf::policy<decltype(gc)::value, S, T, A>;
            benchmark::RegisterBenchmark(name.c_str(), BM_sparse<P>, s.d, s.f, p, sf::index_t{n})
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
          };
          sf::dispatch_block_size(g, reg);
        }
}

template <class A>
void register_all() {
  benchmark::RegisterBenchmark("BM_stream_read", BM_stream_read)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
  for (const shape& s : k_shapes)
    for (int n : k_batches)
      benchmark::RegisterBenchmark(("BM_dense_openblas_f32/d:" + std::to_string(s.d) +
                                    "/dff:" + std::to_string(s.f) + "/batch:" + std::to_string(n))
                                       .c_str(),
                                   BM_dense_openblas, s.d, s.f, sf::index_t{n})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
#endif
  register_sparse<sf::select::avg_k, float, A>("avg_k", "f32");
  register_sparse<sf::select::avg_k, sf::bfloat16_t, A>("avg_k", "bf16");
  register_sparse<sf::select::avg_k, sf::half_t, A>("avg_k", "f16");
  register_sparse<sf::select::hash, float, A>("hash", "f32");
  register_sparse<sf::select::hash, sf::bfloat16_t, A>("hash", "bf16");
  register_sparse<sf::select::hash, sf::half_t, A>("hash", "f16");
  register_sparse<sf::select::learned_gate, float, A>("learned_gate", "f32");
  register_sparse<sf::select::learned_gate, sf::bfloat16_t, A>("learned_gate", "bf16");
  register_sparse<sf::select::learned_gate, sf::half_t, A>("learned_gate", "f16");
  register_sparse<sf::select::oracle, float, A>("oracle", "f32");
  register_sparse<sf::select::oracle, sf::bfloat16_t, A>("oracle", "bf16");
  register_sparse<sf::select::oracle, sf::half_t, A>("oracle", "f16");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--sffn_act=", 0) == 0) {
      g_act = a.substr(11);
    } else if (a.rfind("--sffn_l3_mib=", 0) == 0) {
      g_l3_bytes = std::stod(a.substr(14)) * 1024 * 1024;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (g_act == "relu") {
    register_all<sf::act::relu>();
  } else if (g_act == "silu") {
    register_all<sf::act::silu>();
  } else {
    std::fprintf(stderr, "--sffn_act must be relu or silu\n");
    return 2;
  }
  int rc = static_cast<int>(rest.size());
  benchmark::AddCustomContext("sparse_ffn.isa", sf::cpu::isa::native::name);
  benchmark::AddCustomContext("sparse_ffn.activation", g_act);
#if SPARSE_FFN_HAS_OPENMP
  benchmark::AddCustomContext("sparse_ffn.threads", std::to_string(omp_get_max_threads()));
#endif
  benchmark::Initialize(&rc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rc, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
