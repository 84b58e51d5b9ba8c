// Run-time ISA dispatch: detection agrees with the kernel's own report (/proc/cpuinfo), the best
// supported level is chosen, set_isa()/reset_isa() and SPARSE_FFN_ISA override it, and every level
// this CPU runs gives the float64 reference's answer (the full matrix runs per ISA under CTest).
#include <cstring>
#include <fstream>
#include <set>

#include "support/test_support.hpp"

namespace {

namespace cpu = sfx::cpu;

/// The flags the Linux kernel reports for CPU 0 (empty elsewhere).
std::set<std::string> proc_cpuinfo_flags() {
  std::set<std::string> flags;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream is(line.substr(line.find(':') + 1));
      std::string f;
      while (is >> f) flags.insert(f);
      break;
    }
  return flags;
}

}  // namespace

TEST_CASE("isa: detected features agree with /proc/cpuinfo", "[isa]") {
  const auto flags = proc_cpuinfo_flags();
  if (flags.empty() || std::getenv("SPARSE_FFN_TEST_EMULATED_CPU")) {
    // Under an emulator (qemu-x86_64 -cpu <model>) /proc/cpuinfo describes the host, not the CPU seen.
    WARN("SKIPPED: no /proc/cpuinfo flags of this CPU to compare with");
    return;
  }
  const cpu::cpu_features& f = cpu::features();
  INFO(cpu::isa_description());
#if SPARSE_FFN_X86_DISPATCH
  // /proc/cpuinfo lists a feature only when the kernel enabled its state (XSAVE), like our XGETBV check.
  CHECK(f.avx2 == (flags.count("avx2") == 1));
  CHECK(f.fma == (flags.count("fma") == 1));
  CHECK(f.f16c == (flags.count("f16c") == 1));
  CHECK((f.avx512f && f.os_zmm) == (flags.count("avx512f") == 1));
  CHECK((f.avx512bw && f.os_zmm) == (flags.count("avx512bw") == 1));
  CHECK((f.avx512_vnni && f.os_zmm) == (flags.count("avx512_vnni") == 1));
  CHECK((f.avx512_bf16 && f.os_zmm) == (flags.count("avx512_bf16") == 1));
  // The kernel lists the AMX features only where it enabled the tile state, which it then grants to a
  // process that asks (os_amx) — we do not ask when SPARSE_FFN_ISA names a lower level, nor where the
  // amx kernels are not compiled.
  const char* env = std::getenv("SPARSE_FFN_ISA");
  if ((env && *env && std::string(env) != "amx") || !SPARSE_FFN_AMX) {
    CHECK_FALSE(f.os_amx);
  } else {
    CHECK((f.amx_tile && f.os_amx) == (flags.count("amx_tile") == 1));
    CHECK((f.amx_bf16 && f.os_amx) == (flags.count("amx_bf16") == 1));
    CHECK((f.amx_int8 && f.os_amx) == (flags.count("amx_int8") == 1));
  }
#else
  CHECK(cpu::best_isa() == cpu::isa_level::scalar);
#endif
}

TEST_CASE("isa: the best supported level is the default, levels are ordered", "[isa]") {
  cpu::reset_isa();
  const cpu::isa_level best = cpu::best_isa();
  INFO(cpu::isa_description());
  REQUIRE(cpu::isa_supported(best));
  REQUIRE(cpu::isa_supported(cpu::isa_level::scalar));
  for (int l = static_cast<int>(best) + 1; l < cpu::k_isa_levels; ++l)
    REQUIRE_FALSE(cpu::isa_supported(static_cast<cpu::isa_level>(l)));
  for (int l = 0; l <= static_cast<int>(best); ++l)
    REQUIRE(cpu::isa_supported(static_cast<cpu::isa_level>(l)));
  if (!std::getenv("SPARSE_FFN_ISA")) REQUIRE(cpu::active_isa() == best);
  // What the levels need, from the detected features.
  const cpu::cpu_features& f = cpu::features();
  if (cpu::isa_supported(cpu::isa_level::avx512_vnni)) REQUIRE((f.avx512_vnni && f.avx512f && f.os_zmm));
  if (cpu::isa_supported(cpu::isa_level::avx512_bf16)) REQUIRE((f.avx512_bf16 && f.avx512_vnni && f.os_zmm));
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512cd && f.os_zmm &&
                      f.avx2 && f.fma && f.f16c && f.bmi2 && f.os_ymm && SPARSE_FFN_X86_DISPATCH;
  if (cpu::isa_supported(cpu::isa_level::amx))
    REQUIRE((f.amx_tile && f.amx_bf16 && f.amx_int8 && f.os_amx && f.avx512_bf16 && SPARSE_FFN_AMX));
  const bool amx = f.amx_tile && f.amx_bf16 && f.amx_int8 && f.os_amx && SPARSE_FFN_AMX;
  if (avx512 && f.avx512_vnni)
    REQUIRE(best == (f.avx512_bf16 ? (amx ? cpu::isa_level::amx : cpu::isa_level::avx512_bf16)
                                   : cpu::isa_level::avx512_vnni));
  // What each level runs: int8 x for q8/q4 on avx2 (vpmaddubsw) and from avx512_vnni up (vpdpbusd), not
  // on avx512 (float there for now), bf16 pairs from avx512_bf16 up, the AMX passes on amx (bf16 only).
  for (int l = 0; l <= static_cast<int>(best); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("level " << cpu::isa_name(level));
    const bool int8 = level == cpu::isa_level::avx2 || l >= static_cast<int>(cpu::isa_level::avx512_vnni);
    REQUIRE(cpu::kernels::ops_for<sfx::q8_t>(level).int8_x == int8);
    REQUIRE(cpu::kernels::ops_for<sfx::q4_t>(level).int8_x == int8);
    REQUIRE_FALSE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).int8_x);
    // Integer value coefficients: q4 on avx2, q8 and q4 from avx512_vnni up.
    const bool vnni = l >= static_cast<int>(cpu::isa_level::avx512_vnni);
    REQUIRE(cpu::kernels::ops_for<sfx::q4_t>(level).value_levels ==
            (level == cpu::isa_level::avx2 || vnni ? 127 : 0));
    REQUIRE(cpu::kernels::ops_for<sfx::q8_t>(level).value_levels == (vnni ? 127 : 0));
    REQUIRE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).value_levels == 0);
    REQUIRE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).bf16_x ==
            (l >= static_cast<int>(cpu::isa_level::avx512_bf16)));
    const bool on_amx = level == cpu::isa_level::amx;
    REQUIRE((cpu::kernels::ops_for<sfx::bfloat16_t>(level).dots_amx != nullptr) == on_amx);
    REQUIRE((cpu::kernels::ops_for<sfx::bfloat16_t>(level).apply_amx != nullptr) == on_amx);
    REQUIRE(cpu::kernels::ops_for<float>(level).dots_amx == nullptr);
    REQUIRE(cpu::kernels::ops_for<sfx::q8_t>(level).apply_amx == nullptr);
    // The key-tile kernel: q4 from avx2 (8 rows in lanes), q8 from avx512_vnni (16); never for floats.
    REQUIRE((cpu::kernels::ops_for<sfx::q4_t>(level).dots_tiles != nullptr) ==
            (level == cpu::isa_level::avx2 || vnni));
    REQUIRE((cpu::kernels::ops_for<sfx::q8_t>(level).dots_tiles != nullptr) == vnni);
    REQUIRE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).dots_tiles == nullptr);
    REQUIRE((cpu::kernels::ops_for<sfx::q8_t>(level).dots_tiles_amx != nullptr) == on_amx);
    REQUIRE((cpu::kernels::ops_for<sfx::q4_t>(level).dots_tiles_amx != nullptr) == on_amx);
    REQUIRE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).dots_tiles_amx == nullptr);
    REQUIRE((cpu::kernels::ops_for<sfx::q8_t>(level).apply_tiles_amx != nullptr) == on_amx);
    REQUIRE((cpu::kernels::ops_for<sfx::q4_t>(level).apply_tiles_amx != nullptr) == on_amx);
    REQUIRE(cpu::kernels::ops_for<sfx::bfloat16_t>(level).apply_tiles_amx == nullptr);
    REQUIRE(cpu::kernels::ops_for<float>(level).level == level);
  }
  // Names round-trip.
  for (int l = 0; l < cpu::k_isa_levels; ++l) {
    cpu::isa_level back = cpu::isa_level::scalar;
    REQUIRE(cpu::parse_isa(cpu::isa_name(static_cast<cpu::isa_level>(l)), back));
    REQUIRE(static_cast<int>(back) == l);
  }
  cpu::isa_level ignored = cpu::isa_level::scalar;
  REQUIRE_FALSE(cpu::parse_isa("avx512bf16", ignored));
  REQUIRE_FALSE(cpu::parse_isa("", ignored));
  REQUIRE_FALSE(cpu::parse_isa(nullptr, ignored));
}

TEST_CASE("isa: an older CPU gets the level it can run (SPARSE_FFN_TEST_EXPECT_BEST, set under qemu)",
          "[isa]") {
  // CTest runs this binary under qemu-x86_64 -cpu Nehalem (no AVX) and -cpu Haswell (AVX2, no AVX-512):
  // detection must pick scalar / avx2, and every test here (forwards included) must run without SIGILL.
  const char* want = std::getenv("SPARSE_FFN_TEST_EXPECT_BEST");
  if (!want) return;
  cpu::isa_level expect = cpu::isa_level::scalar;
  REQUIRE(cpu::parse_isa(want, expect));
  INFO(cpu::isa_description());
  REQUIRE(cpu::best_isa() == expect);
}

TEST_CASE("isa: set_isa forces a lower level, refuses one the CPU lacks, reset_isa undoes it", "[isa]") {
  const cpu::isa_level best = cpu::best_isa();
  for (int l = 0; l <= static_cast<int>(best); ++l) {
    cpu::set_isa(static_cast<cpu::isa_level>(l));
    REQUIRE(static_cast<int>(cpu::active_isa()) == l);
    REQUIRE(cpu::kernels::ops_for<float>(cpu::active_isa()).level == static_cast<cpu::isa_level>(l));
  }
  for (int l = static_cast<int>(best) + 1; l < cpu::k_isa_levels; ++l) {
    INFO("unsupported level " << cpu::isa_name(static_cast<cpu::isa_level>(l)));
    REQUIRE_ERROR(cpu::set_isa(static_cast<cpu::isa_level>(l)), sfx::status::unsupported, "cannot run");
    WARN("SKIPPED: " << cpu::isa_name(static_cast<cpu::isa_level>(l)) << " is not supported by this CPU");
  }
  REQUIRE_ERROR(cpu::set_isa(static_cast<cpu::isa_level>(7)), sfx::status::invalid_argument,
                "not an ISA level");
  cpu::reset_isa();
  if (!std::getenv("SPARSE_FFN_ISA")) REQUIRE(cpu::active_isa() == best);
}

