// sparse_ffn — the dense FFN view and the block-contiguous layout every kernel reads.
//
// Dense input (PyTorch nn.Linear conventions, row-major, contiguous):
//   W1 [d_ff × d_model]  row i = key i            b1 [d_ff]
//   W2 [d_model × d_ff]  column i = value i       b2 [d_model]
//   W3 [d_ff × d_model]  gated FFNs only ("up")   b3 [d_ff]
//   y = W2 · act(W1 x + b1) + b2           or, gated,   y = W2 · (act(W1 x + b1) ⊙ (W3 x + b3)) + b2
//
// Blocked layout: the d_ff neurons, optionally permuted, form B = d_ff / g blocks of g neurons. Block b
// is one contiguous run of `block_stride()` elements:
//
//   [ keys   g × ld ]   row i = W1 row of neuron perm[b*g+i]
//   [ up     g × ld ]   gated only: W3 rows
//   [ values g × ld ]   row i = W2 column of neuron perm[b*g+i], stored as a row
//
// ld ≥ d_model pads each row with zeros to an odd number of 64-byte lines, so every row starts on a
// cache line (and on a 16-byte boundary for the GPU), vector loops need no tail over the weights, and
// the rows of a block do not alias in the caches. A kernel that
// computes one block reads exactly one contiguous range, once. Biases are kept in float, in packed
// order. Per-block selector data (Avg-K centroids, learned-gate rows) are [B × ld] matrices of T.
//
// Pinned blocks: the first `pinned` blocks (0 by default) are computed by every token, outside the
// top-k (shared experts, PowerInfer's hot neurons; the converter puts a layer's outsized neurons
// there). A selector ranks them first and fills the rest of a token's k blocks from the others, so
// route_args::k counts them and every table stays [n × k] (selector/selector.hpp).
#pragma once

#include <cstdint>
#include <limits>

#include "config.hpp"
#include "error.hpp"
#include "quant.hpp"
#include "types.hpp"

namespace sparse_ffn {

/// Shape and strides of a blocked FFN. All offsets are in elements and 64-bit.
struct block_layout {
  index_t d_model = 0;
  index_t d_ff = 0;
  index_t g = 0;           ///< neurons per block
  index_t num_blocks = 0;  ///< B = d_ff / g
  index_t ld = 0;          ///< row stride in elements (>= d_model)
  bool gated = false;
  index_t pinned = 0;  ///< blocks [0, pinned) are computed by every token (0 <= pinned <= B)
  /// Keys (and up rows) stored as key tiles, 16 rows of a block per tile in the space of those rows
  /// (quant.hpp key_tile): q8/q4 with g a multiple of 16, set by blocked_ffn::tile_keys. Only the CPU
  /// forward (cpu::forward, forward_routed, route) reads such a model; every other entry point refuses it.
  bool key_tiles = false;
  /// Value rows stored as value tiles, 32 rows of a block per tile in the space of those rows (quant.hpp
  /// value_tile): q8/q4 with g a multiple of 32, set by blocked_ffn::tile_values. Read like key tiles:
  /// only by the CPU forward.
  bool value_tiles = false;

