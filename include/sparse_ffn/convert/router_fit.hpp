// sparse_ffn — routers for a converted (MoEfied) FFN, fitted on the CPU.
//
//   block_mass(model, x, n)          per token and block, the activation mass Σ_{i∈b} |h_i| (for ReLU
//                                    the positive sum MoEfication uses); the training target and the
//                                    oracle's score
//   similarity_rows(model)           MoEfication's similarity router: the mean of each block's
//                                    L2-normalised keys (ranking by it equals ranking by cosine with x)
//   fit_linear_router(...)           Linear d → B, trained to predict each block's share of activation
//                                    mass (BCE with logits against mass / batch max; Adam)
//   fit_mlp_router(...)              MoEfication's MLP router: Linear d → B (initialised to the block
//                                    centres), tanh, Linear B → B (initialised to the identity); same loss
//   topk_coverage(scores, mass, ...) the share of activation mass the top-k blocks of `scores` capture
//
// A fitted linear router is used for selection only (unit weights) by loading its rows into the
// Avg-K selector (blocked_ffn::set_centroids(w, b)): the converted FFN must keep the dense scale.
// The MLP router is not linear: route with `mlp_router::scores` + top-k and call forward_routed.
// Training is deterministic for a given seed (fixed minibatch order, fixed reduction order).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../cpu/forward.hpp"
#include "../detail/blas1.hpp"
#include "../dispatch.hpp"
#include "../pack.hpp"
#include "../selector/topk.hpp"
#include "split.hpp"

namespace sparse_ffn {
namespace convert {

namespace detail {
/// Every block for every token: the routed forward on the identity table (no scoring, no top-k: the
/// oracle at k = B would compute every pre-activation twice). Fills y [n × d], the cache's
/// pre-activations [n × B × g] (and up projections when gated) and cache.blocks = 0..B-1 per token.
template <class Act, class T>
void dense_pass(const blocked_ffn<T>& model, const float* x, index_t n, float* y,
                const forward_cache& cache) {
  const index_t B = model.layout().num_blocks;
  std::vector<block_index_t> table(static_cast<std::size_t>(n * B));
  for (index_t t = 0; t < n; ++t)
    for (index_t b = 0; b < B; ++b)
      table[static_cast<std::size_t>(t * B + b)] = static_cast<block_index_t>(b);
  dispatch_block_size(model.layout().g, [&](auto G) {
    using P = policy<decltype(G)::value, select::oracle, T, Act>;
    cpu::forward_routed<P>(model.view(), n, x, y, const_routing_view{n, B, table.data(), nullptr}, &cache);
  });
}
}  // namespace detail

/// Activation mass [n × B] of every block for n tokens x [n × d_model] (float): every block of every
/// token computed by the fast path (detail::dense_pass), in chunks of tokens whose pre-activations fit
/// in 16 MiB (one pass over 10^5 tokens at once is ~1.5× slower: its buffers leave the caches). Also
/// returns the dense output in `y_dense` [n × d_model] when non-null.
template <class Act, class T>
std::vector<float> block_mass(const blocked_ffn<T>& model, const float* x, index_t n,
                              float* y_dense = nullptr) {
  const block_layout& l = model.layout();
  const index_t B = l.num_blocks, g = l.g, d = l.d_model;
  std::vector<float> mass(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, B, "block mass"))), y;
  if (!y_dense) {
    y.resize(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, d, "block mass")));
    y_dense = y.data();
  }
  const index_t chunk = std::max<index_t>(1, std::min<index_t>(n, (index_t{1} << 22) / l.d_ff));
  std::vector<float> pre(static_cast<std::size_t>(chunk * B * g)), up(Act::gated ? pre.size() : 0);
  std::vector<block_index_t> blocks(static_cast<std::size_t>(chunk * B));
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const index_t m = std::min(chunk, n - t0);
    const forward_cache cache{blocks.data(), nullptr, pre.data(), Act::gated ? up.data() : nullptr};
    detail::dense_pass<Act>(model, x + t0 * d, m, y_dense + t0 * d, cache);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t t = 0; t < m; ++t)
      for (index_t j = 0; j < B; ++j) {
        float s = 0;
        for (index_t i = 0; i < g; ++i) {
          const auto at = static_cast<std::size_t>((t * B + j) * g + i);
          s += select::oracle::neuron_score(activate<Act>(pre[at], Act::gated ? up[at] : 0.0f));
        }
        mass[static_cast<std::size_t>((t0 + t) * B + blocks[static_cast<std::size_t>(t * B + j)])] = s;
      }
  }
  return mass;
}

