// sparse_ffn — the CPU micro-kernels for every instruction set, and the run-time table that picks one.
//
// kernels.inl holds the kernels, written once over simd<Isa>; this header compiles them once per ISA
// (scalar; avx2, avx512, avx512_vnni and avx512_bf16 in their target regions, on x86 with GCC or Clang)
// and exposes
// them as kernels<Isa>. The fast path asks ops_for<T>(active_isa()) for a table of function pointers
// (one indirect call per block of work: the glue code is compiled once, for the consumer's flags).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../../activation.hpp"
#include "../../config.hpp"
#include "../../dispatch.hpp"
#include "../../quant.hpp"
#include "../isa.hpp"
#include "../simd.hpp"
#include "int8_x.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF
// nvcc's front end (host code of .cu files that include the CPU headers) does not know GCC's unroll
// pragma in kernels.inl: silence exactly that diagnostic (#1675 "unrecognized GCC pragma") here.
#if defined(__CUDACC__)
#pragma nv_diag_suppress 1675
#endif

namespace sparse_ffn {
namespace cpu {

/// Register-tile shapes per ISA: key tiles are key_m tokens × key_r rows (one accumulator each); the
/// value pass streams a block's rows for groups of up to rows_m tokens (float rows: rows_m × 4
/// broadcast coefficients stay in registers, 2 × 8 for one or two tokens); the backward's outer-product
/// tile (outer_rows) is outer_m outputs × outer_vc vectors of columns (one accumulator each).
template <class Isa>
struct tile_shape;
template <>
struct tile_shape<isa::scalar> {
  static constexpr int key_m = 2, key_r = 4, rows_m = 2, outer_m = 2, outer_vc = 4;
};
template <>
struct tile_shape<isa::avx2> {
  // key 3 × 4: 12 accumulators + 3 x + 1 row vector = the 16 ymm registers (2 × 4 before: bf16 and f32
  // key passes 12% slower at 16 tokens; q4 takes its own kernel, kernels.inl dots_lanes8). Outer 6 × 2: 12
  // accumulators + 2 column vectors + 1 broadcast (2 × 4 before: 8 accumulators, bound by the FMA latency;
  // alone on one Zen 3 core, 128 rows × 4096 columns in L2/L3: 37 → 57 GFLOP/s).
  static constexpr int key_m = 3, key_r = 4, rows_m = 2, outer_m = 6, outer_vc = 2;
};
template <>
struct tile_shape<isa::avx512> {
  static constexpr int key_m = 3, key_r = 8, rows_m = 6, outer_m = 6, outer_vc = 4;
};
template <>
struct tile_shape<isa::avx512_vnni> : tile_shape<isa::avx512> {};
template <>
struct tile_shape<isa::avx512_bf16> : tile_shape<isa::avx512> {};

namespace kernels {

/// Elements of d per cache block of the key kernel (a multiple of 32).
inline constexpr index_t k_dchunk = 512;
/// One Adam step's constants (kernel_ops::adam): decay rates, learning rate, bias corrections
/// c1 = 1 − b1^t, c2 = 1 − b2^t, eps.
struct adam_step {
  float b1, b2, lr, c1, c2, eps;
};
/// Upper bounds over every ISA (scratch sizing).
inline constexpr int k_max_key_r = 16, k_max_width = 16, k_max_rows_m = 6;
/// Rows of key tiles per call of kernel_ops::dots_tiles in the forward (4 tiles; fast.hpp key_block).
inline constexpr index_t k_max_tile_key_rows = 64;

/// Floats of the AMX q8/q4 value pass's scale scratch (amx::apply_quant) for rows of `cols` values: four
/// scales per (group of 32 columns, quad of rows), 16 groups at a time.
inline constexpr index_t amx_quant_scale_floats(index_t cols) {
  return 512 * ((cols + 511) / 512);
}

/// One group of 32 x values to int8 q (scale max|x|/127, round to nearest by the current rounding mode
/// as std::nearbyint, clamp to ±127); returns the scale. A group holding NaN or Inf gets zeros and a
/// NaN scale; a group with max|x| < k_x_int8_tiny, zeros. The vector levels compute the same bytes
/// (simd<avx2>::quantize_x32, simd<avx512_vnni>::quantize_x32; test_isa compares them).
inline float quantize_x32(const float* x, std::int8_t* q) {
  float amax = 0.0f;
  bool finite = true;
  for (index_t i = 0; i < 32; ++i) {
    finite &= std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  if (!finite) {
    for (index_t i = 0; i < 32; ++i) q[i] = 0;
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = amax >= k_x_int8_tiny ? 127.0f / amax : 0.0f;
  for (index_t i = 0; i < 32; ++i)
    q[i] = static_cast<std::int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(x[i] * inv))));
  return amax / 127.0f;
}

/// The offset the integer kernels add to T's signed weights to make them vpdpbusd's / vpmaddubsw's
/// unsigned operand (q8: q + 128; q4: the nibble u = q + 8), taken back as −zero_point × Σ of the other
/// operand.
template <class T>
constexpr std::int32_t int8_zero_point = std::is_same<T, q8_t>::value ? 128 : 8;

/// Per group of 32 (natural order, index g0 / 32): its initial accumulator −zero_point × Σ q and its x
/// scale sx (read by the int8 key kernels: kernels.inl group_terms and dot_line_int8_avx2, amx.hpp
/// dots_int8).
template <class T>
inline void x_int8_group(const std::int8_t* q, float sx, std::int32_t* corr, float* xs) {
  constexpr std::int32_t zero_point = int8_zero_point<T>;
  std::int32_t sum = 0;
  for (index_t i = 0; i < 32; ++i) sum += q[i];
  *corr = -zero_point * sum;
  *xs = sx;
}

/// The quad vectors of a token's int8 x for the rows-in-lanes key kernel at batch ≤ 4 (kernels.inl
/// dots_lanes): per 64 bytes u of xq (kernel order) and e < 4, 16 dwords, dword l = xq's dword
/// 4·(l / 4) + e of u, so that lane (L, i) of dpbusd meets the x of row i's dword 4L + e.
inline void x_int8_quads(const std::int8_t* xq, index_t cols, std::uint8_t* out) {
  for (index_t u = 0; u < cols / 64; ++u)
    for (index_t e = 0; e < 4; ++e)
      for (index_t l = 0; l < 16; ++l)
        std::memcpy(out + (4 * u + e) * 64 + 4 * l, xq + 64 * u + 4 * (4 * (l / 4) + e), 4);
}

/// Quantises one token's x (cols values, zero padded) for the int8 key kernel of weights T, into
/// x_int8_bytes(cols) bytes: [cols int8 in kernel order (x_int8_group_offset)][cols/32 int32 and
/// cols/32 float per group: its initial accumulator −zero_point × Σ q and its x scale, x_int8_group]
/// [padding to 64 bytes][4·cols: x_int8_quads]. Groups of 32 values (quantize_x32). A group holding NaN or
/// Inf gets a NaN scale, so the token's affected dot products are NaN (as in float). The scalar reference of
/// kernel_ops::prepare_x_int8, which the forward calls (vectorised on the int8 levels).
template <class T>
void prepare_x_int8(const float* x, index_t cols, std::uint8_t* out) {
  auto* xq = reinterpret_cast<std::int8_t*>(out);
  auto* corr_g = reinterpret_cast<std::int32_t*>(out + x_int8_groups_at(cols));
  auto* xs_g = reinterpret_cast<float*>(out + x_int8_group_scales_at(cols));
  for (index_t g0 = 0; g0 < cols; g0 += 32) {
    const index_t kb = x_int8_group_offset<T>(g0);
    const float sx = quantize_x32(x + g0, xq + kb);
    x_int8_group<T>(xq + kb, sx, corr_g + g0 / 32, xs_g + g0 / 32);
  }
  std::memset(out + x_int8_groups_at(cols) + cols / 4, 0,
              x_int8_quads_at(cols) - x_int8_groups_at(cols) - cols / 4);
  x_int8_quads(xq, cols, out + x_int8_quads_at(cols));
}

/// Whether the q8/q4 value rows of the VNNI levels (kernels.inl axpy_rows_vnni) prefetch each row's own
/// stream into L1, 512 bytes ahead, rather than into L2 1 KiB ahead: on Intel's cores, not AMD's. Ice
/// Lake (2 threads, 4096 × 16384, g 64, 25%, ReLU, batch 1): the forward's value pass ~5–10% less time,
/// batch 8 unchanged; on Zen 4 prefetches into L1 slowed the key pass 19–23% and the float value rows
/// 5–19% (docs/benchmarks.md, stop 61). Not measured on Sapphire or Emerald Rapids.
inline bool values_prefetch_l1() {
  return !features().amd;
}

/// kernels<Isa>: the micro-kernels compiled for Isa (static member templates; see kernels.inl).
template <class Isa>
struct kernels;

#define SPARSE_FFN_KERNEL_NS scalar_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
template <>
struct kernels<isa::scalar> : scalar_impl::impl<isa::scalar> {};

#if SPARSE_FFN_X86_DISPATCH
SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX2)
#define SPARSE_FFN_KERNEL_NS avx2_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
SPARSE_FFN_TARGET_END
template <>
struct kernels<isa::avx2> : avx2_impl::impl<isa::avx2> {};

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512)
#define SPARSE_FFN_KERNEL_NS avx512_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
SPARSE_FFN_TARGET_END
template <>
struct kernels<isa::avx512> : avx512_impl::impl<isa::avx512> {};

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_VNNI)
#define SPARSE_FFN_KERNEL_NS avx512_vnni_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
SPARSE_FFN_TARGET_END
template <>
struct kernels<isa::avx512_vnni> : avx512_vnni_impl::impl<isa::avx512_vnni> {};

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_BF16)
#define SPARSE_FFN_KERNEL_NS avx512_bf16_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
SPARSE_FFN_TARGET_END
template <>
struct kernels<isa::avx512_bf16> : avx512_bf16_impl::impl<isa::avx512_bf16> {};
#endif
}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

