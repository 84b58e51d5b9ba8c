// sparse_ffn — the CPU backward pass of the sparse FFN (training).
//
//   cpu::backward<P>(model, n, x, dy, cache, dx, grads, args[, ws])
//
// Given dY [n × d_model] and what the forward kept (forward_cache: the routing table, the block weights
// and the pre-activations of the selected neurons — and the up projections, gated), computes
//   dX    [n × d_model] (null = not computed),
//   the weight gradients of the selected blocks in the blocked layout (grads.hpp): dW1, dW3 (gated),
//   dW2, db1, db3, db2; the learned gate's dWg, dbg; and dL/d(block weight) of every routing slot.
// For one token t, slot j (block b, weight w_j) and neuron i of b (a = pre-activation, u = up):
//   s_i = v_i·dy_t,  dh_i = w_j s_i,  da_i, du_i = activation_backward(a_i, u_i, dh_i),
//   dV_i += w_j h_i dy_t,  dK_i += da_i x_t,  dU_i += du_i x_t,  db1_i += da_i,  db3_i += du_i,
//   dx_t += da_i k_i + du_i u_i,  dw_j = Σ_i h_i s_i,  db2 += dy_t.
//
// Routers. The selection itself is not differentiable and is held fixed (straight-through, as Switch
// and GShard do). Only the learned gate has parameters and non-unit weights: its gradient flows from
// dw_j through the softmax over the routed blocks [P, B) (renormalize = false: every routed logit gets a
// gradient; true: only the selected ones, through the softmax over the top-k) into dWg, dbg and dX; the
// logits are read from forward_cache::logits where the forward kept them, else recomputed from x with
// the forward's kernels (the same bits). Avg-K, hash and oracle have unit weights,
// so the loss does not depend on their scores wherever the selection is fixed: they get no router
// gradient (Avg-K's centroids are a function of the keys, and the exact gradient through them is zero
// almost everywhere; an estimator such as straight-through on the scores is a training-recipe choice
// the caller can add from grads.route_weights).
//
// Phases (one OpenMP region): inputs padded to float (and x to bf16 for the gate's logits where the
// forward's kernels round it); (token, slot) pairs grouped by block; per block (one thread each, so
// each block's gradients are owned; largest blocks first): S = dY_b V_bᵀ as outer products (V_b's
// columns transposed into an L1-resident float panel, 128 at a time, then the register-tiled
// kernel outer_rows with the panel's columns as its rows), then da/du, then dV, dK, dU by outer_rows
// with the block's tokens as its rows; dX parallel over column ranges, blocks ascending (outer_rows
// again, with the keys as rows); the learned gate last. Every float is computed by one thread in a
// fixed order: bit-identical across runs and thread counts, for a given ISA. No allocation with a
// workspace that has seen the size before.
//
// accumulate = false overwrites every gradient buffer given (blocks no token chose get exactly zero);
// true adds into them, and blocks no token chose are not touched. Weights must be float, half or bf16
// (q8/q4 models are inference formats: train in float/bf16 and quantise with pack).
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../activation.hpp"
#include "../grads.hpp"
#include "../layout.hpp"
#include "../policy.hpp"
#include "../routing.hpp"
#include "checks.hpp"
#include "fast.hpp"
#include "isa.hpp"
#include "kernels/kernels.hpp"
#include "workspace.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {

/// The backward's arguments (grads.hpp; shared with cuda::backward).
using backward_args = sparse_ffn::backward_args;

