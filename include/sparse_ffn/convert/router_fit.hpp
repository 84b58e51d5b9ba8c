// sparse_ffn — routers for a converted (MoEfied) FFN, fitted on the CPU.
//
//   block_mass(model, x, n)          per token and block, the activation mass Σ_{i∈b} |h_i| (for ReLU
//                                    the positive sum MoEfication uses); the training target and the
//                                    oracle's score
//   block_output_norms(model, x, n)  per token and block, the output norm ‖Σ_{i∈b} h_i v_i‖ (the
//                                    alternative training target, router_train_options::target)
//   similarity_rows(model)           MoEfication's similarity router: the mean of each block's
//                                    L2-normalised keys (ranking by it equals ranking by cosine with x)
//   fit_linear_router(...)           Linear d → B, trained to predict each block's share of activation
//                                    mass (BCE with logits against mass / batch max; Adam), or of
//                                    whatever nonnegative per-block target it is given
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
#include <numeric>
#include <string>
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
/// The row list 0, 1, …, n − 1 (outer_rows reads its rows through a list; the converter's products
/// walk every row of a panel in order).
inline std::vector<std::int32_t> identity_rows(index_t n) {
  std::vector<std::int32_t> r(static_cast<std::size_t>(n));
  std::iota(r.begin(), r.end(), 0);
  return r;
}

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

/// Columns of the value pass's slabs in dense_float_pass, and the value rows of one group of blocks
/// in a slab (128 × 512 floats: 256 KiB, half of a Zen 3 core's L2): a thread's token tiles run over
/// one group's slab while it stays in L2 (a slab of every value row is 5.6 MB at d_ff = 11008).
inline constexpr index_t k_dense_slab = 128, k_slab_rows = 512;
/// Inputs of one segment of dense_float_pass's key panels (1024 × 64 floats: 256 KiB): wider models
/// sum pre-activations segment by segment (a panel of d = 4096 is 1 MiB, streamed from L3 per tile
/// of outer_m tokens otherwise); up to this width the sums are one pass, as before.
inline constexpr index_t k_panel_segment = 1024;
/// dense_float_pass transposes each block's keys for the outer-product kernel from this many tokens
/// on; below, the panels would cost more than they save (a wide model's quality rows run the pass on
/// a few tokens at a time) and the forward's dot-product key kernel runs instead.
inline constexpr index_t k_panel_min_tokens = 32;

