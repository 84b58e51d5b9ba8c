// sparse_ffn_bench — shared pieces: weight generation, model caches, the sparse benchmark template.
// See bench_main.cpp for the suite and its flags. bench_sparse.cpp.in, instantiated by CMake once per
// selector (one translation unit each keeps compile time bounded), registers the sparse benchmarks.
#pragma once

#include <benchmark/benchmark.h>

#include <sparse_ffn/sparse_ffn.hpp>

#include "bytes_touched.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif

namespace sf = sparse_ffn;

namespace bench {

/// Set from the command line in bench_main.cpp.
inline std::string g_act = "relu";
inline double g_l3_bytes = 36.0 * 1024 * 1024;
/// What each sparse forward is paired with (--sffn_pair): "none", "stream" (a plain read of the same
/// bytes after every iteration) or "all" (that, and the dense bf16 FFN of the same shape and batch).
inline std::string g_pair = "stream";
/// q8/q4 models' keys as key tiles (--sffn_key_tiles): "auto" (where the level has the tile kernel,
/// cpu::key_tile_kernel, and g is a multiple of 16) or "no" (rows, as before 2026-12-05).
inline std::string g_key_tiles = "auto";
/// q8/q4 models' value rows as value tiles (--sffn_value_tiles): "auto" (where the level has the tile
/// kernel, cpu::value_tile_kernel, g is a multiple of 32, and the activation is not ReLU or the batch is
/// at least k_relu_tiles_batch: a tile reads all its rows, the row pass skips those ReLU leaves at 0,
/// which at batch 1-8 costs more than the faster kernel saves (docs/benchmarks.md, stop 50); at batch
/// 64 tiles are faster with ReLU too, 1.6x on AMX CPUs, stop 55), "yes" (every batch) or "no" (rows).
inline std::string g_value_tiles = "auto";
inline constexpr sf::index_t k_relu_tiles_batch = 32;
/// Whether get_sparse tiles a q8/q4 model's values for a batch of n (g_value_tiles, activation g_act).
inline bool value_tiles_wanted(sf::index_t n) {
  return g_value_tiles == "yes" || (g_value_tiles == "auto" && (g_act != "relu" || n >= k_relu_tiles_batch));
}

// Paired measurements. This host's read bandwidth moves between regimes (34 or 50 GB/s, switching
// within a run), so a ratio between two benchmarks that ran seconds apart can compare two machines.
// Iterations of a sparse benchmark are therefore timed next to a plain read of the bytes they touched
// and, with --sffn_pair=all, next to the dense oneDNN bf16 FFN (the strongest dense baseline on the
// AVX512_BF16 CPUs measured here; none where oneDNN is absent or has no bf16 matmul): each ratio is a
// median of per-iteration ratios taken within milliseconds.
/// bench_stream.cpp: the number of BM_stream_read readers on this CPU, and a timed read of about
/// `bytes` bytes with reader r < stream_readers() on the OpenMP threads, each call continuing where
/// the last stopped in the 1 GiB buffer (cold lines). Returns the bytes read (0: none, bytes > 1 GiB);
/// *seconds: the wall time.
int stream_readers();
double paired_read(int r, double bytes, double* seconds);
/// bench_onednn.cpp (an empty function without oneDNN, or where its bf16 matmul cannot run): one dense
/// bf16 FFN forward of this shape and batch per call, on rotating prepacked weights.
std::function<void()> paired_dense(sf::index_t d, sf::index_t f, sf::index_t n);

/// Median of v (v is reordered); 0 for an empty v.
inline double median_of(std::vector<double>& v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

struct shape {
  sf::index_t d, f;
};
inline const shape k_shapes[] = {{768, 3072}, {4096, 11008}, {4096, 16384}};
inline const int k_block_sizes[] = {16, 32, 64, 128};
inline const int k_densities[] = {12, 25, 50};
inline const int k_batches[] = {1, 8, 64};

/// Number of weight copies so that copies * bytes >= 4 * L3 (at least 1).
inline int copies_for(double bytes) {
  return std::max(1, static_cast<int>(std::ceil(4.0 * g_l3_bytes / bytes)));
}

/// Memory the weight copies of one configuration may take (the machines have 24 GiB).
inline constexpr double k_copies_budget = 5.5 * 1024 * 1024 * 1024;

/// Copies of a sparse model so that the bytes the rotation *touches* are >= 4 * L3: a forward at
/// batch n and `density` reads about 1 - (1 - density)^n of the blocks (keys and values) plus the
/// selector rows, far less than the whole model at batch 1. Capped by k_copies_budget.
inline int sparse_copies_for(double model_bytes, double density, sf::index_t n) {
  const double frac = 1.0 - std::pow(1.0 - density, static_cast<double>(n));
  const int want = copies_for(std::max(frac, 0.01) * model_bytes);
  return std::max(1, std::min(want, static_cast<int>(k_copies_budget / model_bytes)));
}

/// Inputs cycled through by the sparse benchmarks, so that the selected blocks change every iteration.
inline constexpr int k_x_variants = 16;

/// Fast deterministic fill (normal-ish: sum of uniforms), scaled.
inline void fill(float* p, std::size_t n, std::uint64_t seed, float scale) {
#pragma omp parallel
  {
#if SPARSE_FFN_HAS_OPENMP
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int tid = 0, nth = 1;
#endif
    std::uint64_t s =
        seed * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(tid) * 0xbf58476d1ce4e5b9ull + 1;
    const std::size_t lo = n * tid / nth, hi = n * (tid + 1) / nth;
    for (std::size_t i = lo; i < hi; ++i) {
      float acc = 0;
      for (int r = 0; r < 3; ++r) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        acc += static_cast<float>(s >> 40) * (1.0f / 16777216.0f) - 0.5f;
      }
      p[i] = acc * 2.0f * scale;  // variance of the sum of 3 uniforms is 1/4
    }
  }
}

/// A dense float FFN as OpenBLAS and pack() read it: relu or silu, or gated (swiglu: w3, b3 too).
struct dense_model {
  sf::dense_ffn<float> ffn;
  dense_model(sf::index_t d, sf::index_t f, std::uint64_t seed, bool gated = false) : ffn(d, f, gated, true) {
    fill(ffn.w1.data(), ffn.w1.size(), seed, 1.0f / std::sqrt(float(d)));
    fill(ffn.w2.data(), ffn.w2.size(), seed + 1, 1.0f / std::sqrt(float(f)));
    fill(ffn.b1.data(), ffn.b1.size(), seed + 2, 0.1f);
    fill(ffn.b2.data(), ffn.b2.size(), seed + 3, 0.1f);
    if (gated) {
      fill(ffn.w3.data(), ffn.w3.size(), seed + 4, 1.0f / std::sqrt(float(d)));
      fill(ffn.b3.data(), ffn.b3.size(), seed + 5, 0.1f);
    }
  }
};

/// Copies of one dense model (>= 4x the L3 of weights), cached: shared by the dense forward and backward
/// OpenBLAS benchmarks.
struct dense_copies {
  std::vector<dense_model> copies;
};
inline std::shared_ptr<dense_copies> get_dense_copies(sf::index_t d, sf::index_t f, bool gated = false);

/// out[c] = sum over rows r < m of a[r * cols + c], rows in order (the dense backward's bias gradients).
inline void column_sums(const float* a, sf::index_t m, sf::index_t cols, float* out) {
#pragma omp parallel for schedule(static)
  for (sf::index_t c = 0; c < cols; ++c) {
    float s = 0;
    for (sf::index_t r = 0; r < m; ++r) s += a[r * cols + c];
    out[c] = s;
  }
}

/// Packed copies of one configuration (cached: the suite reuses them across batches/selectors).
template <class T>
struct sparse_models {
  std::vector<sf::blocked_ffn<T>> copies;
};

/// Weight sets built for earlier benchmarks, kept under a byte budget (least recently used first out)
/// so that switching selector or batch does not rebuild 0.5 GiB models.
struct model_cache {
  struct entry {
    std::string key;
    double bytes;
    std::shared_ptr<void> value;
  };
  std::vector<entry> entries;  // most recent last
  double budget = 6.0 * 1024 * 1024 * 1024;

