// sparse_ffn_bench — the dense FFN with oneDNN matmul (f32 and bf16), the strongest dense library on
// most x86 CPUs (bf16 uses AVX512_BF16 / AMX where the CPU has them). Built when libdnnl-dev is found.
//
//   BM_dense_onednn_f32/d:D/dff:F/batch:N    y = W2·act(W1·x + b1) + b2, f32 weights and activations
//   BM_dense_onednn_bf16/d:D/dff:F/batch:N   bf16 weights, bf16 x and h (as oneDNN and ggml run bf16),
//                                             f32 accumulation, f32 y
//   BM_dense_backward_onednn_f32|bf16/...     the dense FFN's backward (BM_dense_backward_onednn below;
//                                             gated with --sffn_act=swiglu)
//
// Two matmul primitives per FFN, the activation fused as a post-op. The weights (PyTorch layout:
// W1 [d_ff × d], W2 [d × d_ff], i.e. transposed "ba" matmul weights) are reordered once, outside the
// timed loop, into the layout the primitive prefers (format_tag::any), as an inference engine would
// prepack them; copies are rotated (≥ 4× the L3, like every benchmark here). The bytes counted are the
// weights (2·d·d_ff elements).
#include "bench_common.hpp"

#include <oneapi/dnnl/dnnl.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace bench {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

/// One dense model's weights in oneDNN memory (dtype W), biases f32.
struct onednn_weights {
  std::vector<float> w1f, w2f, b1, b2;   // f32 storage (f32 runs)
  std::vector<sf::bfloat16_t> w1h, w2h;  // bf16 storage (bf16 runs)
  // Gated (swiglu, the backward only): w1f / w1h hold W1 and W3 stacked, [2·d_ff × d], so dX = [dA dU]·W13
  // and [dW1; dW3] = [dA dU]ᵀX are one matmul each.
};

struct onednn_copies {
  std::vector<onednn_weights> copies;
};

/// Copies of one dense model's weights (>= 4x the L3), cached and shared by the forward and backward
/// benchmarks.
std::shared_ptr<onednn_copies> get_onednn_copies(sf::index_t d, sf::index_t f, bool bf16,
                                                 bool gated = false) {
  const std::string key = std::string("onednn/") + (bf16 ? "bf16/" : "f32/") + (gated ? "gated/" : "") +
                          std::to_string(d) + "x" + std::to_string(f);
  const double weight_bytes = (gated ? 3.0 : 2.0) * double(d) * double(f) * (bf16 ? 2 : 4);
  const int copies = copies_for(weight_bytes);
  return g_models.get<onednn_copies>(key, weight_bytes * copies, [&] {
    auto* m = new onednn_copies();
    for (int c = 0; c < copies; ++c) {
      dense_model dense(d, f, 1000 + 17 * static_cast<std::uint64_t>(c), gated);
      if (gated) dense.ffn.w1.insert(dense.ffn.w1.end(), dense.ffn.w3.begin(), dense.ffn.w3.end());
      onednn_weights w;
      w.b1 = dense.ffn.b1;
      w.b2 = dense.ffn.b2;
      if (bf16) {
        w.w1h.resize(dense.ffn.w1.size());
        w.w2h.resize(dense.ffn.w2.size());
        for (std::size_t i = 0; i < w.w1h.size(); ++i) w.w1h[i] = sf::bfloat16_t(dense.ffn.w1[i]);
        for (std::size_t i = 0; i < w.w2h.size(); ++i) w.w2h[i] = sf::bfloat16_t(dense.ffn.w2[i]);
      } else {
        w.w1f = std::move(dense.ffn.w1);
        w.w2f = std::move(dense.ffn.w2);
      }
      m->copies.push_back(std::move(w));
    }
    return m;
  });
}

/// oneDNN has no implementation for some primitives on some CPUs (bf16 matmul needs AVX-512 in the
/// oneDNN of Debian 12: on an AVX2-only CPU creating it throws "could not create a primitive
/// descriptor iterator"). The benchmark is then skipped with that reason, not the whole run aborted.
template <class F>
bool onednn_or_skip(benchmark::State& state, bool bf16, F&& create) {
  try {
    create();
    return true;
  } catch (const dnnl::error& e) {
    state.SkipWithError((std::string("oneDNN cannot run this ") + (bf16 ? "bf16" : "f32") +
                         " matmul on this CPU: " + e.what())
                            .c_str());
    return false;
  }
}