/// The dense FFN of a float blocked model on tokens x [n × d_model], for the converter: h [n × d_ff]
/// (every neuron's activation, in the model's packed order, each evaluated once, vectorised:
/// kernel_ops::activate_rows, within ~1e-6 of the scalar activation) and, when y is not
/// null, y [n × d_model] = Σ_i h_i v_i + b2. Both passes are matrix products on the backward's
/// register-tiled outer-product kernel (outer_rows: outer_m tokens × outer_vc vectors of columns of sums in
/// registers, no horizontal sums), ~2.7× the forward's dot-product key kernel on a key pass this wide (127
/// against 47 GFLOP/s on one Emerald Rapids core, d = 384, g = 64). Key pass: each block's keys transposed
/// into a [len × g] panel (kernel_ops::transpose_rows, L2-resident), then pre_q = Σ_c x_q[c] · panel_c per
/// tile of outer_m tokens, blocks in parallel (inputs in segments of k_panel_segment on wider models;
/// below k_panel_min_tokens tokens, the dot-product key kernel on the keys as they are); value pass:
/// per tile of outer_m tokens (each thread a range of tiles), column slabs and groups of blocks outer.
/// Every value is computed by one thread in a fixed order: the same bits on any thread count.
template <class Act>
void dense_float_pass(const blocked_ffn_view<float>& w, const float* x, index_t n, float* h, float* y) {
  const block_layout& l = w.layout;
  const index_t B = l.num_blocks, g = l.g, F = l.d_ff, d = l.d_model, ld = l.ld;
  const auto& ops = level1();
  const auto act_rows = ops.activate_rows[static_cast<int>(Act::kind)];
  // Rows padded to len, whole cache lines (what the kernels walk; the weight rows are zero past d
  // and at least len long); a block's pre-activations in rows of gl floats (zeros past g).
  const index_t len = sparse_ffn::detail::round_up(d, 16), gl = sparse_ffn::detail::round_up(g, 16),
                tile = 256, RM = ops.outer_m;
  std::vector<float> xp(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, len, "dense pass")),
                        0.0f),
      yp(y ? xp.size() : 0);
  for (index_t t = 0; t < n; ++t) std::copy(x + t * d, x + (t + 1) * d, xp.begin() + t * len);
  const std::vector<std::int32_t> iota = identity_rows(std::max(g, len));
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
  {
    const bool panels = n >= k_panel_min_tokens;
    const index_t ps = panels ? gl : g;  // row stride of pre and up
    std::vector<float> panel(panels ? static_cast<std::size_t>(len * gl) : 0),
        panel_up(Act::gated ? panel.size() : 0), pre(static_cast<std::size_t>(tile * ps)),
        up(Act::gated ? pre.size() : 0),
        spill(panels ? 0 : static_cast<std::size_t>(tile * ops.key_r * ops.width));
    std::vector<const float*> ptrs(panels ? 0 : static_cast<std::size_t>(tile));
    float* ys[8];
    const float* sp[8];
    // out rows [m × ps] = x rows of the tile · the block's keys: on the panel (assign), or the
    // dot-product key kernel on the rows `keys_b`.
    auto keys = [&](const float* pan, const float* keys_b, index_t t0, index_t m, float* out) {
      if (!panels) {
        for (index_t q = 0; q < m; ++q) ptrs[static_cast<std::size_t>(q)] = xp.data() + (t0 + q) * len;
        ops.dots(ptrs.data(), nullptr, nullptr, m, keys_b, g, ld, len, spill.data(), out);
        return;
      }
      for (index_t c0 = 0; c0 < len; c0 += k_panel_segment) {
        const index_t nc = std::min(k_panel_segment, len - c0);
        for (index_t q0 = 0; q0 < m; q0 += RM) {
          const index_t mm = std::min(RM, m - q0);
          for (index_t q = 0; q < mm; ++q) {
            ys[q] = out + (q0 + q) * gl;
            sp[q] = xp.data() + (t0 + q0 + q) * len;  // outer_rows reads s[q][row]: rows c0 …
          }
          ops.outer_rows(ys, sp, mm, iota.data() + c0, nc, pan, gl, 0, gl, c0 == 0);
        }
      }
    };
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t b = 0; b < B; ++b) {
      if (panels) {
        ops.transpose_rows(w.keys(b), ld, g, 0, len, panel.data(), gl);
        if constexpr (Act::gated) ops.transpose_rows(w.up(b), ld, g, 0, len, panel_up.data(), gl);
      }
      for (index_t t0 = 0; t0 < n; t0 += tile) {
        const index_t m = std::min(tile, n - t0);
        keys(panel.data(), w.keys(b), t0, m, pre.data());
        if constexpr (Act::gated) keys(panel_up.data(), w.up(b), t0, m, up.data());
        // Biases, then the activations of the tile's rows vectorised (kernel_ops::activate_rows).
        for (index_t q = 0; q < m; ++q) {
          float* pr = pre.data() + q * ps;
          float* ur = Act::gated ? up.data() + q * ps : nullptr;
          for (index_t i = 0; i < g; ++i) {
            pr[i] += w.b1 ? w.b1[b * g + i] : 0.0f;
            if constexpr (Act::gated) ur[i] += w.b3 ? w.b3[b * g + i] : 0.0f;
          }
          act_rows(pr, ur, h + (t0 + q) * F + b * g, g);
        }
      }
    }  // implicit barrier: h complete
    if (y) {
      const index_t tiles = (n + RM - 1) / RM;
      const int tid = cpu::detail::thread_id(), nth = cpu::detail::num_threads();
      const index_t tl0 = tiles * tid / nth, tl1 = tiles * (tid + 1) / nth;
      // Every y element still sums the blocks in order 0, 1, …, B − 1 (the groups only reorder tiles).
      const index_t group = std::max<index_t>(1, k_slab_rows / g);
      for (index_t c0 = 0; c0 < len; c0 += k_dense_slab)
        for (index_t b0 = 0; b0 < B; b0 += group)
          for (index_t tl = tl0; tl < tl1; ++tl) {
            const index_t t0 = tl * RM, mm = std::min(RM, n - t0);
            for (index_t q = 0; q < mm; ++q) ys[q] = yp.data() + (t0 + q) * len;
            for (index_t b = b0; b < std::min(B, b0 + group); ++b) {
              for (index_t q = 0; q < mm; ++q) sp[q] = h + (t0 + q) * F + b * g;
              ops.outer_rows(ys, sp, mm, iota.data(), g, w.values(b), ld, c0,
                             std::min(len, c0 + k_dense_slab), b == 0);
            }
          }
    }
  }
  if (y)
    for (index_t t = 0; t < n; ++t)
      for (index_t c = 0; c < d; ++c)
        y[t * d + c] = yp[static_cast<std::size_t>(t * len + c)] + (w.b2 ? w.b2[c] : 0.0f);
}
/// Each block's output contribution c_b = Σ_{i ∈ b} h_i v_i (no b2) for n tokens whose activations
/// h [n × d_ff] (dense_float_pass) are given: c [n × B × len] (len = d_model rounded up to 16; zeros
/// past d_model). The backward's outer_rows per tile of outer_m tokens and block, tiles in parallel.
inline void block_contributions(const blocked_ffn_view<float>& w, const float* h, index_t n, float* c) {
  const block_layout& l = w.layout;
  const index_t B = l.num_blocks, g = l.g, F = l.d_ff, len = sparse_ffn::detail::round_up(l.d_model, 16);
  const auto& ops = level1();
  const index_t RM = ops.outer_m, tiles = (n + RM - 1) / RM;
  const std::vector<std::int32_t> iota = identity_rows(g);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t tl = 0; tl < tiles; ++tl) {
    const index_t t0 = tl * RM, mm = std::min(RM, n - t0);
    float* ys[8];
    const float* sp[8];
    for (index_t b = 0; b < B; ++b) {
      for (index_t q = 0; q < mm; ++q) {
        ys[q] = c + ((t0 + q) * B + b) * len;
        sp[q] = h + (t0 + q) * F + b * g;
      }
      ops.outer_rows(ys, sp, mm, iota.data(), g, w.values(b), l.ld, 0, len, true);
    }
  }
}

}  // namespace detail