  template <class V, class Make>
  std::shared_ptr<V> get(const std::string& key, double bytes, Make&& make) {
    for (std::size_t i = 0; i < entries.size(); ++i)
      if (entries[i].key == key) {
        entry e = entries[i];
        entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(i));
        entries.push_back(e);
        return std::static_pointer_cast<V>(e.value);
      }
    double used = bytes;
    for (const auto& e : entries) used += e.bytes;
    while (!entries.empty() && used > budget) {  // free before building the next
      used -= entries.front().bytes;
      entries.erase(entries.begin());
    }
    entries.push_back({key, bytes, std::shared_ptr<void>(make())});
    return std::static_pointer_cast<V>(entries.back().value);
  }
  /// Records that entry `key` now holds `bytes`.
  void resize(const std::string& key, double bytes) {
    for (auto& e : entries)
      if (e.key == key) e.bytes = bytes;
  }
};
inline model_cache g_models;

inline std::shared_ptr<dense_copies> get_dense_copies(sf::index_t d, sf::index_t f, bool gated) {
  const std::string key = "dense/" + std::to_string(d) + "x" + std::to_string(f) + (gated ? "/gated" : "");
  const double matrices = gated ? 3.0 : 2.0;
  const int copies = copies_for(matrices * double(d) * double(f) * 4);
  return g_models.get<dense_copies>(key, 2.0 * matrices * double(d) * double(f) * 4 * copies, [&] {
    auto* m = new dense_copies();
    for (int c = 0; c < copies; ++c)
      m->copies.emplace_back(d, f, 1000 + 17 * static_cast<std::uint64_t>(c), gated);
    return m;
  });
}