/// The dense output and the block masses of several splits in one dense pass: y_dense [n × d_model]
/// and, for each permutation perms[p] (a split with g neurons per block, its pinned blocks first, as
/// pack takes it), masses[p] [n × B] with block b's mass summed over its neurons in the
/// permutation's order (what block_mass computes on the model packed with that permutation). The
/// dense FFN is run once on its own neuron order, in chunks of tokens, instead of once per split.
template <class Act>
void dense_reference(const dense_ffn_view<float>& dense, index_t g,
                     const std::vector<const std::vector<std::int32_t>*>& perms, const float* x, index_t n,
                     std::vector<float>& y_dense, std::vector<std::vector<float>>& masses) {
  const blocked_ffn<float> ident = pack<float>(dense, pack_options{g});
  const block_layout& l = ident.layout();
  const index_t B = l.num_blocks, F = l.d_ff, d = l.d_model;
  for (const auto* p : perms)
    sparse_ffn::detail::require(p && static_cast<index_t>(p->size()) == F, status::invalid_argument,
                                "dense_reference: a permutation of ", F, " neurons is needed");
  y_dense.assign(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, d, "dense output")), 0.0f);
  masses.assign(
      perms.size(),
      std::vector<float>(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, B, "block mass"))));
  const index_t chunk = std::max<index_t>(1, std::min<index_t>(n, (index_t{1} << 22) / F));
  std::vector<float> pre(static_cast<std::size_t>(chunk * F)), up(Act::gated ? pre.size() : 0),
      score(pre.size());
  std::vector<block_index_t> blocks(static_cast<std::size_t>(chunk * B));
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const index_t m = std::min(chunk, n - t0);
    const forward_cache cache{blocks.data(), nullptr, pre.data(), Act::gated ? up.data() : nullptr};
    detail::dense_pass<Act>(ident, x + t0 * d, m, y_dense.data() + t0 * d, cache);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t t = 0; t < m; ++t) {  // identity table: slot j is block j, so neuron i sits at t·F + i
      for (index_t i = 0; i < F; ++i) {
        const auto at = static_cast<std::size_t>(t * F + i);
        score[at] = select::oracle::neuron_score(activate<Act>(pre[at], Act::gated ? up[at] : 0.0f));
      }
      for (std::size_t p = 0; p < perms.size(); ++p) {
        const std::int32_t* perm = perms[p]->data();
        float* out = masses[p].data() + (t0 + t) * B;
        const float* st = score.data() + t * F;
        for (index_t b = 0; b < B; ++b) {
          float s = 0;
          for (index_t i = 0; i < g; ++i) s += st[perm[b * g + i]];
          out[b] = s;
        }
      }
    }
  }
}

/// Activations h = act(W1 x + b1 [, W3 x + b3]) of every neuron, [n × d_ff] in the model's packed order
/// (the original order when it was packed without a permutation): the sample split_coactivation reads.
template <class Act, class T>
std::vector<float> neuron_activations(const blocked_ffn<T>& model, const float* x, index_t n) {
  const block_layout& l = model.layout();
  const index_t B = l.num_blocks, g = l.g, F = l.d_ff;
  std::vector<float> pre(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, F, "activations"))),
      up(Act::gated ? pre.size() : 0), h(pre.size()), y(static_cast<std::size_t>(n * l.d_model));
  std::vector<block_index_t> blocks(static_cast<std::size_t>(n * B));
  const forward_cache cache{blocks.data(), nullptr, pre.data(), Act::gated ? up.data() : nullptr};
  detail::dense_pass<Act>(model, x, n, y.data(), cache);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < B; ++j) {
      const index_t b = blocks[static_cast<std::size_t>(t * B + j)];
      for (index_t i = 0; i < g; ++i) {
        const auto at = static_cast<std::size_t>((t * B + j) * g + i);
        h[static_cast<std::size_t>(t * F + b * g + i)] = activate<Act>(pre[at], Act::gated ? up[at] : 0.0f);
      }
    }
  return h;
}