namespace detail {

/// Per-thread scratch of the backward.
struct bwd_thread {
  const float** xs;       // n token pointers (dY or X rows)
  const bfloat16_t** xb;  // n token pointers (bf16 copies, when the kernels read them)
  float* spill;           // n × key_r vectors
  float* dots;            // n × key_r dot products
  float* coef;            // g rows of n coefficients indexed by token (stride row_stride(n)): w·h (dV's)
  float* coef_k;          // the same: da (dK's)
  float* coef_u;          // the same: du (dU's, gated)
  float* wh;              // g: w·h of one routing slot (the chain rule's output for coef)
  float* S;               // n × gp: S = dY_b V_bᵀ of a block's tokens (gp = g rounded up to 16)
  float* panel;           // k_bwd_s_cols × gp: a column range of V_b, transposed to float
  float* kpanel;          // g × row_stride(k_bwd_cols): a column range of K_b (U_b), widened to float
  std::int32_t* rows;     // max(n, G, B) row or token indices
  std::int32_t* tlists;   // g × n: per row group of a block matrix, its tokens with a nonzero coefficient
  float** ys;             // k_bwd_rows output rows
  const float** sp;       // k_bwd_rows coefficient rows
};

/// Largest outer_m of any ISA (tile_shape), for scratch sizing.
inline constexpr index_t k_bwd_rows = 8;
static_assert(tile_shape<isa::scalar>::outer_m <= k_bwd_rows &&
                  tile_shape<isa::avx2>::outer_m <= k_bwd_rows &&
                  tile_shape<isa::avx512>::outer_m <= k_bwd_rows,
              "k_bwd_rows sizes the scratch of the largest outer tile");
/// Columns of V_b per transposed panel of the S product (k_bwd_s_cols × 64 floats = 32 KiB at g = 64:
/// the panel stays in L1 while every token tile of the block reads it).
inline constexpr index_t k_bwd_s_cols = 128;

/// Columns per pass of a block's weight gradients: every row group of the block runs over one such
/// range before the next, so the block's tokens' inputs in it (≤ n × 2 KiB) stay in L2 instead of being
/// re-read from L3 once per row group (and dX's widened key panels: g × 2 KiB).
inline constexpr index_t k_bwd_cols = 512;

struct bwd_buffers {
  float* xpad = nullptr;               // n rows of len (row stride row_stride(len))
  float* dypad = nullptr;              // n rows of len (row stride row_stride(len))
  bfloat16_t* x16 = nullptr;           // n rows of len (bf16_x: learned gate logits; same stride)
  float* dxacc = nullptr;              // n rows of len (same stride)
  float* da = nullptr;                 // n × k × g
  float* du = nullptr;                 // n × k × g (gated)
  float* dw = nullptr;                 // n × k
  index_t* offsets = nullptr;          // B + 1
  index_t* cursor = nullptr;           // B
  std::int32_t* entries = nullptr;     // 2 × n × k (token, slot) pairs grouped by block
  std::int32_t* all_tokens = nullptr;  // n: 0, 1, ..., n - 1
  std::int32_t* iota = nullptr;        // k_bwd_s_cols: 0, 1, ... (the panel's rows)
  std::int32_t* order = nullptr;       // B: blocks by decreasing token count (the per-block loop's order)
  float* logits = nullptr;             // n × B (learned gate)
  float* dlog = nullptr;               // n × B
  float* dlogT = nullptr;              // B rows of n (stride row_stride(n))
  std::int32_t* grows = nullptr;       // tiles × B: per token tile, the gate rows with a nonzero dlogit
  index_t* gcount = nullptr;           // tiles: how many
  std::vector<bwd_thread> per_thread;
};

/// Row stride (in elements) of the backward's row arrays that are walked across rows at one column —
/// the per-token rows of len values (x, dY, x in bf16, the dX accumulator) and the rows indexed by
/// token (the coefficients, dlogitsᵀ): count rounded up to an odd number of 16-element lines. Rows a
/// power-of-two number of lines apart share a few L1 sets and evict each other (Zen 3: the
/// weight-gradient products over 128 rows × 512 columns, 62 GFLOP/s at a 16 KiB stride, 87 with one
/// line more; the chain rule's writes of one token into every coefficient row, 2 KiB apart at n = 512).
inline index_t row_stride(index_t count) {
  const index_t lines = (count + 15) / 16;
  return (lines % 2 == 0 ? lines + 1 : lines) * 16;
}

template <bool Gate, bool Gated>
bwd_buffers plan_backward(arena_plan& a, const block_layout& l, index_t len, index_t n, index_t k,
                          int threads, bool bf16_x, bool widen) {
  constexpr index_t KR = kernels::k_max_key_r, W = kernels::k_max_width;
  auto mul = [](index_t x, index_t y) { return sparse_ffn::detail::checked_mul(x, y, "workspace"); };
  const index_t B = l.num_blocks, g = l.g, nk = mul(n, k), gp = sparse_ffn::detail::round_up(g, 16);
  bwd_buffers f;
  const index_t ls = row_stride(len), cs = row_stride(n);
  f.xpad = a.take<float>(mul(n, ls));
  f.dypad = a.take<float>(mul(n, ls));
  if (bf16_x && Gate) f.x16 = a.take<bfloat16_t>(mul(n, ls));
  f.dxacc = a.take<float>(mul(n, ls));
  f.da = a.take<float>(mul(nk, g));
  if (Gated) f.du = a.take<float>(mul(nk, g));
  f.dw = a.take<float>(nk);
  f.offsets = a.take<index_t>(B + 1);
  f.cursor = a.take<index_t>(B);
  f.entries = a.take<std::int32_t>(mul(2, nk));
  f.all_tokens = a.take<std::int32_t>(n);
  f.iota = a.take<std::int32_t>(k_bwd_s_cols);
  f.order = a.take<std::int32_t>(B);
  if (Gate) {
    f.logits = a.take<float>(mul(n, B));
    f.dlog = a.take<float>(mul(n, B));
    f.dlogT = a.take<float>(mul(cs, B));
    f.grows = a.take<std::int32_t>(mul(n, B));  // tiles ≤ n
    f.gcount = a.take<index_t>(n);
  }
  f.per_thread.resize(static_cast<std::size_t>(threads));
  for (auto& t : f.per_thread) {
    t.xs = a.take<const float*>(n);
    t.xb = a.take<const bfloat16_t*>(n);
    t.spill = a.take<float>(mul(mul(n, KR), W));
    t.dots = a.take<float>(mul(n, KR));
    t.coef = a.take<float>(mul(g, cs));
    t.coef_k = a.take<float>(mul(g, cs));
    if (Gated) t.coef_u = a.take<float>(mul(g, cs));
    t.wh = a.take<float>(g);
    t.S = a.take<float>(mul(n, gp));
    t.panel = a.take<float>(mul(k_bwd_s_cols, gp));
    t.kpanel = widen ? a.take<float>(mul(g, row_stride(k_bwd_cols))) : nullptr;
    t.rows = a.take<std::int32_t>(std::max(n, std::max(g, B)));
    t.tlists = a.take<std::int32_t>(mul(g, n));
    t.ys = a.take<float*>(k_bwd_rows);
    t.sp = a.take<const float*>(k_bwd_rows);
  }
  return f;
}

/// The tokens tok[q * stride], q < ntok (ascending), whose coefficient sp[r][t] is nonzero in at least
/// one of the m rows, into list; returns how many.
inline index_t nonzero_tokens(const float* const* sp, index_t m, const std::int32_t* tok, index_t stride,
                              index_t ntok, std::int32_t* list) {
  index_t nr = 0;
  for (index_t q = 0; q < ntok; ++q) {
    const std::int32_t t = tok[q * stride];
    bool any = false;
    for (index_t r = 0; r < m; ++r) any |= sp[r][t] != 0.0f;
    if (any) list[nr++] = t;
  }
  return nr;
}

/// The rows i < count for which at least one of the m coefficient vectors sp[q] has sp[q][i] != 0,
/// ascending, into rows; returns how many (the rows an outer product over the m vectors must visit).
inline index_t nonzero_rows(const float* const* sp, index_t m, index_t count, std::int32_t* rows) {
  index_t nr = 0;
  for (index_t i = 0; i < count; ++i) {
    bool any = false;
    for (index_t q = 0; q < m; ++q) any |= sp[q][i] != 0.0f;
    if (any) rows[nr++] = static_cast<std::int32_t>(i);
  }
  return nr;
}

/// out[r][c] += Σ over the nr listed tokens t of coef_r[t] · src_t[c] for r < m rows (sp[r]: coef_r,
/// indexed by token) and c in [c0, c1), by the register-tiled kernel (each element summed from zero over
/// the tokens, then added to out: accumulating into a buffer adds exactly what an overwrite computes;
/// `assign`: out = the sum). list: nonzero_tokens of the rows.
inline void add_outer(const kernels::kernel_ops<float>& opsf, float* const* out, const float* const* sp,
                      index_t m, const std::int32_t* list, index_t nr, const float* src, index_t len,
                      index_t c0, index_t c1, bool assign) {
  if (nr)
    opsf.outer_rows(out, sp, m, list, nr, src, len, c0, c1, assign);
  else if (assign)
    for (index_t r = 0; r < m; ++r) std::fill(out[r] + c0, out[r] + c1, 0.0f);
}

template <class Policy, class Tx, class Tdy, class Tdx>
void backward_run(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, const Tdy* dy,
                  const forward_cache& cache, Tdx* dx, const ffn_grads_view& gr, const backward_args& args,
                  workspace& ws) {
  using T = typename Policy::dtype;
  using Sel = typename Policy::selector;
  using Act = typename Policy::activation;
  constexpr int G = Policy::block_size;
  constexpr bool Gate = std::is_same<Sel, select::learned_gate>::value;
  const block_layout& l = w.layout;
  const index_t k = args.k, d = l.d_model, ld = l.ld, B = l.num_blocks, P = l.pinned;
  const index_t len = sparse_ffn::detail::round_up(d, 64 / static_cast<index_t>(sizeof(T)));
  const index_t ls = row_stride(len);  // row stride of xpad, dypad, x16, dxacc
  const index_t cs = row_stride(n);    // row stride of the coefficients and dlogitsᵀ
  const index_t gcols = sparse_ffn::detail::round_up(d, 16), gld = gr.layout.ld;
  const index_t gp = sparse_ffn::detail::round_up(index_t{G}, 16);
  const bool acc = args.accumulate;
  const int threads = max_threads();
  const kernels::kernel_ops<T>& ops = kernels::ops_for<T>(active_isa());
  const kernels::kernel_ops<float>& opsf = kernels::ops_for<float>(active_isa());
  const index_t KR = ops.key_r, RMf = opsf.outer_m, RM = ops.outer_m;  // outer_rows tiles
  const bool gate_grads = Gate && k > P;

  arena_plan sizing(nullptr);
  constexpr bool widen = !std::is_same<T, float>::value;  // dX's product on a float copy of the keys
  plan_backward<Gate, Act::gated>(sizing, l, len, n, k, threads, ops.bf16_x, widen);
  ws.reserve(sizing.bytes());
  arena_plan carve(ws.data());
  const bwd_buffers f = plan_backward<Gate, Act::gated>(carve, l, len, n, k, threads, ops.bf16_x, widen);

#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = thread_id(), nth = num_threads();
    const bwd_thread& ts = f.per_thread[static_cast<std::size_t>(tid)];
    // ---- inputs padded ---------------------------------------------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t t = 0; t < n; ++t) {
      float* xp = f.xpad + t * ls;
      float* dp = f.dypad + t * ls;
      for (index_t c = 0; c < d; ++c) {
        xp[c] = to_float(x[t * d + c]);
        dp[c] = to_float(dy[t * d + c]);
      }
      std::fill(xp + d, xp + ls, 0.0f);
      std::fill(dp + d, dp + ls, 0.0f);
      std::fill(f.dxacc + t * ls, f.dxacc + (t + 1) * ls, 0.0f);
      f.all_tokens[t] = static_cast<std::int32_t>(t);
      if (f.x16)
        for (index_t c = 0; c < ls; ++c) f.x16[t * ls + c] = bfloat16_t(xp[c]);
    }
    // ---- group (token, slot) pairs by block, tokens ascending ------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp single
#endif
    {
      group_by_block(cache.blocks, n, k, B, f.offsets, f.cursor, f.entries);
      for (index_t c = 0; c < k_bwd_s_cols; ++c) f.iota[c] = static_cast<std::int32_t>(c);
      // Largest blocks first, so the dynamic schedule does not end with one thread on a big block
      // while the other waits (a learned gate's choices are uneven). Each block's gradients are owned
      // by one thread whatever the order: the results do not depend on it.
      for (index_t b = 0; b < B; ++b) f.order[b] = static_cast<std::int32_t>(b);
      std::stable_sort(f.order, f.order + B, [&](std::int32_t a, std::int32_t c) {
        return f.offsets[a + 1] - f.offsets[a] > f.offsets[c + 1] - f.offsets[c];
      });
    }  // implicit barrier
    // ---- gradients to overwrite: zero where nothing else writes (blocks no token chose, the padding
    // columns of the others, the biases and the gate, which are accumulated) --------------------------
    if (!acc) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t b = 0; b < B; ++b) {
        if (gr.weights) {
          if (f.offsets[b + 1] == f.offsets[b])
            std::fill(gr.keys(b), gr.keys(b) + gr.layout.block_stride(), 0.0f);
          else
            for (index_t row = 0; row < gr.layout.matrices() * G; ++row)
              std::fill(gr.keys(b) + row * gld + gcols, gr.keys(b) + (row + 1) * gld, 0.0f);
        }
        if (gr.gate_w) std::fill(gr.gate_w + b * gld, gr.gate_w + (b + 1) * gld, 0.0f);
        for (index_t i = 0; i < G; ++i) {
          if (gr.b1) gr.b1[b * G + i] = 0.0f;
          if (gr.b3) gr.b3[b * G + i] = 0.0f;
        }
        if (gr.gate_b) gr.gate_b[b] = 0.0f;
      }
    }
    // ---- per block: S = dY V_bᵀ, da/du, dV, dK, dU, db1, db3 -------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (index_t ob = 0; ob < B; ++ob) {
      const index_t b = f.order[ob], m = f.offsets[b + 1] - f.offsets[b];
      if (m == 0) continue;
      const std::int32_t* ent = f.entries + 2 * f.offsets[b];
      // S = dY_b V_bᵀ [m × gp] as outer products: V_b's columns [q0, q0 + ql) transposed into a float
      // panel (L1-resident), then S_q (+)= Σ_c dY_q[q0 + c] · panel_c for tiles of tokens by the
      // register-tiled kernel, ranges in order (exact float products: dY is not rounded).
      float* S = ts.S;
      for (index_t q0 = 0; q0 < len; q0 += k_bwd_s_cols) {
        const index_t ql = std::min(k_bwd_s_cols, len - q0);
        ops.transpose_rows(w.values(b), ld, G, q0, ql, ts.panel, gp);
        for (index_t t0 = 0; t0 < m; t0 += RMf) {
          const index_t mm = std::min<index_t>(RMf, m - t0);
          for (index_t q = 0; q < mm; ++q) {
            ts.ys[q] = S + (t0 + q) * gp;
            ts.sp[q] = f.dypad + ent[2 * (t0 + q)] * ls + q0;
          }
          opsf.outer_rows(ts.ys, ts.sp, mm, f.iota, ql, ts.panel, gp, 0, gp, q0 == 0);
        }
      }
      // The chain rule, and the weight gradients' coefficients by row, indexed by token.
      for (index_t q = 0; q < m; ++q) {
        const index_t t = ent[2 * q], e = t * k + ent[2 * q + 1];
        const float wt = cache.weights ? cache.weights[e] : 1.0f;
        // The slots of a block are scattered over the n × k cache: fetch the weight, the pre-activations
        // (read) and da (written) two tokens ahead (Zen 3, b512, the scalar loop before chain_rows:
        // 11.6 -> 8.9 ms a thread per call).
        if (q + 2 < m) {
          const index_t e1 = ent[2 * (q + 2)] * k + ent[2 * (q + 2) + 1], e2 = e1 * G;
          if (cache.weights) __builtin_prefetch(cache.weights + e1);
          for (index_t i = 0; i < G; i += 16) {
            __builtin_prefetch(cache.pre + e2 + i);
            __builtin_prefetch(f.da + e2 + i, 1);
            if constexpr (Act::gated) {
              __builtin_prefetch(cache.up + e2 + i);
              __builtin_prefetch(f.du + e2 + i, 1);
            }
          }
        }
        const float* a = cache.pre + e * G;
        const float* u = Act::gated ? cache.up + e * G : nullptr;
        float* da = f.da + e * G;
        float* du = Act::gated ? f.du + e * G : nullptr;
        if constexpr (is_builtin_activation<Act>) {
          // Vectorised (kernels::chain_rows): da, du and wt·h in place, dL/dw returned.
          f.dw[e] = opsf.chain_rows[static_cast<int>(Act::kind)](a, u, S + q * gp, wt, G, da, du, ts.wh);
        } else {             // a user's activation: its scalar functions
          float dwe = 0.0f;  // dL/dw of this slot: Σ_i h_i · S_i, in order
          for (index_t i = 0; i < G; ++i) {
            const float sv = S[q * gp + i];
            float dui = 0.0f;
            activation_backward<Act>(a[i], Act::gated ? u[i] : 0.0f, wt * sv, da[i], dui);
            if constexpr (Act::gated) du[i] = dui;
            const float h = activate<Act>(a[i], Act::gated ? u[i] : 0.0f);
            ts.wh[i] = wt * h;
            dwe += h * sv;
          }
          f.dw[e] = dwe;
        }
        for (index_t i = 0; i < G; ++i) {  // the coefficients by row, indexed by token
          ts.coef[i * cs + t] = ts.wh[i];
          ts.coef_k[i * cs + t] = da[i];
          if constexpr (Act::gated) ts.coef_u[i * cs + t] = du[i];
        }
      }
      // Weight gradients of block b: each of its matrices in groups of rows.
      auto matrix = [&](float* grad_rows, const float* src, const float* coef) {
        // Each row group's tokens with a nonzero coefficient, listed once for every column range.
        index_t counts[(G + 1) / 2];  // row groups of outer_m ≥ 2 rows
        for (index_t i0 = 0; i0 < G; i0 += RMf) {
          const index_t mm = std::min<index_t>(RMf, G - i0);
          for (index_t r = 0; r < mm; ++r) ts.sp[r] = coef + (i0 + r) * cs;
          counts[i0 / RMf] = nonzero_tokens(ts.sp, mm, ent, 2, m, ts.tlists + i0 / RMf * n);
        }
        float* out[k_bwd_rows];
        for (index_t c0 = 0; c0 < gcols; c0 += k_bwd_cols) {
          const index_t c1 = std::min(gcols, c0 + k_bwd_cols);
          for (index_t i0 = 0; i0 < G; i0 += RMf) {
            const index_t mm = std::min<index_t>(RMf, G - i0);
            for (index_t r = 0; r < mm; ++r) {
              out[r] = grad_rows + (i0 + r) * gld;
              ts.sp[r] = coef + (i0 + r) * cs;
            }
            add_outer(opsf, out, ts.sp, mm, ts.tlists + i0 / RMf * n, counts[i0 / RMf], src, ls, c0, c1,
                      !acc);
          }
        }
      };
      auto slot = [&](index_t q) { return ent[2 * q] * k + ent[2 * q + 1]; };
      if (gr.weights) {
        matrix(gr.values(b), f.dypad, ts.coef);
        matrix(gr.keys(b), f.xpad, ts.coef_k);
        if constexpr (Act::gated) matrix(gr.up(b), f.xpad, ts.coef_u);
      }
      for (index_t i = 0; i < G; ++i) {
        if (gr.b1) {
          float s = 0.0f;
          for (index_t q = 0; q < m; ++q) s += f.da[slot(q) * G + i];
          gr.b1[b * G + i] += s;
        }
        if constexpr (Act::gated)
          if (gr.b3) {
            float s = 0.0f;
            for (index_t q = 0; q < m; ++q) s += f.du[slot(q) * G + i];
            gr.b3[b * G + i] += s;
          }
      }
    }  // implicit barrier: da, du, dw complete
    // ---- db2, route weights ----------------------------------------------------------------------
    if (gr.b2) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static) nowait