/// Bytes of a packed model's weights: 2 matrices of d_ff padded rows (3 gated; q8/q4: with scales).
template <class T>
double packed_bytes(sf::index_t d, sf::index_t f, bool gated = false) {
  return (gated ? 3.0 : 2.0) * double(f) * double(sf::padded_ld<T>(d)) * sizeof(T);
}

/// At least `copies` copies of one packed model in separate memory (caches cannot serve one copy's
/// bytes for another's; identical contents, so every copy routes an input alike and the bytes counted on
/// copy 0 hold for all). Packed once: packing q4 is slow. The cache keeps one entry per configuration
/// and grows it, so batch 8 and 64 reuse the copies made for batch 1 (batch n picks the value layout:
/// value_tiles_wanted).
template <class T>
std::shared_ptr<sparse_models<T>> get_sparse(sf::index_t d, sf::index_t f, int g, int copies,
                                             bool gated = false, sf::index_t n = 1) {
  bool value_tiles = false;
  if constexpr (sf::is_quantized<T>::value)
    value_tiles = value_tiles_wanted(n) && sf::cpu::value_tile_kernel<T>() && g % 32 == 0;
  const std::string key = std::to_string(d) + "x" + std::to_string(f) + "/" + sf::dtype_traits<T>::name +
                          "/" + std::to_string(g) + (gated ? "/gated" : "") + (value_tiles ? "/vt" : "");
  const double bytes = packed_bytes<T>(d, f, gated);
  auto m = g_models.get<sparse_models<T>>(key, bytes * copies, [] { return new sparse_models<T>(); });
  const sf::index_t B = f / g;
  std::vector<float> gate(static_cast<std::size_t>(B * d));
  fill(gate.data(), gate.size(), 99, 1.0f / std::sqrt(float(d)));
  if (m->copies.empty()) {
    dense_model dense(d, f, 1000, gated);
    sf::pack_options po;
    po.g = g;
    po.gate_w = gate.data();
    m->copies.push_back(sf::pack<T>(dense.ffn.view(), po));
    if constexpr (sf::is_quantized<T>::value) {
      if (g_key_tiles == "auto" && sf::cpu::key_tile_kernel<T>() && g % 16 == 0)
        m->copies.front().tile_keys();
      if (value_tiles) m->copies.front().tile_values();
    }
  }
  while (static_cast<int>(m->copies.size()) < copies) m->copies.push_back(m->copies.front());
  g_models.resize(key, bytes * static_cast<double>(m->copies.size()));
  return m;
}

inline std::vector<float> random_x(sf::index_t n, sf::index_t d, std::uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(n * d));
  fill(x.data(), x.size(), seed, 1.0f);
  return x;
}

// ---- sparse ---------------------------------------------------------------------------------------