/// One dense FFN forward per call, each on the next prepacked weight copy: two matmul primitives, the
/// activation fused as a post-op. The constructor throws dnnl::error where oneDNN has no implementation
/// (onednn_or_skip).
class onednn_forward {
 public:
  onednn_forward(sf::index_t d, sf::index_t f, sf::index_t n, bool bf16)
      : eng_(dnnl::engine::kind::cpu, 0), strm_(eng_) {
    const dt wt = bf16 ? dt::bf16 : dt::f32;
    // First matmul: x [n × d] · W1ᵀ (W1 stored [f × d] = weights [d × f] in "ba") + b1, act → h [n × f].
    const memory::desc x_md({n, d}, wt, tag::ab), w1_md({d, f}, wt, tag::ba), b1_md({1, f}, dt::f32, tag::ab),
        h_md({n, f}, wt, tag::ab);
    // Second matmul: h [n × f] · W2ᵀ (W2 stored [d × f] = weights [f × d] in "ba") + b2 → y [n × d] f32.
    const memory::desc w2_md({f, d}, wt, tag::ba), b2_md({1, d}, dt::f32, tag::ab),
        y_md({n, d}, dt::f32, tag::ab);
    dnnl::post_ops po;
    if (g_act == "relu")
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    else
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);  // silu = swish with alpha 1
    dnnl::primitive_attr attr;
    attr.set_post_ops(po);
    const memory::desc w1_any({d, f}, wt, tag::any), w2_any({f, d}, wt, tag::any);
    const dnnl::matmul::primitive_desc up_pd(dnnl::matmul::desc(x_md, w1_any, b1_md, h_md), attr, eng_),
        down_pd(dnnl::matmul::desc(h_md, w2_any, b2_md, y_md), eng_);
    up_ = dnnl::matmul(up_pd);
    down_ = dnnl::matmul(down_pd);
    auto models = get_onednn_copies(d, f, bf16);
    // Prepacked weights of one copy, in the layout each primitive chose.
    // The prepacked weights live in the library's storage (huge pages where granted, as our models).
    auto prepack = [&](const memory::desc& user_md, void* user, const memory::desc& want) {
      packed_.emplace_back(static_cast<sf::index_t>(want.get_size()));
      memory src(user_md, eng_, user), dst(want, eng_, packed_.back().data());
      dnnl::reorder(src, dst).execute(strm_, src, dst);
      strm_.wait();
      return dst;
    };
    const auto xf = random_x(n, d, 7);
    xh_.resize(bf16 ? xf.size() : 0);
    hh_.resize(bf16 ? static_cast<std::size_t>(n * f) : 0);
    for (std::size_t i = 0; i < xh_.size(); ++i) xh_[i] = sf::bfloat16_t(xf[i]);
    xf_ = xf;
    hf_.resize(bf16 ? 0 : static_cast<std::size_t>(n * f));
    y_.resize(static_cast<std::size_t>(n * d));
    x_mem_ = memory(x_md, eng_, bf16 ? static_cast<void*>(xh_.data()) : static_cast<void*>(xf_.data()));
    h_mem_ = memory(h_md, eng_, bf16 ? static_cast<void*>(hh_.data()) : static_cast<void*>(hf_.data()));
    y_mem_ = memory(y_md, eng_, y_.data());
    for (auto& c : models->copies)
      ms_.push_back(
          {prepack(w1_md, bf16 ? static_cast<void*>(c.w1h.data()) : c.w1f.data(), up_pd.weights_desc()),
           memory(b1_md, eng_, c.b1.data()),
           prepack(w2_md, bf16 ? static_cast<void*>(c.w2h.data()) : c.w2f.data(), down_pd.weights_desc()),
           memory(b2_md, eng_, c.b2.data())});
    models_ = std::move(models);  // the biases are used in place
  }
  void operator()() {
    const mems& m = ms_[next_++ % ms_.size()];
    up_.execute(
        strm_,
        {{DNNL_ARG_SRC, x_mem_}, {DNNL_ARG_WEIGHTS, m.w1}, {DNNL_ARG_BIAS, m.b1}, {DNNL_ARG_DST, h_mem_}});
    down_.execute(
        strm_,
        {{DNNL_ARG_SRC, h_mem_}, {DNNL_ARG_WEIGHTS, m.w2}, {DNNL_ARG_BIAS, m.b2}, {DNNL_ARG_DST, y_mem_}});
    strm_.wait();
    benchmark::DoNotOptimize(y_.data());
    benchmark::ClobberMemory();
  }

 private:
  struct mems {
    memory w1, b1, w2, b2;
  };
  dnnl::engine eng_;
  dnnl::stream strm_;
  dnnl::matmul up_, down_;
  std::shared_ptr<onednn_copies> models_;
  std::vector<float> xf_, hf_, y_;
  std::vector<sf::bfloat16_t> xh_, hh_;
  memory x_mem_, h_mem_, y_mem_;
  std::vector<mems> ms_;
  std::vector<sf::detail::aligned_buffer<unsigned char>> packed_;  // the prepacked weights
  std::size_t next_ = 0;
};