TEST_CASE("isa: every supported level computes the same forward up to its rounding", "[isa]") {
  // A bf16 model at each level: float levels agree with each other to float accumulation error;
  // avx512_bf16 rounds x to bf16 and stays within that bound.
  using P = sfx::policy<64, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::silu>;
  auto r = test::rng(1);
  const sfx::index_t d = 200, B = 8, F = B * 64, k = 3, n = 5;
  const auto dense = test::random_dense<sfx::bfloat16_t>(r, d, F, false, true);
  sfx::pack_options po;
  po.g = 64;
  const auto model = sfx::pack<sfx::bfloat16_t>(dense.view(), po);
  std::vector<float> x(static_cast<std::size_t>(n * d));
  test::fill_normal(x, r, 1.0);
  sfx::route_args args;
  args.k = k;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    cpu::set_isa(static_cast<cpu::isa_level>(l));
    INFO("isa " << cpu::isa_name(cpu::active_isa()));
    test::guarded_output<float> y(static_cast<std::size_t>(n * d));
    std::vector<sfx::block_index_t> blocks(static_cast<std::size_t>(n * k));
    std::vector<float> weights(static_cast<std::size_t>(n * k));
    sfx::forward_cache cache{blocks.data(), weights.data(), nullptr, nullptr};
    sfx::cpu::forward<P>(model.view(), n, x.data(), y.data(), args, &cache);
    REQUIRE(y.all_written());
    for (sfx::index_t t = 0; t < n; ++t) {
      const auto ref = test::forward_ref(model.view(), sfx::activation_kind::silu, x.data() + t * d,
                                         blocks.data() + t * k, weights.data() + t * k, k);
      double err = 0;
      INFO("token " << t);
      REQUIRE(test::close_to(y.data() + t * d, ref, &err, test::activation_rounding<sfx::bfloat16_t>()));
    }
  }
  cpu::reset_isa();
}

TEST_CASE("isa: the level-1 loops (vdot, vaxpy) of every supported level match float64 at any n and offset",
          "[isa]") {
  auto r = test::rng(4);
  std::vector<float> a(300), b(300), y0(300);
  test::fill_normal(a, r, 1.0);
  test::fill_normal(b, r, 1.0);
  test::fill_normal(y0, r, 1.0);
  int levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l, ++levels) {
    const auto& ops = cpu::kernels::ops_for<float>(static_cast<cpu::isa_level>(l));
    INFO("isa " << cpu::isa_name(static_cast<cpu::isa_level>(l)));
    REQUIRE(ops.vdot != nullptr);
    REQUIRE(ops.vaxpy != nullptr);
    for (sfx::index_t n : {0, 1, 7, 15, 16, 17, 63, 64, 65, 130, 257})
      for (sfx::index_t off : {0, 1, 3}) {  // unaligned starts
        INFO("n " << n << " offset " << off);
        double ref = 0, mag = 0;
        for (sfx::index_t j = 0; j < n; ++j) {
          ref += double(a[off + j]) * b[off + j];
          mag += std::fabs(double(a[off + j]) * b[off + j]);
        }
        // float accumulation: at most ~n roundings of the running sums
        REQUIRE(std::fabs(ops.vdot(a.data() + off, b.data() + off, n) - ref) <= 1.2e-7 * double(n + 4) * mag);
        std::vector<float> y(y0);
        const float c = 0.37f;
        ops.vaxpy(c, a.data() + off, y.data() + off, n);
        for (sfx::index_t j = 0; j < 300; ++j) {
          const bool in = j >= off && j < off + n;
          const double want = in ? double(y0[j]) + double(c) * a[j] : double(y0[j]);
          REQUIRE(std::fabs(y[j] - want) <= (in ? 1e-6 * (std::fabs(y0[j]) + std::fabs(c * a[j])) : 0.0));
        }
      }
  }
  REQUIRE(levels == static_cast<int>(cpu::best_isa()) + 1);
}

TEST_CASE("isa: the router-training loops (adam, vsigmoid, vtanh) of every supported level match float64",
          "[isa]") {
  auto r = test::rng(5);
  const sfx::index_t N = 80;
  std::vector<float> z(N), g(N), p0(N);
  test::fill_normal(z, r, 6.0);  // through both saturated ends
  z[0] = 0.0f, z[1] = 40.0f, z[2] = -40.0f, z[3] = 1e-4f, z[4] = -95.0f, z[5] = 95.0f;
  test::fill_normal(g, r, 1.0);
  test::fill_normal(p0, r, 1.0);
  g[6] = 0.0f;  // v stays 0 there: the step is 0, not NaN
  int levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l, ++levels) {
    const auto& ops = cpu::kernels::ops_for<float>(static_cast<cpu::isa_level>(l));
    INFO("isa " << cpu::isa_name(static_cast<cpu::isa_level>(l)));
    REQUIRE(ops.adam != nullptr);
    REQUIRE(ops.vsigmoid != nullptr);
    REQUIRE(ops.vtanh != nullptr);
    std::vector<float> all_s(N), all_t(N);
    ops.vsigmoid(z.data(), all_s.data(), N);
    ops.vtanh(z.data(), all_t.data(), N);
    for (sfx::index_t j = 0; j < N; ++j) {
      INFO("z " << z[j]);
      const double s = 1 / (1 + std::exp(-double(z[j])));
      REQUIRE(std::fabs(all_s[j] - s) <= 1e-6 * s + 1e-38);
      REQUIRE(std::fabs(all_t[j] - std::tanh(double(z[j]))) <= 5e-7);
    }
    // Any n and offset, in place too: each element's bits are those of the whole-array call.
    for (sfx::index_t n : {0, 1, 7, 15, 16, 17, 33, 63}) {
      INFO("n " << n);
      std::vector<float> s(z.begin() + 3, z.begin() + 3 + n), t(s);
      ops.vsigmoid(s.data(), s.data(), n);
      ops.vtanh(t.data(), t.data(), n);
      for (sfx::index_t j = 0; j < n; ++j) {
        REQUIRE(s[j] == all_s[j + 3]);
        REQUIRE(t[j] == all_t[j + 3]);
      }
    }
    // Three Adam steps against float64, and the tail's bits against the body's.
    for (sfx::index_t n : {1, 15, 16, 17, 63}) {
      INFO("n " << n);
      std::vector<float> p(p0.begin(), p0.begin() + n), m(n, 0.0f), v(n, 0.0f);
      std::vector<double> pd(p.begin(), p.end()), md(n, 0.0), vd(n, 0.0);
      // The float constants the kernel gets (1 − 0.999f is 1.3e-5 off 0.001).
      const double b1 = double(0.9f), b2 = double(0.999f), lr = double(0.01f), eps = double(1e-8f);
      for (int step = 1; step <= 3; ++step) {
        std::vector<float> gs(n);
        for (sfx::index_t j = 0; j < n; ++j) gs[j] = g[j] * float(step);
        const cpu::kernels::adam_step h{
            0.9f, 0.999f, 0.01f, 1.0f - std::pow(0.9f, float(step)), 1.0f - std::pow(0.999f, float(step)),
            1e-8f};
        ops.adam(p.data(), m.data(), v.data(), gs.data(), n, h);
        for (sfx::index_t j = 0; j < n; ++j) {
          md[j] = b1 * md[j] + (1 - b1) * gs[j];
          vd[j] = b2 * vd[j] + (1 - b2) * double(gs[j]) * gs[j];
          pd[j] -= lr * (md[j] / double(h.c1)) / (std::sqrt(vd[j] / double(h.c2)) + eps);
        }
      }
      for (sfx::index_t j = 0; j < n; ++j) {
        INFO("j " << j);
        REQUIRE(std::isfinite(p[j]));
        REQUIRE(std::fabs(p[j] - pd[j]) <= 1e-6 * (std::fabs(pd[j]) + 0.03));  // 0.03: three steps of lr
        REQUIRE(std::fabs(m[j] - md[j]) <= 1e-6 * std::fabs(md[j]) + 1e-30);
        REQUIRE(std::fabs(v[j] - vd[j]) <= 1e-6 * std::fabs(vd[j]) + 1e-30);
      }
      if (n == 63) {  // element 0 ran in the vector body; alone (n = 1) it runs in the padded tail
        std::vector<float> p1{p0[0]}, m1{0.0f}, v1{0.0f};
        for (int step = 1; step <= 3; ++step) {
          const float gs = g[0] * float(step);
          const cpu::kernels::adam_step h{
              0.9f, 0.999f, 0.01f, 1.0f - std::pow(0.9f, float(step)), 1.0f - std::pow(0.999f, float(step)),
              1e-8f};
          ops.adam(p1.data(), m1.data(), v1.data(), &gs, 1, h);
        }
        REQUIRE(p1[0] == p[0]);
        REQUIRE(m1[0] == m[0]);
        REQUIRE(v1[0] == v[0]);
      }
    }
  }
  REQUIRE(levels == static_cast<int>(cpu::best_isa()) + 1);
}

