// sparse_ffn — CPU instruction sets: tags, run-time detection, selection and override.
//
// The fast path's micro-kernels are compiled for every instruction set below in the same translation
// unit, whatever flags the consumer builds with (kernels/kernels.hpp: each set in its own
// `#pragma GCC target` / `#pragma clang attribute` region, Highway's model), and the best one the
// running CPU *and its operating system* support is chosen on first use:
//
//   level         needs (CPUID + XGETBV)                                   used for
//   scalar        nothing (portable C++, auto-vectorised for the baseline)  any CPU, any compiler
//   avx2          AVX2, FMA, F16C; OS saves YMM                             Haswell+, Zen 1+
//   avx512        AVX-512 F/BW/DQ/VL; OS saves ZMM and opmasks              Skylake-SP+, Zen 4
//   avx512_vnni   avx512 + AVX512_VNNI                                      Cascade Lake, Ice Lake+, Zen 4
//   avx512_bf16   avx512_vnni + AVX512_BF16                                 Cooper Lake, SPR+, Zen 4
//   amx           avx512_bf16 + AMX-TILE/BF16/INT8; OS saves tile state and  Sapphire Rapids+
//                 grants it to the process (Linux: arch_prctl, asked on first use)
//
// avx2 and avx512_vnni run the key pass of q8/q4 weights in int8 (`vpmaddubsw`, `vpdpbusd`) on x
// quantised to int8 per group of 32 (docs/design.md, "Quantised weights"; avx512 keeps float there);
// avx512_bf16 adds the key pass of bf16 weights with `vdpbf16ps`, which multiplies bf16 by bf16: it rounds
// each token's input x to bf16 first (docs/design.md, "Accuracy of the bf16 kernels"). Force `avx512` to keep
// x in float. amx runs the key and value passes of bf16 weights on the tile unit (`tdpbf16ps`; x and the
// value coefficients rounded to bf16; docs/design.md, "AMX") and the key pass of q8/q4 key tiles
// (`tdpbssd` / `tdpbsud`, the bits of avx512_bf16's); everything else as avx512_bf16.
//
// Override: the environment variable SPARSE_FFN_ISA (scalar | avx2 | avx512 | avx512_vnni | avx512_bf16 |
// amx), read once on first use, or set_isa() at run time; both force a *lower* level (asking for a level the
// CPU lacks is an error from set_isa(), and is clamped to the best supported level with SPARSE_FFN_ISA, whose
// effect active_isa() reports). Non-x86 targets and compilers without target attributes have `scalar`.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "../error.hpp"

