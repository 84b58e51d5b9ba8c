// sparse_ffn — owning containers and packing a dense FFN into the blocked layout (host only).
//
//   dense_ffn<T>    owning dense FFN in PyTorch layout (view(): dense_ffn_view<T>)
//   blocked_ffn<T>  owning blocked FFN (view(): blocked_ffn_view<T>, what kernels take)
//   pack<T>(dense, options)   dense (any dtype) -> blocked T, with an optional neuron permutation;
//                             T = q8_t / q4_t quantises every row (quant.hpp) from the float packing
//   unpack(view)              blocked -> dense float in the original neuron order (inverse of pack;
//                             quantised models give their dequantised weights)
#pragma once

#include <cmath>
#include <exception>
#include <utility>
#include <vector>

#include "detail/aligned_buffer.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "quant.hpp"
#include "types.hpp"

namespace sparse_ffn {

/// Owning dense FFN (PyTorch layout). Empty bias vectors mean "no bias"; empty w3 means not gated.
template <class T>
struct dense_ffn {
  index_t d_model = 0;
  index_t d_ff = 0;
  std::vector<T> w1, b1, w2, b2, w3, b3;

  dense_ffn() = default;
  dense_ffn(index_t d_model_, index_t d_ff_, bool gated, bool biases) : d_model(d_model_), d_ff(d_ff_) {
    const index_t n = detail::checked_elements<T>(d_model_, d_ff_, "dense FFN");
    w1.resize(static_cast<std::size_t>(n));
    w2.resize(static_cast<std::size_t>(n));
    if (gated) w3.resize(static_cast<std::size_t>(n));
    if (biases) {
      b1.resize(static_cast<std::size_t>(d_ff_));
      b2.resize(static_cast<std::size_t>(d_model_));
      if (gated) b3.resize(static_cast<std::size_t>(d_ff_));
    }
  }
  bool gated() const { return !w3.empty(); }

  dense_ffn_view<T> view() const {
    auto ptr = [](const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); };
    return {d_model, d_ff, ptr(w1), ptr(b1), ptr(w2), ptr(b2), ptr(w3), ptr(b3)};
  }
};

/// Options of `pack`.
struct pack_options {
  index_t g = 0;  ///< neurons per block; must divide d_ff
  /// [d_ff] neuron permutation: packed position j holds original neuron permutation[j] (block b is
  /// positions b*g .. b*g+g-1). Null = identity. Must be a bijection on [0, d_ff).
  const std::int32_t* permutation = nullptr;
  const float* gate_w = nullptr;  ///< [B × d_model] learned-gate weights (optional)
  const float* gate_b = nullptr;  ///< [B] learned-gate bias (optional; needs gate_w)
  bool centroids = true;          ///< compute Avg-K centroids (mean key per block)
  /// Blocks [0, pinned) (in packed order, after the permutation) are computed by every token, outside
  /// the top-k (layout.hpp). 0 <= pinned <= B.
  index_t pinned = 0;
};

/// Owning blocked FFN: 64-byte aligned weights in the layout of layout.hpp plus float biases, optional
/// selector data and the neuron permutation. Copyable; `view()` is what kernels take.
template <class T>
class blocked_ffn {
  static_assert(is_weight_dtype<T>::value,
                "sparse_ffn: blocked_ffn<T> needs T = float, half_t, bfloat16_t, q8_t or q4_t");
  using row = row_format<T>;

 public:
  using value_type = T;

  blocked_ffn() = default;
  /// Zero weights and identity permutation for a validated layout (see make_layout).
  explicit blocked_ffn(const block_layout& l)
      : layout_(l), weights_(l.total_elements()), perm_(static_cast<std::size_t>(l.d_ff)) {
    for (index_t j = 0; j < l.d_ff; ++j) perm_[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j);
  }

  const block_layout& layout() const { return layout_; }