namespace {

/// The activations in double (GELU exact, tanh form, SiLU; gated: the inner one times u).
double act_double(sfx::activation_kind k, double a, double u) {
  using K = sfx::activation_kind;
  switch (k) {
    case K::relu: return a > 0 ? a : 0.0;
    case K::gelu_erf: return 0.5 * a * std::erfc(-a / std::sqrt(2.0));
    case K::gelu_tanh:  // a/2 · (1 + tanh(y)) = a / (1 + e^{−2y}), without cancellation
      return a / (1 + std::exp(-2 * std::sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
    case K::silu: return a / (1 + std::exp(-a));
    case K::swiglu: return act_double(K::silu, a, 0) * u;
    case K::geglu: return act_double(K::gelu_tanh, a, 0) * u;
  }
  return 0;
}

}  // namespace

TEST_CASE(
    "isa: the vectorised activations of every supported level match float64, tails and specials included",
    "[isa]") {
  auto r = test::rng(5);
  // Inputs over the whole range: the Gaussian bulk, both tails (to where GELU and SiLU underflow),
  // exact zeros, and values that exercise exp's clamp.
  std::vector<float> a(1000), u(a.size());
  test::fill_normal(a, r, 3.0);
  test::fill_normal(u, r, 1.0);
  for (int i = 0; i < 100; ++i) a[static_cast<std::size_t>(i)] = -20.0f + 0.4f * static_cast<float>(i);
  a[100] = 0.0f;
  a[101] = -0.0f;
  a[102] = 1e-30f;
  a[103] = -100.0f;
  a[104] = 100.0f;
  a[105] = -87.0f;
  a[106] = 1e-6f;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto& ops = cpu::kernels::ops_for<float>(static_cast<cpu::isa_level>(l));
    INFO("isa " << cpu::isa_name(static_cast<cpu::isa_level>(l)));
    for (int k = 0; k < sfx::k_activation_kinds; ++k) {
      const auto kind = static_cast<sfx::activation_kind>(k);
      INFO("activation " << sfx::activation_name(kind));
      REQUIRE(ops.activate_rows[k] != nullptr);
      for (sfx::index_t n : {1, 7, 16, 17, 1000}) {  // tails shorter than a vector, and whole ones
        std::vector<float> h(static_cast<std::size_t>(n) + 1, 12345.0f);
        ops.activate_rows[k](a.data(), u.data(), h.data(), n);
        REQUIRE(h[static_cast<std::size_t>(n)] == 12345.0f);  // nothing written past n
        for (sfx::index_t j = 0; j < n; ++j) {
          const auto at = static_cast<std::size_t>(j);
          const double want = act_double(kind, a[at], u[at]);
          // float evaluation of the formula: relative error of a few ulps in the bulk; exp's error grows
          // with its argument (|arg| · 2^-24) in the far tails, where the values are tiny (below 1e-35: 0).
          const double tol = 2e-6 * std::fabs(want) +
                             4e-6 * std::fabs(want) * std::min(100.0, double(a[at]) * a[at] / 2) + 1e-35;
          INFO("a " << a[at] << " u " << u[at] << ": " << h[at] << ", float64 " << want);
          REQUIRE(std::fabs(h[at] - want) <= tol);
        }
      }
      // NaN stays NaN (ReLU's rule included: activation.hpp).
      const float nan = std::numeric_limits<float>::quiet_NaN(), one = 1.0f;
      float hn = 0;
      ops.activate_rows[k](&nan, &one, &hn, 1);
      REQUIRE(std::isnan(hn));
    }
  }
}

namespace {

/// x of `cols` values whose groups of 32 cover the quantiser's cases: Gaussian, all zero, NaN, ±Inf,
/// denormal and just above k_x_int8_tiny, near FLT_MAX, exact rounding ties (max|x| = 127, so the scale
/// is 1 and v.5 rounds to even), −0, one outlier.
std::vector<float> int8_cases(sfx::index_t cols, std::uint64_t seed) {
  auto r = test::rng(seed);
  std::vector<float> x(static_cast<std::size_t>(cols));
  test::fill_normal(x, r, 1.0);
  const float specials[] = {0.0f,
                            std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            1e-40f,
                            2e-29f,
                            3e38f};
  for (sfx::index_t g0 = 0; g0 < cols; g0 += 32) {
    const int kind = static_cast<int>((g0 / 32 + seed) % 12);
    float* gx = x.data() + g0;
    if (kind < 7) {
      for (int i = 0; i < 32; ++i)
        gx[i] = kind == 0 ? (i % 3 ? 0.0f : -0.0f)
                          : (kind >= 4 ? specials[kind] * (i % 2 ? -1.0f : 0.5f) : gx[i]);
      if (kind >= 1 && kind <= 3) gx[(g0 / 32) % 32] = specials[kind];  // one non-finite value
    } else if (kind == 7) {
      for (int i = 0; i < 32; ++i) gx[i] = static_cast<float>(i % 9) - 4.5f;  // ties after scaling by 1
      gx[5] = 127.0f;
    } else if (kind == 8) {
      gx[3] = 500.0f;  // outlier
    }
  }
  return x;
}

}  // namespace

TEST_CASE("isa: x quantised to int8 for the int8 key pass: every level writes the scalar reference's bytes",
          "[isa]") {
  int vector_levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("isa " << cpu::isa_name(level));
    const auto check = [&](auto tag) {
      using T = decltype(tag);
      const auto& ops = cpu::kernels::ops_for<T>(level);
      REQUIRE(ops.prepare_x_int8 != nullptr);
      vector_levels += ops.int8_x ? 1 : 0;
      for (sfx::index_t cols : {128, 256, 4096})
        for (std::uint64_t seed : {1u, 5u, 11u}) {
          INFO(sfx::dtype_traits<T>::name << " cols " << cols << " seed " << seed);
          const auto x = int8_cases(cols, seed);
          const std::size_t bytes = static_cast<std::size_t>(cpu::kernels::x_int8_bytes(cols));
          std::vector<std::uint8_t> want(bytes, 0xA5), got(bytes, 0x5A);  // poisoned differently
          cpu::kernels::prepare_x_int8<T>(x.data(), cols, want.data());
          ops.prepare_x_int8(x.data(), cols, got.data());
          REQUIRE(std::memcmp(want.data(), got.data(), bytes) == 0);
          // The reference itself: every value within half a step, the groups' sums and scales.
          const auto* q = reinterpret_cast<const std::int8_t*>(want.data());
          const auto* corr =
              reinterpret_cast<const std::int32_t*>(want.data() + cpu::kernels::x_int8_groups_at(cols));
          const auto* xs =
              reinterpret_cast<const float*>(want.data() + cpu::kernels::x_int8_group_scales_at(cols));
          const int zp = std::is_same<T, sfx::q8_t>::value ? 128 : 8;
          for (sfx::index_t g0 = 0; g0 < cols; g0 += 32) {
            const sfx::index_t kb = cpu::kernels::x_int8_group_offset<T>(g0);
            bool finite = true;
            float amax = 0;
            for (int i = 0; i < 32; ++i) {
              finite &= std::isfinite(x[g0 + i]);
              amax = std::max(amax, std::fabs(x[g0 + i]));
            }
            const float sx = xs[g0 / 32];
            int sum = 0;
            for (int i = 0; i < 32; ++i) sum += q[kb + i];
            REQUIRE(corr[g0 / 32] == -zp * sum);
            for (int i = 0; i < 32; ++i) {
              const int qi = q[kb + i];
              REQUIRE(qi >= -127);
              REQUIRE(qi <= 127);
              if (!finite || amax < cpu::k_x_int8_tiny) {
                REQUIRE(qi == 0);
                continue;
              }
              // Half a step, plus the float rounding of x · (127 / max|x|) (two roundings of a
              // quotient up to 127: < 127 · 2^-23 steps; a case past 0.5 · (1 + 1e-6) was seen).
              const double step = double(amax) / 127.0;
              REQUIRE(std::fabs(qi * step - double(x[g0 + i])) <= (0.5 + 127 * std::ldexp(1.0, -23)) * step);
            }
            if (!finite) REQUIRE(std::isnan(sx));
            if (finite) REQUIRE(sx == amax / 127.0f);
          }
        }
    };
    check(sfx::q8_t{});
    check(sfx::q4_t{});
  }
  if (vector_levels == 0)
    WARN(
        "SKIPPED: the vectorised int8 quantiser of x (avx2, avx512_vnni and up) is not supported by this "
        "CPU");
}

TEST_CASE("isa: SPARSE_FFN_ISA forces a lower level, is clamped to the best, a bad name is an error",
          "[.][isa_env]") {
  const char* env = std::getenv("SPARSE_FFN_ISA");
  REQUIRE(env != nullptr);
  cpu::reset_isa();
  cpu::isa_level want = cpu::isa_level::scalar;
  if (!cpu::parse_isa(env, want)) {
    REQUIRE_ERROR(cpu::active_isa(), sfx::status::invalid_argument, "SPARSE_FFN_ISA=");
    // The forward reports it too (nothing runs on an unknown setting).
    using P = sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>;
    auto r = test::rng(2);
    const auto dense = test::random_dense<float>(r, 16, 64, false, false);
    sfx::pack_options po;
    po.g = 16;
    const auto model = sfx::pack<float>(dense.view(), po);
    std::vector<float> x(16, 1.0f), y(16);
    sfx::route_args args;
    args.k = 1;
    REQUIRE_ERROR(sfx::cpu::forward<P>(model.view(), 1, x.data(), y.data(), args),
                  sfx::status::invalid_argument, "not an instruction set");
    return;
  }
  const cpu::isa_level expect =
      static_cast<int>(want) < static_cast<int>(cpu::best_isa()) ? want : cpu::best_isa();
  INFO("SPARSE_FFN_ISA=" << env << ": " << cpu::isa_description());
  REQUIRE(cpu::active_isa() == expect);
  // set_isa still wins over the environment, and reset_isa goes back to it.
  cpu::set_isa(cpu::isa_level::scalar);
  REQUIRE(cpu::active_isa() == cpu::isa_level::scalar);
  cpu::reset_isa();
  REQUIRE(cpu::active_isa() == expect);
}