// Needs target attributes with AVX512_BF16: GCC >= 10 or Clang >= 9 (older compilers: scalar only).
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__CUDACC__) && \
    !defined(SPARSE_FFN_NO_ISA_DISPATCH) &&                               \
    ((defined(__clang__) && __clang_major__ >= 9) ||                      \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define SPARSE_FFN_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define SPARSE_FFN_X86_DISPATCH 0
#endif

// The amx level (kernels/amx.hpp): 64-bit x86 and an assembler that knows the tile instructions (GCC >= 11
// with its binutils, Clang >= 12).
#if SPARSE_FFN_X86_DISPATCH && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define SPARSE_FFN_AMX 1
#else
#define SPARSE_FFN_AMX 0
#endif

// ---- target regions: everything defined between BEGIN and END is compiled for that ISA -----------
#if SPARSE_FFN_X86_DISPATCH
#define SPARSE_FFN_TARGET_AVX2 "avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt"
#define SPARSE_FFN_TARGET_AVX512 SPARSE_FFN_TARGET_AVX2 ",avx512f,avx512bw,avx512dq,avx512vl,avx512cd"
#define SPARSE_FFN_TARGET_AVX512_VNNI SPARSE_FFN_TARGET_AVX512 ",avx512vnni"
#define SPARSE_FFN_TARGET_AVX512_BF16 SPARSE_FFN_TARGET_AVX512_VNNI ",avx512bf16"
#if defined(__clang__)
#define SPARSE_FFN_PRAGMA(x) _Pragma(#x)
#define SPARSE_FFN_TARGET_BEGIN(targets) \
  SPARSE_FFN_PRAGMA(clang attribute push(__attribute__((target(targets))), apply_to = function))
#define SPARSE_FFN_TARGET_END _Pragma("clang attribute pop")
#else
#define SPARSE_FFN_PRAGMA(x) _Pragma(#x)
#define SPARSE_FFN_TARGET_BEGIN(targets) _Pragma("GCC push_options") SPARSE_FFN_PRAGMA(GCC target(targets))
#define SPARSE_FFN_TARGET_END _Pragma("GCC pop_options")
#endif
#endif

namespace sparse_ffn {
namespace cpu {

/// Instruction-set tags. They inherit (amx : avx512_bf16 : avx512_vnni : avx512 : avx2 : scalar) like
/// xsimd's, so an overload for a base ISA serves newer ones.
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
struct avx512_vnni : avx512 {
  static constexpr const char* name = "avx512_vnni";
};
struct avx512_bf16 : avx512_vnni {
  static constexpr const char* name = "avx512_bf16";
};
struct amx : avx512_bf16 {
  static constexpr const char* name = "amx";
};
}  // namespace isa

/// Run-time ISA levels, ordered: a higher level runs everything a lower one does.
enum class isa_level : int { scalar = 0, avx2 = 1, avx512 = 2, avx512_vnni = 3, avx512_bf16 = 4, amx = 5 };
inline constexpr int k_isa_levels = 6;

inline const char* isa_name(isa_level l) {
  switch (l) {
    case isa_level::scalar: return "scalar";
    case isa_level::avx2: return "avx2";
    case isa_level::avx512: return "avx512";
    case isa_level::avx512_vnni: return "avx512_vnni";
    case isa_level::avx512_bf16: return "avx512_bf16";
    case isa_level::amx: return "amx";
  }
  return "unknown";
}

/// Parses an ISA name ("scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx"); false if it is none
/// of them.
inline bool parse_isa(const char* s, isa_level& out) {
  if (!s) return false;
  for (int i = 0; i < k_isa_levels; ++i)
    if (std::strcmp(s, isa_name(static_cast<isa_level>(i))) == 0) {
      out = static_cast<isa_level>(i);
      return true;
    }
  return false;
}

/// What the running CPU and OS support (all false off x86).
struct cpu_features {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false, avx512cd = false;
  bool avx512_vnni = false, avx512_bf16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_ymm = false, os_zmm = false;  ///< XCR0 says the OS saves YMM / ZMM + opmask state
  bool os_amx = false;  ///< XCR0 has the tile state and the OS let this process use it (Linux: arch_prctl;
                        ///< not asked when SPARSE_FFN_ISA names a lower level)
  bool amd = false;                     ///< vendor "AuthenticAMD" (kernels::fast_bf16_dot)
};

namespace isa_detail {

inline cpu_features detect_features() {
  cpu_features f;
#if SPARSE_FFN_X86_DISPATCH
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  f.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "Auth" "enti" "cAMD"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  bool os_tiles = false;
  if (osxsave && avx) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.os_ymm = (lo & 0x6u) == 0x6u;    // SSE + AVX state
    f.os_zmm = (lo & 0xE6u) == 0xE6u;  // + opmask, ZMM_Hi256, Hi16_ZMM
    os_tiles = (lo & 0x60000u) == 0x60000u;  // XTILECFG + XTILEDATA
  }
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned sub_leaves = a;
    f.avx2 = (b >> 5) & 1;
    f.bmi2 = (b >> 8) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512cd = (b >> 28) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512_vnni = (c >> 11) & 1;
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
    f.amx_int8 = (d >> 25) & 1;
    if (sub_leaves >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512_bf16 = (a >> 5) & 1;
    }
  }
  // Linux hands the tile data state (8 KiB of XSAVE area) to a process only on request: without it the
  // first tile instruction raises SIGILL. Asked once, here, when the CPU and the kernel's XCR0 have it,
  // unless SPARSE_FFN_ISA names a lower level (the grant enlarges every signal frame of the process by
  // ~8 KiB, which a small sigaltstack may not hold).
#if defined(__linux__) && defined(__x86_64__)
  const char* env = std::getenv("SPARSE_FFN_ISA");
  const bool below_amx = env && *env && std::strcmp(env, "amx") != 0;
  if (SPARSE_FFN_AMX && f.amx_tile && os_tiles && !below_amx) {  // not asked where amx is not compiled
    constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    f.os_amx = syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
  }
#else
  (void)os_tiles;  // elsewhere the tile state is not asked for: amx is not chosen
#endif
#endif
  return f;
}

/// Whether the CPU + OS can run a level (and this build compiled it).
inline bool level_supported(const cpu_features& f, isa_level l) {
  const bool avx2 = SPARSE_FFN_X86_DISPATCH && f.os_ymm && f.avx2 && f.fma && f.f16c && f.bmi2;
  const bool avx512 = avx2 && f.os_zmm && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512cd;
  switch (l) {
    case isa_level::scalar: return true;
    case isa_level::avx2: return avx2;
    case isa_level::avx512: return avx512;
    case isa_level::avx512_vnni: return avx512 && f.avx512_vnni;
    case isa_level::avx512_bf16: return avx512 && f.avx512_vnni && f.avx512_bf16;
    case isa_level::amx:
      return SPARSE_FFN_AMX && avx512 && f.avx512_vnni && f.avx512_bf16 && f.amx_tile && f.amx_bf16 &&
             f.amx_int8 && f.os_amx;
  }
  return false;
}

inline const cpu_features& features() {
  static const cpu_features f = detect_features();
  return f;
}

inline isa_level best_supported() {
  for (int i = k_isa_levels - 1; i > 0; --i)
    if (level_supported(features(), static_cast<isa_level>(i))) return static_cast<isa_level>(i);
  return isa_level::scalar;
}

/// The level chosen from SPARSE_FFN_ISA (clamped to what is supported) or the best one.
inline isa_level default_level() {
  static const isa_level l = [] {
    const isa_level best = best_supported();
    const char* env = std::getenv("SPARSE_FFN_ISA");
    if (!env || !*env) return best;
    isa_level want = isa_level::scalar;
    if (!parse_isa(env, want))
      sparse_ffn::detail::fail(
          status::invalid_argument, "SPARSE_FFN_ISA=", env,
          " is not an instruction set; use scalar, avx2, avx512, avx512_vnni, avx512_bf16 or amx");
    return static_cast<int>(want) < static_cast<int>(best) ? want : best;
  }();
  return l;
}

/// -1: no set_isa() override; otherwise the forced level.
inline std::atomic<int>& forced_level() {
  static std::atomic<int> v{-1};
  return v;
}

}  // namespace isa_detail