/// Activation mass [n × B] of every block for n tokens x [n × d_model] (float): every block of every
/// token computed by detail::dense_float_pass (float models; the fast path's routed forward on the
/// identity table, detail::dense_pass, otherwise), in chunks of tokens whose pre-activations fit
/// in 16 MiB (one pass over 10^5 tokens at once is ~1.5× slower: its buffers leave the caches). Also
/// returns the dense output in `y_dense` [n × d_model] when non-null.
template <class Act, class T>
std::vector<float> block_mass(const blocked_ffn<T>& model, const float* x, index_t n,
                              float* y_dense = nullptr) {
  const block_layout& l = model.layout();
  const index_t B = l.num_blocks, g = l.g, d = l.d_model, F = l.d_ff;
  std::vector<float> mass(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, B, "block mass"))), y;
  if (!y_dense) {
    y.resize(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, d, "block mass")));
    y_dense = y.data();
  }
  const index_t chunk = std::max<index_t>(1, std::min<index_t>(n, (index_t{1} << 22) / l.d_ff));
  if constexpr (std::is_same<T, float>::value) {
    std::vector<float> h(static_cast<std::size_t>(chunk * F));
    for (index_t t0 = 0; t0 < n; t0 += chunk) {
      const index_t m = std::min(chunk, n - t0);
      detail::dense_float_pass<Act>(model.view(), x + t0 * d, m, h.data(), y_dense + t0 * d);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
      for (index_t t = 0; t < m; ++t)
        for (index_t b = 0; b < B; ++b) {
          float s = 0;
          for (index_t i = 0; i < g; ++i)
            s += select::oracle::neuron_score(h[static_cast<std::size_t>(t * F + b * g + i)]);
          mass[static_cast<std::size_t>((t0 + t) * B + b)] = s;
        }
    }
    return mass;
  } else {
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
  std::vector<float> h(static_cast<std::size_t>(chunk * F));
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const index_t m = std::min(chunk, n - t0);
    detail::dense_float_pass<Act>(ident.view(), x + t0 * d, m, h.data(), y_dense.data() + t0 * d);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t t = 0; t < m; ++t) {  // the identity order: neuron i of token t sits at t·F + i
      float* st = h.data() + t * F;
      for (index_t i = 0; i < F; ++i) st[i] = select::oracle::neuron_score(st[i]);
      for (std::size_t p = 0; p < perms.size(); ++p) {
        const std::int32_t* perm = perms[p]->data();
        float* out = masses[p].data() + (t0 + t) * B;
        for (index_t b = 0; b < B; ++b) {
          float s = 0;
          for (index_t i = 0; i < g; ++i) s += st[perm[b * g + i]];
          out[b] = s;
        }
      }
    }
  }
}

