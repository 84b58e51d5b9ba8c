// Test support: random FFNs and inputs, output poisoning, and the float64 reference.
//
// The reference computes in double from the exact values a kernel sees (the packed T weights and the
// Tx inputs converted exactly to double), so the only differences it measures are the kernel's float
// accumulation and the rounding of Y to its dtype. It is deliberately the plainest possible code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <sparse_ffn/sparse_ffn.hpp>

namespace sfx = sparse_ffn;

/// `expr` throws sparse_ffn::error with `expected_status` and a message containing `substring`.
#define REQUIRE_ERROR(expr, expected_status, substring)                    \
  do {                                                                     \
    try {                                                                  \
      expr;                                                                \
      FAIL("no error thrown by " #expr);                                   \
    } catch (const sfx::error& e) {                                        \
      INFO("message: " << e.what());                                       \
      REQUIRE(e.code() == (expected_status));                              \
      REQUIRE(std::string(e.what()).rfind("sparse_ffn: ", 0) == 0);        \
      REQUIRE(std::string(e.what()).find(substring) != std::string::npos); \
    }                                                                      \
  } while (0)

namespace test {

/// SPARSE_FFN_TEST_ISA=<level> (set by CTest for the per-ISA runs of the kernel tests) forces that
/// instruction set for the whole binary; a level this CPU cannot run makes the binary print
/// "SKIPPED: ..." and exit 77, which CTest reports as skipped, by name. Unset: the best level.
inline bool select_test_isa() {
  const char* want = std::getenv("SPARSE_FFN_TEST_ISA");
  if (!want || !*want) return true;
  sfx::cpu::isa_level l = sfx::cpu::isa_level::scalar;
  if (!sfx::cpu::parse_isa(want, l)) {
    std::fprintf(stderr, "SPARSE_FFN_TEST_ISA=%s is not an ISA level\n", want);
    std::exit(2);
  }
  if (!sfx::cpu::isa_supported(l)) {
    std::printf("SKIPPED: this CPU cannot run the %s kernels (best: %s)\n", want,
                sfx::cpu::isa_name(sfx::cpu::best_isa()));
    std::fflush(stdout);
    std::exit(77);
  }
  sfx::cpu::set_isa(l);
  std::printf("kernels: %s\n", sfx::cpu::isa_description().c_str());
  return true;
}
inline const bool g_test_isa_selected = select_test_isa();

/// Relative rounding of the kernels' inputs for weights T at the active ISA: 2^-8 (bf16's unit
/// roundoff) where x is rounded to bf16 (avx512_bf16 with bf16 weights), else 0. Tolerances add a multiple of
/// it times the root-sum-square magnitudes (mag2): the roundings are independent, so their sum grows like a
/// random walk, not like the worst case.
template <class T>
double activation_rounding() {
  return sfx::cpu::rounds_inputs_to_bf16<T>() ? std::ldexp(1.0, -8) : 0.0;
}

/// Per element of a token's x, a bound of how far the kernels' key pass moves it for weights T at the
/// active ISA: 2^-8 |x_c| where x is rounded to bf16; half a step (max |x| of the group of 32 / 254)
/// where it is quantised to int8 (q8/q4 on VNNI); 0 otherwise. Tolerances add a multiple of the
/// root-sum-square of the terms' sensitivities to it (a random walk of independent roundings).
/// (`to_bf16` / `to_int8` override what the active CPU kernels do, for other back ends.)
template <class T, class Tx>
std::vector<double> x_rounding(const Tx* x, sfx::index_t d,
                               bool to_bf16 = sfx::cpu::rounds_inputs_to_bf16<T>(),
                               bool to_int8 = sfx::cpu::quantizes_inputs_to_int8<T>()) {
  std::vector<double> xr(static_cast<std::size_t>(d), 0.0);
  if (to_bf16) {
    for (sfx::index_t c = 0; c < d; ++c)
      xr[static_cast<std::size_t>(c)] =
          std::ldexp(1.0, -8) * std::fabs(static_cast<double>(sfx::to_float(x[c])));
  } else if (to_int8) {
    for (sfx::index_t g0 = 0; g0 < d; g0 += 32) {
      double amax = 0;
      for (sfx::index_t c = g0; c < std::min(d, g0 + 32); ++c)
        amax = std::max(amax, std::fabs(static_cast<double>(sfx::to_float(x[c]))));
      for (sfx::index_t c = g0; c < std::min(d, g0 + 32); ++c) xr[static_cast<std::size_t>(c)] = amax / 254.0;
    }
  }
  return xr;
}

/// Fresh randomness per run: Catch's --rng-seed (ctest passes "time"), mixed with a per-use salt.
inline std::mt19937_64 rng(std::uint64_t salt) {
  return std::mt19937_64(Catch::rngSeed() * 0x9e3779b97f4a7c15ull + salt);
}

template <class T>
void fill_normal(std::vector<T>& v, std::mt19937_64& r, double stddev, double mean = 0.0) {
  std::normal_distribution<double> nd(mean, stddev);
  for (auto& e : v) e = sfx::from_float<T>(static_cast<float>(nd(r)));
}

/// A random dense FFN whose values are exactly representable in T (so packing is exact; q8/q4: float
/// values, quantised by pack, and the references read the packed, dequantised weights).
template <class T>
sfx::dense_ffn<float> random_dense(std::mt19937_64& r, sfx::index_t d, sfx::index_t f, bool gated,
                                   bool biases) {
  sfx::dense_ffn<float> ffn(d, f, gated, biases);
  const double ks = 1.0 / std::sqrt(static_cast<double>(d));
  auto fill = [&](std::vector<float>& v, double s, double mean) {
    std::normal_distribution<double> nd(mean, s);
    for (auto& e : v) {
      e = static_cast<float>(nd(r));
      if constexpr (!sfx::is_quantized<T>::value) e = sfx::to_float(sfx::from_float<T>(e));
    }
  };
  fill(ffn.w1, ks, 0.0);
  fill(ffn.w2, 1.0 / std::sqrt(static_cast<double>(f)), 0.0);
  fill(ffn.w3, ks, 0.0);
  fill(ffn.b1, 0.3, -0.1);
  fill(ffn.b2, 0.3, 0.0);
  fill(ffn.b3, 0.3, 0.0);
  return ffn;
}

/// A random permutation of [0, n).
inline std::vector<std::int32_t> random_perm(std::mt19937_64& r, sfx::index_t n) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (sfx::index_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  std::shuffle(p.begin(), p.end(), r);
  return p;
}

/// Bit pattern that is NaN for every dtype: outputs are poisoned with it before each run.
template <class T>
void poison(std::vector<T>& v) {
  std::memset(static_cast<void*>(v.data()), 0xff, v.size() * sizeof(T));
}

template <class T>
bool is_poison(const T& v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  return std::all_of(b, b + sizeof(T), [](unsigned char c) { return c == 0xff; });
}

/// An output buffer with a guard zone after the n*d elements; `guard_intact()` checks no write
/// went past the end.
template <class T>
struct guarded_output {
  std::size_t size;
  std::vector<T> buf;
  explicit guarded_output(std::size_t n) : size(n), buf(n + 64) { poison(buf); }
  T* data() { return buf.data(); }
  bool guard_intact() const {
    for (std::size_t i = size; i < buf.size(); ++i)
      if (!is_poison(buf[i])) return false;
    return true;
  }
  bool all_written() const {
    for (std::size_t i = 0; i < size; ++i)
      if (is_poison(buf[i])) return false;
    return true;
  }
};

template <class T>
double to_double(T v) {
  return static_cast<double>(sfx::to_float(v));
}

/// Value c of a weight row of d values (dequantised for q8/q4: the weights the kernels compute with).
template <class T>
double wval(const T* row, sfx::index_t c, sfx::index_t d) {
  return static_cast<double>(sfx::row_format<T>::get(row, c, d));
}

/// Activation in double, written from the textbook formulas.
inline double act_ref(sfx::activation_kind k, double a, double u) {
  using K = sfx::activation_kind;
  auto gelu_tanh = [](double z) {
    return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
  };
  switch (k) {
    case K::relu: return a > 0 ? a : 0.0;
    case K::gelu_erf: return 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0)));
    case K::gelu_tanh: return gelu_tanh(a);
    case K::silu: return a / (1.0 + std::exp(-a));
    case K::swiglu: return a / (1.0 + std::exp(-a)) * u;
    case K::geglu: return gelu_tanh(a) * u;
  }
  return 0;
}

