// half_t / bfloat16_t: exact round trips, round-to-nearest-even against an independent method, NaN/Inf,
// and bit compatibility with CUDA's host conversions and the x86 F16C instructions when available.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <sparse_ffn/types.hpp>

#if defined(SPARSE_FFN_TEST_CUDA_FP16)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#if defined(__F16C__)
#include <immintrin.h>
#endif

using sparse_ffn::bfloat16_t;
using sparse_ffn::half_t;
namespace d = sparse_ffn::detail;

namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Every finite half value as double, in bit order of the positive halves (0x0000..0x7bff).
std::vector<double> positive_halves() {
  std::vector<double> v;
  for (std::uint32_t h = 0; h <= 0x7bff; ++h) {
    const int e = (h >> 10) & 31;
    const int m = h & 1023;
    v.push_back(e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
  }
  return v;
}

/// Independent float -> half: nearest representable value in double, ties to the even bit pattern.
std::uint16_t half_ref(float f, const std::vector<double>& table) {
  const double a = std::fabs(double(f));
  const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (a >= 65520.0) return sign | 0x7c00;
  auto it = std::lower_bound(table.begin(), table.end(), a);
  if (it == table.end()) return sign | 0x7bff;  // (65504, 65520): rounds down to the largest half
  std::size_t hi = static_cast<std::size_t>(it - table.begin());
  if (table[hi] == a || hi == 0) return static_cast<std::uint16_t>(sign | hi);
  const std::size_t lo = hi - 1;
  const double dl = a - table[lo], dh = table[hi] - a;
  if (dl < dh) return static_cast<std::uint16_t>(sign | lo);
  if (dh < dl) return static_cast<std::uint16_t>(sign | hi);
  return static_cast<std::uint16_t>(sign | ((lo & 1) ? hi : lo));
}

/// Independent float -> bf16 by comparing the two bracketing bf16 values in double.
std::uint16_t bf16_ref(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isinf(f)) return static_cast<std::uint16_t>(u >> 16);
  const std::uint32_t lo = u & 0xffff0000u;
  const std::uint32_t hi = lo + 0x10000u;
  const double x = f, vl = bits_to_float(lo), vh = bits_to_float(hi);
  const double dl = std::fabs(x - vl),
               dh = std::isinf(vh) ? std::ldexp(1.0, 128) - std::fabs(x) : std::fabs(vh - x);
  if (dl < dh) return static_cast<std::uint16_t>(lo >> 16);
  if (dh < dl) return static_cast<std::uint16_t>(hi >> 16);
  return static_cast<std::uint16_t>(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

/// Floats to test conversions on: a stride through all bit patterns, every half midpoint ± 1 ulp,
/// values near the overflow and underflow thresholds, and random ones.
std::vector<float> probe_floats() {
  std::vector<float> v;
  for (std::uint64_t u = 0; u < (1ull << 32); u += 4093)
    v.push_back(bits_to_float(static_cast<std::uint32_t>(u)));
  const auto t = positive_halves();
  for (std::size_t i = 0; i + 1 < t.size(); ++i) {
    const float mid = static_cast<float>((t[i] + t[i + 1]) / 2);  // exact in float
    for (float s : {1.0f, -1.0f}) {
      v.push_back(s * mid);
      v.push_back(std::nextafter(s * mid, 0.0f));
      v.push_back(std::nextafter(s * mid, s * 1e30f));
    }
  }
  v.push_back(std::numeric_limits<float>::infinity());
  v.push_back(-std::numeric_limits<float>::infinity());
  v.push_back(std::numeric_limits<float>::max());
  v.push_back(-std::numeric_limits<float>::max());
  for (float f : {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f,
                  1e-40f, 0.0f, -0.0f})
    for (float s : {1.0f, -1.0f}) v.push_back(s * f);
  std::mt19937_64 r(Catch::rngSeed());
  for (int i = 0; i < 200000; ++i) v.push_back(bits_to_float(static_cast<std::uint32_t>(r())));
  return v;
}

}  // namespace

TEST_CASE("half: every half value round-trips through float exactly", "[types]") {
  for (std::uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = d::half_bits_to_float(static_cast<std::uint16_t>(h));
    const std::uint16_t back = d::float_to_half_bits(f);
    if (((h >> 10) & 31) == 31 && (h & 1023)) {  // NaN stays NaN, sign kept
      REQUIRE(std::isnan(f));
      REQUIRE(((back >> 10) & 31) == 31);
      REQUIRE((back & 1023) != 0);
      REQUIRE((back & 0x8000) == (h & 0x8000));
    } else {
      REQUIRE(back == h);
    }
  }
  REQUIRE(d::half_bits_to_float(0x3c00) == 1.0f);
  REQUIRE(d::half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  REQUIRE(d::half_bits_to_float(0x7bff) == 65504.0f);
  REQUIRE(std::isinf(d::half_bits_to_float(0xfc00)));
}

TEST_CASE("half: float -> half rounds to nearest even (independent reference)", "[types]") {
  const auto table = positive_halves();
  for (float f : probe_floats()) {
    if (std::isnan(f)) {
      const std::uint16_t h = d::float_to_half_bits(f);
      REQUIRE((h & 0x7c00) == 0x7c00);
      REQUIRE((h & 0x3ff) != 0);
      continue;
    }
    INFO("f = " << f);
    REQUIRE(d::float_to_half_bits(f) == half_ref(f, table));
  }
}

TEST_CASE("bfloat16: round trips, rounding, NaN", "[types]") {
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = d::bf16_bits_to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) {
      REQUIRE(std::isnan(d::bf16_bits_to_float(d::float_to_bf16_bits(f))));
    } else {
      REQUIRE(d::float_to_bf16_bits(f) == b);
    }
  }
  for (float f : probe_floats()) {
    if (std::isnan(f)) {
      REQUIRE(std::isnan(float(bfloat16_t(f))));
      continue;
    }
    INFO("f = " << f);
    REQUIRE(d::float_to_bf16_bits(f) == bf16_ref(f));
  }
  REQUIRE(std::isinf(float(bfloat16_t(std::numeric_limits<float>::max()))));
  REQUIRE(float(bfloat16_t(1.0f)) == 1.0f);
}

