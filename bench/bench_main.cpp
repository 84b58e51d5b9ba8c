// sparse_ffn_bench — CPU benchmarks (Google Benchmark).
//
//   BM_stream_read/<reader>                              bytes/s of plain reads over 1 GiB (bench_stream.cpp)
//   BM_kernel_keys|values/<dtype>/l2|dram                one thread's key / value micro-kernel alone, from
//                                                        L2 and from memory (bench_kernels.cpp)
//   BM_dense_openblas_f32/d:D/dff:F/batch:N              dense FFN with OpenBLAS sgemv/sgemm
//   BM_dense_onednn_f32|bf16/d:D/dff:F/batch:N           dense FFN with oneDNN matmul (bench_onednn.cpp;
//                                                        when libdnnl-dev is found)
//   BM_sparse_<selector>_<dtype>/d:D/dff:F/g:G/density:P/batch:N
//   BM_backward_<selector>_<dtype>/..., BM_dense_backward_openblas_f32/...   training (bench_backward.cpp)
//
// All in one binary so ratios come from one run (bench/report.py computes them from the JSON).
// Counters: bytes_per_second on the bytes actually read from memory (selector data + keys of the
// blocks the batch selected + the value rows that were read: rows whose activation is zero for every
// token of the block are skipped by the kernel and not counted), `density` (k / B), `touched`
// (fraction of blocks the batch used). Every benchmark rotates over enough weight copies that the working set
// is ≥ 4× the L3, so no run is served from cache. Threads: OpenMP's (OMP_NUM_THREADS), for us and OpenBLAS.
// The sparse benchmarks time the forward alone (manual time: names end in /manual_time) and pair every
// iteration with a plain read of the bytes it touched (the BM_stream_read readers in turn, cold lines):
// counters paired_stream_gbs (the best reader's median rate) and paired_stream_pct (median of the
// forward's rate over that reader's, iteration by iteration); with --sffn_pair=all also with the dense
// oneDNN bf16 FFN of the same shape and batch: paired_dense_ms and paired_vs_dense (median of dense time
// over sparse time). Ratios of adjacent runs, so they hold when the host's bandwidth shifts mid-run.
//
// Extra flags (before Google Benchmark's): --sffn_act=relu|silu|swiglu (activation of the sparse and dense
// FFNs, default relu; swiglu registers only the backward benchmarks), --sffn_l3_mib=N (cache size to defeat;
// default: the CPU's L3 as sysconf reports it, at least 36), --sffn_pair=none|stream|all (default stream),
// --sffn_key_tiles=auto|no (q8/q4 keys as key tiles where the ISA level has their kernel; default auto).
// --sffn_value_tiles=auto|yes|no (q8/q4 values as value tiles where the ISA level has their kernel:
// auto for activations other than ReLU and for ReLU from batch 32, yes for every one; default auto).
#include "bench_common.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
#include <cblas.h>
#endif

namespace sf = sparse_ffn;

namespace bench {

void register_stream();  // bench_stream.cpp

// ---- dense OpenBLAS baseline ----------------------------------------------------------------------
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
void BM_dense_openblas(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n) {
  auto models = get_dense_copies(d, f);
  const auto x = random_x(n, d, 7);
  std::vector<float> h(static_cast<std::size_t>(n * f)), y(static_cast<std::size_t>(n * d));
  const bool relu = g_act == "relu";
  std::size_t next = 0;
  for (auto _ : state) {
    const auto& m = models->copies[next++ % models->copies.size()].ffn;
    for (sf::index_t t = 0; t < n; ++t) std::memcpy(&h[static_cast<std::size_t>(t * f)], m.b1.data(), f * 4);
    for (sf::index_t t = 0; t < n; ++t) std::memcpy(&y[static_cast<std::size_t>(t * d)], m.b2.data(), d * 4);
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(f), int(d), 1.0f, m.w1.data(), int(d), x.data(), 1, 1.0f,
                  h.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(f), int(d), 1.0f, x.data(), int(d),
                  m.w1.data(), int(d), 1.0f, h.data(), int(f));
    }
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < h.size(); ++i)
      h[i] = relu ? sf::act::relu::apply(h[i]) : sf::act::silu::apply(h[i]);
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(d), int(f), 1.0f, m.w2.data(), int(f), h.data(), 1, 1.0f,
                  y.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(d), int(f), 1.0f, h.data(), int(f),
                  m.w2.data(), int(f), 1.0f, y.data(), int(d));
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * d * f * 4);
  state.counters["density"] = 1.0;
}
#endif