  blocked_ffn_view<T> view() const {
    blocked_ffn_view<T> v;
    v.layout = layout_;
    v.weights = weights_.data();
    v.b1 = opt(b1_);
    v.b3 = opt(b3_);
    v.b2 = opt(b2_);
    v.centroids = centroids_.empty() ? nullptr : centroids_.data();
    v.centroid_bias = opt(centroid_bias_);
    v.gate_w = gate_w_.empty() ? nullptr : gate_w_.data();
    v.gate_b = opt(gate_b_);
    v.perm = perm_.data();
    return v;
  }

  // Mutable access for builders (pack, file loaders, converters).
  T* weights() { return weights_.data(); }
  std::vector<float>& b1() { return b1_; }
  std::vector<float>& b3() { return b3_; }
  std::vector<float>& b2() { return b2_; }
  std::vector<std::int32_t>& permutation() { return perm_; }
  const std::vector<std::int32_t>& permutation() const { return perm_; }

  /// Makes blocks [0, p) pinned: computed by every token, outside the top-k (layout.hpp).
  void set_pinned(index_t p) {
    detail::require(p >= 0 && p <= layout_.num_blocks, status::invalid_argument, "pinned blocks (", p,
                    ") must be in [0, B] where B = ", layout_.num_blocks);
    layout_.pinned = p;
  }

  /// Re-lays every block's keys (and up rows) as key tiles (quant.hpp key_tile; layout.key_tiles), in
  /// place, 16 rows at a time: the CPU forward's key pass then runs without transposes on the
  /// avx512_vnni levels (cpu::key_tile_kernel<T>(); on Zen 4 one core's key kernel 1.8× faster from L2,
  /// the q4 forward 5–16% faster at batch 1–8: docs/benchmarks.md, 2026-12-05 stop 49), with the same
  /// bits as on rows; on other levels it unpacks each tile
  /// first (same bits, slower). Only cpu::forward / forward_routed / route read such a model: the
  /// reference, the backward, the CUDA path and unpack refuse it; save_blocked writes rows either way.
  /// q8/q4 only; g must be a multiple of 16 (status::unsupported otherwise).
  void tile_keys() { relay_keys(true); }
  /// Back to rows, bit for bit (the inverse of tile_keys).
  void untile_keys() { relay_keys(false); }
  /// Re-lays every block's value rows as value tiles (quant.hpp value_tile; layout.value_tiles), in
  /// place, 32 rows at a time: the CPU forward's value pass then runs on the avx512_vnni levels without
  /// transposes (cpu::value_tile_kernel<T>(); docs/design.md "Value tiles" for when it pays: a tile
  /// reads all its 32 rows where the row pass reads only those a token's activation leaves nonzero),
  /// with the same bits as on rows (but on amx, whose AMX value kernel takes tiles of blocks shared by 8
  /// (q8) / 12 (q4) or more tokens: bf16-rounded, and faster at batch 64); on other levels it unpacks each
  /// tile first (same bits, slower). Read
  /// as key tiles are: only by cpu::forward / forward_routed / route; save_blocked writes rows.
  /// q8/q4 only; g must be a multiple of 32 (status::unsupported otherwise).
  void tile_values() { relay_values(true); }
  /// Back to rows, bit for bit (the inverse of tile_values).
  void untile_values() { relay_values(false); }

  bool has_centroids() const { return !centroids_.empty(); }
  bool has_gate() const { return !gate_w_.empty(); }