/// The CPU's features (detected once).
inline const cpu_features& features() {
  return isa_detail::features();
}

/// Whether this CPU (and this build) can run `l`.
inline bool isa_supported(isa_level l) {
  return isa_detail::level_supported(features(), l);
}

/// The best level this CPU supports (ignores overrides).
inline isa_level best_isa() {
  return isa_detail::best_supported();
}

/// The level the kernels use now: set_isa()'s, else SPARSE_FFN_ISA's (clamped), else best_isa().
/// Throws sparse_ffn::error (invalid_argument) if SPARSE_FFN_ISA is set to an unknown name.
inline isa_level active_isa() {
  const int f = isa_detail::forced_level().load(std::memory_order_relaxed);
  return f >= 0 ? static_cast<isa_level>(f) : isa_detail::default_level();
}

/// Forces the kernels to `l` for every later call in the process (e.g. `avx512` to keep bf16 models'
/// activations in float, or `scalar` to compare). Throws sparse_ffn::error (unsupported) if this CPU
/// cannot run it. Calls in flight on other threads finish with the level they started with.
inline void set_isa(isa_level l) {
  sparse_ffn::detail::require(static_cast<int>(l) >= 0 && static_cast<int>(l) < k_isa_levels,
                              status::invalid_argument, "set_isa: not an ISA level (", static_cast<int>(l),
                              ")");
  sparse_ffn::detail::require(isa_supported(l), status::unsupported, "set_isa: this CPU cannot run ",
                              isa_name(l), " (best supported: ", isa_name(best_isa()), ")");
  isa_detail::forced_level().store(static_cast<int>(l), std::memory_order_relaxed);
}

/// Undoes set_isa(): back to SPARSE_FFN_ISA or the best level.
inline void reset_isa() {
  isa_detail::forced_level().store(-1, std::memory_order_relaxed);
}

/// "avx512_bf16 (cpu: avx2 fma f16c avx512f ... os_zmm)" — for logs and benchmark contexts.
inline std::string isa_description() {
  const cpu_features& f = features();
  std::string s = isa_name(active_isa());
  s += " (best ";
  s += isa_name(best_isa());
  s += "; cpu:";
  const std::pair<const char*, bool> flags[] = {{"avx2", f.avx2},
                                                {"fma", f.fma},
                                                {"f16c", f.f16c},
                                                {"avx512f", f.avx512f},
                                                {"avx512bw", f.avx512bw},
                                                {"avx512dq", f.avx512dq},
                                                {"avx512vl", f.avx512vl},
                                                {"avx512_vnni", f.avx512_vnni},
                                                {"avx512_bf16", f.avx512_bf16},
                                                {"amx_tile", f.amx_tile},
                                                {"amx_bf16", f.amx_bf16},
                                                {"amx_int8", f.amx_int8},
                                                {"os_ymm", f.os_ymm},
                                                {"os_zmm", f.os_zmm},
                                                {"os_amx", f.os_amx}};
  for (const auto& p : flags)
    if (p.second) {
      s += ' ';
      s += p.first;
    }
  s += ')';
  return s;
}

}  // namespace cpu
}  // namespace sparse_ffn