#if defined(SPARSE_FFN_BENCH_ONEDNN)
void register_dense_onednn();  // bench_onednn.cpp
#else
std::function<void()> paired_dense(sf::index_t, sf::index_t, sf::index_t) {
  return {};
}
#endif
void register_sparse_avg_k(const std::string& act);
void register_sparse_hash(const std::string& act);
void register_sparse_learned_gate(const std::string& act);
void register_sparse_oracle(const std::string& act);
void register_backward(const std::string& act);  // bench_backward.cpp
void register_kernel_benchmarks();                 // bench_kernels.cpp

void register_all(const std::string& act) {
  if (act == "swiglu") {  // gated: the backward benchmarks only (the forward ones are relu/silu)
    register_backward(act);
    return;
  }
  register_stream();
  register_kernel_benchmarks();
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
  for (const shape& s : k_shapes)
    for (int n : k_batches)
      benchmark::RegisterBenchmark(("BM_dense_openblas_f32/d:" + std::to_string(s.d) +
                                    "/dff:" + std::to_string(s.f) + "/batch:" + std::to_string(n))
                                       .c_str(),
                                   BM_dense_openblas, s.d, s.f, sf::index_t{n})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
#endif
#if defined(SPARSE_FFN_BENCH_ONEDNN)
  register_dense_onednn();
#endif
  register_sparse_avg_k(act);
  register_sparse_hash(act);
  register_sparse_learned_gate(act);
  register_sparse_oracle(act);
  register_backward(act);
}

}  // namespace bench

