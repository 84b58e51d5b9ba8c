// sparse_ffn — the CPU micro-kernels for every instruction set, and the run-time table that picks one.
//
// kernels.inl holds the kernels, written once over simd<Isa>; this header compiles them once per ISA
// (scalar; avx2, avx512 and avx512_bf16 in their target regions, on x86 with GCC or Clang) and exposes
// them as kernels<Isa>. The fast path asks ops_for<T>(active_isa()) for a table of function pointers
// (one indirect call per block of work: the glue code is compiled once, for the consumer's flags).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../config.hpp"
#include "../isa.hpp"
#include "../simd.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF
// nvcc's front end (host code of .cu files that include the CPU headers) does not know GCC's unroll
// pragma in kernels.inl: silence exactly that diagnostic (#1675 "unrecognized GCC pragma") here.
#if defined(__CUDACC__)
#pragma nv_diag_suppress 1675
#endif

namespace sparse_ffn {
namespace cpu {

/// Register-tile shapes per ISA: key tiles are key_m tokens × key_r rows (one accumulator each); the
/// value pass streams a block's rows for groups of up to rows_m tokens (rows_m × 4 broadcast
/// coefficients stay in registers).
template <class Isa>
struct tile_shape;
template <>
struct tile_shape<isa::scalar> {
  static constexpr int key_m = 2, key_r = 4, rows_m = 2;
};
template <>
struct tile_shape<isa::avx2> {
  static constexpr int key_m = 2, key_r = 4, rows_m = 2;
};
template <>
struct tile_shape<isa::avx512> {
  static constexpr int key_m = 3, key_r = 8, rows_m = 6;
};
template <>
struct tile_shape<isa::avx512_bf16> : tile_shape<isa::avx512> {};

namespace kernels {

/// Elements of d per cache block of the key kernel (a multiple of 32).
inline constexpr index_t k_dchunk = 512;
/// Upper bounds over every ISA (scratch sizing).
inline constexpr int k_max_key_r = 8, k_max_width = 16;

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

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_BF16)
#define SPARSE_FFN_KERNEL_NS avx512_bf16_impl
#include "kernels.inl"
#undef SPARSE_FFN_KERNEL_NS
SPARSE_FFN_TARGET_END
template <>
struct kernels<isa::avx512_bf16> : avx512_bf16_impl::impl<isa::avx512_bf16> {};
#endif

/// The kernels of one ISA for weights of type T, as a table the glue code calls through.
template <class T>
struct kernel_ops {
  isa_level level = isa_level::scalar;
  int key_r = 1, rows_m = 1;
  int width = 1;        ///< floats per vector: value-pass column ranges are multiples of it
  bool bf16_x = false;  ///< the key kernel reads x rounded to bf16 (dots' xb argument)
  void (*dots)(const float* const* xf, const bfloat16_t* const* xb, index_t m, const T* rows, index_t nrows,
               index_t ld, index_t len, float* spill, float* out) = nullptr;
  void (*apply_rows)(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                     index_t nrows, const T* v, index_t ld, index_t c_lo, index_t c_hi) = nullptr;
};

template <class Isa, class T>
kernel_ops<T> make_ops(isa_level level) {
  using K = kernels<Isa>;
  kernel_ops<T> o;
  o.level = level;
  o.key_r = K::key_r;
  o.rows_m = K::rows_m;
  o.bf16_x = K::template bf16_pairs<T>;
  o.width = K::width;
  o.dots = &K::template dots<T>;
  o.apply_rows = &K::template apply_rows<T>;
  return o;
}

/// The kernels for weights T at `level` (which the caller has checked is supported).
template <class T>
const kernel_ops<T>& ops_for(isa_level level) {
#if SPARSE_FFN_X86_DISPATCH
  static const kernel_ops<T> table[k_isa_levels] = {
      make_ops<isa::scalar, T>(isa_level::scalar), make_ops<isa::avx2, T>(isa_level::avx2),
      make_ops<isa::avx512, T>(isa_level::avx512), make_ops<isa::avx512_bf16, T>(isa_level::avx512_bf16)};
  return table[static_cast<int>(level)];
#else
  (void)level;
  static const kernel_ops<T> scalar = make_ops<isa::scalar, T>(isa_level::scalar);
  return scalar;
#endif
}

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

#if defined(__CUDACC__)
#pragma nv_diag_default 1675
#endif
SPARSE_FFN_SIMD_WARNINGS_ON
