// sparse_ffn — element types: float, half and bfloat16, all accumulating in float.
//
// `half_t` and `bfloat16_t` are 2-byte host types that work on a CPU-only build. Their storage is the
// IEEE-754 binary16 / bfloat16 bit pattern, exactly as CUDA's `__half` / `__nv_bfloat16` store it, so a
// buffer filled on the host feeds the GPU kernels unchanged (reinterpret the pointer).
//
// Conversions from float round to nearest, ties to even; overflow gives ±Inf; NaN stays NaN (quiet,
// sign kept, top payload bits kept, as the x86 F16C instruction does); half subnormals are exact.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace sparse_ffn {

namespace detail {

SPARSE_FFN_HD std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

SPARSE_FFN_HD float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// IEEE binary32 -> binary16, round to nearest even (portable bit arithmetic; host and device).
SPARSE_FFN_HD std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u)  // NaN: quiet it, keep the top payload bits
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x47800000u)  // >= 2^16 (or Inf): Inf
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {                     // normal half (or rounds up to Inf below)
    const std::uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
    std::uint32_t q = r >> 13;
    const std::uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;  // may carry into exponent / Inf
    return static_cast<std::uint16_t>(sign | q);
  }
  if (a < 0x33000000u)  // below 2^-25: rounds to (signed) zero
    return static_cast<std::uint16_t>(sign);
  // Subnormal half: q = value / 2^-24, rounded to nearest even.
  const std::uint32_t e = a >> 23;
  const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 14..24
  std::uint32_t q = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
  return static_cast<std::uint16_t>(sign | q);
}

/// IEEE binary16 -> binary32 (exact).
SPARSE_FFN_HD float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24 is exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return bits_float(float_bits(v) | sign);
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// binary32 -> bfloat16, round to nearest even; NaN stays (quiet) NaN.
SPARSE_FFN_HD std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  const std::uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

SPARSE_FFN_HD float bf16_bits_to_float(std::uint16_t b) {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace detail

/// IEEE-754 binary16, storage-compatible with CUDA's `__half`.
struct alignas(2) half_t {
  std::uint16_t bits;

  half_t() = default;
  SPARSE_FFN_HD explicit half_t(float f) : bits(from(f)) {}
  SPARSE_FFN_HD explicit operator float() const { return to(bits); }
  SPARSE_FFN_HD static half_t from_bits(std::uint16_t b) {
    half_t h;
    h.bits = b;
    return h;
  }

 private:
  SPARSE_FFN_HD static std::uint16_t from(float f) {
#if SPARSE_FFN_DEVICE_PASS
    return __half_as_ushort(__float2half_rn(f));
#else
    return detail::float_to_half_bits(f);
#endif
  }
  SPARSE_FFN_HD static float to(std::uint16_t b) {
#if SPARSE_FFN_DEVICE_PASS
    return __half2float(__ushort_as_half(b));
#else
    return detail::half_bits_to_float(b);
#endif
  }
};

/// bfloat16 (the top half of a binary32), storage-compatible with CUDA's `__nv_bfloat16`.
struct alignas(2) bfloat16_t {
  std::uint16_t bits;

  bfloat16_t() = default;
  SPARSE_FFN_HD explicit bfloat16_t(float f) : bits(detail::float_to_bf16_bits(f)) {}
  SPARSE_FFN_HD explicit operator float() const { return detail::bf16_bits_to_float(bits); }
  SPARSE_FFN_HD static bfloat16_t from_bits(std::uint16_t b) {
    bfloat16_t h;
    h.bits = b;
    return h;
  }
};

static_assert(sizeof(half_t) == 2 && std::is_trivially_copyable<half_t>::value, "half_t layout");
static_assert(sizeof(bfloat16_t) == 2 && std::is_trivially_copyable<bfloat16_t>::value, "bfloat16_t layout");
static_assert(std::is_standard_layout<half_t>::value && std::is_standard_layout<bfloat16_t>::value,
              "half_t/bfloat16_t must be standard layout");

/// Runtime tag of an element type (for the runtime->compile-time dispatch and file formats).
/// f32/f16/bf16 are element types; q8/q4 are block-quantised weight formats (quant.hpp).
enum class dtype : int { f32 = 0, f16 = 1, bf16 = 2, q8 = 3, q4 = 4 };

inline const char* dtype_name(dtype d) noexcept {
  switch (d) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::q8: return "q8";
    case dtype::q4: return "q4";
  }
  return "?";
}

/// Traits of the supported element types. The primary template is intentionally undefined: using
/// another type as a weight/activation type fails to compile here.
template <class T>
struct dtype_traits;

template <>
struct dtype_traits<float> {
  static constexpr dtype id = dtype::f32;
  static constexpr const char* name = "f32";
  using accum_type = float;
};
template <>
struct dtype_traits<half_t> {
  static constexpr dtype id = dtype::f16;
  static constexpr const char* name = "f16";
  using accum_type = float;
};
template <>
struct dtype_traits<bfloat16_t> {
  static constexpr dtype id = dtype::bf16;
  static constexpr const char* name = "bf16";
  using accum_type = float;
};

template <class T>
struct is_dtype
    : std::integral_constant<bool, std::is_same<T, float>::value || std::is_same<T, half_t>::value ||
                                       std::is_same<T, bfloat16_t>::value> {};

template <class T>
inline constexpr bool is_dtype_v = is_dtype<std::remove_cv_t<T>>::value;

SPARSE_FFN_HD float to_float(float v) {
  return v;
}
SPARSE_FFN_HD float to_float(half_t v) {
  return static_cast<float>(v);
}
SPARSE_FFN_HD float to_float(bfloat16_t v) {
  return static_cast<float>(v);
}

template <class T>
SPARSE_FFN_HD T from_float(float v) {
  static_assert(is_dtype<T>::value, "sparse_ffn: element type must be float, half_t or bfloat16_t");
  return T(v);
}

}  // namespace sparse_ffn
