// BM_kernel_keys/<dtype>/<where> and BM_kernel_values/<dtype>/<where>: one thread, one token, the
// forward's two micro-kernels alone (kernel_ops::dots, 16 rows a call, and kernel_ops::apply_rows over
// 64 rows, every row active) on rows of d = 4096, the ISA the library picked at run time. `where`:
//   l2    64 rows (one block, 0.15–0.53 MB): the weights come from L2, so the figure is the kernel's
//         compute rate per byte
//   dram  rows covering 4 × L3 (--sffn_l3_mib; at most 1 GiB), walked in order: the rate from memory
//         for one core
// The forward's batch-1 figure is bounded by both; on the Zen 4 of docs/benchmarks.md (2026-12-04,
// stop 43) a core's time per byte from memory was close to (time per byte from L2) + (time per byte of
// a plain read), i.e. the compute of a kernel did not hide behind its reads, so a kernel's l2 rate
// bounds its batch-1 rate well below the read bandwidth. Single-threaded: these do not suffer the
// shared-machine noise of OpenMP.
// BM_kernel_values/<dtype>/l2/tokens:<M> (M = 2, 4, 6, up to the ISA's token group kernel_ops::rows_m;
// more tokens would run as several groups):
// the value kernel for M tokens at once (a batch's token group; every row active for each), bytes
// counted once, weights from L2: the kernel's compute rate per byte at that group size. Where it falls
// about as 1/M (q8 and q4 on the VNNI levels, docs/benchmarks.md 2026-12-04 stop 47), a batch's value
// pass is bound by its per-token work, not by the reads.
#include "bench_common.hpp"

#include <sparse_ffn/cpu/kernels/kernels.hpp>

namespace bench {

namespace {

namespace k = sf::cpu::kernels;

constexpr sf::index_t k_kernel_d = 4096;
constexpr sf::index_t k_kernel_block = 64;  // rows per block (g)

/// nrows rows of T (row_format: quantised with scales, or elements), 64-byte aligned, and one token's x
/// in the forms the kernels read.
template <class T>
struct kernel_rows {
  using F = sf::row_format<T>;
  sf::index_t cols = F::cols(k_kernel_d), ld = F::ld(k_kernel_d), nrows;
  sf::detail::aligned_buffer<T> w;
  std::vector<float> x;
  std::vector<sf::bfloat16_t> xb;
  std::vector<std::uint8_t> xq;