/// Pre-activation (and up) of packed neuron i of block b, in double.
template <class T, class Tx>
void neuron_ref(const sfx::blocked_ffn_view<T>& w, const Tx* x, sfx::index_t b, sfx::index_t i, double& a,
                double& u) {
  const auto& l = w.layout;
  const sfx::index_t j = b * l.g + i;
  a = w.b1 ? w.b1[j] : 0.0;
  u = w.b3 ? w.b3[j] : 0.0;
  for (sfx::index_t c = 0; c < l.d_model; ++c) {
    a += wval(w.keys(b) + i * l.ld, c, l.d_model) * to_double(x[c]);
    if (l.gated) u += wval(w.up(b) + i * l.ld, c, l.d_model) * to_double(x[c]);
  }
}

/// Root-sum-square of the terms of neuron i's key (a2) and up (u2) dot products: the scale of the
/// error that rounding x to bf16 causes in them.
template <class T, class Tx>
void neuron_mag2(const sfx::blocked_ffn_view<T>& w, const Tx* x, sfx::index_t b, sfx::index_t i, double& a2,
                 double& u2) {
  const auto& l = w.layout;
  a2 = u2 = 0;
  for (sfx::index_t c = 0; c < l.d_model; ++c) {
    a2 += std::pow(wval(w.keys(b) + i * l.ld, c, l.d_model) * to_double(x[c]), 2);
    if (l.gated) u2 += std::pow(wval(w.up(b) + i * l.ld, c, l.d_model) * to_double(x[c]), 2);
  }
  a2 = std::sqrt(a2);
  u2 = std::sqrt(u2);
}

