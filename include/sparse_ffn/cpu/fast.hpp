// sparse_ffn — the CPU fast path: any batch, vectorised, multithreaded, deterministic.
//
// One forward is four phases inside one OpenMP parallel region:
//  1. route     linear selectors: scores = X·Rowsᵀ (+bias) with the key micro-kernel, then top-k per
//               token; dense (oracle): the key pass over every block, then block scores; token (hash):
//               per token. Or copy the caller's routing table.
//  2. group     counting sort of (token, slot) pairs by block, tokens ascending: each block's weights
//               are then read once per batch and applied to all tokens that chose it.
//  3. keys      parallel over blocks: H = act(X_b K_bᵀ + b1) (gated: ⊙ (X_b U_bᵀ + b3)) with an
//               M-token × R-row register tile, cache-blocked over d (kernels/kernels.inl).
//  4. values    parallel over column ranges of Y: for every block in ascending order, groups of up to
//               rows_m tokens stream the block's value rows (kernels/kernels.inl); rows whose
//               coefficient is zero for the whole group are skipped (ReLU reads only active rows).
// then Y = Yacc + b2 in the output dtype.
//
// q8/q4 weights (quant.hpp): x, y and the accumulators are padded to row_cols (d rounded up to 64 /
// 128) rather than ld (which counts the row's bytes); on the int8 levels (avx2, avx512_vnni and up) each
// token's x is also quantised once to int8 (kernel_ops::prepare_x_int8) for the key kernel. Keys
// stored as key tiles (layout.key_tiles, blocked_ffn::tile_keys) go to kernel_ops::dots_tiles, up to
// four tiles of 16 rows per call, or where the level has none, are unpacked into 16 rows of thread
// scratch first: the same bits as the same model's rows either way.
//
// The glue below is compiled once, for the consumer's flags; the micro-kernels are called through the
// table kernels::ops_for<T>(cpu::active_isa()), resolved once per call (run-time ISA dispatch).
//
// Every float a token's output depends on is computed by exactly one thread with a fixed operation
// order (keys by one thread per block; values into two partial sums per token — the first and second
// half of its selected blocks by block id — each by one thread per column, blocks ascending, rows
// ascending; y = (partial0 + partial1) + b2), so results are bit-identical across runs *and* thread
// counts, and a token's output does not depend on the rest of the batch (up to the sign of an exact
// zero), for a given ISA — except on amx with bf16 weights, whose AMX passes run for blocks (keys) and
// partials (values) of at least kernel_ops::amx_min_tokens tokens, and with q8/q4 value tiles, whose AMX
// value pass (the tiles dequantised to bf16) runs for blocks of at least amx_value_min_tokens: there a
// token's bits depend on how many share them (q8/q4's AMX key pass gives dots_tiles's bits).
// No allocation when a workspace that has seen the size before is passed.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "../activation.hpp"
#include "../dispatch.hpp"
#include "../layout.hpp"
#include "../policy.hpp"
#include "../routing.hpp"
#include "checks.hpp"
#include "isa.hpp"
#include "kernels/kernels.hpp"
#include "workspace.hpp"

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {

namespace detail {

inline int max_threads() {
#if SPARSE_FFN_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
inline int thread_id() {
#if SPARSE_FFN_HAS_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int num_threads() {
#if SPARSE_FFN_HAS_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

/// The entry points' x and y with their element types as run-time tags (float, half_t, bfloat16_t):
/// fast_run is compiled once per policy instead of once per (policy, x type, y type); the types only
/// matter where a token's row is read or written.
struct io_rows {
  const void* x = nullptr;
  dtype x_type = dtype::f32;
  void* y = nullptr;  ///< null: route only
  dtype y_type = dtype::f32;

  template <class Tx, class Ty>
  static io_rows of(const Tx* x, Ty* y) {
    static_assert(is_dtype<Tx>::value && is_dtype<Ty>::value,
                  "sparse_ffn: x and y must be float, half_t or bfloat16_t");
    return {x, dtype_traits<Tx>::id, y, dtype_traits<Ty>::id};
  }
};

/// out[c] = float(row t of x)[c], c < d.
inline void load_row(const io_rows& io, index_t t, index_t d, float* out) {
  sparse_ffn::dispatch_dtype(io.x_type, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const E* xt = static_cast<const E*>(io.x) + t * d;
    for (index_t c = 0; c < d; ++c) out[c] = to_float(xt[c]);
  });
}

/// Row t of y = (a + b) + bias (bias null: 0), in y's type.
inline void store_row(const io_rows& io, index_t t, index_t d, const float* a, const float* b,
                      const float* bias) {
  sparse_ffn::dispatch_dtype(io.y_type, [&](auto tag) {
    using E = typename decltype(tag)::type;
    E* yt = static_cast<E*>(io.y) + t * d;
    for (index_t c = 0; c < d; ++c) yt[c] = from_float<E>((a[c] + b[c]) + (bias ? bias[c] : 0.0f));
  });
}

/// Per-thread scratch of the key and value passes (for a batch of n tokens).
struct thread_scratch {
  const float** xs;         // n token input pointers
  const bfloat16_t** xb;    // n token input pointers (bf16-rounded copies, when the kernels read them)
  const std::uint8_t** xq;  // n token input pointers (int8 copies, when the kernels read them)
  float* spill;             // n × key_r vectors: key accumulators between d chunks
  float* dots;              // 2 × n × max(key_r, tile rows) dot products (keys, then up projections)
  float* s;                 // n × g value coefficients (weight × activation)
  std::int32_t* rows;       // tiles × g nonzero value rows per token tile
  index_t* nrows;           // tiles
  float** ys;               // n output pointers
  const float** sp;         // n coefficient pointers
  std::uint8_t* tile_rows;  // rows (zeroed) where key tiles (16) or a block's value tiles (g) are unpacked
                            // on levels without their kernels; else null
  std::uint32_t* panel;     // AMX key pass (kernel_ops::dots_amx): 16 tokens' x pairs; else null
  float* amx_out;           // AMX key pass: 16 × g dot products; else null
  float* qscale;            // AMX value pass of q8/q4 tiles (kernel_ops::apply_tiles_amx): scales; else null
};

/// Scratch arrays of one forward (carved from a workspace).
struct fast_buffers {
  float* xpad = nullptr;                  // n × cols, zero padded (cols: row_cols)
  bfloat16_t* xpad16 = nullptr;           // n × cols, xpad rounded to bf16 (kernels with bf16_x)
  std::uint8_t* xq8 = nullptr;            // n × x_int8_bytes(cols), xpad as int8 (kernels with int8_x)
  float* yacc = nullptr;                  // n × 2 × cols: two partial accumulators per token
  std::uint8_t* part = nullptr;           // n × k: which partial a (token, slot) adds into
  block_index_t* blocks = nullptr;        // n × k
  float* weights = nullptr;               // n × k
  float* scores = nullptr;                // n × B (linear, dense)
  float* pre_all = nullptr;               // n × d_ff (dense)
  float* up_all = nullptr;                // n × d_ff (dense, gated)
  float* h = nullptr;                     // n × k × g activations of the selected neurons
  index_t* offsets = nullptr;             // B + 1
  index_t* cursor = nullptr;              // B
  std::int32_t* entries = nullptr;        // n × k (token, slot) pairs grouped by block
  std::int32_t* all_tokens = nullptr;     // n (token, 0) pairs (dense scoring)
  block_index_t* topk_scratch = nullptr;  // threads × B
  std::vector<thread_scratch> per_thread;
};

template <class Sel, class Act>
fast_buffers plan_buffers(arena_plan& a, const block_layout& l, index_t cols, index_t n, index_t k,
                          int threads, bool compute, bool bf16_x, bool int8_x, index_t tile_bytes = 0,
                          bool amx_keys = false, index_t qscale_floats = 0) {
  constexpr index_t KR = kernels::k_max_key_r, W = kernels::k_max_width;
  fast_buffers f;
  const index_t B = l.num_blocks, g = l.g;
  // Every size is an overflow-checked product (arena_plan::take checks the byte count and the sum).
  auto mul = [](index_t a, index_t b) { return sparse_ffn::detail::checked_mul(a, b, "workspace"); };
  f.xpad = a.take<float>(mul(n, cols));
  if (bf16_x) f.xpad16 = a.take<bfloat16_t>(mul(n, cols));
  if (int8_x) f.xq8 = a.take<std::uint8_t>(mul(n, kernels::x_int8_bytes(cols)));
  f.blocks = a.take<block_index_t>(mul(n, k));
  f.weights = a.take<float>(mul(n, k));
  if (Sel::scoring != scoring_kind::token) f.scores = a.take<float>(mul(n, B));
  if (Sel::scoring == scoring_kind::dense) {
    f.pre_all = a.take<float>(mul(n, l.d_ff));
    if (Act::gated) f.up_all = a.take<float>(mul(n, l.d_ff));
  }
  f.all_tokens = a.take<std::int32_t>(mul(2, n));
  f.topk_scratch = a.take<block_index_t>(mul(threads, B));
  if (compute) {
    f.yacc = a.take<float>(mul(2, mul(n, cols)));
    f.part = a.take<std::uint8_t>(mul(n, k));
    f.h = a.take<float>(mul(mul(n, k), g));
    f.offsets = a.take<index_t>(B + 1);
    f.cursor = a.take<index_t>(B);
    f.entries = a.take<std::int32_t>(mul(2, mul(n, k)));
  }
  f.per_thread.resize(static_cast<std::size_t>(threads));
  for (auto& t : f.per_thread) {
    t.xs = a.take<const float*>(n);
    t.xb = a.take<const bfloat16_t*>(n);
    t.xq = a.take<const std::uint8_t*>(n);
    t.spill = a.take<float>(mul(mul(n, KR), W));
    t.dots = a.take<float>(mul(mul(2, n), std::max(KR, kernels::k_max_tile_key_rows)));
    t.tile_rows = tile_bytes ? a.take<std::uint8_t>(tile_bytes) : nullptr;
    t.panel = amx_keys ? a.take<std::uint32_t>(mul(8, cols)) : nullptr;  // kernels::amx::panel_bytes
    t.amx_out = amx_keys ? a.take<float>(mul(2 * 16, g)) : nullptr;
    t.qscale = qscale_floats ? a.take<float>(qscale_floats) : nullptr;
    if (compute) {
      t.s = a.take<float>(mul(n, g));
      t.rows = a.take<std::int32_t>(g);
      t.ys = a.take<float*>(n);
      t.sp = a.take<const float*>(n);
    }
  }
  return f;
}

/// Counting sort of a routing table's (token, slot) pairs by block, tokens ascending: block b's pairs
/// are entries[2 offsets[b] ..) (token, slot), offsets[b + 1] - offsets[b] of them. cursor: B scratch.
/// With `part` (n × k, 0 or 1 per pair): each block's pairs of part 0 first, then those of part 1
/// (tokens ascending in both), and cursor[b] is where part 1's begin.
inline void group_by_block(const block_index_t* blocks, index_t n, index_t k, index_t B, index_t* offsets,
                           index_t* cursor, std::int32_t* entries, const std::uint8_t* part = nullptr) {
  std::fill(offsets, offsets + B + 1, index_t{0});
  for (index_t e = 0; e < n * k; ++e) ++offsets[blocks[e] + 1];
  for (index_t b = 0; b < B; ++b) offsets[b + 1] += offsets[b];
  const auto put = [&](index_t pos, index_t e) {
    entries[2 * pos] = static_cast<std::int32_t>(e / k);
    entries[2 * pos + 1] = static_cast<std::int32_t>(e % k);
  };
  if (!part) {
    std::copy(offsets, offsets + B, cursor);
    for (index_t e = 0; e < n * k; ++e) put(cursor[blocks[e]]++, e);
    return;
  }
  // Pairs in descending order into positions counting down: part 1's from each block's end, then part
  // 0's from where part 1's begin; cursor ends at each block's start and is moved up past part 0.
  std::copy(offsets + 1, offsets + B + 1, cursor);
  for (index_t e = n * k; e-- > 0;)
    if (part[e] != 0) put(--cursor[blocks[e]], e);
  for (index_t e = n * k; e-- > 0;)
    if (part[e] == 0) put(--cursor[blocks[e]], e);
  for (index_t e = 0; e < n * k; ++e)
    if (part[e] == 0) ++cursor[blocks[e]];
}

/// Key pass of one block for the m (token, slot) pairs in `entries`: emit(t, j, i, pre, up).
template <int G, class T, class Act, class Emit>
void key_block(const kernels::kernel_ops<T>& ops, const blocked_ffn_view<T>& w, index_t b,
               const std::int32_t* entries, index_t m, const float* xpad, const bfloat16_t* xpad16,
               const std::uint8_t* xq8, index_t cols, const thread_scratch& ts, Emit&& emit) {
  const block_layout& l = w.layout;
  for (index_t q = 0; q < m; ++q) {
    const index_t t = entries[2 * q];
    ts.xs[q] = xpad + t * cols;
    ts.xb[q] = xpad16 ? xpad16 + t * cols : nullptr;
    ts.xq[q] = xq8 ? xq8 + t * kernels::x_int8_bytes(cols) : nullptr;
  }
  // Pairs q0 .. q0 + mq: rows r0 .. r0 + nr from dk / du (out[q·nr + r]) plus the biases, to emit.
  const auto emit_dots = [&](index_t q0, index_t mq, index_t r0, index_t nr, const float* dk,
                             const float* du) {
    for (index_t q = 0; q < mq; ++q)
      for (index_t r = 0; r < nr; ++r) {
        const index_t e = q0 + q, i = r0 + r, neuron = b * G + i;
        const float pre = dk[q * nr + r] + (w.b1 ? w.b1[neuron] : 0.0f);
        const float u = Act::gated ? du[q * nr + r] + (w.b3 ? w.b3[neuron] : 0.0f) : 0.0f;
        emit(static_cast<index_t>(entries[2 * e]), static_cast<index_t>(entries[2 * e + 1]), i, pre, u);
      }
  };
  if (ts.panel && ops.dots_amx && G % 16 == 0 && m >= ops.amx_min_tokens) {
    // AMX (bf16 on the amx level): all G rows of keys (and up rows, on the same x panel) for up to 16
    // tokens per call.
    float* dk = ts.amx_out;
    float* du = ts.amx_out + 16 * G;
    for (index_t q0 = 0; q0 < m; q0 += 16) {
      const index_t mq = std::min<index_t>(16, m - q0);
      ops.dots_amx(ts.xb + q0, mq, w.keys(b), G, l.ld, cols, ts.panel, false, dk, G);
      if constexpr (Act::gated) ops.dots_amx(ts.xb + q0, mq, w.up(b), G, l.ld, cols, ts.panel, true, du, G);
      emit_dots(q0, mq, 0, G, dk, du);
    }
    return;
  }
  if constexpr (is_quantized<T>::value)
    if (ts.panel && l.key_tiles && ops.dots_tiles_amx && G % 16 == 0 && m >= ops.amx_min_tokens) {
      // AMX (q8/q4 key tiles on the amx level): the same bits as dots_tiles. Up to 16 tokens per call,
      // as many in each (20 tokens: 10 and 10, not 16 and 4: the kernel's cost per call hardly depends on
      // its tokens).
      float* dk = ts.amx_out;
      float* du = ts.amx_out + 16 * G;
      auto* panel = reinterpret_cast<std::uint8_t*>(ts.panel);
      const auto* keys = reinterpret_cast<const std::uint8_t*>(w.keys(b));
      const index_t calls = (m + 15) / 16, per = (m + calls - 1) / calls;
      for (index_t q0 = 0; q0 < m; q0 += per) {
        const index_t mq = std::min<index_t>(per, m - q0);
        ops.dots_tiles_amx(ts.xq + q0, mq, keys, G, 16 * l.ld, cols, panel, false, dk, G);
        if constexpr (Act::gated)
          ops.dots_tiles_amx(ts.xq + q0, mq, reinterpret_cast<const std::uint8_t*>(w.up(b)), G, 16 * l.ld,
                             cols, panel, true, du, G);
        emit_dots(q0, mq, 0, G, dk, du);
      }
      return;
    }
  if constexpr (is_quantized<T>::value)
    if (l.key_tiles && ops.dots_tiles && G % key_tile<T>::rows == 0) {
      // Key tiles: up to k_max_tile_key_rows rows (4 tiles) per call, which few tokens walk side by side.
      constexpr index_t RT = G < kernels::k_max_tile_key_rows ? G : kernels::k_max_tile_key_rows;
      float* dk = ts.dots;
      float* du = ts.dots + m * RT;
      const auto at = [&](const T* rows) { return reinterpret_cast<const std::uint8_t*>(rows); };
      for (index_t r0 = 0; r0 < G; r0 += RT) {
        ops.dots_tiles(ts.xq, m, at(w.keys(b) + r0 * l.ld), RT, key_tile<T>::rows * l.ld, cols, ts.spill, dk);
        if constexpr (Act::gated)
          ops.dots_tiles(ts.xq, m, at(w.up(b) + r0 * l.ld), RT, key_tile<T>::rows * l.ld, cols, ts.spill, du);
        emit_dots(0, m, r0, RT, dk, du);
      }
      return;
    }
  // R rows at a time (one register tile of rows), so the scratch stays 2 × m × R floats for any g.
  constexpr index_t R = G < kernels::k_max_key_r ? G : kernels::k_max_key_r;
  float* dk = ts.dots;
  float* du = ts.dots + m * R;  // gated: up projections after the key dots
  // The R rows at `rows` (key tiles on a level without dots_tiles: R = 16, the tile unpacked into rows).
  const auto dots_of = [&](const T* rows, float* out) {
    if constexpr (is_quantized<T>::value)
      if (l.key_tiles) {
        static_assert(R == key_tile<T>::rows || G % key_tile<T>::rows != 0, "one tile per call");
        const auto* tile = reinterpret_cast<const std::uint8_t*>(rows);
        key_tile<T>::unpack(tile, cols, reinterpret_cast<T*>(ts.tile_rows), l.ld);
        rows = reinterpret_cast<const T*>(ts.tile_rows);
      }
    ops.dots(ts.xs, ts.xb, ts.xq, m, rows, R, l.ld, cols, ts.spill, out);
  };
  for (index_t r0 = 0; r0 < G; r0 += R) {
    dots_of(w.keys(b) + r0 * l.ld, dk);
    if constexpr (Act::gated) dots_of(w.up(b) + r0 * l.ld, du);
    emit_dots(0, m, r0, R, dk, du);
  }
}

/// Value pass of one block over columns [c_lo, c_hi) for its m (token, slot) pairs (each adding into
/// its token's partial accumulator yacc[2t + part]): groups of up to
/// rows_m tokens, each streaming the block's value rows that are nonzero for one of its tokens.
/// (Measured on AVX-512: row streaming beats an M×C register tile walking column tiles by ~18% at
/// batch 64, because the tile's strided walk over 64 rows defeats the hardware prefetcher.)
template <int G, class T>
void value_block(const kernels::kernel_ops<T>& ops, const blocked_ffn_view<T>& w, index_t b,
                 const std::int32_t* entries, index_t m, index_t k, const float* h, const float* weights,
                 const std::uint8_t* part, float* yacc, index_t cols, index_t c_lo, index_t c_hi,
                 const thread_scratch& ts) {
  const index_t RM = ops.rows_m;
  const index_t ld = w.layout.ld;  // weight row stride; y accumulators have cols floats
  const T* values = w.values(b);
  bool tiles = false;  // value tiles read by kernel_ops::apply_tiles, one tile (32 rows) at a time
  if constexpr (is_quantized<T>::value)
    if (w.layout.value_tiles) {
      if (ops.apply_tiles) {
        tiles = true;
      } else {  // this level has no tile kernel: the block's tiles unpacked into rows, then apply_rows
        using VT = value_tile<T>;
        for (int i = 0; i < G; i += VT::rows)
          VT::unpack(reinterpret_cast<const std::uint8_t*>(values + i * ld), cols,
                     reinterpret_cast<T*>(ts.tile_rows) + i * ld, ld);
        values = reinterpret_cast<const T*>(ts.tile_rows);
      }
    }
  for (index_t q = 0; q < m; ++q) {  // coefficients s = weight × activation
    const index_t t = entries[2 * q], j = entries[2 * q + 1];
    const float wt = weights[t * k + j];
    const float* ht = h + (t * k + j) * G;
    float* sq = ts.s + q * G;
    for (int i = 0; i < G; ++i) sq[i] = wt * ht[i];
    ts.ys[q] = yacc + (2 * t + part[t * k + j]) * cols;
    ts.sp[q] = sq;
  }
  if constexpr (is_quantized<T>::value)
    if (tiles && ts.qscale && m >= ops.amx_value_min_tokens) {
      // AMX (q8/q4 value tiles on the amx level): each tile dequantised to bf16 once per call (up to 64
      // tokens, as many in each).
      const index_t calls = (m + 63) / 64, per = (m + calls - 1) / calls;
      for (index_t q0 = 0; q0 < m; q0 += per)
        ops.apply_tiles_amx(ts.ys + q0, ts.sp + q0, std::min<index_t>(per, m - q0),
                            reinterpret_cast<const std::uint8_t*>(values),
                            value_tile<T>::rows * ld * static_cast<index_t>(sizeof(T)), G, cols, c_lo, c_hi,
                            ts.qscale);
      return;
    }
  if (ops.apply_amx && G % 32 == 0 && m >= ops.amx_min_tokens) {  // AMX: 16 tokens per call, all rows
    for (index_t q0 = 0; q0 < m; q0 += 16)
      ops.apply_amx(ts.ys + q0, ts.sp + q0, std::min<index_t>(16, m - q0), values, ld, G, c_lo, c_hi);
    return;
  }
  for (index_t q0 = 0; q0 < m; q0 += RM) {
    const index_t q1 = std::min<index_t>(m, q0 + RM);
    index_t nr = 0;
    for (int i = 0; i < G; ++i) {
      bool any = false;
      for (index_t q = q0; q < q1; ++q) any |= ts.s[q * G + i] != 0.0f;
      if (any) ts.rows[nr++] = i;
    }
    if (nr == 0) continue;
    if constexpr (is_quantized<T>::value)
      if (tiles) {
        // Each tile holding a listed row: the same 32-row chunks, coefficients and bits as apply_rows
        // on the rows (an unlisted row's s is 0 for every token of the group).
        constexpr index_t TR = value_tile<T>::rows;
        const float* sp[kernels::k_max_rows_m];
        for (index_t i = 0, tile = -1; i < nr; ++i) {
          if (ts.rows[i] / TR == tile) continue;
          tile = ts.rows[i] / TR;
          for (index_t q = q0; q < q1; ++q) sp[q - q0] = ts.sp[q] + tile * TR;
          ops.apply_tiles(ts.ys + q0, sp, q1 - q0,
                          reinterpret_cast<const std::uint8_t*>(values + tile * TR * ld), cols, c_lo, c_hi);
        }
        continue;
      }
    ops.apply_rows(ts.ys + q0, ts.sp + q0, q1 - q0, ts.rows, nr, values, ld, cols, c_lo, c_hi);
  }
}

/// The whole fast forward (see the file comment). `args` null = use `given`; `y` null = route only.
template <class Policy>
void fast_run(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const io_rows& io,
              const route_args* args, const_routing_view given, routing_view* route_out,
              const forward_cache* cache, workspace& ws) {
  using T = typename Policy::dtype;
  using Sel = typename Policy::selector;
  using Act = typename Policy::activation;
  constexpr int G = Policy::block_size;
  const block_layout& l = w.layout;
  const index_t k = args ? args->k : given.k, d = l.d_model, ld = l.ld, B = l.num_blocks, F = l.d_ff;
  const index_t cols = row_cols<T>(l);
  if (n == 0) return;
  const bool compute = io.y != nullptr;
  const int threads = max_threads();
  const kernels::kernel_ops<T>& ops = kernels::ops_for<T>(active_isa());
  const index_t KR = ops.key_r;

  // Key or value tiles where this level has no kernel for them: each key tile is unpacked into a
  // thread's 16 rows, a block's value tiles into its g rows.
  const index_t tile_rows =
      std::max<index_t>(l.key_tiles && !ops.dots_tiles ? 16 : 0, l.value_tiles && !ops.apply_tiles ? G : 0);
  const index_t tile_bytes =
      sparse_ffn::detail::checked_mul(tile_rows * static_cast<index_t>(sizeof(T)), ld, "workspace");
  arena_plan sizing(nullptr);
  const bool amx_keys =
      (ops.dots_amx != nullptr || (ops.dots_tiles_amx != nullptr && l.key_tiles)) && G % 16 == 0;
  const index_t qscale_floats = compute && l.value_tiles && ops.apply_tiles_amx && G % 32 == 0
                                    ? kernels::amx_quant_scale_floats(cols)
                                    : 0;
  plan_buffers<Sel, Act>(sizing, l, cols, n, k, threads, compute, ops.bf16_x, ops.int8_x, tile_bytes,
                         amx_keys, qscale_floats);
  ws.reserve(sizing.bytes());
  arena_plan carve(ws.data());
  const fast_buffers f = plan_buffers<Sel, Act>(carve, l, cols, n, k, threads, compute, ops.bf16_x,
                                                ops.int8_x, tile_bytes, amx_keys, qscale_floats);
  // Values: items of both partials over a column range (joint) where the batch averages
  // amx_value_min_tokens per block (the AMX q8/q4 value kernel's threshold); else one partial each (see
  // phase 4). A function of the batch's shape only, so not of the thread count.
  const bool joint = qscale_floats && n * k >= ops.amx_value_min_tokens * B;
  for (const thread_scratch& t : f.per_thread)  // the rows' padding is never written by unpack
    if (t.tile_rows) std::memset(t.tile_rows, 0, static_cast<std::size_t>(tile_bytes));
  float* const cache_pre = cache ? cache->pre : nullptr;
  float* const cache_up = cache ? cache->up : nullptr;

#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const int tid = thread_id(), nth = num_threads();
    const thread_scratch& ts = f.per_thread[static_cast<std::size_t>(tid)];
    // ---- inputs ---------------------------------------------------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t t = 0; t < n; ++t) {
      float* xp = f.xpad + t * cols;
      load_row(io, t, d, xp);
      for (index_t c = d; c < cols; ++c) xp[c] = 0.0f;
      if (f.xpad16)
        for (index_t c = 0; c < cols; ++c) f.xpad16[t * cols + c] = bfloat16_t(xp[c]);
      if constexpr (is_quantized<T>::value)
        if (f.xq8) ops.prepare_x_int8(xp, cols, f.xq8 + t * kernels::x_int8_bytes(cols));
      if (compute) std::fill(f.yacc + 2 * t * cols, f.yacc + 2 * (t + 1) * cols, 0.0f);
      f.all_tokens[2 * t] = static_cast<std::int32_t>(t);
      f.all_tokens[2 * t + 1] = 0;
    }
    // ---- 1. route -------------------------------------------------------------------------------
    if (!args) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t)
        for (index_t j = 0; j < k; ++j) {
          f.blocks[t * k + j] = given.blocks[t * k + j];
          f.weights[t * k + j] = given.weights ? given.weights[t * k + j] : 1.0f;
        }
    } else if constexpr (Sel::scoring == scoring_kind::token) {
      std::vector<block_index_t> unused;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t)
        Sel::template route_token<T, Act>(w, nullptr, t, *args, nullptr, unused, f.blocks + t * k,
                                          f.weights + t * k);
    } else if constexpr (Sel::scoring == scoring_kind::linear) {
      const T* rows = Sel::linear_rows(w);
      const float* bias = Sel::linear_bias(w);
      float* const logits = cache ? cache->logits : nullptr;  // learned gate only (check_cache_logits)
      const index_t P = w.layout.pinned;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)  // each thread one contiguous run of rows