template <class P>
void BM_sparse(benchmark::State& state, sf::index_t d, sf::index_t f, int density, sf::index_t n) {
  using T = typename P::dtype;
  constexpr int G = P::block_size;
  const sf::index_t B = f / G, k = std::max<sf::index_t>(1, (B * density + 50) / 100);
  const int copies = sparse_copies_for(packed_bytes<T>(d, f), double(k) / double(B), n);
  auto models = get_sparse<T>(d, f, G, copies, false, n);
  std::vector<std::vector<float>> xs;
  for (int v = 0; v < k_x_variants; ++v)
    xs.push_back(random_x(n, d, 7 + 131 * static_cast<std::uint64_t>(v)));
  std::vector<float> y(static_cast<std::size_t>(n * d));
  std::vector<sf::token_id_t> ids(static_cast<std::size_t>(n));
  for (sf::index_t t = 0; t < n; ++t) ids[static_cast<std::size_t>(t)] = (t * 7919 + 13) % 50000;
  sf::route_args args;
  args.k = k;
  args.token_ids = ids.data();
  args.vocab_size = 50000;
  sf::cpu::workspace ws;

  // Bytes touched: the mean over the inputs, from untimed runs with the forward cache (routing +
  // pre-activations).
  std::vector<sf::block_index_t> blocks(static_cast<std::size_t>(n * k));
  std::vector<float> pre(static_cast<std::size_t>(n * k * G));
  sf::forward_cache cache{blocks.data(), nullptr, pre.data(), nullptr};
  double touched = 0, bytes = 0;
  for (const auto& x : xs) {
    sf::cpu::forward<P>(models->copies[0].view(), n, x.data(), y.data(), args, &cache, &ws);
    double t = 0;
    bytes += bytes_touched<P>(models->copies[0].view(), n, k, blocks, pre, {}, &t) / k_x_variants;
    touched += t / k_x_variants;
  }

  // Iteration i reads copy i mod C with input (i + i / C) mod k_x_variants: the pair changes every time.
  // The forward is timed alone (manual time); the paired read (reader i mod R) and dense run follow it.
  const bool pair_stream = g_pair != "none", pair_dense = g_pair == "all";
  const int R = pair_stream ? stream_readers() : 0;
  const std::function<void()> dense = pair_dense ? paired_dense(d, f, n) : std::function<void()>();
  std::vector<std::vector<double>> read_ratio(static_cast<std::size_t>(R));  // forward rate / reader's rate
  std::vector<std::vector<double>> read_gbs(static_cast<std::size_t>(R));
  std::vector<double> dense_ratio, dense_ms;  // dense time / forward time, dense time
  std::size_t i = 0;
  const std::size_t C = static_cast<std::size_t>(copies);  // the first `copies` of the cached ones
  for (auto _ : state) {
    const auto w = models->copies[i % C].view();
    const auto& x = xs[(i + i / C) % k_x_variants];
    const auto t0 = std::chrono::steady_clock::now();
    sf::cpu::forward<P>(w, n, x.data(), y.data(), args, nullptr, &ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(t);
    if (R > 0) {
      const int r = static_cast<int>(i % static_cast<std::size_t>(R));
      double s = 0;
      const double got = paired_read(r, bytes, &s);
      if (got > 0 && s > 0) {
        read_ratio[static_cast<std::size_t>(r)].push_back((bytes / t) / (got / s));
        read_gbs[static_cast<std::size_t>(r)].push_back(got / s / 1e9);
      }
    }
    if (dense) {
      const auto t2 = std::chrono::steady_clock::now();
      dense();
      const double td = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
      dense_ratio.push_back(td / t);
      dense_ms.push_back(td * 1e3);
    }
    ++i;
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * bytes));
  state.counters["density"] = double(k) / double(B);
  state.counters["touched"] = touched;
  state.counters["copies"] = static_cast<double>(C);
  state.counters["touched_mb"] = bytes / 1e6;
  // % of stream, paired: the best reader (the largest median rate), and the forward's rate over its rate
  // (median over the iterations it followed).
  int best = -1;
  double best_gbs = 0;
  for (int r = 0; r < R; ++r) {
    const double g = median_of(read_gbs[static_cast<std::size_t>(r)]);
    if (g > best_gbs) best_gbs = g, best = r;
  }
  if (best >= 0) {
    state.counters["paired_stream_gbs"] = best_gbs;
    state.counters["paired_stream_pct"] = 100.0 * median_of(read_ratio[static_cast<std::size_t>(best)]);
  }
  if (!dense_ratio.empty()) {
    state.counters["paired_dense_ms"] = median_of(dense_ms);
    state.counters["paired_vs_dense"] = median_of(dense_ratio);
  }
}

template <class S, class T, class A>
void register_sparse(const char* sel, const char* dt) {
  for (const shape& s : k_shapes)
    for (int g : k_block_sizes)
      for (int p : k_densities)
        for (int n : k_batches) {
          const std::string name = std::string("BM_sparse_") + sel + "_" + dt + "/d:" + std::to_string(s.d) +
                                   "/dff:" + std::to_string(s.f) + "/g:" + std::to_string(g) +
                                   "/density:" + std::to_string(p) + "/batch:" + std::to_string(n);
          auto reg = [&](auto gc) {
            using P = sf::policy<decltype(gc)::value, S, T, A>;
            benchmark::RegisterBenchmark(name.c_str(), BM_sparse<P>, s.d, s.f, p, sf::index_t{n})
                ->Unit(benchmark::kMillisecond)
                ->UseManualTime();
          };
          sf::dispatch_block_size(g, reg);
        }
}

}  // namespace bench