/// The reference output of one token and, per element, the magnitude of what was summed into it
/// (|b2| + sum |w h v| with h's own rounding sensitivity folded in): float accumulation error is a
/// small multiple of eps * mag, whatever cancellation does to y itself.
struct ref_output {
  std::vector<double> y, mag;
  std::vector<double> mag2;  ///< per element: sqrt(sum over terms of their sensitivity²) (random walk)
};

/// y_t = b2 + sum_j w_j * V_bjᵀ act(K_bj x + b1) for one token, in double.
/// `xr` (optional): per element, the bound of the kernels' rounding of x (x_rounding); mag2 then uses
/// it in place of x (callers pass act_round 1 to close_to), and `h_round` is the relative rounding of
/// the value coefficients w·h (2^-8 where they are rounded to bf16, else 0). Without xr, mag2 is
/// relative (x and the coefficients both count fully; close_to scales it by act_round).
/// `h_levels` (quantised T; cpu::value_coefficient_levels): the kernels quantise each coefficient w·h·scale
/// to an integer of at most h_levels with one step per chunk of 32 rows and group of 32 columns
/// (max |w·h·scale| / h_levels): half a step times |q| per term joins mag2.
template <class T, class Tx>
ref_output forward_ref(const sfx::blocked_ffn_view<T>& w, sfx::activation_kind act, const Tx* x,
                       const sfx::block_index_t* blocks, const float* weights, sfx::index_t k,
                       const double* xr = nullptr, double h_round = 0.0, std::int32_t h_levels = 0) {
  const double hr = xr ? h_round : 1.0;
  const auto& l = w.layout;
  // The quantised value row i's scale of column c and its integer there (1 and v for other dtypes).
  auto scale_of = [&](const T* row, sfx::index_t c) -> double {
    if constexpr (sfx::is_quantized<T>::value)
      return sfx::to_float(sfx::row_format<T>::scales(row, sfx::row_format<T>::cols(l.d_model))[c / 32]);
    else
      return 1.0;
  };
  auto int_of = [&](const T* row, sfx::index_t c) -> double {
    if constexpr (sfx::is_quantized<T>::value)
      return sfx::row_format<T>::quant(row, c);
    else
      return wval(row, c, l.d_model);
  };
  const sfx::index_t chunks = (l.g + 31) / 32, groups = (l.d_model + 31) / 32;
  std::vector<double> step(static_cast<std::size_t>(h_levels > 0 ? chunks * groups : 0));
  ref_output out;
  out.y.resize(static_cast<std::size_t>(l.d_model));
  out.mag.resize(static_cast<std::size_t>(l.d_model));
  out.mag2.assign(static_cast<std::size_t>(l.d_model), 0.0);
  for (sfx::index_t c = 0; c < l.d_model; ++c) {
    out.y[static_cast<std::size_t>(c)] = w.b2 ? w.b2[c] : 0.0;
    out.mag[static_cast<std::size_t>(c)] = std::fabs(out.y[static_cast<std::size_t>(c)]);
  }
  for (sfx::index_t j = 0; j < k; ++j) {
    const sfx::index_t b = blocks[j];
    const double wb = weights ? weights[j] : 1.0;
    if (h_levels > 0) {  // the step of every (chunk, group): max |w·h·scale| / h_levels
      std::fill(step.begin(), step.end(), 0.0);
      for (sfx::index_t i = 0; i < l.g; ++i) {
        double a, u;
        neuron_ref(w, x, b, i, a, u);
        const double h = wb * act_ref(act, a, u);
        for (sfx::index_t gr = 0; gr < groups; ++gr) {
          double& st = step[static_cast<std::size_t>(i / 32 * groups + gr)];
          st = std::max(st, std::fabs(h * scale_of(w.values(b) + i * l.ld, 32 * gr)) / h_levels);
        }
      }
    }
    for (sfx::index_t i = 0; i < l.g; ++i) {
      double a, u, amag = w.b1 ? std::fabs(w.b1[b * l.g + i]) : 0.0,
                   umag = w.b3 ? std::fabs(w.b3[b * l.g + i]) : 0.0, amag2 = 0, umag2 = 0;
      neuron_ref(w, x, b, i, a, u);
      for (sfx::index_t c = 0; c < l.d_model; ++c) {
        const double xc = to_double(x[c]), rc = xr ? xr[c] : xc;
        const double kc = wval(w.keys(b) + i * l.ld, c, l.d_model);
        amag += std::fabs(kc * xc);
        amag2 += (kc * rc) * (kc * rc);
        if (l.gated) {
          const double uc = wval(w.up(b) + i * l.ld, c, l.d_model);
          umag += std::fabs(uc * xc);
          umag2 += (uc * rc) * (uc * rc);
        }
      }
      amag2 = std::sqrt(amag2);
      umag2 = std::sqrt(umag2);
      const double h = wb * act_ref(act, a, u);
      // |dh| <= |act'| |da| + |act| |du|: bound |act'| <= 1.2 (relu, gelu, silu) and |act(a)| <= |a|+1.
      const double hsens =
          std::fabs(wb) * (std::fabs(h / (wb == 0 ? 1 : wb)) + 1.2 * amag * (l.gated ? std::fabs(u) : 1.0) +
                           (l.gated ? (std::fabs(a) + 1) * umag : 0.0));
      const double hsens2 = std::fabs(wb) * (hr * std::fabs(h / (wb == 0 ? 1 : wb)) +
                                             1.2 * amag2 * (l.gated ? std::fabs(u) : 1.0) +
                                             (l.gated ? (std::fabs(a) + 1) * umag2 : 0.0));
      for (sfx::index_t c = 0; c < l.d_model; ++c) {
        const double v = wval(w.values(b) + i * l.ld, c, l.d_model);
        out.y[static_cast<std::size_t>(c)] += h * v;
        out.mag[static_cast<std::size_t>(c)] += (std::fabs(h) + hsens) * std::fabs(v);
        out.mag2[static_cast<std::size_t>(c)] += std::pow((hr * std::fabs(h) + hsens2) * std::fabs(v), 2);
        if (h_levels > 0)  // half a step (1% margin for the kernels' own h) times |q|
          out.mag2[static_cast<std::size_t>(c)] +=
              std::pow(0.505 * step[static_cast<std::size_t>(i / 32 * groups + c / 32)] *
                           std::fabs(int_of(w.values(b) + i * l.ld, c)),
                       2);
      }
    }
  }
  for (auto& m : out.mag2) m = std::sqrt(m);
  return out;
}