namespace {

/// The int8 key kernel (kernel_ops::dots with int8_x) of weights T at `level` on rows of extreme bytes
/// against the exact integer sums: q8 bytes ±127 and −128 (not written by pack, but a loaded file may
/// hold it) times x at ±127 make every int16 pair sum of a naive vpmaddubsw (q + 128 as the unsigned
/// operand) saturate; q4 nibbles 0 and 15. Returns whether the level runs the int8 kernel.
template <class T>
bool int8_dots_exact(cpu::isa_level level, std::uint64_t seed) {
  using F = sfx::row_format<T>;
  const auto& ops = cpu::kernels::ops_for<T>(level);
  if (!ops.int8_x) return false;
  auto r = test::rng(seed);
  std::uniform_int_distribution<int> pick(0, 3);
  // cols: two d-chunks and a partial one; nrows: a whole tile of 16 rows and a partial one
  const sfx::index_t cols = 1024 + 128, nrows = 19, m = 5;
  const sfx::index_t ld = F::ld(cols);
  std::vector<std::uint8_t> rows(static_cast<std::size_t>(nrows * ld), 0);
  std::vector<int> q(static_cast<std::size_t>(nrows * cols));
  std::vector<double> ws(static_cast<std::size_t>(nrows * cols / 32));
  for (sfx::index_t i = 0; i < nrows; ++i) {
    std::uint8_t* row = rows.data() + i * ld;
    auto* sc = reinterpret_cast<sfx::bfloat16_t*>(row + F::quant_bytes(cols));
    for (sfx::index_t g = 0; g < cols / 32; ++g) {
      const float s = std::ldexp(1.0f + 0.125f * float(pick(r)), -int(pick(r)) - 3);  // exact in bf16
      sc[g] = sfx::bfloat16_t(s);
      ws[static_cast<std::size_t>(i * cols / 32 + g)] = double(sfx::to_float(sc[g]));
    }
    for (sfx::index_t c = 0; c < cols; ++c) {
      int v;
      if constexpr (F::bits == 8) {
        const int choice[4] = {127, -127, -128, 127};
        v = (c + i) % 7 == 3 ? int(pick(r)) - 2 : choice[pick(r)];
        row[c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(v));
      } else {
        const int u = pick(r) < 2 ? 15 : 0;
        v = u - 8;
        const sfx::index_t chunk = c / 64, j = c % 64;
        std::uint8_t& b = row[chunk * 32 + j % 32];
        b = static_cast<std::uint8_t>(j < 32 ? (b & 0xf0) | u : (b & 0x0f) | (u << 4));
      }
      REQUIRE(F::quant(reinterpret_cast<const T*>(row), c) == v);
      q[static_cast<std::size_t>(i * cols + c)] = v;
    }
  }
  // x: groups with max|x| = 127 (scale 1), x at ±127 and small values, one all-zero group.
  std::vector<float> x(static_cast<std::size_t>(m * cols));
  for (sfx::index_t t = 0; t < m; ++t)
    for (sfx::index_t c = 0; c < cols; ++c) {
      const int choice[4] = {127, -127, 127, -3};
      x[static_cast<std::size_t>(t * cols + c)] = (c / 32) % 9 == 4 ? 0.0f : float(choice[pick(r)]);
    }
  const sfx::index_t xb = cpu::kernels::x_int8_bytes(cols);
  std::vector<std::uint8_t> xq(static_cast<std::size_t>(m * xb));
  std::vector<const std::uint8_t*> xqp(static_cast<std::size_t>(m));
  for (sfx::index_t t = 0; t < m; ++t) {
    ops.prepare_x_int8(x.data() + t * cols, cols, xq.data() + t * xb);
    xqp[static_cast<std::size_t>(t)] = xq.data() + t * xb;
  }
  std::vector<float> spill(
      static_cast<std::size_t>(m * cpu::kernels::k_max_key_r * cpu::kernels::k_max_width));
  std::vector<float> out(static_cast<std::size_t>(m * nrows), -7.0f);
  ops.dots(nullptr, nullptr, xqp.data(), m, reinterpret_cast<const T*>(rows.data()), nrows, ld, cols,
           spill.data(), out.data());
  for (sfx::index_t t = 0; t < m; ++t)
    for (sfx::index_t i = 0; i < nrows; ++i) {
      // Exact: Σ_g s_w · s_x · Σ q·x (s_x = 1 for these groups: max|x| = 127, or 0 for the zero group).
      double want = 0, mag = 0;
      for (sfx::index_t g = 0; g < cols / 32; ++g) {
        long long dot = 0;
        for (sfx::index_t c = 32 * g; c < 32 * g + 32; ++c)
          dot += static_cast<long long>(q[static_cast<std::size_t>(i * cols + c)]) *
                 static_cast<long long>(x[static_cast<std::size_t>(t * cols + c)]);
        want += ws[static_cast<std::size_t>(i * cols / 32 + g)] * double(dot);
        mag += ws[static_cast<std::size_t>(i * cols / 32 + g)] * std::fabs(double(dot));
      }
      INFO("token " << t << " row " << i << ": " << out[static_cast<std::size_t>(t * nrows + i)] << ", exact "
                    << want);
      // Every lane's integer sum is exact; the float accumulation of ~cols/8 lane terms rounds.
      REQUIRE(std::fabs(out[static_cast<std::size_t>(t * nrows + i)] - want) <= 1e-6 * mag + 1e-30);
    }
  // Batch invariance: tokens alone and in threes (the VNNI levels' tile of ≤ 4 tokens takes another
  // path, dots_lanes) give the same bits as in the batch of five.
  for (sfx::index_t t0 = 0; t0 < m; ++t0)
    for (const sfx::index_t mm : {sfx::index_t{1}, sfx::index_t{3}}) {
      if (t0 + mm > m) continue;
      std::vector<float> sub(static_cast<std::size_t>(mm * nrows), -7.0f);
      ops.dots(nullptr, nullptr, xqp.data() + t0, mm, reinterpret_cast<const T*>(rows.data()), nrows, ld,
               cols, spill.data(), sub.data());
      for (sfx::index_t t = 0; t < mm; ++t)
        for (sfx::index_t i = 0; i < nrows; ++i) {
          INFO("token " << t0 + t << " of " << mm << " from " << t0 << ", row " << i);
          REQUIRE(std::memcmp(&sub[static_cast<std::size_t>(t * nrows + i)],
                              &out[static_cast<std::size_t>((t0 + t) * nrows + i)], sizeof(float)) == 0);
        }
    }
  return true;
}

}  // namespace

TEST_CASE("isa: the int8 key kernel of every level is exact on extreme bytes (no int16 saturation)",
          "[isa]") {
  int levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("isa " << cpu::isa_name(level));
    for (std::uint64_t seed : {1u, 2u, 3u}) {
      levels += int8_dots_exact<sfx::q8_t>(level, seed) ? 1 : 0;
      levels += int8_dots_exact<sfx::q4_t>(level, seed) ? 1 : 0;
    }
  }
  if (levels == 0) WARN("SKIPPED: no int8 key kernel (avx2, avx512_vnni and up) is supported by this CPU");
}

namespace {

/// kernel_ops::dots_tiles of weights T at `level` on rows re-laid as key_tile<T> (quant.hpp) against
/// dots on the same rows: the same bits for every batch size, chunking and number of tiles walked side by
/// side. Where the level has the AMX form (dots_tiles_amx, amx), it too: 1-16 tokens, 16-80 rows (one to
/// four row tiles per pass, and a pass of four then one), a panel reused, outputs at a stride. Returns
/// whether the level has it (q4 on avx2, q8/q4 on avx512_vnni and up).
template <class T>
bool key_tiles_match(cpu::isa_level level, std::uint64_t seed) {
  using F = sfx::row_format<T>;
  using KT = sfx::key_tile<T>;
  const auto& ops = cpu::kernels::ops_for<T>(level);
  if (!ops.dots_tiles) return false;
  auto r = test::rng(seed);
  // d: one partial d-chunk (the last group partly zeros), several chunks and a partial one.
  for (const sfx::index_t d : {sfx::index_t{77}, sfx::index_t{1100}, sfx::index_t{4096}}) {
    const sfx::index_t cols = F::cols(d), ld = F::ld(d), nrows = 80;
    REQUIRE(KT::bytes(cols) <= 16 * ld * static_cast<sfx::index_t>(sizeof(T)));
    std::vector<T> rows(static_cast<std::size_t>(nrows * ld));
    std::vector<float> src(static_cast<std::size_t>(d));
    for (sfx::index_t i = 0; i < nrows; ++i) {
      test::fill_normal(src, r, 0.05f * float(1 + i % 5));
      F::encode(src.data(), d, rows.data() + i * ld, ld);
    }
    const sfx::index_t stride = (KT::bytes(cols) + 63) / 64 * 64 + 128;  // a gap between tiles
    std::vector<std::uint8_t> tiles(static_cast<std::size_t>(nrows / 16 * stride + 64), 0xA5);
    auto* base =
        reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(tiles.data()) + 63) / 64 * 64);
    for (sfx::index_t t = 0; t < nrows / 16; ++t)
      KT::pack(rows.data() + t * 16 * ld, ld, cols, base + t * stride);
    const sfx::index_t m = 16, xb = cpu::kernels::x_int8_bytes(cols);
    std::vector<float> x(static_cast<std::size_t>(m * cols), 0.0f);
    std::vector<std::uint8_t> xq(static_cast<std::size_t>(m * xb));
    std::vector<const std::uint8_t*> xqp(static_cast<std::size_t>(m));
    for (sfx::index_t t = 0; t < m; ++t) {
      std::vector<float> xt(static_cast<std::size_t>(d));
      test::fill_normal(xt, r, 1.0f);
      std::copy(xt.begin(), xt.end(), x.begin() + t * cols);
      ops.prepare_x_int8(x.data() + t * cols, cols, xq.data() + t * xb);
      xqp[static_cast<std::size_t>(t)] = xq.data() + t * xb;
    }
    std::vector<float> spill(
        static_cast<std::size_t>(m * cpu::kernels::k_max_key_r * cpu::kernels::k_max_width));
    // Up to 4 tiles side by side for 1-2 tokens, 2 for 3-4 (16 rows: 1; 48: 3, or 2 then 1; 80: 4 then
    // 1, or 2, 2, 1), one at a time from 5.
    for (const sfx::index_t nr : {16, 48, 80})
      for (const sfx::index_t mm : {1, 2, 3, 4, 5, 8, 9}) {
        std::vector<float> want(static_cast<std::size_t>(mm * nr), -7.0f), got(want.size(), -9.0f);
        ops.dots(nullptr, nullptr, xqp.data(), mm, rows.data(), nr, ld, cols, spill.data(), want.data());
        ops.dots_tiles(xqp.data(), mm, base, nr, stride, cols, spill.data(), got.data());
        for (std::size_t i = 0; i < want.size(); ++i) {
          INFO("d " << d << ", " << mm << " tokens, " << nr << " rows, output " << i << ": " << got[i]
                    << " against " << want[i]);
          REQUIRE(std::memcmp(&got[i], &want[i], sizeof(float)) == 0);
        }
      }
#if SPARSE_FFN_AMX
    if (ops.dots_tiles_amx) {
      sfx::detail::aligned_buffer<std::uint8_t> panel(cpu::kernels::amx::int8_panel_bytes(cols));
      for (const sfx::index_t mm : {1, 3, 4, 7, 8, 12, 13, 16})
        for (const sfx::index_t nr : {16, 32, 48, 64, 80}) {
          const sfx::index_t os = nr + 16;  // outputs of a token os floats apart; the gap stays untouched
          std::vector<float> want(static_cast<std::size_t>(mm * nr), -7.0f),
              got(static_cast<std::size_t>(mm * os), -9.0f), again(got.size(), -9.0f);
          ops.dots_tiles(xqp.data(), mm, base, nr, stride, cols, spill.data(), want.data());
          ops.dots_tiles_amx(xqp.data(), mm, base, nr, stride, cols, panel.data(), false, got.data(), os);
          ops.dots_tiles_amx(xqp.data(), mm, base, nr, stride, cols, panel.data(), true, again.data(), os);
          for (sfx::index_t t = 0; t < mm; ++t)
            for (sfx::index_t i = 0; i < os; ++i) {
              const float g = got[static_cast<std::size_t>(t * os + i)];
              const float w = i < nr ? want[static_cast<std::size_t>(t * nr + i)] : -9.0f;
              INFO("amx: d " << d << ", " << mm << " tokens, " << nr << " rows, token " << t << " output "
                             << i << ": " << g << " against " << w);
              REQUIRE(std::memcmp(&g, &w, sizeof(float)) == 0);
              REQUIRE(std::memcmp(&again[static_cast<std::size_t>(t * os + i)], &g, sizeof(float)) == 0);
            }
        }
    }
#endif
  }
  return true;
}

}  // namespace

