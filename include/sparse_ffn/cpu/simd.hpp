// sparse_ffn — the CPU SIMD layer: one small wrapper per instruction set (cpu/isa.hpp).
//
// The micro-kernels (cpu/kernels/) are written once over `simd<Isa>`; each wrapper provides a float
// vector `reg` of `width` lanes, loads that convert float / half / bfloat16 to float, fused
// multiply-add, broadcast, int8 / nibble loads for the quantised weights (quant.hpp) and a horizontal sum
// with a fixed reduction tree (so a dot product's bits do not depend on how the kernel was tiled).
// simd<avx2> has int8 dot products by `vpmaddubsw` + `vpmaddwd`, simd<avx512_vnni> by `vpdpbusd`;
// simd<avx512_bf16> adds bf16-pair operations for
// `vdpbf16ps`. Every wrapper is compiled in its own target
// region whatever the consumer's flags, so one binary carries all of them; cpu::active_isa() decides at run
// time which one runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../config.hpp"
#include "../types.hpp"
#include "isa.hpp"

// GCC 12 reports its own AVX-512 intrinsics (their internal "undefined" operands) as uninitialised
// where they are inlined (GCC bug 105593). Silence exactly those two warnings for our SIMD code.
#if defined(__GNUC__) && !defined(__clang__)
#define SPARSE_FFN_SIMD_WARNINGS_OFF                                                   \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")                      \
          _Pragma("GCC diagnostic ignored \"-Wpsabi\"")
#define SPARSE_FFN_SIMD_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define SPARSE_FFN_SIMD_WARNINGS_OFF
#define SPARSE_FFN_SIMD_WARNINGS_ON
#endif

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {

/// Below this max|x| a group of x quantises to int8 zeros (kernels::quantize_x32; 127 / max|x| would
/// overflow float near the denormals).
inline constexpr float k_x_int8_tiny = 0x1p-96f;
/// Below this max|a| a (token, chunk, group) of value coefficients quantises to zeros (the integer
/// value pass of q4 on avx2: kernels.inl, axpy_rows_int; the same reason).
inline constexpr float k_value_coef_tiny = 0x1p-96f;

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
  /// Transposes the 8 × 8 floats r[0..8) (r[i] lane j ← r[j] lane i).
  static void transpose8(reg* r) {
    reg t[8];
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) t[j].v[i] = r[i].v[j];
    for (int i = 0; i < 8; ++i) r[i] = t[i];
  }
  /// width int8 values as floats.
  static reg load_q8(const std::uint8_t* p) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = static_cast<float>(static_cast<std::int8_t>(p[l]));
    return r;
  }
  /// width bytes of nibbles: lo = (low nibble − 8), hi = (high nibble − 8), as floats.
  static void load_q4(const std::uint8_t* p, reg& lo, reg& hi) {
    for (int l = 0; l < width; ++l) {
      lo.v[l] = static_cast<float>(static_cast<int>(p[l] & 0x0f) - 8);
      hi.v[l] = static_cast<float>(static_cast<int>(p[l] >> 4) - 8);
    }
  }
  static reg mul(reg a, reg b) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = a.v[l] * b.v[l];
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
  static void prefetch_l2(const void*) {}
  // ---- element-wise arithmetic for the vectorised activations (kernels::activate_rows) ----------
  template <class F>
  static reg map2(reg a, reg b, F f) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = f(a.v[l], b.v[l]);
    return r;
  }
  static reg add(reg a, reg b) {
    return map2(a, b, [](float x, float y) { return x + y; });
  }
  static reg sub(reg a, reg b) {
    return map2(a, b, [](float x, float y) { return x - y; });
  }
  static reg div(reg a, reg b) {
    return map2(a, b, [](float x, float y) { return x / y; });
  }
  static reg sqrt(reg a) {
    return map2(a, a, [](float x, float) { return std::sqrt(x); });
  }
  /// min/max as the x86 instructions: the second operand when either is NaN.
  static reg min(reg a, reg b) {
    return map2(a, b, [](float x, float y) { return x < y ? x : y; });
  }
  static reg max(reg a, reg b) {
    return map2(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  static reg floor(reg a) {
    return map2(a, a, [](float x, float) { return std::floor(x); });
  }
  static reg abs(reg a) {
    return map2(a, a, [](float x, float) { return std::fabs(x); });
  }
  /// c >= 0 ? a : b, per lane (NaN: b).
  static reg select_ge0(reg c, reg a, reg b) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = c.v[l] >= 0.0f ? a.v[l] : b.v[l];
    return r;
  }
  /// c > 0 ? a : b, per lane (NaN: b).
  static reg select_gt0(reg c, reg a, reg b) {
    reg r;
    for (int l = 0; l < width; ++l) r.v[l] = c.v[l] > 0.0f ? a.v[l] : b.v[l];
    return r;
  }
  /// 2^n for integral n in [-127, 128] (exponent bits; n = -127 gives 0, 128 gives +inf).
  static reg pow2i(reg n) {
    reg r;
    for (int l = 0; l < width; ++l) {
      const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n.v[l]) + 127) << 23;
      std::memcpy(&r.v[l], &bits, 4);
    }
    return r;
  }
};