  SPARSE_FFN_HD index_t matrices() const { return gated ? 3 : 2; }
  SPARSE_FFN_HD index_t matrix_stride() const { return g * ld; }
  SPARSE_FFN_HD index_t block_stride() const { return matrices() * g * ld; }
  SPARSE_FFN_HD index_t key_offset(index_t b) const { return b * block_stride(); }
  SPARSE_FFN_HD index_t up_offset(index_t b) const { return b * block_stride() + g * ld; }
  SPARSE_FFN_HD index_t value_offset(index_t b) const {
    return b * block_stride() + (matrices() - 1) * g * ld;
  }
  SPARSE_FFN_HD index_t total_elements() const { return num_blocks * block_stride(); }
  /// Bytes of weights a kernel reads for one block (keys, up, values; padding included).
  template <class T>
  SPARSE_FFN_HD index_t block_bytes() const {
    return block_stride() * static_cast<index_t>(sizeof(T));
  }
};

/// Row stride (units of T): the row (d_model elements; quantised: quants and scales, quant.hpp) padded
/// to whole 64-byte lines, plus one line when the count of lines is even. An odd line stride spreads
/// consecutive rows over all L1/L2 sets; a power-of-two stride (d = 4096 floats: 16 KiB) would map
/// every row of a block to the same set and thrash.
template <class T>
constexpr index_t padded_ld(index_t d_model) {
  return row_format<T>::ld(d_model);
}

/// Values per row the CPU kernels walk: x, y and accumulators are padded to it (= ld for the element
/// dtypes; d_model rounded up to 64 for the quantised ones).
template <class T>
constexpr index_t padded_cols(index_t d_model) {
  return row_format<T>::cols(d_model);
}

/// Values per row the CPU kernels walk for a layout: ld for the element dtypes (a hand-made view's
/// larger ld included), padded_cols for the quantised ones.
template <class T>
constexpr index_t row_cols(const block_layout& l) {
  return row_format<T>::quantized ? padded_cols<T>(l.d_model) : l.ld;
}

/// Builds and validates a layout: g ≥ 1 divides d_ff, B < 2^31, all offsets fit in 64 bits.
template <class T>
block_layout make_layout(index_t d_model, index_t d_ff, index_t g, bool gated) {
  using detail::require;
  require(d_model > 0, status::invalid_shape, "d_model must be positive (got ", d_model, ")");
  require(d_ff > 0, status::invalid_shape, "d_ff must be positive (got ", d_ff, ")");
  require(g > 0, status::invalid_argument, "block size g must be positive (got ", g, ")");
  require(d_ff % g == 0, status::invalid_shape, "d_ff (", d_ff, ") is not divisible by block size g (", g,
          ")");
  require(d_ff <= std::numeric_limits<std::int32_t>::max(), status::size_overflow, "d_ff (", d_ff,
          ") must be < 2^31");
  require(d_model <= std::numeric_limits<std::int32_t>::max() - 64, status::size_overflow, "d_model (",
          d_model, ") must be < 2^31 - 64");
  block_layout l;
  l.d_model = d_model;
  l.d_ff = d_ff;
  l.g = g;
  l.num_blocks = d_ff / g;
  l.ld = padded_ld<T>(d_model);
  l.gated = gated;
  // Every offset a kernel forms is < total_elements * sizeof(T); make sure that fits.
  const index_t per_block = detail::checked_mul(l.matrices() * g, l.ld, "block size");
  detail::checked_elements<T>(per_block, l.num_blocks, "blocked weights");
  return l;
}

/// Non-owning view of a dense FFN in PyTorch layout (see the file comment). Biases are optional
/// (null = zero); `w3` is non-null exactly for gated FFNs.
template <class T>
struct dense_ffn_view {
  index_t d_model = 0;
  index_t d_ff = 0;
  const T* w1 = nullptr;  ///< [d_ff × d_model]
  const T* b1 = nullptr;  ///< [d_ff] or null
  const T* w2 = nullptr;  ///< [d_model × d_ff]
  const T* b2 = nullptr;  ///< [d_model] or null
  const T* w3 = nullptr;  ///< [d_ff × d_model], gated FFNs only
  const T* b3 = nullptr;  ///< [d_ff] or null, gated FFNs only

  bool gated() const { return w3 != nullptr; }
};

/// Checks a dense view: positive shapes, required pointers, element alignment, no 64-bit overflow.
template <class T>
void validate(const dense_ffn_view<T>& d) {
  using detail::require;
  require(d.d_model > 0 && d.d_ff > 0, status::invalid_shape,
          "dense FFN shape must be positive (d_model=", d.d_model, ", d_ff=", d.d_ff, ")");
  detail::checked_elements<T>(d.d_model, d.d_ff, "dense FFN weights");
  detail::require_not_null(d.w1, "dense W1");
  detail::require_not_null(d.w2, "dense W2");
  require(d.b3 == nullptr || d.w3 != nullptr, status::invalid_argument,
          "dense b3 given without W3 (b3 is the bias of the gated FFN's up projection)");
  const T* const dense_ptrs[] = {d.w1, d.b1, d.w2, d.b2, d.w3, d.b3};
  for (const T* p : dense_ptrs)
    if (p) detail::require_aligned<T>(p, "dense FFN weight/bias pointer");
}

/// Non-owning view of a blocked FFN (what every kernel takes). Produced by `blocked_ffn<T>::view()`
/// or assembled by hand over the caller's own buffers (then `validate()` it).
template <class T>
struct blocked_ffn_view {
  using value_type = T;

  block_layout layout;
  const T* weights = nullptr;            ///< [B × block_stride], 64-byte aligned
  const float* b1 = nullptr;             ///< [d_ff] key biases, packed order; null = 0
  const float* b3 = nullptr;             ///< [d_ff] up biases (gated), packed order; null = 0
  const float* b2 = nullptr;             ///< [d_model] output bias; null = 0
  const T* centroids = nullptr;          ///< [B × ld] mean key of each block (Avg-K); null = absent
  const float* centroid_bias = nullptr;  ///< [B] mean b1 of each block (Avg-K); null = 0
  const T* gate_w = nullptr;             ///< [B × ld] learned-gate rows; null = absent
  const float* gate_b = nullptr;         ///< [B] learned-gate bias; null = 0
  const std::int32_t* perm = nullptr;    ///< [d_ff] packed position -> original neuron; null = identity