TEST_CASE("isa: the rows-in-lanes key kernel on key tiles gives the bits of the key kernel on rows",
          "[isa]") {
  int levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("isa " << cpu::isa_name(level));
    for (std::uint64_t seed : {4u, 5u}) {
      levels += key_tiles_match<sfx::q8_t>(level, seed) ? 1 : 0;
      levels += key_tiles_match<sfx::q4_t>(level, seed) ? 1 : 0;
    }
  }
  if (levels == 0)
    WARN("SKIPPED: no key-tile kernel (q4 on avx2, q8/q4 on avx512_vnni and up) is supported by this CPU");
  if (!cpu::isa_supported(cpu::isa_level::amx))
    WARN("SKIPPED: amx (the AMX int8 key kernel on key tiles) is not supported by this CPU");
}

namespace {

/// kernel_ops::apply_tiles of weights T at `level` on rows re-laid as value_tile<T> (quant.hpp) against
/// apply_rows on the same rows listing those with a nonzero coefficient for some token (as the forward
/// does): the same bits for 1–9 tokens, whole and partial column ranges, zero rows, zero quads, a token
/// with no nonzero coefficient in a tile and y starting at ±0. Returns whether the level has it (q8/q4
/// on avx512_vnni and up).
template <class T>
bool value_tiles_match(cpu::isa_level level, std::uint64_t seed) {
  using F = sfx::row_format<T>;
  using VT = sfx::value_tile<T>;
  const auto& ops = cpu::kernels::ops_for<T>(level);
  if (!ops.apply_tiles) return false;
  auto r = test::rng(seed);
  for (const sfx::index_t d : {sfx::index_t{77}, sfx::index_t{1100}, sfx::index_t{4096}}) {
    const sfx::index_t cols = F::cols(d), ld = F::ld(d), nrows = 64;
    REQUIRE(VT::bytes(cols) <= VT::rows * ld * static_cast<sfx::index_t>(sizeof(T)));
    std::vector<T> rows(static_cast<std::size_t>(nrows * ld));
    std::vector<float> src(static_cast<std::size_t>(d));
    for (sfx::index_t i = 0; i < nrows; ++i) {
      test::fill_normal(src, r, 0.05f * float(1 + i % 5));
      F::encode(src.data(), d, rows.data() + i * ld, ld);
    }
    const sfx::index_t stride = (VT::bytes(cols) + 63) / 64 * 64 + 128;  // a gap between tiles
    std::vector<std::uint8_t> tiles(static_cast<std::size_t>(nrows / VT::rows * stride + 64), 0xA5);
    auto* base =
        reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(tiles.data()) + 63) / 64 * 64);
    for (sfx::index_t t = 0; t < nrows / VT::rows; ++t)
      VT::pack(rows.data() + t * VT::rows * ld, ld, cols, base + t * stride);
    const sfx::index_t m = 9;
    // Coefficients: ReLU-like zeros (half the rows for token 0, a whole quad for every token in tile 0,
    // every row of tile 1 for token 1), magnitudes over 2^±10.
    std::vector<std::vector<float>> s(static_cast<std::size_t>(m), std::vector<float>(nrows));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (sfx::index_t t = 0; t < m; ++t)
      for (sfx::index_t i = 0; i < nrows; ++i) {
        float v = u(r) * std::ldexp(1.0f, static_cast<int>(i % 21) - 10);
        if ((t == 0 && i % 2 == 1) || (i >= 8 && i < 12) || (t == 1 && i >= 32)) v = 0.0f;
        s[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)] = v;
      }
    const sfx::index_t step = ops.col_step;
    for (const sfx::index_t mm : {1, 2, 3, 4, 5, 6, 7, 9}) {
      for (const bool part : {false, true}) {
        const sfx::index_t c_lo = part && cols > 2 * step ? step : 0,
                           c_hi = part && cols > 2 * step ? cols - step : cols;
        std::vector<std::vector<float>> want(static_cast<std::size_t>(mm), std::vector<float>(cols));
        for (auto& w : want) {
          test::fill_normal(w, r, 1.0f);
          w[0] = -0.0f;
          w[static_cast<std::size_t>(cols - 1)] = 0.0f;
        }
        auto got = want;
        for (sfx::index_t t0 = 0; t0 < nrows; t0 += VT::rows) {
          std::vector<float*> yw, yg;
          std::vector<const float*> sw, sg;
          std::vector<std::int32_t> list;
          for (sfx::index_t i = t0; i < t0 + VT::rows; ++i) {
            bool any = false;
            for (sfx::index_t t = 0; t < mm; ++t)
              any |= s[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)] != 0.0f;
            if (any) list.push_back(static_cast<std::int32_t>(i - t0));
          }
          if (list.empty()) continue;
          for (sfx::index_t t = 0; t < mm; ++t) {
            yw.push_back(want[static_cast<std::size_t>(t)].data());
            yg.push_back(got[static_cast<std::size_t>(t)].data());
            sw.push_back(s[static_cast<std::size_t>(t)].data() + t0);
            sg.push_back(s[static_cast<std::size_t>(t)].data() + t0);
          }
          ops.apply_rows(yw.data(), sw.data(), mm, list.data(), static_cast<sfx::index_t>(list.size()),
                         rows.data() + t0 * ld, ld, cols, c_lo, c_hi);
          ops.apply_tiles(yg.data(), sg.data(), mm, base + t0 / VT::rows * stride, cols, c_lo, c_hi);
        }
        for (sfx::index_t t = 0; t < mm; ++t)
          for (sfx::index_t c = 0; c < cols; ++c) {
            const float a = got[static_cast<std::size_t>(t)][static_cast<std::size_t>(c)],
                        b = want[static_cast<std::size_t>(t)][static_cast<std::size_t>(c)];
            INFO("d " << d << ", " << mm << " tokens, columns [" << c_lo << ", " << c_hi << "), token " << t
                      << ", column " << c << ": " << a << " against " << b);
            REQUIRE(std::memcmp(&a, &b, sizeof(float)) == 0);
          }
      }
    }
  }
  return true;
}

}  // namespace

TEST_CASE("isa: the quad value kernel on value tiles gives the bits of the value kernel on rows", "[isa]") {
  int levels = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("isa " << cpu::isa_name(level));
    for (std::uint64_t seed : {6u, 7u}) {
      levels += value_tiles_match<sfx::q8_t>(level, seed) ? 1 : 0;
      levels += value_tiles_match<sfx::q4_t>(level, seed) ? 1 : 0;
    }
  }
  if (levels == 0)
    WARN("SKIPPED: no value-tile kernel (q8/q4 on avx512_vnni and up) is supported by this CPU");
}