/// Mean of each block's L2-normalised keys, [B × d_model].
template <class T>
std::vector<float> similarity_rows(const blocked_ffn_view<T>& w) {
  const block_layout& l = w.layout;
  std::vector<float> rows(static_cast<std::size_t>(l.num_blocks * l.d_model), 0.0f);
  for (index_t b = 0; b < l.num_blocks; ++b) {
    std::vector<double> acc(static_cast<std::size_t>(l.d_model), 0.0);
    for (index_t i = 0; i < l.g; ++i) {
      const T* k = w.keys(b) + i * l.ld;
      double nn = 0;
      for (index_t c = 0; c < l.d_model; ++c) nn += double(to_float(k[c])) * to_float(k[c]);
      const double inv = nn > 0 ? 1.0 / std::sqrt(nn) : 0.0;
      for (index_t c = 0; c < l.d_model; ++c) acc[static_cast<std::size_t>(c)] += to_float(k[c]) * inv;
    }
    for (index_t c = 0; c < l.d_model; ++c)
      rows[static_cast<std::size_t>(b * l.d_model + c)] =
          static_cast<float>(acc[static_cast<std::size_t>(c)] / double(l.g));
  }
  return rows;
}

namespace detail {

/// The float level-1 loops of the ISA now active (cpu/kernels: vectorised for the running CPU even
/// in a build without -march; the portable loops of detail/blas1.hpp are compiled for the baseline).
inline const cpu::kernels::kernel_ops<float>& level1() {
  return cpu::kernels::ops_for<float>(cpu::active_isa());
}

/// out[t·rows + j] = f(W[j]·x_t + b[j]) for W [rows × cols], x [n × cols]; OpenMP over tokens.
template <class F>
void affine_rows(const std::vector<float>& w, const std::vector<float>& b, index_t rows, index_t cols,
                 const float* x, index_t n, float* out, F f) {
  const auto vdot = level1().vdot;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < rows; ++j)
      out[t * rows + j] = f(vdot(w.data() + j * cols, x + t * cols, cols) + b[static_cast<std::size_t>(j)]);
}

inline float identity(float v) {
  return v;
}
inline float tanh_f(float v) {
  return std::tanh(v);
}

}  // namespace detail

/// Linear router: logits = W x + b, W [B × d_model].
struct linear_router {
  index_t d_model = 0, num_blocks = 0;
  std::vector<float> w, b;
  void scores(const float* x, index_t n, float* out) const {
    detail::affine_rows(w, b, num_blocks, d_model, x, n, out, detail::identity);
  }
};

/// MoEfication MLP router: logits = W2 tanh(W1 x + b1) + b2, W1 [B × d], W2 [B × B].
struct mlp_router {
  index_t d_model = 0, num_blocks = 0;
  std::vector<float> w1, b1, w2, b2;
  void hidden(const float* x, index_t n, float* h) const {
    detail::affine_rows(w1, b1, num_blocks, d_model, x, n, h, detail::tanh_f);
  }
  void scores(const float* x, index_t n, float* out) const {
    std::vector<float> h(static_cast<std::size_t>(n * num_blocks));
    hidden(x, n, h.data());
    detail::affine_rows(w2, b2, num_blocks, num_blocks, h.data(), n, out, detail::identity);
  }
};

struct router_train_options {
  int epochs = 20;
  index_t batch = 256;
  float lr = 0.01f;        ///< Adam learning rate (MoEfication: 0.01)
  std::uint64_t seed = 0;  ///< minibatch order
  progress_fn progress;    ///< optional
};

namespace detail {

/// Adam on one parameter vector.
struct adam {
  std::vector<float> m, v;
  float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  int step = 0;
  void update(std::vector<float>& p, const std::vector<float>& grad, float lr) {
    if (m.empty()) m.assign(p.size(), 0.0f), v.assign(p.size(), 0.0f);
    const float c1 = 1.0f - std::pow(b1, float(step)), c2 = 1.0f - std::pow(b2, float(step));
    for (std::size_t i = 0; i < p.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * grad[i];
      v[i] = b2 * v[i] + (1 - b2) * grad[i] * grad[i];
      p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
    }
  }
};

/// Targets of a minibatch: mass / (max mass in the minibatch), so the largest block is 1.
inline void batch_targets(const float* mass, const std::vector<index_t>& idx, index_t B,
                          std::vector<float>& t) {
  float mx = 0;
  for (index_t q : idx)
    for (index_t j = 0; j < B; ++j) mx = std::max(mx, mass[q * B + j]);
  t.resize(idx.size() * static_cast<std::size_t>(B));
  for (std::size_t r = 0; r < idx.size(); ++r)
    for (index_t j = 0; j < B; ++j)
      t[r * static_cast<std::size_t>(B) + static_cast<std::size_t>(j)] =
          mx > 0 ? mass[idx[r] * B + j] / mx : 0.0f;
}

inline float sigmoid(float z) {
  return 1.0f / (1.0f + std::exp(-z));
}

/// dW[j] = Σ_r G[r][j] · in_r for rows j of a [rows × cols] weight; parallel over j, fixed order in r.
inline void accumulate_grad(const std::vector<float>& G, const float* in, const std::vector<index_t>* idx,
                            index_t in_stride, index_t rows, index_t cols, index_t m,
                            std::vector<float>& dW) {
  const auto vaxpy = level1().vaxpy;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t j = 0; j < rows; ++j) {
    float* dw = dW.data() + j * cols;
    std::fill(dw, dw + cols, 0.0f);
    for (index_t r = 0; r < m; ++r) {
      const float gr = G[static_cast<std::size_t>(r * rows + j)];
      if (gr == 0.0f) continue;
      const float* x = in + (idx ? (*idx)[static_cast<std::size_t>(r)] : r) * in_stride;
      vaxpy(gr, x, dw, cols);
    }
  }
}