/// Dense FFN in double from a dense float FFN (PyTorch layout), with the same magnitude bound.
template <class Tx>
ref_output dense_ref(const sfx::dense_ffn<float>& f, sfx::activation_kind act, const Tx* x) {
  const sfx::index_t d = f.d_model, F = f.d_ff;
  std::vector<double> h(static_cast<std::size_t>(F)), hmag(static_cast<std::size_t>(F)),
      hmag2(static_cast<std::size_t>(F));
  for (sfx::index_t i = 0; i < F; ++i) {
    double a = f.b1.empty() ? 0.0 : f.b1[static_cast<std::size_t>(i)];
    double u = f.b3.empty() ? 0.0 : f.b3[static_cast<std::size_t>(i)];
    double amag = std::fabs(a), umag = std::fabs(u), amag2 = 0, umag2 = 0;
    for (sfx::index_t c = 0; c < d; ++c) {
      const double ka = double(f.w1[static_cast<std::size_t>(i * d + c)]) * to_double(x[c]);
      a += ka;
      amag += std::fabs(ka);
      amag2 += ka * ka;
      if (f.gated()) {
        const double ku = double(f.w3[static_cast<std::size_t>(i * d + c)]) * to_double(x[c]);
        u += ku;
        umag += std::fabs(ku);
        umag2 += ku * ku;
      }
    }
    h[static_cast<std::size_t>(i)] = act_ref(act, a, u);
    hmag[static_cast<std::size_t>(i)] = std::fabs(h[static_cast<std::size_t>(i)]) +
                                        1.2 * amag * (f.gated() ? std::fabs(u) : 1.0) +
                                        (f.gated() ? (std::fabs(a) + 1) * umag : 0.0);
    hmag2[static_cast<std::size_t>(i)] = std::fabs(h[static_cast<std::size_t>(i)]) +
                                         1.2 * std::sqrt(amag2) * (f.gated() ? std::fabs(u) : 1.0) +
                                         (f.gated() ? (std::fabs(a) + 1) * std::sqrt(umag2) : 0.0);
  }
  ref_output out;
  out.y.resize(static_cast<std::size_t>(d));
  out.mag.resize(static_cast<std::size_t>(d));
  out.mag2.resize(static_cast<std::size_t>(d));
  for (sfx::index_t c = 0; c < d; ++c) {
    double s = f.b2.empty() ? 0.0 : f.b2[static_cast<std::size_t>(c)];
    double m = std::fabs(s), m2 = 0;
    for (sfx::index_t i = 0; i < F; ++i) {
      const double v = f.w2[static_cast<std::size_t>(c * F + i)];
      s += v * h[static_cast<std::size_t>(i)];
      m += std::fabs(v) * hmag[static_cast<std::size_t>(i)];
      m2 += std::pow(v * hmag2[static_cast<std::size_t>(i)], 2);
    }
    out.y[static_cast<std::size_t>(c)] = s;
    out.mag[static_cast<std::size_t>(c)] = m;
    out.mag2[static_cast<std::size_t>(c)] = std::sqrt(m2);
  }
  return out;
}