TEST_CASE("half_t/bfloat16_t wrappers convert through the same functions", "[types]") {
  REQUIRE(half_t(1.5f).bits == 0x3e00);
  REQUIRE(float(half_t::from_bits(0x3e00)) == 1.5f);
  REQUIRE(bfloat16_t(1.5f).bits == 0x3fc0);
  REQUIRE(sparse_ffn::to_float(sparse_ffn::from_float<half_t>(-2.0f)) == -2.0f);
  STATIC_REQUIRE(sparse_ffn::dtype_traits<bfloat16_t>::id == sparse_ffn::dtype::bf16);
}

#if defined(SPARSE_FFN_TEST_CUDA_FP16)
TEST_CASE("bit compatibility with CUDA's __half / __nv_bfloat16 host conversions", "[types][cuda]") {
  STATIC_REQUIRE(sizeof(__half) == sizeof(half_t));
  STATIC_REQUIRE(sizeof(__nv_bfloat16) == sizeof(bfloat16_t));
  for (float f : probe_floats()) {
    if (std::isnan(f)) continue;  // NaN payloads differ (CUDA canonicalises); both stay NaN
    INFO("f = " << f);
    const __half_raw h = __float2half_rn(f);
    REQUIRE(half_t(f).bits == h.x);
    const __nv_bfloat16_raw b = __float2bfloat16_rn(f);
    REQUIRE(bfloat16_t(f).bits == b.x);
  }
  for (std::uint32_t u = 0; u <= 0xffff; ++u) {
    const auto bits = static_cast<std::uint16_t>(u);
    __half_raw hr;
    hr.x = bits;
    const __half h(hr);
    const float ours = float(half_t::from_bits(bits)), theirs = __half2float(h);
    if (std::isnan(theirs)) {
      REQUIRE(std::isnan(ours));
    } else {
      REQUIRE(ours == theirs);
    }
    __nv_bfloat16_raw br;
    br.x = bits;
    const __nv_bfloat16 b(br);
    const float bo = float(bfloat16_t::from_bits(bits)), bt = __bfloat162float(b);
    if (std::isnan(bt)) {
      REQUIRE(std::isnan(bo));
    } else {
      REQUIRE(bo == bt);
    }
  }
}
#endif

#if defined(__F16C__)
TEST_CASE("half conversion matches the F16C instructions bit for bit (NaN included)", "[types]") {
  for (float f : probe_floats()) {
    INFO("f = " << f);
    REQUIRE(d::float_to_half_bits(f) == _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
  }
}
#endif