  /// Sets the Avg-K centroids ([B × d_model] row-major, float) and optional per-block bias ([B]).
  void set_centroids(const float* c, const float* bias = nullptr) {
    detail::require_not_null(c, "centroids");
    centroids_ = rows_to_padded(c);
    centroid_bias_.assign(bias ? bias : nullptr, bias ? bias + layout_.num_blocks : nullptr);
  }
  /// Recomputes the Avg-K centroids from the packed keys: c_b = mean of block b's keys,
  /// centroid_bias_b = mean of block b's b1 (so c_b·x + bias_b is the block's mean pre-activation).
  void compute_centroids() {
    const block_layout& l = layout_;
    detail::require_key_rows(l, "compute_centroids");
    centroids_ = detail::aligned_buffer<T>(detail::checked_mul(l.num_blocks, l.ld, "centroids"));
    const double inv_g = 1.0 / static_cast<double>(l.g);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t b = 0; b < l.num_blocks; ++b) {
      std::vector<double> acc(static_cast<std::size_t>(l.d_model), 0.0);
      std::vector<float> r(static_cast<std::size_t>(l.d_model));
      const T* k = weights_.data() + l.key_offset(b);
      for (index_t i = 0; i < l.g; ++i) {
        row::decode(k + i * l.ld, l.d_model, r.data());
        for (index_t j = 0; j < l.d_model; ++j)
          acc[static_cast<std::size_t>(j)] += static_cast<double>(r[static_cast<std::size_t>(j)]);
      }
      for (index_t j = 0; j < l.d_model; ++j)
        r[static_cast<std::size_t>(j)] = static_cast<float>(acc[static_cast<std::size_t>(j)] * inv_g);
      row::encode(r.data(), l.d_model, centroids_.data() + b * l.ld, l.ld);
    }
    centroid_bias_.clear();
    if (!b1_.empty()) {
      centroid_bias_.resize(static_cast<std::size_t>(l.num_blocks));
      for (index_t b = 0; b < l.num_blocks; ++b) {
        double s = 0;
        for (index_t i = 0; i < l.g; ++i) s += b1_[static_cast<std::size_t>(b * l.g + i)];
        centroid_bias_[static_cast<std::size_t>(b)] = static_cast<float>(s * inv_g);
      }
    }
  }
  /// Sets the learned gate: w [B × d_model] row-major, b [B] (optional).
  void set_gate(const float* w, const float* b = nullptr) {
    detail::require_not_null(w, "learned-gate weights");
    gate_w_ = rows_to_padded(w);
    gate_b_.assign(b ? b : nullptr, b ? b + layout_.num_blocks : nullptr);
  }
  /// Zeroed selector rows [B × ld] in the stored format, for loaders that copy them as they are;
  /// `bias`: [B] or empty.
  T* alloc_centroids(std::vector<float> bias) {
    centroids_ = detail::aligned_buffer<T>(detail::checked_mul(layout_.num_blocks, layout_.ld, "centroids"));
    centroid_bias_ = std::move(bias);
    return centroids_.data();
  }
  T* alloc_gate(std::vector<float> bias) {
    gate_w_ = detail::aligned_buffer<T>(detail::checked_mul(layout_.num_blocks, layout_.ld, "gate rows"));
    gate_b_ = std::move(bias);
    return gate_w_.data();
  }
  /// Read access to the selector data as float [B × d_model] (empty when absent).
  std::vector<float> centroids_float() const {
    return padded_to_rows(centroids_);
  }
  std::vector<float> gate_float() const {
    return padded_to_rows(gate_w_);
  }
  const std::vector<float>& centroid_bias() const {
    return centroid_bias_;
  }
  const std::vector<float>& gate_bias() const {
    return gate_b_;
  }

 private:
  void relay_keys(bool to_tiles) {
    const block_layout& l = layout_;
    const index_t per_matrix = l.g / key_tile<T>::rows, per_block = (l.matrices() - 1) * per_matrix;
    relay<key_tile<T>>(layout_.key_tiles, to_tiles, "key", l.num_blocks * per_block, [&](index_t t) {
      const index_t b = t / per_block, mat = t % per_block / per_matrix, i = t % per_matrix;  // keys, then up
      return (mat == 0 ? l.key_offset(b) : l.up_offset(b)) + i * key_tile<T>::rows * l.ld;
    });
  }
  void relay_values(bool to_tiles) {
    const block_layout& l = layout_;
    const index_t per_block = l.g / value_tile<T>::rows;
    relay<value_tile<T>>(layout_.value_tiles, to_tiles, "value", l.num_blocks * per_block, [&](index_t t) {
      return l.value_offset(t / per_block) + t % per_block * value_tile<T>::rows * l.ld;
    });
  }
  /// Re-lays `count` runs of Tile::rows rows in place, run t starting at element at(t) of the weights,
  /// as Tile (quant.hpp key_tile / value_tile) or back to rows (to_tiles false), and records it in flag.
  template <class Tile, class At>
  void relay(bool& flag, bool to_tiles, const char* what, index_t count, At at) {
    static_assert(is_quantized<T>::value, "sparse_ffn: key and value tiles are for q8_t / q4_t weights");
    const block_layout& l = layout_;
    detail::require(flag != to_tiles, status::invalid_argument, "the ", what, "s are already ",
                    to_tiles ? what : "rows", to_tiles ? " tiles" : "");
    detail::require(l.g % Tile::rows == 0, status::unsupported, what, " tiles need g a multiple of ",
                    Tile::rows, " (g = ", l.g, ")");
    const index_t cols = row_cols<T>(l), span = Tile::rows * l.ld;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
    {
      detail::aligned_buffer<T> tmp(span);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
      for (index_t t = 0; t < count; ++t) {
        T* p = weights_.data() + at(t);
        auto* bytes = reinterpret_cast<std::uint8_t*>(p);
        std::copy(p, p + span, tmp.data());
        std::fill(bytes, bytes + span * static_cast<index_t>(sizeof(T)), std::uint8_t{0});
        if (to_tiles)
          Tile::pack(tmp.data(), l.ld, cols, bytes);
        else
          Tile::unpack(reinterpret_cast<const std::uint8_t*>(tmp.data()), cols, p, l.ld);
      }
    }
    flag = to_tiles;
  }

  static const float* opt(const std::vector<float>& v) {
    return v.empty() ? nullptr : v.data();
  }

  detail::aligned_buffer<T> rows_to_padded(const float* src) const {
    const block_layout& l = layout_;
    detail::aligned_buffer<T> out(detail::checked_mul(l.num_blocks, l.ld, "per-block rows"));
    for (index_t b = 0; b < l.num_blocks; ++b)
      row::encode(src + b * l.d_model, l.d_model, out.data() + b * l.ld, l.ld);
    return out;
  }
  std::vector<float> padded_to_rows(const detail::aligned_buffer<T>& src) const {
    const block_layout& l = layout_;
    std::vector<float> out;
    if (src.empty()) return out;
    out.resize(static_cast<std::size_t>(l.num_blocks * l.d_model));
    for (index_t b = 0; b < l.num_blocks; ++b)
      row::decode(src.data() + b * l.ld, l.d_model, out.data() + b * l.d_model);
    return out;
  }

  block_layout layout_{};
  detail::aligned_buffer<T> weights_;
  std::vector<float> b1_, b3_, b2_;
  detail::aligned_buffer<T> centroids_;
  std::vector<float> centroid_bias_;
  detail::aligned_buffer<T> gate_w_;
  std::vector<float> gate_b_;
  std::vector<std::int32_t> perm_;
};