namespace {

/// The integer value kernel (kernel_ops::apply_rows with value_levels > 0: q4 on avx2, q8 and q4 on
/// avx512_vnni) at `level` against a scalar model of its arithmetic, bit for bit: per token, chunk of 32
/// rows and group of 32 columns, a = s·scale (float), t = max|a| / Q, r = round-to-nearest-even(a · (Q /
/// max|a|)), the exact integer Σ r·q, then y = fma(t, float(Σ), y), chunks in ascending order. Rows of
/// extreme values (q4: nibbles 0 and 15: 16 pairs at ±127 · 15 would overflow int16 if summed at once;
/// q8: −128, −127 and 127), row lists whose chunks are not whole quads, scales over 2^±8, coefficients over
/// 2^±20 with exact zeros (a row one token does not use, a chunk one token does not use at all), three
/// chunks (the last partial), a column range whose last coefficient pass is partial; m = 2 and each
/// token alone (batch invariance). Returns whether the level runs the integer value kernel.
template <class T>
bool int_values_exact(cpu::isa_level level, std::uint64_t seed) {
  using F = sfx::row_format<T>;
  constexpr bool q8 = std::is_same<T, sfx::q8_t>::value;
  const auto& ops = cpu::kernels::ops_for<T>(level);
  const std::int32_t Q = ops.value_levels;
  if (Q == 0) return false;
  auto r = test::rng(seed);
  std::uniform_int_distribution<int> pick(0, 3);
  std::normal_distribution<double> nd(0.0, 1.0);
  const sfx::index_t cols = 1024 + 128, g = 80, ld = F::ld(cols);
  std::vector<std::uint8_t> rows(static_cast<std::size_t>(g * ld), 0);
  std::vector<int> q(static_cast<std::size_t>(g * cols));
  std::vector<float> sc(static_cast<std::size_t>(g * cols / 32));
  for (sfx::index_t i = 0; i < g; ++i) {
    std::uint8_t* row = rows.data() + i * ld;
    auto* scales = reinterpret_cast<sfx::bfloat16_t*>(row + F::quant_bytes(cols));
    for (sfx::index_t gr = 0; gr < cols / 32; ++gr) {
      scales[gr] = sfx::bfloat16_t(static_cast<float>(std::ldexp(1.0 + 0.25 * pick(r), int(r() % 17) - 8)));
      sc[static_cast<std::size_t>(i * cols / 32 + gr)] = sfx::to_float(scales[gr]);
    }
    for (sfx::index_t c = 0; c < cols; ++c) {
      int v;
      if (q8) {
        const int e[3] = {-128, -127, 127};
        v = (c + i) % 5 == 2 ? int(r() % 256) - 128 : e[r() % 3];
        row[c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(v));
      } else {
        const int u = (c + i) % 5 == 2 ? int(r() % 16) : (pick(r) < 2 ? 15 : 0);
        v = u - 8;
        const sfx::index_t chunk = c / 64, j = c % 64;
        std::uint8_t& b = row[chunk * 32 + j % 32];
        b = static_cast<std::uint8_t>(j < 32 ? (b & 0xf0) | u : (b & 0x0f) | (u << 4));
      }
      REQUIRE(F::quant(reinterpret_cast<const T*>(row), c) == v);
      q[static_cast<std::size_t>(i * cols + c)] = v;
    }
  }
  // Coefficients of six tokens: token 0 skips rows 7 and 40..52, token 1 uses rows 0..40 only (9 rows of
  // chunk 1: alone, at most 8 pairs, q4's avx2 sums go straight to y; with token 0, 20 rows, through
  // acc32; none of chunk 2), tokens 2..5 skip rows at random (chunks of every length mod 4); rows 3
  // and 66 are zero for all (left out, as the caller does).
  const int M = 6;
  std::vector<float> s(static_cast<std::size_t>(M * g));
  for (int m = 0; m < M; ++m)
    for (sfx::index_t i = 0; i < g; ++i) {
      const bool zero = i == 3 || i == 66 || (m == 0 && (i == 7 || (i >= 40 && i <= 52))) ||
                        (m == 1 && i > 40) || (m >= 2 && r() % (m + 1) == 0);
      s[static_cast<std::size_t>(m * g + i)] =
          zero ? 0.0f : static_cast<float>(nd(r) * std::ldexp(1.0, int(r() % 41) - 20));
    }
  auto listed = [&](int m0, int m1) {  // the rows nonzero for one of tokens [m0, m1)
    std::vector<std::int32_t> out;
    for (sfx::index_t i = 0; i < g; ++i) {
      bool any = false;
      for (int m = m0; m < m1; ++m) any |= s[static_cast<std::size_t>(m * g + i)] != 0.0f;
      if (any) out.push_back(static_cast<std::int32_t>(i));
    }
    return out;
  };
  // The scalar model of one token over the listed rows and columns [c_lo, c_hi).
  auto model = [&](int m, const std::vector<std::int32_t>& list, sfx::index_t c_lo, sfx::index_t c_hi,
                   float* y) {
    for (std::size_t i0 = 0; i0 < list.size();) {
      std::size_t i1 = i0;
      while (i1 < list.size() && list[i1] / 32 == list[i0] / 32) ++i1;
      for (sfx::index_t gr = c_lo / 32; gr < c_hi / 32; ++gr) {
        std::vector<float> a;
        float amax = 0;
        for (std::size_t k = i0; k < i1; ++k) {
          const sfx::index_t i = list[k];
          a.push_back(s[static_cast<std::size_t>(m * g + i)] *
                      sc[static_cast<std::size_t>(i * cols / 32 + gr)]);
          amax = std::max(amax, std::fabs(a.back()));
        }
        const float t = amax / static_cast<float>(Q);
        const float inv = amax - cpu::k_value_coef_tiny >= 0.0f ? static_cast<float>(Q) / amax : 0.0f;
        for (sfx::index_t c = 32 * gr; c < 32 * gr + 32; ++c) {
          std::int64_t sum = 0;
          for (std::size_t k = i0; k < i1; ++k) {
            const auto rq = static_cast<std::int64_t>(
                std::max(-double(Q), std::min(double(Q), std::nearbyint(double(a[k - i0] * inv)))));
            sum += rq * q[static_cast<std::size_t>(list[k] * cols + c)];
          }
          REQUIRE(std::llabs(sum) < (std::int64_t(1) << 31));
          y[c] = std::fma(t, static_cast<float>(sum), y[c]);
        }
      }
      i0 = i1;
    }
  };
  // Column ranges are multiples of col_step (64; q4 on avx512_vnni and up: 128, whole 64-byte lines).
  const sfx::index_t step = ops.col_step;
  REQUIRE(step == (!q8 && level >= cpu::isa_level::avx512_vnni ? 128 : 64));
  for (auto range : {std::make_pair(sfx::index_t(0), cols), std::make_pair(step, cols - 2 * step)}) {
    const sfx::index_t c_lo = range.first, c_hi = range.second;
    INFO("columns [" << c_lo << ", " << c_hi << ")");
    std::vector<float> y0(static_cast<std::size_t>(M * cols));
    for (auto& e : y0) e = static_cast<float>(nd(r));
    // The tokens in tiles of rows_m (one call each, the rows any of them uses).
    std::vector<float> got = y0, want = y0;
    const int RM = ops.rows_m;
    for (int m0 = 0; m0 < M; m0 += RM) {
      const int m1 = std::min(M, m0 + RM);
      const auto tile = listed(m0, m1);
      std::vector<float*> yp;
      std::vector<const float*> sp;
      for (int m = m0; m < m1; ++m) {
        yp.push_back(got.data() + m * cols);
        sp.push_back(s.data() + m * g);
      }
      ops.apply_rows(yp.data(), sp.data(), m1 - m0, tile.data(), static_cast<sfx::index_t>(tile.size()),
                     reinterpret_cast<const T*>(rows.data()), ld, cols, c_lo, c_hi);
      for (int m = m0; m < m1; ++m) model(m, tile, c_lo, c_hi, want.data() + m * cols);
    }
    for (sfx::index_t c = 0; c < M * cols; ++c) {
      INFO("token " << c / cols << " column " << c % cols);
      REQUIRE(got[static_cast<std::size_t>(c)] == want[static_cast<std::size_t>(c)]);
    }
    // Each token alone, over its own rows: the same bits (batch invariance).
    for (int m = 0; m < M; ++m) {
      std::vector<float> alone(y0.begin() + m * cols, y0.begin() + (m + 1) * cols);
      const auto own = listed(m, m + 1);
      float* ya[1] = {alone.data()};
      const float* sa[1] = {s.data() + m * g};
      ops.apply_rows(ya, sa, 1, own.data(), static_cast<sfx::index_t>(own.size()),
                     reinterpret_cast<const T*>(rows.data()), ld, cols, c_lo, c_hi);
      INFO("token " << m << " alone");
      REQUIRE(std::memcmp(alone.data(), got.data() + m * cols,
                          static_cast<std::size_t>(cols) * sizeof(float)) == 0);
    }
  }
  // A NaN coefficient makes its token's columns NaN (as the float path), the other token's unchanged.
  {
    std::vector<float> s2 = s, y(static_cast<std::size_t>(2 * cols), 1.0f),
                       y1(static_cast<std::size_t>(cols), 1.0f);
    s2[static_cast<std::size_t>(g + 5)] = std::numeric_limits<float>::quiet_NaN();
    const auto both = listed(0, 2);
    float* yp[2] = {y.data(), y.data() + cols};
    const float* sp[2] = {s2.data(), s2.data() + g};
    ops.apply_rows(yp, sp, 2, both.data(), static_cast<sfx::index_t>(both.size()),
                   reinterpret_cast<const T*>(rows.data()), ld, cols, 0, cols);
    for (sfx::index_t c = 0; c < cols; ++c) REQUIRE(std::isnan(y[static_cast<std::size_t>(cols + c)]));
    float* ya[1] = {y1.data()};
    const float* sa[1] = {s.data()};
    ops.apply_rows(ya, sa, 1, both.data(), static_cast<sfx::index_t>(both.size()),
                   reinterpret_cast<const T*>(rows.data()), ld, cols, 0, cols);
    REQUIRE(std::memcmp(y1.data(), y.data(), static_cast<std::size_t>(cols) * sizeof(float)) == 0);
  }
  return true;
}

}  // namespace

TEST_CASE(
    "isa: the integer value kernels (q4 on avx2, q8 and q4 on avx512_vnni) are their scalar model "
    "bit for bit, batch invariant",
    "[isa]") {
  int levels = 0, vnni = 0;
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto level = static_cast<cpu::isa_level>(l);
    INFO("isa " << cpu::isa_name(level));
    for (std::uint64_t seed : {11u, 12u, 13u}) {
      levels += int_values_exact<sfx::q4_t>(level, seed) ? 1 : 0;
      vnni += int_values_exact<sfx::q8_t>(level, seed) ? 1 : 0;
    }
  }
  if (levels == 0) WARN("SKIPPED: no integer value kernel (avx2, avx512_vnni) is supported by this CPU");
  if (vnni == 0) WARN("SKIPPED: no q8 integer value kernel (avx512_vnni) is supported by this CPU");
}