/// Output norms [n × B] of every block for n tokens x [n × d_model]: ‖c_b‖₂ with c_b = Σ_{i∈b} h_i v_i,
/// what dropping block b alone does to the token's output (block_mass counts activations, not what
/// they write: a neuron with a large activation and a small value row weighs the same there). The
/// alternative router target (router_train_options::target = "output") and the score of the report's
/// "oracle_output" row. Computed as ‖c_b‖² = h_bᵀ G_b h_b with each block's Gram matrix G_b = V_b V_bᵀ
/// [g × g] (g² multiply-adds per token and block instead of g·d_model): the activations from
/// detail::dense_float_pass in chunks, U = H_b G_b on the outer-product kernel, then h_b · u per token.
/// Float models; the same bits on any thread count.
template <class Act>
std::vector<float> block_output_norms(const blocked_ffn<float>& model, const float* x, index_t n) {
  sparse_ffn::detail::require_not_null(x, "x");
  const block_layout& l = model.layout();
  const auto w = model.view();
  const index_t B = l.num_blocks, g = l.g, F = l.d_ff, d = l.d_model, ld = l.ld,
                len = sparse_ffn::detail::round_up(d, 16), gl = sparse_ffn::detail::round_up(g, 16);
  const auto& ops = detail::level1();
  const index_t RM = ops.outer_m;
  std::vector<float> norms(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, B, "output norms"))),
      G(static_cast<std::size_t>(B * g * gl), 0.0f);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
  for (index_t b = 0; b < B; ++b) {  // value rows are zero past d_model and at least len long
    float* Gb = G.data() + b * g * gl;
    for (index_t i = 0; i < g; ++i)
      for (index_t j = 0; j <= i; ++j)
        Gb[i * gl + j] = Gb[j * gl + i] = ops.vdot(w.values(b) + i * ld, w.values(b) + j * ld, len);
  }
  const std::vector<std::int32_t> iota = detail::identity_rows(g);
  const index_t chunk = std::max<index_t>(1, std::min<index_t>(n, (index_t{1} << 22) / F));
  std::vector<float> h(static_cast<std::size_t>(chunk * F));
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const index_t m = std::min(chunk, n - t0), tiles = (m + RM - 1) / RM;
    detail::dense_float_pass<Act>(w, x + t0 * d, m, h.data(), nullptr);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
    {
      std::vector<float> U(static_cast<std::size_t>(RM * gl));
      float* ys[8];
      const float* sp[8];
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t tl = 0; tl < tiles; ++tl) {
        const index_t q0 = tl * RM, mm = std::min(RM, m - q0);
        for (index_t b = 0; b < B; ++b) {
          for (index_t q = 0; q < mm; ++q) {
            ys[q] = U.data() + q * gl;
            sp[q] = h.data() + (q0 + q) * F + b * g;
          }
          ops.outer_rows(ys, sp, mm, iota.data(), g, G.data() + b * g * gl, gl, 0, gl, true);
          for (index_t q = 0; q < mm; ++q)
            norms[static_cast<std::size_t>((t0 + q0 + q) * B + b)] =
                std::sqrt(std::max(0.0f, ops.vdot(sp[q], ys[q], g)));
        }
      }
    }
  }
  return norms;
}