  explicit kernel_rows(sf::index_t n) : nrows(n), w(n * ld) {
    // 64 distinct encoded rows, repeated: the contents do not change the kernels' speed.
    std::vector<float> src(static_cast<std::size_t>(k_kernel_d));
    for (sf::index_t r = 0; r < std::min<sf::index_t>(n, k_kernel_block); ++r) {
      fill(src.data(), src.size(), 100 + static_cast<std::uint64_t>(r), 0.05f);
      F::encode(src.data(), k_kernel_d, w.data() + r * ld, ld);
    }
    for (sf::index_t r = k_kernel_block; r < n; ++r)
      std::memcpy(static_cast<void*>(w.data() + r * ld), w.data() + (r % k_kernel_block) * ld,
                  static_cast<std::size_t>(ld) * sizeof(T));
    x.assign(static_cast<std::size_t>(cols), 0.0f);
    fill(x.data(), static_cast<std::size_t>(k_kernel_d), 7, 1.0f);
    for (float v : x) xb.push_back(sf::bfloat16_t(v));
    xq.assign(static_cast<std::size_t>(k::x_int8_bytes(cols)), 0);
  }
  double bytes() const { return static_cast<double>(nrows * ld) * sizeof(T); }
};

template <class T>
sf::index_t rows_for(bool dram) {
  if (!dram) return k_kernel_block;
  const double block_bytes =
      static_cast<double>(sf::row_format<T>::ld(k_kernel_d) * k_kernel_block) * sizeof(T);
  const int blocks = std::min(copies_for(block_bytes), static_cast<int>(1024.0 * 1024 * 1024 / block_bytes));
  return std::max(1, blocks) * k_kernel_block;  // ≥ 4 × L3 (copies_for), at most 1 GiB
}

template <class T>
void bm_keys(benchmark::State& state, bool dram) {
  const auto& ops = k::ops_for<T>(sf::cpu::active_isa());
  kernel_rows<T> kr(rows_for<T>(dram));
  if constexpr (sf::is_quantized<T>::value)
    if (ops.int8_x) ops.prepare_x_int8(kr.x.data(), kr.cols, kr.xq.data());
  const float* xs[1] = {kr.x.data()};
  const sf::bfloat16_t* xb[1] = {kr.xb.data()};
  const std::uint8_t* xq[1] = {kr.xq.data()};
  constexpr sf::index_t R = k::k_max_key_r;
  std::vector<float> spill(static_cast<std::size_t>(R * k::k_max_width)), out(static_cast<std::size_t>(R));
  for (auto _ : state) {
    for (sf::index_t r0 = 0; r0 < kr.nrows; r0 += R)
      ops.dots(xs, xb, xq, 1, kr.w.data() + r0 * kr.ld, R, kr.ld, kr.cols, spill.data(), out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kr.bytes()));
  state.counters["rows"] = static_cast<double>(kr.nrows);
}

/// BM_kernel_keys/<q8|q4>_tiles/<where>[/tokens:M]: the same rows as BM_kernel_keys re-laid as
/// key_tile<T> (quant.hpp), each tile in the space of its 16 rows as blocked_ffn::tile_keys lays them, run
/// by kernel_ops::dots_tiles (the same bits as dots) for M tokens (default 1): the same bytes and rows as
/// BM_kernel_keys/<q8|q4>, so both its time and its GB/s compare directly; 64 rows (a block, g 64) per
/// call, as the forward calls it (fast.hpp key_block: few tokens walk the four tiles side by side).
/// <q8|q4>_tiles_amx: the same by dots_tiles_amx (amx level: AMX-INT8, the same bits).
template <class T>
void bm_key_tiles(benchmark::State& state, bool dram, int tokens, bool amx) {
  using KT = sf::key_tile<T>;
  const auto& ops = k::ops_for<T>(sf::cpu::active_isa());
  if (!ops.dots_tiles) {
    state.SkipWithError("no key-tile kernel at this ISA level (q4 on avx2, q8/q4 on avx512_vnni and up)");
    return;
  }
  if (amx && !ops.dots_tiles_amx) {
    state.SkipWithError("no AMX key-tile kernel at this ISA level (q8/q4 on amx)");
    return;
  }
  kernel_rows<T> kr(rows_for<T>(dram));
  const sf::index_t stride = KT::rows * kr.ld * static_cast<sf::index_t>(sizeof(T)),
                    ntiles = kr.nrows / KT::rows;
  sf::detail::aligned_buffer<std::uint8_t> tiles(ntiles * stride);
  for (sf::index_t t = 0; t < ntiles; ++t)
    KT::pack(kr.w.data() + t * KT::rows * kr.ld, kr.ld, kr.cols, tiles.data() + t * stride);
  ops.prepare_x_int8(kr.x.data(), kr.cols, kr.xq.data());
  const std::vector<const std::uint8_t*> xq(static_cast<std::size_t>(tokens), kr.xq.data());
  constexpr sf::index_t R = k::k_max_key_r;
  const auto M = static_cast<std::size_t>(tokens);
  std::vector<float> spill(M * R * k::k_max_width), out(M * k_kernel_block);
#if SPARSE_FFN_AMX
  sf::detail::aligned_buffer<std::uint8_t> panel(k::amx::int8_panel_bytes(kr.cols));
#endif
  for (auto _ : state) {
    if (amx) {
#if SPARSE_FFN_AMX
      for (sf::index_t t = 0; t < ntiles; t += k_kernel_block / KT::rows)
        ops.dots_tiles_amx(xq.data(), tokens, tiles.data() + t * stride, k_kernel_block, stride, kr.cols,
                           panel.data(), false, out.data(), k_kernel_block);
#endif
    } else {
      for (sf::index_t t = 0; t < ntiles; t += k_kernel_block / KT::rows)
        ops.dots_tiles(xq.data(), tokens, tiles.data() + t * stride, k_kernel_block, stride, kr.cols,
                       spill.data(), out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(
      static_cast<std::int64_t>(state.iterations() * static_cast<double>(ntiles * stride)));
  state.counters["rows"] = static_cast<double>(kr.nrows);
  state.counters["tokens"] = static_cast<double>(tokens);
}

template <class T>
void bm_values(benchmark::State& state, bool dram, int tokens) {
  const auto& ops = k::ops_for<T>(sf::cpu::active_isa());
  kernel_rows<T> kr(rows_for<T>(dram));
  const auto M = static_cast<std::size_t>(tokens);
  std::vector<std::vector<float>> y(M, std::vector<float>(static_cast<std::size_t>(kr.cols), 0.0f));
  std::vector<std::vector<float>> s(M, std::vector<float>(static_cast<std::size_t>(k_kernel_block)));
  std::vector<float*> ys(M);
  std::vector<const float*> sp(M);
  for (std::size_t m = 0; m < M; ++m) {
    fill(s[m].data(), s[m].size(), 11 + m, 0.01f);
    ys[m] = y[m].data();
    sp[m] = s[m].data();
  }
  std::vector<std::int32_t> rows(static_cast<std::size_t>(k_kernel_block));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<std::int32_t>(i);
  for (auto _ : state) {
    for (sf::index_t r0 = 0; r0 < kr.nrows; r0 += k_kernel_block)
      ops.apply_rows(ys.data(), sp.data(), tokens, rows.data(), k_kernel_block, kr.w.data() + r0 * kr.ld,
                     kr.ld, kr.cols, 0, kr.cols);
    benchmark::DoNotOptimize(y.front().data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kr.bytes()));
  state.counters["rows"] = static_cast<double>(kr.nrows);
  state.counters["tokens"] = static_cast<double>(tokens);
}

/// BM_kernel_values/<q8|q4>_tiles/<where>[/tokens:M]: the same rows as BM_kernel_values re-laid as
/// value_tile<T> (quant.hpp), each tile in the space of its 32 rows as blocked_ffn::tile_values lays
/// them, run by kernel_ops::apply_tiles (the same bits as apply_rows): the same bytes and rows as
/// BM_kernel_values/<q8|q4>, so both its time and its GB/s compare directly.
template <class T>
void bm_value_tiles(benchmark::State& state, bool dram, int tokens) {
  using VT = sf::value_tile<T>;
  const auto& ops = k::ops_for<T>(sf::cpu::active_isa());
  if (!ops.apply_tiles) {
    state.SkipWithError("no value-tile kernel at this ISA level (q8/q4 on avx512_vnni and up)");
    return;
  }
  kernel_rows<T> kr(rows_for<T>(dram));
  const sf::index_t stride = VT::rows * kr.ld * static_cast<sf::index_t>(sizeof(T)),
                    ntiles = kr.nrows / VT::rows;
  sf::detail::aligned_buffer<std::uint8_t> tiles(ntiles * stride);
  for (sf::index_t t = 0; t < ntiles; ++t)
    VT::pack(kr.w.data() + t * VT::rows * kr.ld, kr.ld, kr.cols, tiles.data() + t * stride);
  const auto M = static_cast<std::size_t>(tokens);
  std::vector<std::vector<float>> y(M, std::vector<float>(static_cast<std::size_t>(kr.cols), 0.0f));
  std::vector<std::vector<float>> s(M, std::vector<float>(static_cast<std::size_t>(k_kernel_block)));
  std::vector<float*> ys(M);
  std::vector<const float*> sp(M);
  for (std::size_t m = 0; m < M; ++m) {
    fill(s[m].data(), s[m].size(), 11 + m, 0.01f);
    ys[m] = y[m].data();
  }
  for (auto _ : state) {
    for (sf::index_t t = 0; t < ntiles; ++t) {
      for (std::size_t m = 0; m < M; ++m) sp[m] = s[m].data() + t % (k_kernel_block / VT::rows) * VT::rows;
      ops.apply_tiles(ys.data(), sp.data(), tokens, tiles.data() + t * stride, kr.cols, 0, kr.cols);
    }
    benchmark::DoNotOptimize(y.front().data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(
      static_cast<std::int64_t>(state.iterations() * static_cast<double>(ntiles * stride)));
  state.counters["rows"] = static_cast<double>(kr.nrows);
  state.counters["tokens"] = static_cast<double>(tokens);
}

template <class T>
void register_kernels(const char* name) {
  for (const bool dram : {false, true}) {
    const std::string where = dram ? "dram" : "l2";
    benchmark::RegisterBenchmark(("BM_kernel_keys/" + std::string(name) + "/" + where).c_str(),
                                 [dram](benchmark::State& st) { bm_keys<T>(st, dram); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    if constexpr (sf::is_quantized<T>::value)
      benchmark::RegisterBenchmark(("BM_kernel_keys/" + std::string(name) + "_tiles/" + where).c_str(),
                                   [dram](benchmark::State& st) { bm_key_tiles<T>(st, dram, 1, false); })
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_kernel_values/" + std::string(name) + "/" + where).c_str(),
                                 [dram](benchmark::State& st) { bm_values<T>(st, dram, 1); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime();
    if constexpr (sf::is_quantized<T>::value)
      benchmark::RegisterBenchmark(("BM_kernel_values/" + std::string(name) + "_tiles/" + where).c_str(),
                                   [dram](benchmark::State& st) { bm_value_tiles<T>(st, dram, 1); })
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  }
  const int group = k::ops_for<T>(sf::cpu::active_isa()).rows_m;  // apply_rows' largest token group
  for (const int tokens : {2, 4, 6})
    if (tokens <= group)
      benchmark::RegisterBenchmark(
          ("BM_kernel_values/" + std::string(name) + "/l2/tokens:" + std::to_string(tokens)).c_str(),
          [tokens](benchmark::State& st) { bm_values<T>(st, false, tokens); })
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  if constexpr (sf::is_quantized<T>::value)  // the key pass of a block at batch 8-64 (AMX from 8 / 12)
    for (const int tokens : {4, 8, 12, 16})
      for (const bool amx : {false, true})
        benchmark::RegisterBenchmark(
            ("BM_kernel_keys/" + std::string(name) + (amx ? "_tiles_amx" : "_tiles") +
             "/dram/tokens:" + std::to_string(tokens))
                .c_str(),
            [tokens, amx](benchmark::State& st) { bm_key_tiles<T>(st, true, tokens, amx); })
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
  if constexpr (sf::is_quantized<T>::value)
    for (const int tokens : {2, 4, 6})
      if (tokens <= group)
        benchmark::RegisterBenchmark(
            ("BM_kernel_values/" + std::string(name) + "_tiles/l2/tokens:" + std::to_string(tokens)).c_str(),
            [tokens](benchmark::State& st) { bm_value_tiles<T>(st, false, tokens); })
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
}

}  // namespace

void register_kernel_benchmarks() {
  register_kernels<float>("f32");
  register_kernels<sf::bfloat16_t>("bf16");
  register_kernels<sf::q8_t>("q8");
  register_kernels<sf::q4_t>("q4");
}

}  // namespace bench