template <class Ty>
double norm_diff(const Ty* y, const std::vector<double>& ref) {
  double e = 0;
  for (std::size_t c = 0; c < ref.size(); ++c) e += (to_double(y[c]) - ref[c]) * (to_double(y[c]) - ref[c]);
  return std::sqrt(e);
}

inline double norm(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return std::sqrt(s);
}

/// Relative L2 error ||y - ref|| / ||ref||.
template <class Ty>
double rel_l2(const Ty* y, const std::vector<double>& ref) {
  return norm_diff(y, ref) / std::max(norm(ref), 1e-300);
}

/// Rounding of Y to its dtype, relative (f32: none beyond accumulation).
template <class Ty>
double output_rounding() {
  if (std::is_same<Ty, float>::value) return 1e-6;
  if (std::is_same<Ty, sfx::half_t>::value) return 1e-3;  // 2^-11 per element
  return 8e-3;                                            // bfloat16: 2^-8 per element
}

/// Absolute rounding of one element of Y below its dtype's normal range (half: subnormal spacing
/// 2^-24, half of it per element; float and bfloat16 have float's exponent range, negligible here).
template <class Ty>
double output_subnormal_rounding() {
  return std::is_same<Ty, sfx::half_t>::value ? std::ldexp(1.0, -25) : 0.0;
}

/// Float accumulation error allowed, relative to ||mag||.
inline double accumulation_tolerance() {
  return 1e-5;
}

/// Pass/fail of one token: ||y - ref|| <= rounding(Ty) ||ref|| + subnormal(Ty) sqrt(d) + 1e-5 ||mag||
/// (+ 3 act_round ||mag2|| where the kernels round their inputs to bf16: ~7 standard deviations of that
/// random walk). The subnormal term matters only when a half output is tiny (|y| < 2^-14, seen with
/// d = 1 and a cancelling sum). A
/// dropped or wrong neuron shifts y by ~||mag|| / (number of terms), far above this for the test shapes.
template <class Ty>
bool close_to(const Ty* y, const ref_output& r, double* err_out = nullptr, double act_round = 0.0) {
  const double err = norm_diff(y, r.y);
  if (err_out) *err_out = err / std::max(norm(r.mag), 1e-300);
  const double round2 = act_round > 0 ? 3 * act_round * norm(r.mag2) : 0.0;
  const double subnormal = output_subnormal_rounding<Ty>() * std::sqrt(static_cast<double>(r.y.size()));
  return err <=
         output_rounding<Ty>() * norm(r.y) + subnormal + accumulation_tolerance() * norm(r.mag) + round2;
}