#endif
      for (index_t c0 = 0; c0 < d; c0 += 64) {  // 64 columns at a time, tokens in order (row-wise reads)
        const index_t nc = std::min<index_t>(64, d - c0);
        float s[64] = {};
        for (index_t t = 0; t < n; ++t) {
          const float* row = f.dypad + t * ls + c0;
          for (index_t c = 0; c < nc; ++c) s[c] += row[c];
        }
        for (index_t c = 0; c < nc; ++c) gr.b2[c0 + c] = acc ? gr.b2[c0 + c] + s[c] : s[c];
      }
    }
    if (gr.route_weights) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static) nowait
#endif
      for (index_t e = 0; e < n * k; ++e) gr.route_weights[e] = acc ? gr.route_weights[e] + f.dw[e] : f.dw[e];
    }
    // ---- dX through the keys (and up rows): thread tid owns columns [c_lo, c_hi), blocks ascending --
    // Half/bf16 weights: a block's rows are widened to float k_bwd_cols columns at a time (a panel in L2
    // that all the block's token tiles read), so the product runs on float rows instead of converting
    // each weight once per tile (Zen 3, b512: the bf16 backward 2–4% faster, now as fast as f32 or faster).
    // Exact: the same sums, in the same order, as on the narrow rows.
    if (dx) {
      const index_t gran = ops.width, vecs = gcols / gran;  // outer_rows: multiples of width
      const index_t c_lo = vecs * tid / nth * gran, c_hi = vecs * (tid + 1) / nth * gran;
      const index_t span = widen ? k_bwd_cols : c_hi - c_lo, kps = row_stride(k_bwd_cols);
      if (c_lo < c_hi)
        for (index_t b = 0; b < B; ++b) {
          const index_t m = f.offsets[b + 1] - f.offsets[b];
          const std::int32_t* ent = f.entries + 2 * f.offsets[b];
          if (m == 0) continue;
          for (int pass = 0; pass < (Act::gated ? 2 : 1); ++pass) {
            const float* src = pass == 0 ? f.da : f.du;
            const T* rows_b = pass == 0 ? w.keys(b) : w.up(b);
            for (index_t c0 = c_lo; c0 < c_hi; c0 += span) {
              const index_t c1 = std::min(c_hi, c0 + span);
              if constexpr (widen) ops.widen_rows(rows_b, ld, G, c0, c1 - c0, ts.kpanel, kps);
              for (index_t q0 = 0; q0 < m; q0 += RMf) {
                const index_t mm = std::min<index_t>(RMf, m - q0);
                for (index_t q = 0; q < mm; ++q) {
                  const index_t t = ent[2 * (q0 + q)];
                  ts.ys[q] = f.dxacc + t * ls + (widen ? c0 : 0);
                  ts.sp[q] = src + (t * k + ent[2 * (q0 + q) + 1]) * G;
                }
                const index_t nr = nonzero_rows(ts.sp, mm, G, ts.rows);
                if (nr == 0) continue;
                if constexpr (widen)
                  opsf.outer_rows(ts.ys, ts.sp, mm, ts.rows, nr, ts.kpanel, kps, 0, c1 - c0, false);
                else
                  ops.outer_rows(ts.ys, ts.sp, mm, ts.rows, nr, rows_b, ld, c0, c1, false);
              }
            }
          }
        }
    }
    // ---- learned gate: logits, dlogits through the softmax, dWg, dbg, dX --------------------------
    if constexpr (Gate) {
      if (gate_grads) {
        // The logits the forward kept (forward_cache::logits), or recomputed with its kernels.
        const float* const logits = cache.logits ? cache.logits : f.logits;
        if (!cache.logits) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
          for (index_t b0 = 0; b0 < B; b0 += KR) {
            const index_t rr = std::min<index_t>(KR, B - b0);
            for (index_t t = 0; t < n; ++t) {
              ts.xs[t] = f.xpad + t * ls;
              ts.xb[t] = f.x16 ? f.x16 + t * ls : nullptr;
            }
            ops.dots(ts.xs, ts.xb, nullptr, n, w.gate_w + b0 * ld, rr, ld, len, ts.spill, ts.dots);
            for (index_t t = 0; t < n; ++t)
              for (index_t r = 0; r < rr; ++r)
                f.logits[t * B + b0 + r] =
                    Sel::linear_score(ts.dots[t * rr + r], w.gate_b ? w.gate_b[b0 + r] : 0.0f);
          }
        }
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
        for (index_t t = 0; t < n; ++t) {
          const float* lg = logits + t * B;
          const block_index_t* bl = cache.blocks + t * k;
          float* dl = f.dlog + t * B;
          const float max_logit = lg[bl[P]];  // the forward's choice (selector/learned_gate.hpp)
          float sum_all = 0.0f, sum_topk = 0.0f;
          for (index_t c = P; c < B; ++c) sum_all += Sel::softmax_term(lg[c], max_logit);
          for (index_t j = P; j < k; ++j) sum_topk += Sel::softmax_term(lg[bl[j]], max_logit);
          auto prob = [&](index_t c) {
            return Sel::weight(Sel::softmax_term(lg[c], max_logit), sum_all, sum_topk, args.renormalize);
          };
          float gsum = 0.0f;  // Σ_j dw_j p_j over the selected routed blocks
          for (index_t j = P; j < k; ++j) gsum += f.dw[t * k + j] * prob(bl[j]);
          std::fill(dl, dl + B, 0.0f);
          if (!args.renormalize)
            for (index_t c = P; c < B; ++c) dl[c] = -prob(c) * gsum;
          for (index_t j = P; j < k; ++j) {
            const float p = prob(bl[j]);
            dl[bl[j]] = args.renormalize ? p * (f.dw[t * k + j] - gsum) : dl[bl[j]] + p * f.dw[t * k + j];
          }
          for (index_t c = 0; c < B; ++c) f.dlogT[c * cs + t] = dl[c];
        }  // implicit barrier (also after the dX pass above)
        // dWg += dlogitsᵀ X: a column range at a time, every row group over it (X's columns stay in L2).
        if (gr.gate_w) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 1) nowait