TEST_CASE("isa: the bf16 pair value kernel (avx512_bf16) is FMAs with bf16 coefficients, rows ascending",
          "[isa]") {
  // vdpbf16ps on two rows' column pairs must give, bit for bit, y = fma(h_a, w_a, y) then fma(h_b, w_b,
  // y) with h rounded to bf16 (the instruction adds the first pair element's exact product, then the
  // second's): then a token's output does not depend on which rows the kernel paired, i.e. on the rest
  // of its tile. Checked against that scalar model for 1..6 tokens, row lists of every length mod 8
  // (passes of eight rows, pairs and a last single row), coefficients that are zero for some tokens.
  using T = sfx::bfloat16_t;
  if (cpu::best_isa() < cpu::isa_level::avx512_bf16) {
    WARN("SKIPPED: avx512_bf16 (the bf16 pair value kernel) is not supported by this CPU");
    return;
  }
  const auto& ops = cpu::kernels::ops_for<T>(cpu::isa_level::avx512_bf16);
  REQUIRE(ops.bf16_x);
  REQUIRE(ops.apply_rows_pairs != nullptr);
  REQUIRE(ops.bf16_values == cpu::kernels::fast_bf16_dot());
  REQUIRE(ops.col_step == (ops.bf16_values ? 32 : ops.width));
  auto r = test::rng(21);
  std::normal_distribution<double> nd(0.0, 1.0);
  const sfx::index_t g = 64, ld = 320, cols = 320;
  sfx::detail::aligned_buffer<T> v(g * ld);  // 64-byte aligned, as packed rows are
  for (sfx::index_t i = 0; i < v.size(); ++i)
    v[i] = T(static_cast<float>(nd(r) * std::ldexp(1.0, int(r() % 9) - 4)));
  for (int trial = 0; trial < 60; ++trial) {
    const int M = 1 + trial % 6;
    std::vector<std::int32_t> rows;
    for (sfx::index_t i = 0; i < g; ++i)
      if (r() % 3 != 0) rows.push_back(static_cast<std::int32_t>(i));
    rows.resize(std::min<std::size_t>(rows.size(), static_cast<std::size_t>(trial % 23 + 1)));
    std::vector<float> s(static_cast<std::size_t>(M * g), 0.0f);
    sfx::detail::aligned_buffer<float> y(M * ld);
    for (int m = 0; m < M; ++m)
      for (std::int32_t i : rows)
        if (m == 0 || r() % 4 != 0)  // token 0 uses every listed row, others leave some out
          s[static_cast<std::size_t>(m * g + i)] =
              static_cast<float>(nd(r) * std::ldexp(1.0, int(r() % 21) - 10));
    for (sfx::index_t i = 0; i < y.size(); ++i) y[i] = static_cast<float>(nd(r));
    const std::vector<float> ym(y.data(), y.data() + y.size());
    const sfx::index_t c_lo = 32 * (trial % 3), c_hi = cols - 32 * (trial % 2);
    std::vector<float*> yp(static_cast<std::size_t>(M));
    std::vector<const float*> sp(static_cast<std::size_t>(M));
    for (int m = 0; m < M; ++m) {
      yp[static_cast<std::size_t>(m)] = y.data() + m * ld;
      sp[static_cast<std::size_t>(m)] = s.data() + m * g;
    }
    ops.apply_rows_pairs(yp.data(), sp.data(), M, rows.data(), static_cast<sfx::index_t>(rows.size()),
                         v.data(), ld, cols, c_lo, c_hi);
    INFO("trial " << trial << ", tokens " << M << ", rows " << rows.size() << ", columns " << c_lo << ".."
                  << c_hi);
    for (int m = 0; m < M; ++m)
      for (sfx::index_t c = 0; c < cols; ++c) {
        float e = ym[static_cast<std::size_t>(m * ld + c)];
        if (c >= c_lo && c < c_hi)
          for (std::int32_t i : rows)
            e = std::fma(sfx::to_float(T(s[static_cast<std::size_t>(m * g + i)])),
                         sfx::to_float(v[i * ld + c]), e);
        INFO("token " << m << ", column " << c);
        REQUIRE(y[m * ld + c] == e);
      }
  }
}