template <class Step>
void train_loop(index_t n, const router_train_options& o, const char* what, Step&& step) {
  sparse_ffn::detail::require(n > 0, status::invalid_shape, "router training needs at least one token");
  sparse_ffn::detail::require(o.epochs > 0 && o.batch > 0 && o.lr > 0, status::invalid_argument,
                              "router training needs epochs > 0, batch > 0 and lr > 0");
  for (int e = 0; e < o.epochs; ++e) {
    const auto order = detail::shuffled(n, o.seed + static_cast<std::uint64_t>(e));
    for (index_t s = 0; s < n; s += o.batch) {
      std::vector<index_t> idx;
      for (index_t q = s; q < std::min(n, s + o.batch); ++q)
        idx.push_back(order[static_cast<std::size_t>(q)]);
      step(idx);
    }
    if (o.progress) o.progress(what, double(e + 1) / o.epochs);
  }
}

}  // namespace detail

/// Fits a linear router to the block masses [n × B] of tokens x [n × d_model]. `init` ([B × d], e.g.
/// the similarity rows) is optional.
inline linear_router fit_linear_router(const float* x, const float* mass, index_t n, index_t d_model,
                                       index_t B, const router_train_options& o,
                                       const float* init = nullptr) {
  sparse_ffn::detail::require_not_null(x, "x");
  sparse_ffn::detail::require_not_null(mass, "mass");
  linear_router r;
  r.d_model = d_model;
  r.num_blocks = B;
  r.w.assign(static_cast<std::size_t>(B * d_model), 0.0f);
  r.b.assign(static_cast<std::size_t>(B), 0.0f);
  if (init) std::copy(init, init + B * d_model, r.w.begin());
  detail::adam aw, ab;
  std::vector<float> T, Z, G, dW(r.w.size()), db(r.b.size());
  detail::train_loop(n, o, "linear router", [&](const std::vector<index_t>& idx) {
    const auto m = static_cast<index_t>(idx.size());
    detail::batch_targets(mass, idx, B, T);
    Z.resize(static_cast<std::size_t>(m * B));
    G.resize(Z.size());
    const auto vdot = detail::level1().vdot;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t q = 0; q < m; ++q)
      for (index_t j = 0; j < B; ++j) {
        const float z =
            vdot(r.w.data() + j * d_model, x + idx[static_cast<std::size_t>(q)] * d_model, d_model) +
            r.b[static_cast<std::size_t>(j)];
        G[static_cast<std::size_t>(q * B + j)] =
            (detail::sigmoid(z) - T[static_cast<std::size_t>(q * B + j)]) / float(m);
      }
    detail::accumulate_grad(G, x, &idx, d_model, B, d_model, m, dW);
    for (index_t j = 0; j < B; ++j) {
      float s = 0;
      for (index_t q = 0; q < m; ++q) s += G[static_cast<std::size_t>(q * B + j)];
      db[static_cast<std::size_t>(j)] = s;
    }
    ++aw.step;
    ++ab.step;
    aw.update(r.w, dW, o.lr);
    ab.update(r.b, db, o.lr);
  });
  return r;
}

