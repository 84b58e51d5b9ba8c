// sparse_ffn — the CPU SIMD layer: ISA tags and one small wrapper per ISA.
//
// The fast-path kernels (cpu/kernels/) are written once over `simd<Isa>`; each wrapper provides a
// float vector `reg` of `width` lanes, loads that convert float / half / bfloat16 to float, fused
// multiply-add, broadcast and a horizontal sum with a fixed reduction tree (so a dot product's bits
// do not depend on how the kernel was tiled). The ISA is chosen at compile time from the target flags
// (`native_isa`): AVX-512F > AVX2+FMA+F16C > portable scalar code that compilers auto-vectorise.
// ISA tags inherit (avx512 : avx2 : scalar) like xsimd's, so an overload for a base ISA serves newer ones.
#pragma once

#include <cstring>

#include "../config.hpp"
#include "../types.hpp"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif

// GCC 12 reports its own AVX-512 intrinsics (their internal "undefined" operands) as uninitialised
// where they are inlined (GCC bug 105593). Silence exactly those two warnings for our SIMD code.
#if defined(__GNUC__) && !defined(__clang__)
#define SPARSE_FFN_SIMD_WARNINGS_OFF                                                   \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define SPARSE_FFN_SIMD_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define SPARSE_FFN_SIMD_WARNINGS_OFF
#define SPARSE_FFN_SIMD_WARNINGS_ON
#endif

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {
namespace isa {

struct scalar {
  static constexpr const char* name = "scalar";
};
struct avx2 : scalar {
  static constexpr const char* name = "avx2";
};
struct avx512 : avx2 {
  static constexpr const char* name = "avx512";
};

#if defined(__AVX512F__)
using native = avx512;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
using native = avx2;
#else
using native = scalar;
#endif

}  // namespace isa

template <class Isa>
struct simd;

// ---- portable: 8 lanes in an array; loops the compiler vectorises --------------------------------
template <>
struct simd<isa::scalar> {
  static constexpr int width = 8;
  struct reg {
    float v[8];
  };
  static reg zero() { return set1(0.0f); }
  static reg set1(float a) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = a;
    return r;
  }
  template <class T>
  static reg load(const T* p) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = to_float(p[l]);
    return r;
  }
  static void store(float* p, reg a) { std::memcpy(p, a.v, sizeof a.v); }
  /// a * b + c
  static reg fma(reg a, reg b, reg c) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static float hsum(reg a) {
    const float s0 = (a.v[0] + a.v[4]) + (a.v[2] + a.v[6]);
    const float s1 = (a.v[1] + a.v[5]) + (a.v[3] + a.v[7]);
    return s0 + s1;
  }
  static void prefetch(const void*) {}
};

#if (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)) || defined(__AVX512F__)
// ---- AVX2 + FMA + F16C: 8 lanes -------------------------------------------------------------------
template <>
struct simd<isa::avx2> {
  static constexpr int width = 8;
  using reg = __m256;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float a) { return _mm256_set1_ps(a); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load(const half_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static reg load(const bfloat16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#endif

#if defined(__AVX512F__)
// ---- AVX-512F: 16 lanes ---------------------------------------------------------------------------
template <>
struct simd<isa::avx512> {
  static constexpr int width = 16;
  using reg = __m512;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float a) { return _mm512_set1_ps(a); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load(const half_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static reg load(const bfloat16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(reg a) {
    const __m256 hi = _mm512_castps512_ps256(_mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#endif

}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