#endif
          for (index_t x0 = 0; x0 < gcols; x0 += k_bwd_cols) {
            float* out[k_bwd_rows];
            for (index_t c0 = 0; c0 < B; c0 += RMf) {
              const index_t mm = std::min<index_t>(RMf, B - c0);
              for (index_t r = 0; r < mm; ++r) {
                out[r] = gr.gate_w + (c0 + r) * gld;
                ts.sp[r] = f.dlogT + (c0 + r) * cs;
              }
              add_outer(opsf, out, ts.sp, mm, ts.rows, nonzero_tokens(ts.sp, mm, f.all_tokens, 1, n, ts.rows),
                        f.xpad, ls, x0, std::min(gcols, x0 + k_bwd_cols), false);
            }
          }
        }
        if (gr.gate_b) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static) nowait
#endif
          for (index_t c = 0; c < B; ++c) {
            float s = 0.0f;
            for (index_t t = 0; t < n; ++t) s += f.dlogT[c * cs + t];
            gr.gate_b[c] += s;
          }
        }
        if (dx) {
          // Thread tid owns a range of token tiles; column ranges outer, so the gate rows' columns in
          // one range (B × 2 KiB) stay in L2 for all its tiles instead of streaming every gate row
          // once per tile. (Each element's sum is the same either way.)
          const index_t tiles = (n + RM - 1) / RM, tl0 = tiles * tid / nth, tl1 = tiles * (tid + 1) / nth;
          // Each tile's gate rows with a nonzero dlogit, listed once for all its column ranges.
          auto tile_rows = [&](index_t tl) {
            const index_t t0 = tl * RM, mm = std::min<index_t>(RM, n - t0);
            for (index_t q = 0; q < mm; ++q) {
              ts.ys[q] = f.dxacc + (t0 + q) * ls;
              ts.sp[q] = f.dlog + (t0 + q) * B;
            }
            return mm;
          };
          for (index_t tl = tl0; tl < tl1; ++tl)
            f.gcount[tl] = nonzero_rows(ts.sp, tile_rows(tl), B, f.grows + tl * B);
          for (index_t x0 = 0; x0 < gcols; x0 += k_bwd_cols)
            for (index_t tl = tl0; tl < tl1; ++tl)
              if (f.gcount[tl]) {
                const index_t mm = tile_rows(tl);
                ops.outer_rows(ts.ys, ts.sp, mm, f.grows + tl * B, f.gcount[tl], w.gate_w, ld, x0,
                               std::min(gcols, x0 + k_bwd_cols), false);
              }
        }
      }
    }
    // ---- dX in its dtype --------------------------------------------------------------------------
    if (dx) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t)
        for (index_t c = 0; c < d; ++c) dx[t * d + c] = from_float<Tdx>(f.dxacc[t * ls + c]);
    }
  }
}

}  // namespace detail