/// Selector scores in double (what the selected blocks must be the top-k of).
template <class T, class Tx>
std::vector<double> scores_ref(const sfx::blocked_ffn_view<T>& w, sfx::selector_kind s,
                               sfx::activation_kind act, const Tx* x) {
  const auto& l = w.layout;
  std::vector<double> sc(static_cast<std::size_t>(l.num_blocks), 0.0);
  for (sfx::index_t b = 0; b < l.num_blocks; ++b) {
    double v = 0;
    if (s == sfx::selector_kind::avg_k || s == sfx::selector_kind::learned_gate) {
      const T* row = s == sfx::selector_kind::avg_k ? w.centroid(b) : w.gate_row(b);
      const float* bias = s == sfx::selector_kind::avg_k ? w.centroid_bias : w.gate_b;
      v = bias ? bias[b] : 0.0;
      for (sfx::index_t c = 0; c < l.d_model; ++c) v += wval(row, c, l.d_model) * to_double(x[c]);
    } else if (s == sfx::selector_kind::oracle) {
      for (sfx::index_t i = 0; i < l.g; ++i) {
        double a, u;
        neuron_ref(w, x, b, i, a, u);
        v += std::fabs(act_ref(act, a, u));
      }
    }
    sc[static_cast<std::size_t>(b)] = v;
  }
  return sc;
}

/// The largest per-block root-sum-square sensitivity of the selector scores to x's rounding.
template <class T, class Tx>
double max_score_mag2(const sfx::blocked_ffn_view<T>& w, sfx::selector_kind s, sfx::activation_kind act,
                      const Tx* x, const double* xr = nullptr) {
  const auto& l = w.layout;
  const bool gated = sfx::activation_is_gated(act);
  double worst = 0;
  for (sfx::index_t b = 0; b < l.num_blocks; ++b) {
    double v = 0;
    if (s == sfx::selector_kind::avg_k || s == sfx::selector_kind::learned_gate) {
      const T* row = s == sfx::selector_kind::avg_k ? w.centroid(b) : w.gate_row(b);
      for (sfx::index_t c = 0; c < l.d_model; ++c)
        v += std::pow(wval(row, c, l.d_model) * (xr ? xr[c] : to_double(x[c])), 2);
    } else if (s == sfx::selector_kind::oracle) {
      for (sfx::index_t i = 0; i < l.g; ++i) {
        double a, u, a2, u2;
        neuron_ref(w, x, b, i, a, u);
        if (xr)
          neuron_mag2(w, xr, b, i, a2, u2);
        else
          neuron_mag2(w, x, b, i, a2, u2);
        const double e =
            1.2 * a2 * (gated ? std::fabs(u) + 1 : 1.0) + (gated ? (std::fabs(a) + 1) * u2 : 0.0);
        v += e * e;
      }
    }
    worst = std::max(worst, std::sqrt(v));
  }
  return worst;
}

/// Checks that blocks[0..k) are distinct, in range, and a top-k of `scores` up to `tol` (every
/// selected score >= every unselected score - tol), best first up to tol.
inline std::string check_topk(const std::vector<double>& scores, const sfx::block_index_t* blocks,
                              sfx::index_t k, double tol) {
  const auto B = static_cast<sfx::index_t>(scores.size());
  std::vector<char> chosen(static_cast<std::size_t>(B), 0);
  double worst_selected = std::numeric_limits<double>::infinity();
  for (sfx::index_t j = 0; j < k; ++j) {
    const auto b = blocks[j];
    if (b < 0 || b >= B) return "block out of range";
    if (chosen[static_cast<std::size_t>(b)]) return "block selected twice";
    chosen[static_cast<std::size_t>(b)] = 1;
    worst_selected = std::min(worst_selected, scores[static_cast<std::size_t>(b)]);
    if (j > 0 && scores[static_cast<std::size_t>(b)] > scores[static_cast<std::size_t>(blocks[j - 1])] + tol)
      return "blocks not ordered best first";
  }
  for (sfx::index_t b = 0; b < B; ++b)
    if (!chosen[static_cast<std::size_t>(b)] && scores[static_cast<std::size_t>(b)] > worst_selected + tol) {
      std::ostringstream os;
      os << "unselected block " << b << " scores " << scores[static_cast<std::size_t>(b)]
         << " > selected minimum " << worst_selected;
      return os.str();
    }
  return "";
}

}  // namespace test