namespace {

/// apply_rows (and outer_rows, for element dtypes) of every supported level on m tokens in one call,
/// for m below, at and above the level's group size: each token's output must have the bits of a call
/// for it alone (the kernels take rows_m / outer_m tokens at a time; a larger m once did nothing).
template <class T>
void check_any_token_count(std::uint64_t seed) {
  using F = sfx::row_format<T>;
  auto r = test::rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const sfx::index_t g = 64, d = 256, cols = F::cols(d), ld = F::ld(d);
  sfx::detail::aligned_buffer<T> v(g * ld);  // 64-byte aligned, as packed rows are
  std::vector<float> src(static_cast<std::size_t>(d));
  for (sfx::index_t i = 0; i < g; ++i) {
    for (float& e : src) e = static_cast<float>(nd(r));
    F::encode(src.data(), d, v.data() + i * ld, ld);
  }
  std::vector<std::int32_t> rows;
  for (sfx::index_t i = 0; i < g; ++i)
    if (r() % 4 != 0) rows.push_back(static_cast<std::int32_t>(i));
  const auto nrows = static_cast<sfx::index_t>(rows.size());
  for (int l = 0; l <= static_cast<int>(cpu::best_isa()); ++l) {
    const auto& ops = cpu::kernels::ops_for<T>(static_cast<cpu::isa_level>(l));
    INFO("isa " << cpu::isa_name(static_cast<cpu::isa_level>(l)) << ", dtype "
                << sfx::dtype_name(sfx::dtype_traits<T>::id));
    for (int pass = 0; pass < (ops.outer_rows ? 3 : 1); ++pass) {  // apply_rows, outer_rows (add, assign)
      const int group = pass == 0 ? ops.rows_m : ops.outer_m;
      for (const int m : {group - 1, group, group + 1, 2 * group + 3}) {
        if (m < 1) continue;
        INFO("kernel " << (pass == 0 ? "apply_rows" : "outer_rows") << ", tokens " << m << " (group " << group
                       << ")");
        const auto n = static_cast<std::size_t>(m);
        std::vector<float> s(n * static_cast<std::size_t>(g), 0.0f);
        for (std::size_t t = 0; t < n; ++t)
          for (std::int32_t i : rows)
            if (r() % 3 != 0) s[t * g + static_cast<std::size_t>(i)] = static_cast<float>(nd(r));
        std::vector<float> y0(n * static_cast<std::size_t>(cols));
        for (float& e : y0) e = static_cast<float>(nd(r));  // nonzero: no exact-zero sign to differ
        std::vector<float> all = y0, alone = y0;
        std::vector<float*> ya(n), y1(n);
        std::vector<const float*> sp(n);
        for (std::size_t t = 0; t < n; ++t) {
          ya[t] = all.data() + t * static_cast<std::size_t>(cols);
          y1[t] = alone.data() + t * static_cast<std::size_t>(cols);
          sp[t] = s.data() + t * static_cast<std::size_t>(g);
        }
        const auto call = [&](float* const* y, const float* const* sv, sfx::index_t mm) {
          if (pass == 0)
            ops.apply_rows(y, sv, mm, rows.data(), nrows, v.data(), ld, cols, 0, cols);
          else
            ops.outer_rows(y, sv, mm, rows.data(), nrows, v.data(), ld, 0, cols, pass == 2);
        };
        call(ya.data(), sp.data(), m);
        for (std::size_t t = 0; t < n; ++t) call(&y1[t], &sp[t], 1);
        REQUIRE(all != y0);  // the call did something
        for (std::size_t t = 0; t < n; ++t) {
          INFO("token " << t);
          REQUIRE(std::memcmp(ya[t], y1[t], static_cast<std::size_t>(cols) * sizeof(float)) == 0);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("isa: the value kernels take any number of tokens, each with the bits it gets alone", "[isa]") {
  check_any_token_count<float>(31);
  check_any_token_count<sfx::half_t>(32);
  check_any_token_count<sfx::bfloat16_t>(33);
  check_any_token_count<sfx::q8_t>(34);
  check_any_token_count<sfx::q4_t>(35);
}

namespace {

/// The AMX kernels' accuracy against float64 of their bf16 operands: the products are exact, so the only
/// error is float summation of `terms` terms, |got − ref| <= (terms + 2)·2^-24·Σ|p| (mag = Σ|p|).
inline bool amx_near(double got, double ref, double mag, double terms) {
  return std::fabs(got - ref) <= (terms + 2) * std::ldexp(1.0, -24) * mag + 1e-30;
}

/// The AMX value kernels' outputs y (m tokens, rows `stride` floats apart, from y0) against float64 of
/// their bf16 operands: p = coef(q, i)·value(i, c), both already rounded as the kernel rounds them, so
/// the products are exact and the only error is float summation, |err| <= (terms + 2)·2^-24·Σ|p| with y's
/// start one of the nrows + 1 terms; columns outside [c_lo, c_hi) untouched; and each token's bits the
/// same when the kernel runs it alone (alone(q, y_q) does, on a copy of its y0 row).
template <class Alone, class Coef, class Value>
void check_amx_values(const std::vector<float>& y, const std::vector<float>& y0, sfx::index_t m,
                      sfx::index_t stride, sfx::index_t nrows, sfx::index_t c_lo, sfx::index_t c_hi,
                      Alone&& alone, Coef&& coef, Value&& value) {
  std::vector<float> own(static_cast<std::size_t>(stride));
  for (sfx::index_t q = 0; q < m; ++q) {
    std::copy(y0.begin() + q * stride, y0.begin() + (q + 1) * stride, own.begin());
    alone(q, own.data());
    for (sfx::index_t c = 0; c < stride; ++c) {
      const float got = y[static_cast<std::size_t>(q * stride + c)],
                  start = y0[static_cast<std::size_t>(q * stride + c)];
      INFO("token " << q << " column " << c << " got " << got);
      REQUIRE(std::memcmp(&got, &own[static_cast<std::size_t>(c)], 4) == 0);
      if (c < c_lo || c >= c_hi) {
        REQUIRE(std::memcmp(&got, &start, 4) == 0);
        continue;
      }
      double ref = start, mag = std::fabs(start);
      for (sfx::index_t i = 0; i < nrows; ++i) {
        const double p = coef(q, i) * value(i, c);
        ref += p, mag += std::fabs(p);
      }
      INFO("ref " << ref);
      REQUIRE(amx_near(got, ref, mag, double(nrows + 1)));
    }
  }
}

}  // namespace

TEST_CASE("isa: the AMX key and value kernels (amx) match float64 on their bf16 inputs, each token alone",
          "[isa]") {
  // kernels/amx.hpp: the products of bf16 inputs are exact, so against float64 of the same bf16 values
  // (x rounded by the caller, coefficients rounded here as the kernel does) the only error is float
  // summation: |err| <= (terms + 2)·2^-24·Σ|p| per element (a dropped or doubled term, a wrong pair or
  // column, or a chunk not added is far outside it). Every output element is its own tile accumulator,
  // so a token's bits must not depend on the other tokens of its call: each token is rerun alone (for
  // the keys that also compares the transposed panel, m > 1, with x read as its own panel, m = 1).
#if !SPARSE_FFN_AMX
  WARN("SKIPPED: amx (the AMX key and value kernels) is not compiled by this compiler / for this target");
#else
  using T = sfx::bfloat16_t;
  if (!cpu::isa_supported(cpu::isa_level::amx)) {
    WARN("SKIPPED: amx (the AMX key and value kernels) is not supported by this CPU");
    return;
  }
  const auto& ops = cpu::kernels::ops_for<T>(cpu::isa_level::amx);
  REQUIRE(ops.dots_amx != nullptr);
  REQUIRE(ops.apply_amx != nullptr);
  REQUIRE(ops.col_step == 32);
  auto r = test::rng(33);
  std::normal_distribution<double> nd(0.0, 1.0);
  const auto bf = [](double v) { return T(static_cast<float>(v)); };
  for (int trial = 0; trial < 40; ++trial) {
    const sfx::index_t m = 1 + trial % 16, nrows = 16 * (1 + trial % 9), len = 32 * (1 + (trial * 7) % 40);
    const sfx::index_t ld = len + 32 * (trial % 3);
    INFO("keys: trial " << trial << " m " << m << " rows " << nrows << " len " << len);
    sfx::detail::aligned_buffer<T> rows(nrows * ld), x(m * ld);
    for (sfx::index_t i = 0; i < rows.size(); ++i) rows[i] = bf(nd(r) * std::ldexp(1.0, int(r() % 9) - 4));
    for (sfx::index_t i = 0; i < x.size(); ++i) x[i] = bf(nd(r));
    std::vector<const T*> xb(static_cast<std::size_t>(m));
    for (sfx::index_t q = 0; q < m; ++q) xb[static_cast<std::size_t>(q)] = x.data() + q * ld;
    sfx::detail::aligned_buffer<std::uint32_t> panel(cpu::kernels::amx::panel_bytes(len) / 4);
    std::vector<float> out(static_cast<std::size_t>(m * nrows), std::nanf("")),
        alone(static_cast<std::size_t>(nrows));
    ops.dots_amx(xb.data(), m, rows.data(), nrows, ld, len, panel.data(), false, out.data(), nrows);
    // The same panel reused (the gated key pass's up rows): the same bits.
    std::vector<float> again(out.size(), std::nanf(""));
    ops.dots_amx(xb.data(), m, rows.data(), nrows, ld, len, panel.data(), true, again.data(), nrows);
    REQUIRE(std::memcmp(again.data(), out.data(), out.size() * sizeof(float)) == 0);
    for (sfx::index_t q = 0; q < m; ++q) {
      ops.dots_amx(xb.data() + q, 1, rows.data(), nrows, ld, len, panel.data(), false, alone.data(), nrows);
      for (sfx::index_t i = 0; i < nrows; ++i) {
        double ref = 0, mag = 0;
        for (sfx::index_t c = 0; c < len; ++c) {
          const double p = double(float(rows[i * ld + c])) * double(float(x[q * ld + c]));
          ref += p, mag += std::fabs(p);
        }
        const float got = out[static_cast<std::size_t>(q * nrows + i)];
        INFO("token " << q << " row " << i << " got " << got << " ref " << ref);
        REQUIRE(amx_near(got, ref, mag, double(len)));
        REQUIRE(std::memcmp(&got, &alone[static_cast<std::size_t>(i)], 4) == 0);
      }
    }
  }
  for (int trial = 0; trial < 40; ++trial) {
    const sfx::index_t m = 1 + (trial * 5) % 16, nrows = 32 * (1 + trial % 6),
                       cols = 32 * (1 + (trial * 3) % 20);
    const sfx::index_t ld = cols + 32 * (trial % 2);
    const sfx::index_t c_lo = 32 * (trial % 3 == 0 ? 0 : (trial % (cols / 32))), c_hi = cols;
    INFO("values: trial " << trial << " m " << m << " rows " << nrows << " columns " << c_lo << ".." << c_hi);
    sfx::detail::aligned_buffer<T> v(nrows * ld);
    for (sfx::index_t i = 0; i < v.size(); ++i) v[i] = bf(nd(r) * std::ldexp(1.0, int(r() % 9) - 4));
    // Coefficients: some zero, a whole chunk of 32 rows zero for every token in some trials (skipped),
    // a token whose coefficients are all zero.
    std::vector<float> s(static_cast<std::size_t>(m * nrows));
    const sfx::index_t dead = trial % 4 == 1 ? (trial / 4) % (nrows / 32) : -1;
    for (sfx::index_t q = 0; q < m; ++q)
      for (sfx::index_t i = 0; i < nrows; ++i)
        s[static_cast<std::size_t>(q * nrows + i)] =
            (i / 32 == dead || r() % 4 == 0 || (q == 2 && trial % 3 == 0)) ? 0.0f : static_cast<float>(nd(r));
    std::vector<float> y(static_cast<std::size_t>(m * ld)), y0(y.size());
    for (auto& e : y0) e = static_cast<float>(nd(r));
    y = y0;
    std::vector<float*> yp(static_cast<std::size_t>(m));
    std::vector<const float*> sp(static_cast<std::size_t>(m));
    for (sfx::index_t q = 0; q < m; ++q) {
      yp[static_cast<std::size_t>(q)] = y.data() + q * ld;
      sp[static_cast<std::size_t>(q)] = s.data() + q * nrows;
    }
    ops.apply_amx(yp.data(), sp.data(), m, v.data(), ld, nrows, c_lo, c_hi);
    check_amx_values(
        y, y0, m, ld, nrows, c_lo, c_hi,
        [&](sfx::index_t q, float* ya) {
          ops.apply_amx(&ya, sp.data() + q, 1, v.data(), ld, nrows, c_lo, c_hi);
        },
        [&](sfx::index_t q, sfx::index_t i) {
          return double(float(bf(s[static_cast<std::size_t>(q * nrows + i)])));
        },
        [&](sfx::index_t i, sfx::index_t c) { return double(float(v[i * ld + c])); });
  }
#endif
}

namespace {

/// kernel_ops::apply_tiles_amx (amx::apply_quant) for T against float64 of what it multiplies: each
/// value the integer times its row's group scale rounded to bf16 (an exact float product, one rounding),
/// each coefficient rounded to bf16; the products of bf16 values are exact, so the only error is float
/// summation, |err| <= (terms + 2)·2^-24·Σ|p| per element, y's start included (a wrong row, column,
/// nibble, scale or chunk is far outside it). 1–64 tokens (one to four tiles of 16 per call, B converted
/// once), d 77 / 1100 / 4096, whole and partial column ranges, a chunk of 32 rows zero for every token
/// (skipped), a token with no nonzero coefficient, a gap between tiles; columns outside the range
/// untouched, and each token's bits the same alone.
template <class T>
void check_apply_quant(std::uint64_t seed) {
  using F = sfx::row_format<T>;
  using VT = sfx::value_tile<T>;
  const auto& ops = cpu::kernels::ops_for<T>(cpu::isa_level::amx);
  REQUIRE(ops.apply_tiles_amx != nullptr);
  auto r = test::rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const auto bf = [](double v) { return double(float(sfx::bfloat16_t(static_cast<float>(v)))); };
  int trial = 0;
  for (const sfx::index_t d : {sfx::index_t{77}, sfx::index_t{1100}, sfx::index_t{4096}})
    for (const sfx::index_t m : {sfx::index_t{1}, sfx::index_t{5}, sfx::index_t{16}, sfx::index_t{17},
                                 sfx::index_t{40}, sfx::index_t{64}}) {
      ++trial;
      const sfx::index_t cols = F::cols(d), ld = F::ld(d), nrows = 32 * (1 + trial % 3);
      std::vector<T> rows(static_cast<std::size_t>(nrows * ld));
      std::vector<float> src(static_cast<std::size_t>(d));
      for (sfx::index_t i = 0; i < nrows; ++i) {
        test::fill_normal(src, r, 0.05f * float(1 + i % 7));
        if (i == 3) src[static_cast<std::size_t>(d / 2)] = 40.0f;  // an outlier: a large scale
        F::encode(src.data(), d, rows.data() + i * ld, ld);
      }
      const sfx::index_t stride = (VT::bytes(cols) + 63) / 64 * 64 + 192;
      std::vector<std::uint8_t> tiles(static_cast<std::size_t>(nrows / VT::rows * stride + 64), 0xA5);
      auto* base =
          reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(tiles.data()) + 63) / 64 * 64);
      for (sfx::index_t t = 0; t < nrows / VT::rows; ++t)
        VT::pack(rows.data() + t * VT::rows * ld, ld, cols, base + t * stride);
      const sfx::index_t dead = trial % 2 == 0 ? (trial / 2) % (nrows / 32) : -1;
      std::vector<float> s(static_cast<std::size_t>(m * nrows));
      for (sfx::index_t q = 0; q < m; ++q)
        for (sfx::index_t i = 0; i < nrows; ++i)
          s[static_cast<std::size_t>(q * nrows + i)] =
              (i / 32 == dead || r() % 3 == 0 || (q == 1 && trial % 3 == 0))
                  ? 0.0f
                  : static_cast<float>(nd(r) * std::ldexp(1.0, int(r() % 9) - 4));
      const sfx::index_t step = ops.col_step, c_lo = trial % 2 && cols > 2 * step ? step : 0,
                         c_hi = trial % 4 == 1 && cols > 2 * step ? cols - step : cols;
      std::vector<float> y0(static_cast<std::size_t>(m * cols)), y(y0.size());
      test::fill_normal(y0, r, 1.0f);
      y = y0;
      std::vector<float*> yp(static_cast<std::size_t>(m));
      std::vector<const float*> sp(static_cast<std::size_t>(m));
      for (sfx::index_t q = 0; q < m; ++q) {
        yp[static_cast<std::size_t>(q)] = y.data() + q * cols;
        sp[static_cast<std::size_t>(q)] = s.data() + q * nrows;
      }
      sfx::detail::aligned_buffer<float> scale(cpu::kernels::amx_quant_scale_floats(cols));
      INFO(sfx::dtype_traits<T>::name << " d " << d << ", " << m << " tokens, " << nrows << " rows, columns ["
                                      << c_lo << ", " << c_hi << ")");
      ops.apply_tiles_amx(yp.data(), sp.data(), m, base, stride, nrows, cols, c_lo, c_hi, scale.data());
      check_amx_values(
          y, y0, m, cols, nrows, c_lo, c_hi,
          [&](sfx::index_t q, float* ya) {
            ops.apply_tiles_amx(&ya, sp.data() + q, 1, base, stride, nrows, cols, c_lo, c_hi, scale.data());
          },
          [&](sfx::index_t q, sfx::index_t i) { return bf(s[static_cast<std::size_t>(q * nrows + i)]); },
          [&](sfx::index_t i, sfx::index_t c) {
            const T* row = rows.data() + i * ld;
            return bf(double(F::quant(row, c)) * double(sfx::to_float(F::scales(row, cols)[c / 32])));
          });
    }
}

}  // namespace

TEST_CASE("isa: the AMX value kernel on q8/q4 value tiles (amx) matches float64 of its bf16 values",
          "[isa]") {
#if !SPARSE_FFN_AMX
  WARN("SKIPPED: amx (the AMX q8/q4 value kernel) is not compiled by this compiler / for this target");
#else
  if (!cpu::isa_supported(cpu::isa_level::amx)) {
    WARN("SKIPPED: amx (the AMX q8/q4 value kernel) is not supported by this CPU");
    return;
  }
  check_apply_quant<sfx::q8_t>(41);
  check_apply_quant<sfx::q4_t>(42);
#endif
}