void BM_dense_onednn(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n, bool bf16) {
  const double weight_bytes = 2.0 * double(d) * double(f) * (bf16 ? 2 : 4);
  std::unique_ptr<onednn_forward> fwd;
  if (!onednn_or_skip(state, bf16, [&] { fwd.reset(new onednn_forward(d, f, n, bf16)); })) return;
  for (auto _ : state) (*fwd)();
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * weight_bytes));
  state.counters["density"] = 1.0;
}

/// The dense FFN's backward with oneDNN matmul (plain layouts: in training the weights change every
/// step, so nothing is prepacked): dH = dY·W2, dA = dH ⊙ act'(A), dW2 = dYᵀH, dW1 = dAᵀX, dX = dA·W1,
/// db1, db2. Gated (swiglu): dA and dU from dH, A and U, side by side in one [n × 2·d_ff] matrix, so
/// [dW1; dW3] = [dA dU]ᵀX and dX = [dA dU]·[W1; W3] are one matmul each (the six products of OpenBLAS's
/// gated backward, in four calls), db3 too. bf16: dY, H, dA (dU), X and the weights in bf16 (f32
/// accumulation and f32 gradients), as mixed-precision training runs them; the conversions of dA (dU)
/// are timed, the others (of the forward's outputs) are not.
void BM_dense_backward_onednn(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n,
                              bool bf16) {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  const dt wt = bf16 ? dt::bf16 : dt::f32;
  const bool relu = g_act == "relu", gated = g_act == "swiglu";
  const sf::index_t f2 = gated ? 2 * f : f;  // columns of [dA dU], rows of [W1; W3]
  const memory::desc dy_md({n, d}, wt, tag::ab), w2_md({d, f}, wt, tag::ab), dh_md({n, f}, dt::f32, tag::ab);
  const memory::desc dyT_md({d, n}, wt, tag::ba), h_md({n, f}, wt, tag::ab), dw2_md({d, f}, dt::f32, tag::ab);
  const memory::desc daT_md({f2, n}, wt, tag::ba), x_md({n, d}, wt, tag::ab),
      dw1_md({f2, d}, dt::f32, tag::ab);
  const memory::desc da_md({n, f2}, wt, tag::ab), w1_md({f2, d}, wt, tag::ab),
      dx_md({n, d}, dt::f32, tag::ab);
  dnnl::matmul mm_dh, mm_dw2, mm_dw1, mm_dx;
  if (!onednn_or_skip(state, bf16, [&] {
        mm_dh = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(dy_md, w2_md, dh_md), eng));
        mm_dw2 = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(dyT_md, h_md, dw2_md), eng));
        mm_dw1 = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(daT_md, x_md, dw1_md), eng));
        mm_dx = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(da_md, w1_md, dx_md), eng));
      }))
    return;
  auto models = get_onednn_copies(d, f, bf16, gated);

  const auto xf = random_x(n, d, 7), dyf = random_x(n, d, 11);
  // The forward's pre-activations A (and up projections U, gated), the same for every copy: they are
  // only read elementwise here.
  std::vector<float> a(static_cast<std::size_t>(n * f)), u(gated ? a.size() : 0), dh(a.size()),
      dau(gated ? 2 * a.size() : 0), dw1(static_cast<std::size_t>(f2 * d)),
      dw2(static_cast<std::size_t>(f * d)), dx(xf.size()), db1(static_cast<std::size_t>(f2)),
      db2(static_cast<std::size_t>(d));
  fill(a.data(), a.size(), 5, 1.0f);
  if (gated) fill(u.data(), u.size(), 6, 1.0f);
  const std::size_t esz = bf16 ? 2 : 4;
  std::vector<unsigned char> x_buf(xf.size() * esz), dy_buf(xf.size() * esz), h_buf(a.size() * esz),
      da_buf(static_cast<std::size_t>(n * f2) * esz);
  auto store = [&](std::vector<unsigned char>& buf, std::size_t i, float v) {
    if (bf16)
      reinterpret_cast<sf::bfloat16_t*>(buf.data())[i] = sf::bfloat16_t(v);
    else
      reinterpret_cast<float*>(buf.data())[i] = v;
  };
  for (std::size_t i = 0; i < xf.size(); ++i) {
    store(x_buf, i, xf[i]);
    store(dy_buf, i, dyf[i]);
  }
  for (std::size_t i = 0; i < a.size(); ++i)
    store(h_buf, i,
          gated  ? sf::act::silu::apply(a[i]) * u[i]
          : relu ? sf::act::relu::apply(a[i])
                 : sf::act::silu::apply(a[i]));
  memory dy_mem(dy_md, eng, dy_buf.data()), dyT_mem(dyT_md, eng, dy_buf.data()),
      h_mem(h_md, eng, h_buf.data()), x_mem(x_md, eng, x_buf.data()), da_mem(da_md, eng, da_buf.data()),
      daT_mem(daT_md, eng, da_buf.data()), dh_mem(dh_md, eng, dh.data()), dw1_mem(dw1_md, eng, dw1.data()),
      dw2_mem(dw2_md, eng, dw2.data()), dx_mem(dx_md, eng, dx.data());
  std::vector<memory> w1s, w2s;
  for (auto& c : models->copies) {
    w1s.emplace_back(w1_md, eng, bf16 ? static_cast<void*>(c.w1h.data()) : c.w1f.data());
    w2s.emplace_back(w2_md, eng, bf16 ? static_cast<void*>(c.w2h.data()) : c.w2f.data());
  }
  std::size_t next = 0;
  auto step = [&] {
    const std::size_t c = next++ % w1s.size();
    mm_dh.execute(strm, {{DNNL_ARG_SRC, dy_mem}, {DNNL_ARG_WEIGHTS, w2s[c]}, {DNNL_ARG_DST, dh_mem}});
    strm.wait();
    if (gated) {
#pragma omp parallel for schedule(static)
      for (sf::index_t t = 0; t < n; ++t)
        for (sf::index_t j = 0; j < f; ++j) {
          const std::size_t e = static_cast<std::size_t>(t * f + j), o = static_cast<std::size_t>(t * f2 + j);
          sf::activation_backward<sf::act::swiglu>(a[e], u[e], dh[e], dau[o], dau[o + f]);  // dA, dU (f32)
          store(da_buf, o, dau[o]);
          store(da_buf, o + f, dau[o + f]);
        }
    } else {
#pragma omp parallel for schedule(static)
      for (std::size_t e = 0; e < dh.size(); ++e) {
        dh[e] *= relu ? sf::act::relu::grad(a[e]) : sf::act::silu::grad(a[e]);  // dA, f32
        store(da_buf, e, dh[e]);
      }
    }
    mm_dw2.execute(strm, {{DNNL_ARG_SRC, dyT_mem}, {DNNL_ARG_WEIGHTS, h_mem}, {DNNL_ARG_DST, dw2_mem}});
    mm_dw1.execute(strm, {{DNNL_ARG_SRC, daT_mem}, {DNNL_ARG_WEIGHTS, x_mem}, {DNNL_ARG_DST, dw1_mem}});
    mm_dx.execute(strm, {{DNNL_ARG_SRC, da_mem}, {DNNL_ARG_WEIGHTS, w1s[c]}, {DNNL_ARG_DST, dx_mem}});
    strm.wait();
    column_sums(gated ? dau.data() : dh.data(), n, f2, db1.data());  // db1 (and db3)
    column_sums(dyf.data(), n, d, db2.data());
  };
  step();  // untimed: oneDNN's scratchpads and the outputs' first touch
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

}  // namespace