#endif
      for (index_t b0 = 0; b0 < B; b0 += KR) {
        const int rr = static_cast<int>(std::min<index_t>(KR, B - b0));
        for (index_t t = 0; t < n; ++t) {
          ts.xs[t] = f.xpad + t * cols;
          ts.xb[t] = f.xpad16 ? f.xpad16 + t * cols : nullptr;
          ts.xq[t] = f.xq8 ? f.xq8 + t * kernels::x_int8_bytes(cols) : nullptr;
        }
        ops.dots(ts.xs, ts.xb, ts.xq, n, rows + b0 * ld, rr, ld, cols, ts.spill, ts.dots);
        for (index_t t = 0; t < n; ++t)
          for (int r = 0; r < rr; ++r) {
            const float s = Sel::linear_score(ts.dots[t * rr + r], bias ? bias[b0 + r] : 0.0f);
            f.scores[t * B + b0 + r] = ranking_score(s, b0 + r, P);
            if (logits && b0 + r >= P) logits[t * B + b0 + r] = s;
          }
      }
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t) {
        topk(f.scores + t * B, B, k, f.blocks + t * k, f.topk_scratch + tid * B);
        Sel::weights(f.scores + t * B, B, w.layout.pinned, f.blocks + t * k, k, *args, f.weights + t * k);
      }
    } else {  // dense scoring (oracle): every activation, then block scores
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
      for (index_t b = 0; b < B; ++b)
        key_block<G, T, Act>(ops, w, b, f.all_tokens, n, f.xpad, f.xpad16, f.xq8, cols, ts,
                             [&](index_t t, index_t, index_t i, float pre, float u) {
                               f.pre_all[t * F + b * G + i] = pre;
                               if constexpr (Act::gated) f.up_all[t * F + b * G + i] = u;
                             });
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t) {
        for (index_t b = 0; b < B; ++b) {
          float s = 0.0f;
          for (index_t i = 0; i < G; ++i) {
            const index_t at = t * F + b * G + i;
            s += Sel::neuron_score(activate<Act>(f.pre_all[at], Act::gated ? f.up_all[at] : 0.0f));
          }
          f.scores[t * B + b] = ranking_score(s, b, w.layout.pinned);
        }
        topk(f.scores + t * B, B, k, f.blocks + t * k, f.topk_scratch + tid * B);
        for (index_t j = 0; j < k; ++j) f.weights[t * k + j] = 1.0f;
      }
    }
    // ---- routing outputs ------------------------------------------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t t = 0; t < n; ++t) {
      if (route_out) {
        std::copy(f.blocks + t * k, f.blocks + (t + 1) * k, route_out->blocks + t * k);
        if (route_out->weights)
          std::copy(f.weights + t * k, f.weights + (t + 1) * k, route_out->weights + t * k);
      }
      if (cache && cache->blocks) std::copy(f.blocks + t * k, f.blocks + (t + 1) * k, cache->blocks + t * k);
      if (cache && cache->weights)
        std::copy(f.weights + t * k, f.weights + (t + 1) * k, cache->weights + t * k);
    }
    if (compute) {
      // ---- 2. group (token, slot) pairs by block --------------------------------------------------
#if SPARSE_FFN_HAS_OPENMP
#pragma omp single
#endif
      {
        // Partials: a token's selected blocks in ascending order, the first half adds into accumulator
        // 0 and the rest into 1 (a function of the token's own routing: batch invariant).
        for (index_t t = 0; t < n; ++t)
          for (index_t j = 0; j < k; ++j) {
            index_t rank = 0;
            for (index_t j2 = 0; j2 < k; ++j2) rank += f.blocks[t * k + j2] < f.blocks[t * k + j];
            f.part[t * k + j] = static_cast<std::uint8_t>(rank >= (k + 1) / 2);
          }
        // Pairs by block, each block's partial-0 pairs first; cursor[b]: where its partial-1 pairs begin.
        group_by_block(f.blocks, n, k, B, f.offsets, f.cursor, f.entries, f.part);
      }  // implicit barrier
      // ---- 3. keys --------------------------------------------------------------------------------
      auto emit = [&](index_t t, index_t j, index_t i, float pre, float u) {
        const index_t at = (t * k + j) * G + i;
        f.h[at] = activate<Act>(pre, u);
        if (cache_pre) cache_pre[at] = pre;
        if constexpr (Act::gated)
          if (cache_up) cache_up[at] = u;
      };
      // Dense scoring computed every pre-activation already; they are reused where the key pass gives a
      // token the same bits in any group (q8/q4's AMX key pass included). With bf16's AMX key pass
      // (groups of >= amx_min_tokens) the chosen blocks' key pass runs again, so that forward() and
      // forward_routed() on its routing agree.
      const bool reuse_dense = Sel::scoring == scoring_kind::dense && args && !(amx_keys && ops.dots_amx);
      if constexpr (Sel::scoring == scoring_kind::dense) {
        if (reuse_dense) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
          for (index_t t = 0; t < n; ++t)
            for (index_t j = 0; j < k; ++j)
              for (index_t i = 0; i < G; ++i) {
                const index_t at = t * F + f.blocks[t * k + j] * G + i;
                emit(t, j, i, f.pre_all[at], Act::gated ? f.up_all[at] : 0.0f);
              }
        }
      }
      if (!reuse_dense) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, (256 / G > 1 ? 256 / G : 1))