#include "amx.hpp"

namespace sparse_ffn {
namespace cpu {
namespace kernels {

/// The kernels of one ISA for weights of type T, as a table the glue code calls through.
template <class T>
struct kernel_ops {
  isa_level level = isa_level::scalar;
  int key_r = 1, rows_m = 1;
  int outer_m = 1;      ///< outputs per outer_rows call at most
  int width = 1;        ///< floats per vector
  int col_step = 1;     ///< value-pass (apply_rows) column ranges are multiples of it (width; 32 with
                        ///< bf16_values; 64 for q8/q4, 128 for q4 on avx512_vnni and up)
  bool bf16_x = false;  ///< the key kernel reads x rounded to bf16 (dots' xb argument)
  bool int8_x = false;  ///< the key kernel reads x quantised to int8 (dots' xq argument, prepare_x_int8)
  /// The value kernel's coefficients quantised to integers of at most this magnitude per (token, chunk
  /// of 32 rows, group of 32 columns) (127: q4 on avx2, kernels.inl axpy_rows_int; q8 and q4 from
  /// avx512_vnni up, axpy_rows_vnni); 0: float.
  std::int32_t value_levels = 0;
  void (*dots)(const float* const* xf, const bfloat16_t* const* xb, const std::uint8_t* const* xq, index_t m,
               const T* rows, index_t nrows, index_t ld, index_t len, float* spill, float* out) = nullptr;
  /// dots for q8/q4 key rows stored as key_tile<T> (quant.hpp): nrows a multiple of 16, tile r / 16 at
  /// tiles + (r / 16)·tile_stride bytes; x from xq. The same bits as dots on the same rows. Set where
  /// the level has a rows-in-lanes kernel (q8/q4 on avx512_vnni and up: dots_tiles; q4 on avx2:
  /// dots_tiles8, each tile as two halves of 8 rows), null elsewhere (the forward then unpacks each tile
  /// into rows for dots: fast.hpp key_block). spill: m · min(4, nrows / 16) · 16 floats.
  void (*dots_tiles)(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
                     index_t tile_stride, index_t cols, float* spill, float* out) = nullptr;
  /// The value pass for m tokens (any number; rows_m at a time): columns [c_lo, c_hi), multiples of
  /// col_step.
  void (*apply_rows)(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                     index_t nrows, const T* v, index_t ld, index_t cols, index_t c_lo,
                     index_t c_hi) = nullptr;
  /// The value pass of one value_tile<T> (quant.hpp; 32 rows, s[q] the tile's 32 coefficients of token
  /// q) for m tokens, columns [c_lo, c_hi) (multiples of col_step): the same bits as apply_rows on the
  /// tile's rows (kernels.inl axpy_tiles; at least one coefficient must be nonzero). Set where the level
  /// has the kernel (q8/q4 on avx512_vnni and up), null elsewhere (the forward then unpacks each tile
  /// into rows for apply_rows: fast.hpp value_block).
  void (*apply_tiles)(float* const* y, const float* const* s, index_t m, const std::uint8_t* tile,
                      index_t cols, index_t c_lo, index_t c_hi) = nullptr;
  /// apply_rows rounds the coefficients to bf16 (the bf16 pair kernel, kernels.inl axpy_rows_pairs):
  /// bf16 weights on avx512_bf16 where fast_bf16_dot().
  bool bf16_values = false;
  /// The key pass of a whole block on AMX (amx level, bf16 weights; else null; kernels/amx.hpp):
  /// out[q·ostride + r] for m ≤ 16 tokens (bf16 x from xb) and nrows (a multiple of 16) rows; panel:
  /// amx::panel_bytes(len) of scratch (panel_ready: a previous call left these tokens' x in it). Used
  /// instead of dots by the forward's key pass where g % 16 = 0.
  void (*dots_amx)(const bfloat16_t* const* xb, index_t m, const T* rows, index_t nrows, index_t ld,
                   index_t len, std::uint32_t* panel, bool panel_ready, float* out,
                   index_t ostride) = nullptr;
  /// dots_tiles on AMX (amx level, q8/q4; else null; kernels/amx.hpp dots_int8): out[q·ostride + r] for
  /// m ≤ 16 tokens and nrows (a multiple of 16) rows, the same bits as dots_tiles; panel:
  /// amx::int8_panel_bytes(cols) of scratch (panel_ready as dots_amx). Used instead of dots_tiles by the
  /// forward's key pass.
  void (*dots_tiles_amx)(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
                         index_t tile_stride, index_t cols, std::uint8_t* panel, bool panel_ready, float* out,
                         index_t ostride) = nullptr;
  /// The value pass of a whole block on AMX (amx level, bf16 weights; else null): y[q] += Σ_i s[q][i]·v_i
  /// for m ≤ 16 tokens, nrows a multiple of 32, columns [c_lo, c_hi) (multiples of col_step = 32), the
  /// coefficients rounded to bf16. Used instead of apply_rows by the forward where g % 32 = 0.
  void (*apply_amx)(float* const* y, const float* const* s, index_t m, const T* v, index_t ld, index_t nrows,
                    index_t c_lo, index_t c_hi) = nullptr;
  /// The forward takes dots_amx / apply_amx for a block's key pass / a partial's value pass of at least
  /// this many tokens (fewer: dots / apply_rows, which stream memory faster).
  index_t amx_min_tokens = 1;
  /// The value pass of a block's q8/q4 value tiles on AMX (amx level; else null; kernels/amx.hpp
  /// apply_quant): y[q] += Σ_i s[q][i]·v_i for m ≤ amx::k_quant_max_tokens (64), nrows a multiple of 32 (tile
  /// i at tiles + i·tile_stride), columns [c_lo, c_hi) (multiples of col_step), the values and coefficients
  /// rounded to bf16 (not apply_tiles's bits); scale: amx_quant_scale_floats(cols) of scratch. Used
  /// instead of apply_tiles by the forward for blocks of at least amx_value_min_tokens tokens (fast.hpp
  /// value_block; batches averaging that many per block give it all of a block's tokens at once).
  void (*apply_tiles_amx)(float* const* y, const float* const* s, index_t m, const std::uint8_t* tiles,
                          index_t tile_stride, index_t nrows, index_t cols, index_t c_lo, index_t c_hi,
                          float* scale) = nullptr;
  index_t amx_value_min_tokens = 1;
  /// The bf16 pair value kernel whether apply_rows uses it or not (bf16 on avx512_bf16; else null),
  /// for tests. Column ranges: multiples of 32.
  void (*apply_rows_pairs)(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                           index_t nrows, const T* v, index_t ld, index_t cols, index_t c_lo,
                           index_t c_hi) = nullptr;
  /// The backward's register-tiled form of apply_rows (same arguments but cols; element dtypes only,
  /// null for q8/q4): y[q] += Σ_i s[q][i]·v_i, each element summed from zero over the rows, then added
  /// (`assign`: stored); m any number (outer_m at a time).
  void (*outer_rows)(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                     index_t nrows, const T* v, index_t ld, index_t c_lo, index_t c_hi,
                     bool assign) = nullptr;
  /// out[c·out_ld + i] = float(v_i[c0 + c]), i < nrows, c < nc; zeros for nrows ≤ i < out_ld (element
  /// dtypes only, null for q8/q4): the backward's transposed panel of a block's value rows.
  void (*transpose_rows)(const T* v, index_t ld, index_t nrows, index_t c0, index_t nc, float* out,
                         index_t out_ld) = nullptr;
  /// out[i·out_ld + c] = float(v_i[c0 + c]), i < nrows, c < nc (a multiple of width; element dtypes only,
  /// null for q8/q4): the backward's float copy of a column range of a block's key rows (dX's product).
  void (*widen_rows)(const T* v, index_t ld, index_t nrows, index_t c0, index_t nc, float* out,
                     index_t out_ld) = nullptr;
  /// Level-1 float loops (any n and alignment) for host code outside the forward: Σ a·b, y += c·x.
  float (*vdot)(const float* a, const float* b, index_t n) = nullptr;
  void (*vaxpy)(float c, const float* x, float* y, index_t n) = nullptr;
  /// The converter's router training, vectorised: one Adam step on n parameters (p, moments m and v,
  /// gradient g); σ(z) and tanh(z) of n values (Cephes exp; NaN clamped, not propagated).
  void (*adam)(float* p, float* m, float* v, const float* g, index_t n, const adam_step& h) = nullptr;
  void (*vsigmoid)(const float* z, float* out, index_t n) = nullptr;
  void (*vtanh)(const float* z, float* out, index_t n) = nullptr;
  /// prepare_x_int8 (the same bytes; vectorised on the int8 levels: avx2, avx512_vnni and up). Used when
  /// int8_x.
  void (*prepare_x_int8)(const float* x, index_t cols, std::uint8_t* out) = nullptr;
  /// h[j] = act(a[j], u[j]) for j < n, vectorised, indexed by activation_kind (float ops only; null
  /// otherwise): the converter's dense passes (within ~1e-6 of activation.hpp's scalar functions).
  void (*activate_rows[k_activation_kinds])(const float* a, const float* u, float* h, index_t n) = {};
  /// The backward's chain rule over one routing slot's n neurons (kernels.inl chain_rows), indexed by
  /// activation_kind (float ops only; null otherwise): da (du, gated) and wt·h written, Σ h·s returned.
  float (*chain_rows[k_activation_kinds])(const float* a, const float* u, const float* s, float wt, index_t n,
                                          float* da, float* du, float* wh) = {};
};

/// Whether the value pass of bf16 weights on avx512_bf16 takes the bf16 pair kernel (vdpbf16ps, the
/// coefficients rounded to bf16) rather than the float one: where vdpbf16ps retires at about the FMA's
/// instruction rate, i.e. twice its FLOPs — AMD's (Zen 4: 3.3 vs 3.2 zmm instructions/ns per core,
/// measured 2026-12-03). Intel's Sapphire Rapids runs it at a quarter of the FMA's rate (1.37 vs 5.5,
/// docs/benchmarks.md 2026-11-30), where the float kernel is faster.
inline bool fast_bf16_dot() {
  return features().amd;
}

template <class Isa, class T>
kernel_ops<T> make_ops(isa_level level) {
  using K = kernels<Isa>;
  kernel_ops<T> o;
  o.level = level;
  o.key_r = K::template key_r_for<T>;
  static_assert(K::rows_m <= k_max_rows_m, "k_max_rows_m bounds every level's token group");
  o.rows_m = K::rows_m;
  o.outer_m = K::outer_m;
  o.bf16_x = K::template bf16_pairs<T>;
  o.int8_x = K::template int8_q<T>;
  o.value_levels = K::template int_values<T> ? K::value_levels : 0;
  o.width = K::width;
  o.bf16_values = K::template bf16_pairs<T> && fast_bf16_dot();
  o.col_step = is_quantized<T>::value ? static_cast<int>(K::template quant_value_step<T>)
               : o.bf16_values        ? 32
                                      : K::width;
  o.dots = &K::template dots<T>;
  if constexpr (K::template key_tiles<T>)
    o.dots_tiles = &K::template dots_tiles<T>;
  else if constexpr (K::template lanes8<T>)
    o.dots_tiles = &K::template dots_tiles8<T>;
  if constexpr (K::template value_tiles<T>) o.apply_tiles = &K::template apply_tiles<T>;
  o.apply_rows = o.bf16_values ? &K::template apply_rows<T, true> : &K::template apply_rows<T, false>;
  if (K::template bf16_pairs<T>) o.apply_rows_pairs = &K::template apply_rows<T, true>;
  if constexpr (!is_quantized<T>::value) {
    o.outer_rows = &K::template outer_rows<T>;
    o.transpose_rows = &K::template transpose_rows<T>;
    o.widen_rows = &K::template widen_rows<T>;
  }
  o.vdot = &K::vdot;
  o.vaxpy = &K::vaxpy;
  o.adam = &K::adam;
  o.vsigmoid = &K::vsigmoid;
  o.vtanh = &K::vtanh;
  o.prepare_x_int8 = &K::template prepare_x_int8<T>;
  if constexpr (std::is_same<T, float>::value)
    for (int a = 0; a < k_activation_kinds; ++a)
      dispatch_activation(static_cast<activation_kind>(a), [&](auto tag) {
        o.activate_rows[a] = &K::template activate_rows<typename decltype(tag)::type>;
        o.chain_rows[a] = &K::template chain_rows<typename decltype(tag)::type>;
      });
  return o;
}

/// The amx level: avx512_bf16's kernels, with the key and value passes of bf16 weights and the key pass
/// of q8/q4 key tiles on the tile unit (kernels/amx.hpp; the rest runs avx512_bf16's).
template <class T>
kernel_ops<T> make_amx_ops() {
  kernel_ops<T> o = make_ops<isa::avx512_bf16, T>(isa_level::amx);
#if SPARSE_FFN_AMX
  if constexpr (std::is_same<T, bfloat16_t>::value) {
    o.dots_amx = &amx::dots;
    o.apply_amx = &amx::apply;
    o.col_step = 32;
    // Below 4 tokens a pass is bound by memory, and the AVX-512 kernels stream it faster: on a 2-core
    // Emerald Rapids VM, AMX for every group made batch 1 ~20% and batch 8 ~10-30% slower; from 4 tokens
    // up, batch 64 1.3-1.75x faster (docs/benchmarks.md, 2026-12-05 (stop 51)).
    o.amx_min_tokens = 4;
  }
  // q8/q4 value tiles: an AMX-INT8 form with apply_tiles's bits was not faster (its cost is quantising
  // the coefficients per token and group, not the products; docs/benchmarks.md, stop 54). Dequantising
  // each tile to bf16 once for all of a call's tokens is: from memory on one core of an Emerald Rapids
  // VM, q8 1.06x apply_tiles at 8 tokens, 1.4x at 16 (0.9x at 6); q4 (half the bytes, the same
  // conversion) 0.97x at 12, 1.2x at 16 (docs/benchmarks.md, stop 55).
  if constexpr (is_quantized<T>::value) {
    o.apply_tiles_amx = &amx::apply_quant<T>;
    o.amx_value_min_tokens = std::is_same<T, q8_t>::value ? 8 : 12;
    o.dots_tiles_amx = &amx::dots_int8<T>;
    // The tile kernel's fixed cost per group of 32 values loses to dots_tiles at 4 tokens; from memory on
    // one core of an Emerald Rapids VM the double-buffered form is 1.2-1.4x faster for q8 at 8 tokens,
    // about even for q4 at 12 (whose nibbles are split through memory), 1.6-2.0x (q8) and 1.3x (q4) at
    // 16 (docs/benchmarks.md, stop 53).
    o.amx_min_tokens = std::is_same<T, q8_t>::value ? 8 : 12;
  }
#endif
  return o;
}

/// The kernels for weights T at `level` (which the caller has checked is supported). avx512_vnni only
/// differs from avx512 for q8/q4 weights; other dtypes reuse avx512's kernels there (one instantiation
/// less to compile).
template <class T>
const kernel_ops<T>& ops_for(isa_level level) {
#if SPARSE_FFN_X86_DISPATCH
  using vnni = typename std::conditional<is_quantized<T>::value, isa::avx512_vnni, isa::avx512>::type;
  static const kernel_ops<T> table[k_isa_levels] = {
      make_ops<isa::scalar, T>(isa_level::scalar),           make_ops<isa::avx2, T>(isa_level::avx2),
      make_ops<isa::avx512, T>(isa_level::avx512),           make_ops<vnni, T>(isa_level::avx512_vnni),
      make_ops<isa::avx512_bf16, T>(isa_level::avx512_bf16), make_amx_ops<T>()};
  return table[static_cast<int>(level)];
#else
  (void)level;
  static const kernel_ops<T> scalar = make_ops<isa::scalar, T>(isa_level::scalar);
  return scalar;
#endif
}

// Build time. ops_for<T> instantiates T's kernels for every ISA level, ~20-35 s of compilation per
// dtype (GCC -O3) in every translation unit that runs a kernel. A project with many such units can
// compile them once: define SPARSE_FFN_EXTERN_CPU_KERNELS in every unit (only the declarations below
// are then seen) and, in one unit or one per dtype, include <sparse_ffn/cpu/kernels/instantiate.hpp>
// and write SPARSE_FFN_INSTANTIATE_CPU_KERNELS(T) for each dtype used (float, sparse_ffn::half_t,
// sparse_ffn::bfloat16_t, sparse_ffn::q8_t, sparse_ffn::q4_t). Compile every unit with the same
// compiler and flags (one definition of each kernel for the whole program). docs/api.md, "Build time".
#if defined(SPARSE_FFN_EXTERN_CPU_KERNELS)
extern template const kernel_ops<float>& ops_for<float>(isa_level);
extern template const kernel_ops<half_t>& ops_for<half_t>(isa_level);
extern template const kernel_ops<bfloat16_t>& ops_for<bfloat16_t>(isa_level);
extern template const kernel_ops<q8_t>& ops_for<q8_t>(isa_level);
extern template const kernel_ops<q4_t>& ops_for<q4_t>(isa_level);
#endif

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

#if defined(__CUDACC__)
#pragma nv_diag_default 1675
#endif
SPARSE_FFN_SIMD_WARNINGS_ON