  SPARSE_FFN_HD const T* keys(index_t b) const { return weights + layout.key_offset(b); }
  SPARSE_FFN_HD const T* up(index_t b) const { return weights + layout.up_offset(b); }
  SPARSE_FFN_HD const T* values(index_t b) const { return weights + layout.value_offset(b); }
  SPARSE_FFN_HD const T* centroid(index_t b) const { return centroids + b * layout.ld; }
  SPARSE_FFN_HD const T* gate_row(index_t b) const { return gate_w + b * layout.ld; }
};

/// Checks a blocked view: layout consistent with its own fields, pointers non-null where required and
/// 64-byte aligned (weights, centroids, gate rows), the row stride a 64-byte multiple.
template <class T>
void validate(const blocked_ffn_view<T>& w) {
  using detail::require;
  const block_layout& l = w.layout;
  const block_layout expect = make_layout<T>(l.d_model, l.d_ff, l.g, l.gated);
  require(l.num_blocks == expect.num_blocks, status::invalid_shape, "layout.num_blocks (", l.num_blocks,
          ") != d_ff / g (", expect.num_blocks, ")");
  require(l.pinned >= 0 && l.pinned <= l.num_blocks, status::invalid_shape, "layout.pinned (", l.pinned,
          ") must be in [0, B] where B = ", l.num_blocks);
  require(l.ld >= row_format<T>::min_ld(l.d_model), status::invalid_shape, "layout.ld (", l.ld,
          ") must be >= ", row_format<T>::min_ld(l.d_model), " for d_model ", l.d_model, " and dtype ",
          dtype_traits<T>::name);
  // Every product below is checked before it is formed (a hand-made view may carry any ld).
  const index_t row_bytes = detail::checked_mul(l.ld, static_cast<index_t>(sizeof(T)), "layout.ld");
  require(row_bytes % 64 == 0, status::invalid_shape, "layout.ld (", l.ld,
          ") must be a multiple of 64 bytes");
  const index_t stride =
      detail::checked_mul(detail::checked_mul(l.matrices(), l.g, "block size"), l.ld, "block size");
  detail::checked_elements<T>(stride, l.num_blocks, "blocked weights");
  detail::checked_mul(l.num_blocks, l.ld, "per-block selector rows");
  detail::require_not_null(w.weights, "blocked weights");
  detail::require_aligned<T>(w.weights, "blocked weights", k_row_alignment);
  if (w.centroids) detail::require_aligned<T>(w.centroids, "centroids", k_row_alignment);
  if (w.gate_w) detail::require_aligned<T>(w.gate_w, "learned-gate weights", k_row_alignment);
  const float* const bias_ptrs[] = {w.b1, w.b3, w.b2, w.centroid_bias, w.gate_b};
  for (const float* p : bias_ptrs)
    if (p) detail::require_aligned<float>(p, "bias pointer");
  require(w.b3 == nullptr || l.gated, status::invalid_argument, "b3 given for a non-gated FFN");
  if (l.key_tiles)
    require(is_quantized<T>::value && l.g % 16 == 0, status::invalid_argument,
            "layout.key_tiles needs q8/q4 weights and g a multiple of 16 (dtype ", dtype_traits<T>::name,
            ", g = ", l.g, ")");
  if (l.value_tiles)
    require(is_quantized<T>::value && l.g % 32 == 0, status::invalid_argument,
            "layout.value_tiles needs q8/q4 weights and g a multiple of 32 (dtype ", dtype_traits<T>::name,
            ", g = ", l.g, ")");
}

namespace detail {

/// For entry points that read key rows as rows (all but the CPU forward): refuses key tiles.
inline void require_key_rows(const block_layout& l, const char* what) {
  require(!l.key_tiles, status::unsupported, what,
          " reads key rows, but this model's keys are key tiles (blocked_ffn::tile_keys, a form only the CPU "
          "forward reads): use the model from before tile_keys, or call untile_keys()");
}

/// For entry points that read value rows as rows: refuses value tiles.
inline void require_value_rows(const block_layout& l, const char* what) {
  require(!l.value_tiles, status::unsupported, what,
          " reads value rows, but this model's values are value tiles (blocked_ffn::tile_values, a form only "
          "the CPU forward reads): use the model from before tile_values, or call untile_values()");
}

/// For entry points that read both as rows (all but the CPU forward): refuses key and value tiles.
inline void require_rows(const block_layout& l, const char* what) {
  require_key_rows(l, what);
  require_value_rows(l, what);
}

}  // namespace detail

}  // namespace sparse_ffn