/// Activations h = act(W1 x + b1 [, W3 x + b3]) of every neuron, [n × d_ff] in the model's packed order
/// (the original order when it was packed without a permutation): the sample split_coactivation reads
/// and the pinning rule's energies. Float models run the key pass alone (detail::dense_float_pass
/// without y); other dtypes run the whole dense forward.
template <class Act, class T>
std::vector<float> neuron_activations(const blocked_ffn<T>& model, const float* x, index_t n) {
  const block_layout& l = model.layout();
  const index_t B = l.num_blocks, g = l.g, F = l.d_ff, d = l.d_model;
  std::vector<float> h(static_cast<std::size_t>(sparse_ffn::detail::checked_mul(n, F, "activations")));
  if constexpr (std::is_same<T, float>::value) {
    detail::dense_float_pass<Act>(model.view(), x, n, h.data(), nullptr);
  } else {
    std::vector<float> pre(h.size()), up(Act::gated ? h.size() : 0), y(static_cast<std::size_t>(n * d));
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
    // tanh as in training (kernel_ops::vtanh: each element's bits depend only on its input).
    detail::affine_rows(w1, b1, num_blocks, d_model, x, n, h, detail::identity);
    detail::level1().vtanh(h, h, n * num_blocks);
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
  /// What the fitted routers learn to rank by (the report and moefy pass these targets): "mass", each
  /// block's activation mass (block_mass: what the oracle ranks by, MoEfication's target), or
  /// "output", each block's output norm (block_output_norms).
  std::string target = "mass";
  progress_fn progress;  ///< optional
};

namespace detail {

/// Adam on one parameter vector (kernel_ops::adam: vectorised for the running CPU).
struct adam {
  std::vector<float> m, v;
  float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  int step = 0;
  void update(std::vector<float>& p, const std::vector<float>& grad, float lr) {
    if (m.empty()) m.assign(p.size(), 0.0f), v.assign(p.size(), 0.0f);
    const cpu::kernels::adam_step h{
        b1, b2, lr, 1.0f - std::pow(b1, float(step)), 1.0f - std::pow(b2, float(step)), eps};
    detail::level1().adam(p.data(), m.data(), v.data(), grad.data(), static_cast<index_t>(p.size()), h);
  }
};

/// Targets of a minibatch: mass / (max mass in the minibatch), so the largest block is 1. The rows
/// are copied first, then scanned contiguously.
inline void batch_targets(const float* mass, const std::vector<index_t>& idx, index_t B,
                          std::vector<float>& t) {
  t.resize(idx.size() * static_cast<std::size_t>(B));
  for (std::size_t r = 0; r < idx.size(); ++r)
    std::copy(mass + idx[r] * B, mass + (idx[r] + 1) * B, t.begin() + static_cast<std::ptrdiff_t>(r) * B);
  float mx = 0;
  for (float v : t) mx = v > mx ? v : mx;
  for (float& v : t) v = mx > 0 ? v / mx : 0.0f;
}

/// Row stride of the padded matrices of router training: the register-tiled kernels walk rows in
/// steps of 32 floats (zeros past the real columns).
inline index_t train_ld(index_t cols) {
  return sparse_ffn::detail::round_up(cols, 32);
}

/// The matrix products of router training on the library's register-tiled outer-product kernel (the
/// backward's outer_rows; W·X through W transposed), single-threaded: a router trains on one
/// thread, and the report trains its routers side by side. All matrices are row-major with rows of
/// `ld` floats (train_ld), zero-padded.
class tiled_products {
 public:
  tiled_products() : ops_(level1()) {}
  /// out[q·nrows + r] = W_r · A_q for q < m, r < nrows: W transposed into a [ld × lr] panel, then
  /// outer products per tile of outer_m rows of A (no horizontal sums; see dense_float_pass).
  void nt(const float* A, index_t m, const float* W, index_t nrows, index_t ld, float* out) {
    const index_t lr = sparse_ffn::detail::round_up(nrows, 16), RM = ops_.outer_m;
    panel_.resize(static_cast<std::size_t>(ld * lr));
    ops_.transpose_rows(W, ld, nrows, 0, ld, panel_.data(), lr);
    tmp_.resize(static_cast<std::size_t>(m * lr));
    if (static_cast<index_t>(iota_.size()) < ld) iota_ = identity_rows(ld);
    float* y[8];
    const float* sp[8];
    for (index_t q0 = 0; q0 < m; q0 += RM) {
      const index_t mm = std::min(RM, m - q0);
      for (index_t q = 0; q < mm; ++q) {
        y[q] = tmp_.data() + (q0 + q) * lr;
        sp[q] = A + (q0 + q) * ld;
      }
      ops_.outer_rows(y, sp, mm, iota_.data(), ld, panel_.data(), lr, 0, lr, true);
    }
    for (index_t q = 0; q < m; ++q)
      std::copy(tmp_.begin() + q * lr, tmp_.begin() + q * lr + nrows, out + q * nrows);
  }
  /// D_j = Σ_q S_j[q] · A_q (q ascending) for j < nrows: D [nrows × ld], S [nrows × m], A [m × ld].
  void tn(const float* S, index_t nrows, index_t m, const float* A, index_t ld, float* D) {
    rows_.resize(static_cast<std::size_t>(m));
    for (index_t q = 0; q < m; ++q) rows_[static_cast<std::size_t>(q)] = static_cast<std::int32_t>(q);
    outer(D, ld, S, m, nrows, A, ld);
  }
  /// Y_q = Σ_o S_q[o] · V_o (o ascending) for q < m: Y [m × ld], S [m × ls] (ls ≥ nv), V [nv × ld].
  void nn(const float* S, index_t ls, index_t m, const float* V, index_t nv, index_t ld, float* Y) {
    rows_.resize(static_cast<std::size_t>(nv));
    for (index_t o = 0; o < nv; ++o) rows_[static_cast<std::size_t>(o)] = static_cast<std::int32_t>(o);
    outer(Y, ld, S, ls, m, V, ld);
  }

 private:
  // out_j = Σ over the listed rows i of s_j[i] · v_i, for j < nout (out rows of ld, s rows of ls).
  void outer(float* out, index_t ld_out, const float* s, index_t ls, index_t nout, const float* v,
             index_t ld) {
    float* y[8];
    const float* sp[8];
    const auto M = static_cast<index_t>(ops_.outer_m);
    for (index_t j0 = 0; j0 < nout; j0 += M) {
      const index_t mm = std::min(M, nout - j0);
      for (index_t r = 0; r < mm; ++r) {
        y[r] = out + (j0 + r) * ld_out;
        sp[r] = s + (j0 + r) * ls;
      }
      ops_.outer_rows(y, sp, mm, rows_.data(), static_cast<index_t>(rows_.size()), v, ld, 0, ld_out, true);
    }
  }
  const cpu::kernels::kernel_ops<float>& ops_;
  std::vector<float> panel_, tmp_;
  std::vector<std::int32_t> rows_, iota_;
};

/// The minibatch's rows of x [· × d], gathered into Xb [m × ld] (zeros past d).
/// The rows are scattered over the whole sample (DRAM): each is prefetched 8 rows ahead.
inline void gather_rows(const float* x, index_t d, const std::vector<index_t>& idx, index_t ld,
                        std::vector<float>& Xb) {
  Xb.resize(idx.size() * static_cast<std::size_t>(ld));  // each row written once: the copy, then zeros
  constexpr std::size_t ahead = 8;
  auto prefetch = [&](std::size_t q) {
    const char* row = reinterpret_cast<const char*>(x + idx[q] * d);
    for (index_t b = 0; b < d * index_t{4}; b += 64) __builtin_prefetch(row + b);
  };
  for (std::size_t q = 0; q < std::min(ahead, idx.size()); ++q) prefetch(q);
  for (std::size_t q = 0; q < idx.size(); ++q) {
    if (q + ahead < idx.size()) prefetch(q + ahead);
    const auto row = Xb.begin() + static_cast<std::ptrdiff_t>(q) * ld;
    std::fill(std::copy(x + idx[q] * d, x + (idx[q] + 1) * d, row), row + ld, 0.0f);
  }
}

/// [rows × cols] into rows of ld floats (zeros past cols), and back.
inline std::vector<float> pad_rows(const float* m, index_t rows, index_t cols, index_t ld) {
  std::vector<float> p(static_cast<std::size_t>(rows * ld), 0.0f);
  for (index_t r = 0; r < rows; ++r) std::copy(m + r * cols, m + (r + 1) * cols, p.begin() + r * ld);
  return p;
}
inline std::vector<float> unpad_rows(const std::vector<float>& p, index_t rows, index_t cols, index_t ld) {
  std::vector<float> m(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    std::copy(p.begin() + r * ld, p.begin() + r * ld + cols, m.begin() + r * cols);
  return m;
}

/// The loss gradient of the outputs z [m × B] against the targets: G = (sigmoid(z + b) − T) / m,
/// stored transposed (GT [B × m]); db_j = Σ_q G[q][j] (q ascending). σ on kernel_ops::vsigmoid.
inline void output_grad(std::vector<float>& Z, const std::vector<float>& bias, const std::vector<float>& T,
                        index_t m, index_t B, std::vector<float>& GT, std::vector<float>& db) {
  for (index_t q = 0; q < m; ++q)
    for (index_t j = 0; j < B; ++j)
      Z[static_cast<std::size_t>(q * B + j)] += bias[static_cast<std::size_t>(j)];
  level1().vsigmoid(Z.data(), Z.data(), m * B);
  GT.resize(static_cast<std::size_t>(B * m));
  for (index_t q = 0; q < m; ++q)
    for (index_t j = 0; j < B; ++j) {
      const auto at = static_cast<std::size_t>(q * B + j);
      GT[static_cast<std::size_t>(j * m + q)] = (Z[at] - T[at]) / float(m);
    }
  for (index_t j = 0; j < B; ++j) {
    float s = 0;
    for (index_t q = 0; q < m; ++q) s += GT[static_cast<std::size_t>(j * m + q)];
    db[static_cast<std::size_t>(j)] = s;
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
    if (o.progress) {
      // Routers may train side by side (evaluate_split): one report at a time.
#if SPARSE_FFN_HAS_OPENMP
#pragma omp critical(sparse_ffn_router_progress)
#endif
      o.progress(what, double(e + 1) / o.epochs);
    }
  }
}

}  // namespace detail

/// Fits a linear router to the block masses [n × B] of tokens x [n × d_model]. `init` ([B × d], e.g.
/// the similarity rows) is optional. Single-threaded (the matrix products on the register-tiled
/// kernels of the running CPU); deterministic for a given seed and ISA level.
inline linear_router fit_linear_router(const float* x, const float* mass, index_t n, index_t d_model,
                                       index_t B, const router_train_options& o,
                                       const float* init = nullptr) {
  sparse_ffn::detail::require_not_null(x, "x");
  sparse_ffn::detail::require_not_null(mass, "mass");
  const index_t ld = detail::train_ld(d_model);
  std::vector<float> w = init ? detail::pad_rows(init, B, d_model, ld)
                              : std::vector<float>(static_cast<std::size_t>(B * ld), 0.0f);
  std::vector<float> b(static_cast<std::size_t>(B), 0.0f);
  detail::adam aw, ab;
  detail::tiled_products mm;
  std::vector<float> T, Xb, Z, GT, dW(w.size()), db(b.size());
  detail::train_loop(n, o, "linear router", [&](const std::vector<index_t>& idx) {
    const auto m = static_cast<index_t>(idx.size());
    detail::batch_targets(mass, idx, B, T);
    detail::gather_rows(x, d_model, idx, ld, Xb);
    Z.resize(static_cast<std::size_t>(m * B));
    mm.nt(Xb.data(), m, w.data(), B, ld, Z.data());
    detail::output_grad(Z, b, T, m, B, GT, db);
    mm.tn(GT.data(), B, m, Xb.data(), ld, dW.data());
    ++aw.step;
    ++ab.step;
    aw.update(w, dW, o.lr);
    ab.update(b, db, o.lr);
  });
  linear_router r;
  r.d_model = d_model;
  r.num_blocks = B;
  r.w = detail::unpad_rows(w, B, d_model, ld);
  r.b = b;
  return r;
}

/// Fits MoEfication's MLP router. `centres` [B × d] initialises the first layer (the similarity rows).
/// Single-threaded, deterministic, as fit_linear_router.
inline mlp_router fit_mlp_router(const float* x, const float* mass, index_t n, index_t d_model, index_t B,
                                 const router_train_options& o, const float* centres) {
  sparse_ffn::detail::require_not_null(x, "x");
  sparse_ffn::detail::require_not_null(mass, "mass");
  sparse_ffn::detail::require_not_null(centres, "centres");
  const index_t ld = detail::train_ld(d_model), lb = detail::train_ld(B);
  std::vector<float> w1 = detail::pad_rows(centres, B, d_model, ld), b1(static_cast<std::size_t>(B), 0.0f);
  std::vector<float> w2(static_cast<std::size_t>(B * lb), 0.0f), b2(b1.size(), 0.0f);
  for (index_t j = 0; j < B; ++j) w2[static_cast<std::size_t>(j * lb + j)] = 1.0f;
  detail::adam a1, ab1, a2, ab2;
  detail::tiled_products mm;
  std::vector<float> T, Xb, Hp, H, Z, GT, Gp, GH, GHT, dW1(w1.size()), db1(b1.size()), dW2(w2.size()),
      db2(b2.size());
  detail::train_loop(n, o, "MLP router", [&](const std::vector<index_t>& idx) {
    const auto m = static_cast<index_t>(idx.size());
    detail::batch_targets(mass, idx, B, T);
    detail::gather_rows(x, d_model, idx, ld, Xb);
    // Forward: H = tanh(W1 x + b1) (rows of lb floats, zero-padded), z = W2 H + b2.
    H.resize(static_cast<std::size_t>(m * B));
    mm.nt(Xb.data(), m, w1.data(), B, ld, H.data());
    Hp.assign(static_cast<std::size_t>(m * lb), 0.0f);
    for (index_t q = 0; q < m; ++q)
      for (index_t j = 0; j < B; ++j)
        Hp[static_cast<std::size_t>(q * lb + j)] =
            H[static_cast<std::size_t>(q * B + j)] + b1[static_cast<std::size_t>(j)];
    for (index_t q = 0; q < m; ++q) detail::level1().vtanh(Hp.data() + q * lb, Hp.data() + q * lb, B);
    Z.resize(static_cast<std::size_t>(m * B));
    mm.nt(Hp.data(), m, w2.data(), B, lb, Z.data());
    detail::output_grad(Z, b2, T, m, B, GT, db2);
    // Back through the second layer and tanh: GH = (G W2) ⊙ (1 − H²), with G's rows padded to lb.
    Gp.assign(static_cast<std::size_t>(m * lb), 0.0f);
    for (index_t j = 0; j < B; ++j)
      for (index_t q = 0; q < m; ++q)
        Gp[static_cast<std::size_t>(q * lb + j)] = GT[static_cast<std::size_t>(j * m + q)];
    GH.resize(static_cast<std::size_t>(m * lb));
    mm.nn(Gp.data(), lb, m, w2.data(), B, lb, GH.data());
    GHT.resize(static_cast<std::size_t>(B * m));
    for (index_t q = 0; q < m; ++q)
      for (index_t j = 0; j < B; ++j) {
        const float h = Hp[static_cast<std::size_t>(q * lb + j)];
        GHT[static_cast<std::size_t>(j * m + q)] = GH[static_cast<std::size_t>(q * lb + j)] * (1.0f - h * h);
      }
    for (index_t j = 0; j < B; ++j) {
      float s = 0;
      for (index_t q = 0; q < m; ++q) s += GHT[static_cast<std::size_t>(j * m + q)];
      db1[static_cast<std::size_t>(j)] = s;
    }
    mm.tn(GT.data(), B, m, Hp.data(), lb, dW2.data());
    mm.tn(GHT.data(), B, m, Xb.data(), ld, dW1.data());
    for (auto* a : {&a1, &ab1, &a2, &ab2}) ++a->step;
    a1.update(w1, dW1, o.lr);
    ab1.update(b1, db1, o.lr);
    a2.update(w2, dW2, o.lr);
    ab2.update(b2, db2, o.lr);
  });
  mlp_router r;
  r.d_model = d_model;
  r.num_blocks = B;
  r.w1 = detail::unpad_rows(w1, B, d_model, ld);
  r.b1 = b1;
  r.w2 = detail::unpad_rows(w2, B, B, lb);
  r.b2 = b2;
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