/// Checks that p[0..n) is a permutation of [0, n).
inline void validate_permutation(const std::int32_t* p, index_t n) {
  detail::require_not_null(p, "permutation");
  std::vector<unsigned char> seen(static_cast<std::size_t>(n), 0);
  for (index_t j = 0; j < n; ++j) {
    const std::int32_t v = p[j];
    detail::require(v >= 0 && v < n, status::out_of_range, "permutation[", j, "] = ", v,
                    " is outside [0, d_ff=", n, ")");
    detail::require(!seen[static_cast<std::size_t>(v)], status::invalid_argument,
                    "permutation is not a bijection: neuron ", v, " appears twice (second time at position ",
                    j, ")");
    seen[static_cast<std::size_t>(v)] = 1;
  }
}

template <class T, class S>
blocked_ffn<T> pack(const dense_ffn_view<S>& dense, const pack_options& opt);

namespace detail {

/// A float blocked FFN re-encoded row by row in weight dtype T (quantised at pack time). Avg-K
/// centroids are the float model's (the mean of the unquantised keys), then encoded like every row.
template <class T>
blocked_ffn<T> encode_rows(const blocked_ffn<float>& src) {
  using row = row_format<T>;
  const block_layout& ls = src.layout();
  const block_layout l = make_layout<T>(ls.d_model, ls.d_ff, ls.g, ls.gated);
  blocked_ffn<T> out(l);
  out.permutation() = src.permutation();
  out.set_pinned(ls.pinned);
  const blocked_ffn_view<float> v = src.view();
  const index_t rows = l.num_blocks * l.matrices() * l.g;
  // Rows are independent; a failure (a non-finite weight) is rethrown after the loop.
  std::vector<std::exception_ptr> fails(1);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t r = 0; r < rows; ++r) {
    try {
      row::encode(v.weights + r * ls.ld, l.d_model, out.weights() + r * l.ld, l.ld);
    } catch (...) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp critical(sparse_ffn_encode_rows)
#endif
      if (!fails[0]) fails[0] = std::current_exception();
    }
  }
  if (fails[0]) std::rethrow_exception(fails[0]);
  out.b1() = std::vector<float>(v.b1 ? v.b1 : nullptr, v.b1 ? v.b1 + l.d_ff : nullptr);
  out.b3() = std::vector<float>(v.b3 ? v.b3 : nullptr, v.b3 ? v.b3 + l.d_ff : nullptr);
  out.b2() = std::vector<float>(v.b2 ? v.b2 : nullptr, v.b2 ? v.b2 + l.d_model : nullptr);
  if (src.has_centroids())
    out.set_centroids(src.centroids_float().data(),
                      src.centroid_bias().empty() ? nullptr : src.centroid_bias().data());
  if (src.has_gate())
    out.set_gate(src.gate_float().data(), src.gate_bias().empty() ? nullptr : src.gate_bias().data());
  return out;
}

}  // namespace detail