#if SPARSE_FFN_X86_DISPATCH
namespace detail {
/// Software prefetch (prefetcht0 / prefetcht1) that the compiler keeps. GCC treats _mm_prefetch
/// (__builtin_prefetch) as free of side effects, so a function whose body is only prefetches (a helper
/// loop or a lambda that is not inlined) is found `const` and its calls are deleted: the q8/q4 key pass
/// (dots_lanes) compiled with no prefetch at all until 2026-12-04. An asm volatile is never deleted.
inline void prefetch_t0(const void* p) {
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
}
inline void prefetch_t1(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
}
}  // namespace detail

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX2)
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
  static reg load_q8(const std::uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void load_q4(const std::uint8_t* p, reg& lo, reg& hi) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i eight = _mm256_set1_epi32(8);
    lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x0f)), eight));
    hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), eight));
  }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void prefetch(const void* p) { detail::prefetch_t0(p); }
  /// Into L2 only (prefetcht1): for streams fetched far ahead, so they do not hold the few L1 miss
  /// buffers (docs/benchmarks.md, 2026-12-03 late).
  static void prefetch_l2(const void* p) { detail::prefetch_t1(p); }
  /// Transposes the 8 × 8 floats r[0..8) in registers (r[i] lane j ← r[j] lane i): unpack pairs of
  /// rows, shuffle quads, then swap 128-bit halves (24 shuffles).
  static void transpose8(reg* r) {
    reg t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {  // u[4i + j]: columns j | j + 4 of rows 4i .. 4i + 3
      u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
      r[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
  }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg sqrt(reg a) { return _mm256_sqrt_ps(a); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg floor(reg a) { return _mm256_floor_ps(a); }
  static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static reg select_ge0(reg c, reg a, reg b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(c, _mm256_setzero_ps(), _CMP_GE_OQ));
  }
  static reg select_gt0(reg c, reg a, reg b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(c, _mm256_setzero_ps(), _CMP_GT_OQ));
  }
  static reg pow2i(reg n) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }

  // Int8 dot products for the quantised weights (no VNNI: vpmaddubsw + vpmaddwd). An `ireg` holds 32
  // bytes = 8 int32 lanes (one group of 32 values).
  using ireg = __m256i;
  static ireg iload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  /// Lane i = Σ_j u[4i+j]·s[4i+j] (u unsigned, s signed bytes). Exact only while every pair's
  /// u[2k]·s[2k] + u[2k+1]·s[2k+1] fits int16 (vpmaddubsw saturates): the callers keep u ≤ 128 and
  /// |s| ≤ 127 (|pair| ≤ 32512).
  static ireg dot4(ireg u, ireg s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
  static ireg iadd(ireg a, ireg b) { return _mm256_add_epi32(a, b); }
  /// |v| per byte, as unsigned (−128 → 128).
  static ireg abs8(ireg v) { return _mm256_abs_epi8(v); }
  /// s per byte negated where v < 0, zeroed where v == 0 (so abs8(v)·sign8(s, v) = v·s).
  static ireg sign8(ireg s, ireg v) { return _mm256_sign_epi8(s, v); }
  /// The low and high nibbles of every byte.
  static void nibbles(ireg v, ireg& lo, ireg& hi) {
    const ireg m = _mm256_set1_epi8(0x0f);
    lo = _mm256_and_si256(v, m);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  }
  static reg cvt(ireg i) { return _mm256_cvtepi32_ps(i); }
  /// The combined scales of 2 consecutive groups for the q8 key kernel (kernels.inl, dot_line_int8_avx2):
  /// out[i] = float(s[i]) · x[i] for i < 2, 0 above (out: 4 floats, 16-byte aligned). The same float
  /// products as set1(float(s[i])) · x[i], in one multiply for the 2 groups.
  static void group_scales(const bfloat16_t* s, const float* x, float* out) {
    std::int32_t b;
    std::memcpy(&b, s, 4);
    const __m128i w = _mm_cvtsi32_si128(b);
    const __m128 xv = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x)));
    _mm_store_ps(out, _mm_mul_ps(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(w), 16)), xv));
  }

  // The integer value pass of q4 rows (kernels.inl, axpy_rows_int): two rows a, b at a time, with one
  // coefficient pair per token and group broadcast as a dword.
  static void istore(void* p, ireg a) { _mm256_storeu_si256(static_cast<__m256i*>(p), a); }
  static ireg isub(ireg a, ireg b) { return _mm256_sub_epi32(a, b); }
  static ireg bcast32(std::int32_t v) { return _mm256_set1_epi32(v); }
  /// round-to-nearest-even(a), clamped to [−lim, lim] (a finite and |a| ≤ 2^31).
  static ireg round_clamp(reg a, std::int32_t lim) {
    return _mm256_max_epi32(_mm256_set1_epi32(-lim),
                            _mm256_min_epi32(_mm256_set1_epi32(lim), _mm256_cvtps_epi32(a)));
  }
  /// Coefficient pairs as vpmaddubsw reads them: the low bytes of a and b, (a, b) twice per dword.
  static ireg pair8(ireg a, ireg b) {
    const ireg m = _mm256_set1_epi32(0xff);
    const ireg p = _mm256_or_si256(_mm256_and_si256(a, m), _mm256_slli_epi32(_mm256_and_si256(b, m), 8));
    return _mm256_or_si256(p, _mm256_slli_epi32(p, 16));
  }
  /// q4: one 32-byte chunk of row a and of row b (64 values each: byte j holds value j in its low nibble
  /// and 32 + j in its high one) → unsigned nibble pairs (a, b): n[0] values 0-7 | 16-23, n[1] 8-15 |
  /// 24-31, n[2] 32-39 | 48-55, n[3] 40-47 | 56-63.
  static void q4_pairs(const std::uint8_t* a, const std::uint8_t* b, ireg (&n)[4]) {
    const ireg va = iload(a), vb = iload(b), m = _mm256_set1_epi8(0x0f);
    const ireg lo = _mm256_unpacklo_epi8(va, vb), hi = _mm256_unpackhi_epi8(va, vb);
    n[0] = _mm256_and_si256(lo, m);
    n[1] = _mm256_and_si256(hi, m);
    n[2] = _mm256_and_si256(_mm256_srli_epi16(lo, 4), m);
    n[3] = _mm256_and_si256(_mm256_srli_epi16(hi, 4), m);
  }
  /// acc (int16 per column) += u_a·c_a + u_b·c_b (vpmaddubsw: u ≤ 15, |c| ≤ 127, so a pair is ≤ 3810
  /// and eight pairs fit int16 without saturation).
  static ireg q4_madd(ireg acc, ireg nib, ireg c) {
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(nib, c));
  }
  static ireg zero16() { return _mm256_setzero_si256(); }
  /// vpmaddubsw alone: word w = u[2w]·s[2w] + u[2w+1]·s[2w+1] (the first term of a q4_madd sum).
  static ireg maddubs(ireg u, ireg s) {
    return _mm256_maddubs_epi16(u, s);
  }
  /// acc + vpmaddubsw(u, s) with a saturating add (vpaddsw), for sums that never reach ±32767, where
  /// it equals q4_madd: GCC reassociates a chain of plain vector adds (vpaddw) into all products
  /// first, then a tree of adds, and spills the products; it leaves saturating adds in order
  /// (lanes8_pair: 1.3x slower with vpaddw, measured on a Zen 3).
  static ireg madd_chain(ireg acc, ireg u, ireg s) {
    return _mm256_adds_epi16(acc, _mm256_maddubs_epi16(u, s));
  }
  /// The int16 words of a q4_madd sum added in pairs: dword i = word 2i + word 2i + 1, as int32.
  static ireg sum_pairs16(ireg a) {
    return _mm256_madd_epi16(a, _mm256_set1_epi16(1));
  }
  static ireg as_int(reg a) {
    return _mm256_castps_si256(a);
  }
  static reg as_float(ireg a) {
    return _mm256_castsi256_ps(a);
  }
  /// The int16 lanes of a q4_madd accumulator widened: its low half (8 columns) and its high half.
  static ireg widen_lo(ireg a) { return _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)); }
  static ireg widen_hi(ireg a) { return _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1)); }
  /// kernels::quantize_x32, vectorised: the same bytes and scale (as simd<avx512_vnni>::quantize_x32).
  static float quantize_x32(const float* x, std::int8_t* q) {
    __m256 v[4];
    __m256 fin = _mm256_setzero_ps(), amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      fin = _mm256_or_ps(fin, _mm256_sub_ps(v[i], v[i]));  // 0 for finite x, NaN otherwise
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(fin, _mm256_setzero_ps(), _CMP_EQ_OQ)) != 0xFF) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_setzero_si256());
      return std::numeric_limits<float>::quiet_NaN();
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float am = _mm_cvtss_f32(m);
    const __m256 inv = _mm256_set1_ps(am >= k_x_int8_tiny ? 127.0f / am : 0.0f);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i)
      i32[i] = _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv))));
    // The packs work per 128-bit half: the dwords come out as x[0:4) x[8:12) x[16:20) x[24:28) x[4:8)
    // x[12:16) x[20:24) x[28:32); the permutation restores the natural order.
    const __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return am / 127.0f;
  }
  /// One group of a token's int8 x (32 values q, |q| ≤ 127): −zp·Σ q, exact in int32 (kernels::x_int8_group,
  /// the same value). Byte pairs by vpmaddubsw against bytes of 1 (|sum| ≤ 254: no saturation), then
  /// pairs by vpmaddwd, then the 8 dwords.
  static std::int32_t x_int8_sum(const std::int8_t* q, std::int32_t zp) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m256i c = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), v), _mm256_set1_epi16(1));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
    return -zp * _mm_cvtsi128_si32(t);
  }
};
SPARSE_FFN_TARGET_END

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512)
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
  static reg load_q8(const std::uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  /// Nibble u → float(u − 8) through a 16-entry table: vpermps reads only the index's low 4 bits, so
  /// the low nibble needs no mask (4 operations per 32 values instead of 7).
  static void load_q4(const std::uint8_t* p, reg& lo, reg& hi) {
    const __m512 table = _mm512_setr_ps(-8.0f, -7.0f, -6.0f, -5.0f, -4.0f, -3.0f, -2.0f, -1.0f, 0.0f, 1.0f,
                                        2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_permutexvar_ps(b, table);
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
  }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
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
  static void prefetch(const void* p) { detail::prefetch_t0(p); }
  /// Into L2 only (prefetcht1): for streams fetched far ahead, so they do not hold the few L1 miss
  /// buffers (docs/benchmarks.md, 2026-12-03 late).
  static void prefetch_l2(const void* p) { detail::prefetch_t1(p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg sqrt(reg a) { return _mm512_sqrt_ps(a); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg floor(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  static reg select_ge0(reg c, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
  }
  static reg select_gt0(reg c, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_GT_OQ), b, a);
  }
  static reg pow2i(reg n) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  /// Transposes the 16 × 16 floats r[0..16) in registers (r[i] lane j ← r[j] lane i): unpack pairs of
  /// rows, shuffle quads, then a 4 × 4 transpose of 128-bit lanes (64 shuffles).
  static void transpose16(reg* r) {
    reg t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // a0 b0 a1 b1 per 128-bit lane
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // a2 b2 a3 b3
    }
    for (int i = 0; i < 4; ++i) {  // u[4i + j], lane k: column j + 4k of rows 4i .. 4i + 3
      u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      const reg v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44),
                v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
      const reg v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44),
                v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
      r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
      r[j + 4] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
      r[j + 8] = _mm512_shuffle_f32x4(v1, v3, 0x88);
      r[j + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
  }
};
SPARSE_FFN_TARGET_END

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_VNNI)
// ---- AVX-512 + AVX512_VNNI: the float operations of avx512, plus int8 dot products -----------------
template <>
struct simd<isa::avx512_vnni> : simd<isa::avx512> {
  // AVX512_VNNI: int8 dot products for the quantised weights. An `ireg` holds 64
  // bytes = 16 int32 lanes; dpbusd(acc, u, s) adds to lane i the four products u[4i+j]·s[4i+j] (u
  // unsigned, s signed bytes; exact in int32).
  using ireg = __m512i;
  static ireg iload(const void* p) { return _mm512_loadu_si512(p); }
  static ireg dpbusd(ireg acc, ireg u, ireg s) { return _mm512_dpbusd_epi32(acc, u, s); }
  /// Signed bytes + 128 as unsigned bytes (q8 weights for dpbusd's unsigned operand).
  static ireg flip_sign(ireg v) { return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))); }
  /// The low (h = 0) or high (h = 1) nibble of every byte.
  static ireg nibble(ireg v, int h) {
    const ireg m = _mm512_set1_epi8(0x0f);
    return _mm512_and_si512(h == 0 ? v : _mm512_srli_epi16(v, 4), m);
  }
  /// The low and high nibbles of every byte.
  static void nibbles(ireg v, ireg& lo, ireg& hi) {
    lo = nibble(v, 0);
    hi = nibble(v, 1);
  }
  /// The low nibble (h = 0) or 16 × the high nibble (h = 1) of every byte: one AND either way, where
  /// nibble(v, 1) takes a shift too. A dot product of the h = 1 form is 16 × the high nibbles' one, in
  /// int32 exactly; the kernels divide it back exactly (an arithmetic shift, or a scale ÷ 16).
  static ireg nibble_x16(ireg v, int h) {
    return _mm512_and_si512(v, _mm512_set1_epi8(static_cast<char>(h == 0 ? 0x0f : 0xf0)));
  }
  /// a / 16 for int32 lanes that are multiples of 16 (exact: an arithmetic shift).
  static ireg idiv16(ireg a) { return _mm512_srai_epi32(a, 4); }
  /// The odd lanes × 16 (exact for |a| < 2^27), the even ones as they are.
  static ireg odd_x16(ireg a) { return _mm512_mask_slli_epi32(a, 0xAAAA, a, 4); }
  /// The odd lanes ÷ 16 (exact where the quotient is a normal float, and for 0, ±Inf and NaN).
  static reg odd_div16(reg a) { return _mm512_mask_mul_ps(a, 0xAAAA, a, _mm512_set1_ps(0.0625f)); }
  static reg cvt(ireg i) { return _mm512_cvtepi32_ps(i); }
  /// The same 512 bits as the other type (transpose16 moves integers as floats).
  static ireg as_int(reg a) { return _mm512_castps_si512(a); }
  static reg as_float(ireg a) { return _mm512_castsi512_ps(a); }
  /// kernels::quantize_x32, vectorised: the same bytes and scale (x − x is 0 exactly for finite x;
  /// cvtps rounds by the current rounding mode, as std::nearbyint).
  static float quantize_x32(const float* x, std::int8_t* q) {
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16), z = _mm512_setzero_ps();
    const __mmask16 fa = _mm512_cmp_ps_mask(_mm512_sub_ps(a, a), z, _CMP_EQ_OQ),
                    fb = _mm512_cmp_ps_mask(_mm512_sub_ps(b, b), z, _CMP_EQ_OQ);
    if ((fa & fb) != 0xFFFF) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_setzero_si256());
      return std::numeric_limits<float>::quiet_NaN();
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const __m512 inv = _mm512_set1_ps(amax >= k_x_int8_tiny ? 127.0f / amax : 0.0f);
    const __m512i hi = _mm512_set1_epi32(127), lo = _mm512_set1_epi32(-127);
    const __m512i ia = _mm512_max_epi32(lo, _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(a, inv)))),
                  ib = _mm512_max_epi32(lo, _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(b, inv))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(ia));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(ib));
    return amax / 127.0f;
  }
  /// simd<isa::avx2>::x_int8_sum (AVX2 instructions, which these levels have).
  static std::int32_t x_int8_sum(const std::int8_t* q, std::int32_t zp) {
    return simd<isa::avx2>::x_int8_sum(q, zp);
  }
  // The integer value pass (kernels.inl, axpy_rows_vnni). A unit is 64 columns of one row as dpbusd's
  // unsigned operand: q8's 64 bytes as q + 128 (q8_unit); q4 (nibbles u = q + 8) is split into units
  // after interleave4, in the kernel.
  static ireg q8_unit(const std::uint8_t* p) { return flip_sign(iload(p)); }
  /// Four rows' units as dword lanes (a[c], b[c], c[c], d[c]): lane 4L + i of out[k] holds column
  /// 16L + 4k + i (L: the 128-bit lane).
  static void interleave4(ireg a, ireg b, ireg c, ireg d, ireg (&out)[4]) {
    const ireg ablo = _mm512_unpacklo_epi8(a, b), abhi = _mm512_unpackhi_epi8(a, b),
               cdlo = _mm512_unpacklo_epi8(c, d), cdhi = _mm512_unpackhi_epi8(c, d);
    out[0] = _mm512_unpacklo_epi16(ablo, cdlo);
    out[1] = _mm512_unpackhi_epi16(ablo, cdlo);
    out[2] = _mm512_unpacklo_epi16(abhi, cdhi);
    out[3] = _mm512_unpackhi_epi16(abhi, cdhi);
  }
  /// interleave4's column order undone: a[L] = columns 16L .. 16L + 15 (a 4 × 4 transpose of 128-bit
  /// blocks).
  static void untangle4(ireg (&a)[4]) {
    const ireg t0 = _mm512_shuffle_i32x4(a[0], a[1], 0x44), t1 = _mm512_shuffle_i32x4(a[2], a[3], 0x44),
               t2 = _mm512_shuffle_i32x4(a[0], a[1], 0xEE), t3 = _mm512_shuffle_i32x4(a[2], a[3], 0xEE);
    a[0] = _mm512_shuffle_i32x4(t0, t1, 0x88);
    a[1] = _mm512_shuffle_i32x4(t0, t1, 0xDD);
    a[2] = _mm512_shuffle_i32x4(t2, t3, 0x88);
    a[3] = _mm512_shuffle_i32x4(t2, t3, 0xDD);
  }
  /// The first two stages of a 16 × 16 transpose of dwords: afterwards v[4i + e] holds, in 128-bit lane
  /// L, dword 4L + e of the old v[4i .. 4i + 3] (the int8 key pass at batch ≤ 4, kernels.inl dots_lanes).
  static void transpose_quads(ireg (&v)[16]) {
    ireg a[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
      a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      v[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
      v[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
      v[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
      v[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
  }
  /// The sums of transpose_quads' lanes for four row quads acc[i] (128-bit lanes 0 + 1: group a, 2 + 3:
  /// group b) as rows in lanes: ga[4i + r] = acc[i] lane 0 + lane 1 of row r, gb likewise.
  static void combine_quads(const ireg (&acc)[4], ireg& ga, ireg& gb) {
    const ireg s01 = _mm512_add_epi32(_mm512_shuffle_i32x4(acc[0], acc[1], 0x88),
                                      _mm512_shuffle_i32x4(acc[0], acc[1], 0xDD)),
               s23 = _mm512_add_epi32(_mm512_shuffle_i32x4(acc[2], acc[3], 0x88),
                                      _mm512_shuffle_i32x4(acc[2], acc[3], 0xDD));
    ga = _mm512_shuffle_i32x4(s01, s23, 0x88);
    gb = _mm512_shuffle_i32x4(s01, s23, 0xDD);
  }
  /// Quad vector e of 64 bytes of x (kernels::x_int8_quads): dword l = dword 4·(l / 4) + e of v.
  static ireg quad_x(ireg v, int e) {
    const __m512i idx = _mm512_add_epi32(_mm512_set_epi32(12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0),
                                         _mm512_set1_epi32(e));
    return _mm512_permutexvar_epi32(idx, v);
  }
  /// Dword lanes 0-7 = index ga, 8-15 = gb (a unit's two groups, for coef_lanes).
  static ireg unit_index(int ga, int gb) { return _mm512_mask_set1_epi32(_mm512_set1_epi32(ga), 0xFF00, gb); }
  /// The dwords of the 16 at p (a quad's coefficient bytes per group) that a unit's lanes use.
  static ireg coef_lanes(ireg idx, const std::int32_t* p) {
    return _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(p));
  }
  /// float(bfloat16 s[i]) for i < n (n ≤ 16), 0 above (no read past s + n).
  static reg load_bf16_n(const bfloat16_t* s, int n) {
    const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
    const __m256i v = _mm256_maskz_loadu_epi16(k, s);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
  /// Rows in lanes for 16 rows' bf16 scales: out[g] lane r = float(s[r][g]) for g < n (n ≤ 16; 0 above,
  /// no read past s[r] + n). Transposed as 16-bit words before they are widened (the key pass, kernels.inl
  /// dots_lanes): 8 inserts, two unpack stages and one zero-masked two-source word permute per output (40
  /// shuffles), where widening first and a float transpose take 16 + 64.
  static void scales_lanes(const bfloat16_t* const* s, int n, reg (&out)[16]) {
    const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
    __m512i z[8], a[8], c[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {  // words 0-15: row i's groups, 16-31: row i + 8's
      z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi16(k, s[i])),
                                _mm256_maskz_loadu_epi16(k, s[i + 8]), 1);
    }
    // a[j], a[4 + j]: row pairs (2j, 2j + 1) | (2j + 8, 2j + 9) as dwords, 128-bit lane L holding the
    // groups 8(L % 2) + 0..3 (a[j]) or + 4..7 (a[4 + j]) of the pair's first (L < 2) or second row pair.
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      a[j] = _mm512_unpacklo_epi16(z[2 * j], z[2 * j + 1]);
      a[4 + j] = _mm512_unpackhi_epi16(z[2 * j], z[2 * j + 1]);
    }
    // c[2h + e + 4u] (h: rows 0-3 / 4-7 of each half, e: groups +0-1 / +2-3, u: groups +0 / +4): per lane
    // two qwords, each four rows' words of one group.
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        c[4 * u + 2 * h] = _mm512_unpacklo_epi32(a[4 * u + 2 * h], a[4 * u + 2 * h + 1]);
        c[4 * u + 2 * h + 1] = _mm512_unpackhi_epi32(a[4 * u + 2 * h], a[4 * u + 2 * h + 1]);
      }
    // out[g] from c[p] (rows 0-3, 8-11) and c[p + 2] (rows 4-7, 12-15), p = 4u + e: g = 4u + 2e + b
    // + 8l, word 4b + (r % 4) of lane l + 2(r ≥ 8), into word 2r + 1 (the high half of dword r).
    alignas(64) static const std::int16_t idx[4][32] = {
#define SPARSE_FFN_SCALE_IDX(b, l)                                                             \
  {0, 0 + 4 * b + 8 * l,  0, 1 + 4 * b + 8 * l,  0, 2 + 4 * b + 8 * l,  0, 3 + 4 * b + 8 * l,  \
   0, 32 + 4 * b + 8 * l, 0, 33 + 4 * b + 8 * l, 0, 34 + 4 * b + 8 * l, 0, 35 + 4 * b + 8 * l, \
   0, 16 + 4 * b + 8 * l, 0, 17 + 4 * b + 8 * l, 0, 18 + 4 * b + 8 * l, 0, 19 + 4 * b + 8 * l, \
   0, 48 + 4 * b + 8 * l, 0, 49 + 4 * b + 8 * l, 0, 50 + 4 * b + 8 * l, 0, 51 + 4 * b + 8 * l}
        SPARSE_FFN_SCALE_IDX(0, 0), SPARSE_FFN_SCALE_IDX(1, 0), SPARSE_FFN_SCALE_IDX(0, 1),
        SPARSE_FFN_SCALE_IDX(1, 1)};
#undef SPARSE_FFN_SCALE_IDX
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u)
#pragma GCC unroll 2
      for (int e = 0; e < 2; ++e)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {  // v = b + 2l
          const int g = 4 * u + 2 * e + (v & 1) + 8 * (v >> 1);
          out[g] = _mm512_castsi512_ps(_mm512_maskz_permutex2var_epi16(
              0xAAAAAAAAu, c[4 * u + e], _mm512_load_si512(idx[v]), c[4 * u + e + 2]));
        }
  }
  /// Rounded to nearest even (the current rounding mode) as int32; out-of-range and NaN: INT32_MIN.
  static ireg round_i32(reg a) { return _mm512_cvtps_epi32(a); }
  static ireg iadd(ireg a, ireg b) { return _mm512_add_epi32(a, b); }
  static ireg ineg_mul(ireg a, int z) { return _mm512_mullo_epi32(a, _mm512_set1_epi32(-z)); }
  static ireg izero() { return _mm512_setzero_si512(); }
  static ireg bcast32(std::int32_t v) { return _mm512_set1_epi32(v); }
  static void istore(void* p, ireg a) { _mm512_storeu_si512(p, a); }
  /// The dwords (a[g], b[g], c[g], d[g]) (each saturated to int8) for the 16 lanes g: four rows'
  /// coefficients per group, dpbusd's signed operand for interleave4's lanes. Two saturating packs (int32
  /// → int16 → int8: the same bytes as saturating to int8 at once) give per 128-bit lane a0-3 b0-3 c0-3
  /// d0-3; one byte shuffle interleaves them (4 instructions; 14 with vpmovsdb and unpacks).
  static ireg quad_bytes(ireg a, ireg b, ireg c, ireg d) {
    const __m512i abcd = _mm512_packs_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
    const __m512i idx =
        _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    return _mm512_shuffle_epi8(abcd, idx);
  }
  /// acc + the sum of each dword's four signed bytes (a quad_bytes result: the sum of its four
  /// coefficients where none saturated), in one dpbusd against bytes of 1.
  static ireg quad_sum(ireg acc, ireg quad) {
    return dpbusd(acc, _mm512_set1_epi8(1), quad);
  }
};
SPARSE_FFN_TARGET_END

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_BF16)
// ---- AVX-512 + AVX512_VNNI + AVX512_BF16: avx512_vnni, plus bf16 pairs for vdpbf16ps --------------
// A `pairs` register holds 32 bf16 = 16 pairs; dot(acc, a, b) adds a[2i]·b[2i] + a[2i+1]·b[2i+1] to
// lane i (the products are exact in float; the instruction adds the odd product, then the even one,
// rounding to nearest even, with denormal inputs and outputs flushed to zero).
template <>
struct simd<isa::avx512_bf16> : simd<isa::avx512_vnni> {
  using pairs = __m512bh;
  static constexpr int pair_width = 32;  // bf16 elements per `pairs` register
  static pairs load_pairs(const bfloat16_t* p) { return (pairs)_mm512_loadu_si512(p); }
  static reg dot(reg acc, pairs a, pairs b) { return _mm512_dpbf16_ps(acc, a, b); }
  /// The value kernel's operands (kernels.inl, axpy_rows_pairs): 32 columns of two bf16 rows a and b as
  /// column pairs, lo = columns [0, 16), hi = [16, 32), each lane (a[c] odd, b[c] even), so that
  /// dot() adds a's product first, then b's.
  static void interleave(const bfloat16_t* a, const bfloat16_t* b, pairs& lo, pairs& hi) {
    const __m512i va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b);
    // word 2i of the result: b[i] (index i), word 2i + 1: a[i] (index 32 + i); hi: i + 16.
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                         38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
    lo = (pairs)_mm512_permutex2var_epi16(vb, ilo, va);
    hi = (pairs)_mm512_permutex2var_epi16(vb, ihi, va);
  }
  /// One pair of coefficients (a odd, b even: interleave's order) in every lane.
  static pairs set1_pair(std::uint32_t ab) { return (pairs)_mm512_set1_epi32(static_cast<int>(ab)); }
};
SPARSE_FFN_TARGET_END
#endif  // SPARSE_FFN_X86_DISPATCH

}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