std::function<void()> paired_dense(sf::index_t d, sf::index_t f, sf::index_t n) {
  // One runner per shape and batch for the whole run: prepacking 0.27 GB of bf16 weights per call of a
  // sparse benchmark would cost more than the benchmark.
  static std::map<std::string, std::shared_ptr<onednn_forward>> runners;
  const std::string key = g_act + "/" + std::to_string(d) + "x" + std::to_string(f) + "/" + std::to_string(n);
  auto it = runners.find(key);
  if (it == runners.end()) {
    std::shared_ptr<onednn_forward> r;
    try {
      r = std::make_shared<onednn_forward>(d, f, n, true);
    } catch (const dnnl::error&) {  // no bf16 matmul on this CPU: no paired dense figure
    }
    it = runners.emplace(key, r).first;
  }
  if (!it->second) return {};
  auto r = it->second;
  return [r] { (*r)(); };
}

void register_dense_backward_onednn() {
  for (sf::index_t n : {64, 512})
    for (bool bf16 : {false, true})
      benchmark::RegisterBenchmark((std::string("BM_dense_backward_onednn_") + (bf16 ? "bf16" : "f32") +
                                    "/d:4096/dff:16384/batch:" + std::to_string(n))
                                       .c_str(),
                                   BM_dense_backward_onednn, sf::index_t{4096}, sf::index_t{16384}, n, bf16)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
}

void register_dense_onednn() {
  for (const shape& s : k_shapes)
    for (int n : k_batches)
      for (bool bf16 : {false, true})
        benchmark::RegisterBenchmark(
            (std::string("BM_dense_onednn_") + (bf16 ? "bf16" : "f32") + "/d:" + std::to_string(s.d) +
             "/dff:" + std::to_string(s.f) + "/batch:" + std::to_string(n))
                .c_str(),
            BM_dense_onednn, s.d, s.f, sf::index_t{n}, bf16)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
}

}  // namespace bench