/// Packs a dense FFN (element type S) into the blocked layout with weight dtype T.
template <class T, class S>
blocked_ffn<T> pack(const dense_ffn_view<S>& dense, const pack_options& opt) {
  static_assert(is_dtype<S>::value && is_weight_dtype<T>::value,
                "sparse_ffn: pack reads float/half_t/bfloat16_t and writes those or q8_t/q4_t");
  if constexpr (is_quantized<T>::value) {
    return detail::encode_rows<T>(pack<float>(dense, opt));
  } else {
    validate(dense);
    const block_layout l = make_layout<T>(dense.d_model, dense.d_ff, opt.g, dense.gated());
    if (opt.permutation) validate_permutation(opt.permutation, l.d_ff);
    detail::require(opt.gate_b == nullptr || opt.gate_w != nullptr, status::invalid_argument,
                    "pack_options.gate_b given without gate_w");

    blocked_ffn<T> out(l);
    out.set_pinned(opt.pinned);
    std::vector<std::int32_t>& perm = out.permutation();
    if (opt.permutation) perm.assign(opt.permutation, opt.permutation + l.d_ff);

    const index_t d = l.d_model, F = l.d_ff;
    T* w = out.weights();
    // Keys (and up rows) are rows of W1 (W3): one contiguous copy per neuron.
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t j = 0; j < F; ++j) {  // packed position j
      const index_t src = perm[static_cast<std::size_t>(j)];
      const index_t b = j / l.g, i = j % l.g;
      T* key = w + l.key_offset(b) + i * l.ld;
      for (index_t c = 0; c < d; ++c) key[c] = from_float<T>(to_float(dense.w1[src * d + c]));
      if (l.gated) {
        T* up = w + l.up_offset(b) + i * l.ld;
        for (index_t c = 0; c < d; ++c) up[c] = from_float<T>(to_float(dense.w3[src * d + c]));
      }
    }
    // Values are columns of W2: transpose in 32×32 tiles so reads and writes both use whole lines.
    std::vector<index_t> pos(static_cast<std::size_t>(F));  // original neuron -> packed position
    for (index_t j = 0; j < F; ++j) pos[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = j;
    constexpr index_t tile = 32;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (index_t c0 = 0; c0 < d; c0 += tile) {
      const index_t c1 = c0 + tile < d ? c0 + tile : d;
      for (index_t s0 = 0; s0 < F; s0 += tile) {
        const index_t s1 = s0 + tile < F ? s0 + tile : F;
        for (index_t src = s0; src < s1; ++src) {
          const index_t j = pos[static_cast<std::size_t>(src)];
          T* val = w + l.value_offset(j / l.g) + (j % l.g) * l.ld;
          for (index_t c = c0; c < c1; ++c) val[c] = from_float<T>(to_float(dense.w2[c * F + src]));
        }
      }
    }
    auto permuted_bias = [&](const S* src, std::vector<float>& dst) {
      if (!src) return;
      dst.resize(static_cast<std::size_t>(F));
      for (index_t j = 0; j < F; ++j)
        dst[static_cast<std::size_t>(j)] = to_float(src[perm[static_cast<std::size_t>(j)]]);
    };
    permuted_bias(dense.b1, out.b1());
    permuted_bias(dense.b3, out.b3());
    if (dense.b2) {
      out.b2().resize(static_cast<std::size_t>(d));
      for (index_t c = 0; c < d; ++c) out.b2()[static_cast<std::size_t>(c)] = to_float(dense.b2[c]);
    }
    if (opt.centroids) out.compute_centroids();
    if (opt.gate_w) out.set_gate(opt.gate_w, opt.gate_b);
    return out;
  }
}