#endif
        for (index_t b = 0; b < B; ++b) {
          const index_t m = f.offsets[b + 1] - f.offsets[b];
          if (m)
            key_block<G, T, Act>(ops, w, b, f.entries + 2 * f.offsets[b], m, f.xpad, f.xpad16, f.xq8, cols,
                                 ts, emit);
        }
      }
      // ---- 4. values ------------------------------------------------------------------------------
      // Work items: (partial, column range), max(1, threads / 2) ranges per partial (with 2 threads, one
      // partial each over all the columns). An item walks the blocks in order and applies each block's
      // pairs of its partial, so every accumulator is written by one item, blocks ascending: the same
      // bits for any number of threads and any batch. Against every thread owning a column range of
      // every block (before 2026-12-05 at batch > 1), each thread streams whole value rows: on Zen 4 at
      // batch 8, 8–15% less time in the q8/q4 value pass, though a block selected by tokens of both
      // partials is read twice (~6% more blocks at batch 8, ~19% at 64; docs/benchmarks.md, stop 48).
      // Joint (q8/q4 value tiles on amx, batches averaging amx_value_min_tokens per block):
      // items are column ranges of both partials, threads of them, so that the AMX value kernel, whose
      // cost is dequantising each tile once per call, gets every token of a block in one call (twice the
      // tokens per dequantisation; docs/benchmarks.md, stop 55). Each accumulator is still written by one
      // item, blocks ascending.
      {
        const index_t ranges = joint ? nth : std::max(1, nth / 2), gran = ops.col_step, vecs = cols / gran;
        const index_t per_range = joint ? 1 : 2;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static, 1) nowait
#endif
        for (index_t item = 0; item < per_range * ranges; ++item) {
          const bool second = item % per_range != 0;
          const index_t r = item / per_range, c_lo = vecs * r / ranges * gran,
                        c_hi = vecs * (r + 1) / ranges * gran;
          for (index_t b = 0; b < B && c_lo < c_hi; ++b) {
            const index_t lo = second ? f.cursor[b] : f.offsets[b],
                          hi = second || joint ? f.offsets[b + 1] : f.cursor[b];
            if (hi > lo)
              value_block<G, T>(ops, w, b, f.entries + 2 * lo, hi - lo, k, f.h, f.weights, f.part, f.yacc,
                                cols, c_lo, c_hi, ts);
          }
        }
      }
#if SPARSE_FFN_HAS_OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < n; ++t)
        store_row(io, t, d, f.yacc + 2 * t * cols, f.yacc + (2 * t + 1) * cols, w.b2);
    }
  }
}

}  // namespace detail
}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