/// Fits MoEfication's MLP router. `centres` [B × d] initialises the first layer (the similarity rows).
inline mlp_router fit_mlp_router(const float* x, const float* mass, index_t n, index_t d_model, index_t B,
                                 const router_train_options& o, const float* centres) {
  sparse_ffn::detail::require_not_null(x, "x");
  sparse_ffn::detail::require_not_null(mass, "mass");
  sparse_ffn::detail::require_not_null(centres, "centres");
  mlp_router r;
  r.d_model = d_model;
  r.num_blocks = B;
  r.w1.assign(centres, centres + B * d_model);
  r.b1.assign(static_cast<std::size_t>(B), 0.0f);
  r.w2.assign(static_cast<std::size_t>(B * B), 0.0f);
  for (index_t j = 0; j < B; ++j) r.w2[static_cast<std::size_t>(j * B + j)] = 1.0f;
  r.b2.assign(static_cast<std::size_t>(B), 0.0f);
  detail::adam a1, ab1, a2, ab2;
  std::vector<float> T, Xb, H, G, GH, dW1(r.w1.size()), db1(r.b1.size()), dW2(r.w2.size()), db2(r.b2.size());
  detail::train_loop(n, o, "MLP router", [&](const std::vector<index_t>& idx) {
    const auto m = static_cast<index_t>(idx.size());
    detail::batch_targets(mass, idx, B, T);
    H.resize(static_cast<std::size_t>(m * B));
    G.resize(H.size());
    GH.resize(H.size());
    // The minibatch's rows, gathered, go through the first layer in one call (one parallel region per
    // minibatch, not one per token: those stalled on a busy machine).
    Xb.resize(static_cast<std::size_t>(m * d_model));
    for (index_t q = 0; q < m; ++q)
      std::copy(x + idx[static_cast<std::size_t>(q)] * d_model,
                x + (idx[static_cast<std::size_t>(q)] + 1) * d_model, Xb.begin() + q * d_model);
    r.hidden(Xb.data(), m, H.data());
    for (index_t q = 0; q < m; ++q)
      for (index_t j = 0; j < B; ++j) {
        const float z = detail::level1().vdot(r.w2.data() + j * B, H.data() + q * B, B) +
                        r.b2[static_cast<std::size_t>(j)];
        G[static_cast<std::size_t>(q * B + j)] =
            (detail::sigmoid(z) - T[static_cast<std::size_t>(q * B + j)]) / float(m);
      }
    // Back through the second layer and tanh.
    for (index_t q = 0; q < m; ++q)
      for (index_t j = 0; j < B; ++j) {
        float s = 0;
        for (index_t o2 = 0; o2 < B; ++o2)
          s += G[static_cast<std::size_t>(q * B + o2)] * r.w2[static_cast<std::size_t>(o2 * B + j)];
        const float h = H[static_cast<std::size_t>(q * B + j)];
        GH[static_cast<std::size_t>(q * B + j)] = s * (1.0f - h * h);
      }
    detail::accumulate_grad(G, H.data(), nullptr, B, B, B, m, dW2);
    detail::accumulate_grad(GH, x, &idx, d_model, B, d_model, m, dW1);
    for (index_t j = 0; j < B; ++j) {
      float s1 = 0, s2 = 0;
      for (index_t q = 0; q < m; ++q) {
        s1 += GH[static_cast<std::size_t>(q * B + j)];
        s2 += G[static_cast<std::size_t>(q * B + j)];
      }
      db1[static_cast<std::size_t>(j)] = s1;
      db2[static_cast<std::size_t>(j)] = s2;
    }
    for (auto* a : {&a1, &ab1, &a2, &ab2}) ++a->step;
    a1.update(r.w1, dW1, o.lr);
    ab1.update(r.b1, db1, o.lr);
    a2.update(r.w2, dW2, o.lr);
    ab2.update(r.b2, db2, o.lr);
  });
  return r;
}

/// Mean over tokens of (activation mass in the top-k blocks of `scores`) / (total mass).
inline double topk_coverage(const float* scores, const float* mass, index_t n, index_t B, index_t k) {
  std::vector<block_index_t> top(static_cast<std::size_t>(k)), scratch(static_cast<std::size_t>(B));
  double sum = 0;
  index_t counted = 0;
  for (index_t t = 0; t < n; ++t) {
    topk(scores + t * B, B, k, top.data(), scratch.data());
    double total = 0, kept = 0;
    for (index_t j = 0; j < B; ++j) total += mass[t * B + j];
    for (index_t j = 0; j < k; ++j) kept += mass[t * B + top[static_cast<std::size_t>(j)]];
    if (total > 0) {
      sum += kept / total;
      ++counted;
    }
  }
  return counted ? sum / double(counted) : 1.0;
}

}  // namespace convert
}  // namespace sparse_ffn