int main(int argc, char** argv) {
  std::vector<char*> rest;
  bool l3_given = false;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--sffn_act=", 0) == 0) {
      bench::g_act = a.substr(11);
    } else if (a.rfind("--sffn_pair=", 0) == 0) {
      bench::g_pair = a.substr(12);
    } else if (a.rfind("--sffn_key_tiles=", 0) == 0) {
      bench::g_key_tiles = a.substr(17);
    } else if (a.rfind("--sffn_value_tiles=", 0) == 0) {
      bench::g_value_tiles = a.substr(19);
    } else if (a.rfind("--sffn_l3_mib=", 0) == 0) {
      bench::g_l3_bytes = std::stod(a.substr(14)) * 1024 * 1024;
      l3_given = true;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (!l3_given) {
    // The machine's own last-level cache (seen: 32 MiB on Zen 4, 260 MiB on a Sapphire Rapids VM),
    // never less than the old 36 MiB default: copies must exceed it or the weights come from cache.
#if defined(_SC_LEVEL3_CACHE_SIZE)
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) bench::g_l3_bytes = std::max(bench::g_l3_bytes, static_cast<double>(l3));
#endif
  }
  if (bench::g_act != "relu" && bench::g_act != "silu" && bench::g_act != "swiglu") {
    std::fprintf(stderr, "--sffn_act must be relu, silu or swiglu (swiglu: backward benchmarks only)\n");
    return 2;
  }
  if (bench::g_key_tiles != "auto" && bench::g_key_tiles != "no") {
    std::fprintf(stderr, "--sffn_key_tiles must be auto or no\n");
    return 2;
  }
  if (bench::g_value_tiles != "auto" && bench::g_value_tiles != "yes" && bench::g_value_tiles != "no") {
    std::fprintf(stderr, "--sffn_value_tiles must be auto, yes or no\n");
    return 2;
  }
  if (bench::g_pair != "none" && bench::g_pair != "stream" && bench::g_pair != "all") {
    std::fprintf(stderr, "--sffn_pair must be none, stream or all\n");
    return 2;
  }
  bench::register_all(bench::g_act);
  int rc = static_cast<int>(rest.size());
  benchmark::AddCustomContext("sparse_ffn.isa", sf::cpu::isa_description());
  // bf16 weights' value pass: vdpbf16ps on row pairs (coefficients rounded to bf16) or float FMAs.
  {
    const auto& bf16_ops = sf::cpu::kernels::ops_for<sf::bfloat16_t>(sf::cpu::active_isa());
    const std::string rows = bf16_ops.bf16_values ? "vdpbf16ps pairs" : "float";
    benchmark::AddCustomContext("sparse_ffn.bf16_value_pass",
                                bf16_ops.apply_amx ? "AMX for >= " + std::to_string(bf16_ops.amx_min_tokens) +
                                                         " tokens per block and partial, else " + rows
                                                   : rows);
  }
  benchmark::AddCustomContext("sparse_ffn.activation", bench::g_act);
  benchmark::AddCustomContext("sparse_ffn.paired", bench::g_pair);
  benchmark::AddCustomContext("sparse_ffn.key_tiles",
                              bench::g_key_tiles == "no" ? "no (--sffn_key_tiles=no)"
                              : sf::cpu::key_tile_kernel<sf::q4_t>()
                                  ? "q8/q4 keys as key tiles (blocked_ffn::tile_keys; dots_tiles)"
                                  : "no (this ISA level has no key-tile kernel)");
  benchmark::AddCustomContext(
      "sparse_ffn.value_tiles",
      !sf::cpu::value_tile_kernel<sf::q4_t>() ? "no (this ISA level has no value-tile kernel)"
      : bench::value_tiles_wanted(1)
          ? "q8/q4 values as value tiles (blocked_ffn::tile_values; apply_tiles)"
      : bench::value_tiles_wanted(bench::k_relu_tiles_batch)
          ? "q8/q4 values as value tiles from batch " + std::to_string(bench::k_relu_tiles_batch) +
                " (activation " + bench::g_act + "; rows below)"
          : "no (--sffn_value_tiles=" + bench::g_value_tiles + ", activation " + bench::g_act + ")");
  benchmark::AddCustomContext("sparse_ffn.l3_mib_defeated",
                              std::to_string(bench::g_l3_bytes / (1024 * 1024)));
#if defined(SPARSE_FFN_BENCH_ONEDNN)
  benchmark::AddCustomContext("sparse_ffn.dense_baselines", "openblas f32, onednn f32 + bf16");
#else
  benchmark::AddCustomContext("sparse_ffn.dense_baselines", "openblas f32 (oneDNN not found at build time)");
#endif
#if defined(SPARSE_FFN_BENCH_OPENBLAS)
  // OpenBLAS picks its kernels by CPU model: a release older than the CPU (0.3.21 and Emerald Rapids,
  // model 207) falls back to the SSE3 "Prescott" kernels, a dense baseline several times too weak.
  const std::string core = openblas_get_corename();
  benchmark::AddCustomContext("sparse_ffn.openblas_core", core);
  if (core == "Prescott" && __builtin_cpu_supports("avx2"))
    std::fprintf(
        stderr,
        "warning: OpenBLAS runs its SSE3 'Prescott' kernels on this AVX2/AVX-512 CPU (a CPU model it "
        "does not know): its dense baseline is too weak; rerun with OPENBLAS_CORETYPE=SkylakeX (AVX-512) "
        "or Haswell (AVX2)\n");
#endif
#if SPARSE_FFN_HAS_OPENMP
  benchmark::AddCustomContext("sparse_ffn.threads", std::to_string(omp_get_max_threads()));
#endif
  benchmark::Initialize(&rc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rc, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