/// Unpacks a blocked FFN to a dense float FFN in the original neuron order (exact for every dtype).
template <class T>
dense_ffn<float> unpack(const blocked_ffn_view<T>& w) {
  validate(w);
  detail::require_rows(w.layout, "unpack");
  const block_layout& l = w.layout;
  const bool biases = w.b1 || w.b2 || w.b3;
  dense_ffn<float> out(l.d_model, l.d_ff, l.gated, biases);
  const index_t d = l.d_model, F = l.d_ff;
  std::vector<float> val(static_cast<std::size_t>(d));
  for (index_t j = 0; j < F; ++j) {
    const index_t dst = w.perm ? w.perm[j] : j;
    const index_t b = j / l.g, i = j % l.g;
    row_format<T>::decode(w.keys(b) + i * l.ld, d, out.w1.data() + dst * d);
    row_format<T>::decode(w.values(b) + i * l.ld, d, val.data());
    for (index_t c = 0; c < d; ++c)
      out.w2[static_cast<std::size_t>(c * F + dst)] = val[static_cast<std::size_t>(c)];
    if (l.gated) row_format<T>::decode(w.up(b) + i * l.ld, d, out.w3.data() + dst * d);
    if (biases) {
      out.b1[static_cast<std::size_t>(dst)] = w.b1 ? w.b1[j] : 0.0f;
      if (l.gated) out.b3[static_cast<std::size_t>(dst)] = w.b3 ? w.b3[j] : 0.0f;
    }
  }
  if (biases)
    for (index_t c = 0; c < d; ++c) out.b2[static_cast<std::size_t>(c)] = w.b2 ? w.b2[c] : 0.0f;
  return out;
}

}  // namespace sparse_ffn