/// The backward pass (see the file comment). x and dy [n × d_model] (float, half_t or bfloat16_t), the
/// forward's cache (blocks and pre required; up for gated FFNs; weights for weighted selectors), dx
/// [n × d_model] or null, gradients per `grads` (grads.hpp; its layout must be grad_layout of the
/// model's). Every argument is validated first; a bad one throws sparse_ffn::error and nothing is
/// written.
template <class Policy, class Tx, class Tdy, class Tdx>
void backward(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, const Tdy* dy,
              const forward_cache& cache, Tdx* dx, const ffn_grads_view& grads, const backward_args& args,
              workspace* ws = nullptr) {
  using Sel = typename Policy::selector;
  using namespace sparse_ffn::detail;
  const block_layout& l = w.layout;
  check_backward_args<Policy>(w, n, x, dy, cache, dx, grads, args);
  if (n > 0) check_routing(l, n, const_routing_view{n, args.k, cache.blocks, cache.weights});
  if constexpr (std::is_same<Sel, select::learned_gate>::value) {
    // The gate's softmax runs over the routed blocks: each row lists the pinned blocks first, in order.
    for (index_t t = 0; t < n; ++t)
      for (index_t j = 0; j < args.k; ++j) {
        const block_index_t b = cache.blocks[t * args.k + j];
        require(
            j < l.pinned ? b == j : b >= l.pinned, status::invalid_argument, "routing row ", t,
            " is not a learned-gate routing: slots [0, pinned) hold the pinned blocks in order, the others "
            "routed blocks (slot ",
            j, " holds block ", b, ")");
      }
  }
  detail::backward_run<Policy>(w, n, x, dy, cache, dx, grads, args, ws ? *ws : detail::thread_workspace());
}

}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
