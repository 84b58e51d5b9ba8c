// sparse_ffn_bench — shared pieces: weight generation, model caches, the sparse benchmark template.
// See bench_main.cpp for the suite and its flags. bench_sparse.cpp.in, instantiated by CMake once per
// selector (one translation unit each keeps compile time bounded), registers the sparse benchmarks.
#pragma once

#include <benchmark/benchmark.h>

#include <sparse_ffn/sparse_ffn.hpp>

#include "bytes_touched.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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
/// and grows it, so batch 8 and 64 reuse the copies made for batch 1.
template <class T>
std::shared_ptr<sparse_models<T>> get_sparse(sf::index_t d, sf::index_t f, int g, int copies,
                                             bool gated = false) {
  const std::string key = std::to_string(d) + "x" + std::to_string(f) + "/" + sf::dtype_traits<T>::name +
                          "/" + std::to_string(g) + (gated ? "/gated" : "");
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
  auto models = get_sparse<T>(d, f, G, copies);
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
  std::size_t i = 0;
  const std::size_t C = static_cast<std::size_t>(copies);  // the first `copies` of the cached ones
  for (auto _ : state) {
    const auto w = models->copies[i % C].view();
    const auto& x = xs[(i + i / C) % k_x_variants];
    ++i;
    sf::cpu::forward<P>(w, n, x.data(), y.data(), args, nullptr, &ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * bytes));
  state.counters["density"] = double(k) / double(B);
  state.counters["touched"] = touched;
  state.counters["copies"] = static_cast<double>(C);
  state.counters["touched_mb"] = bytes / 1e6;
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
                ->UseRealTime();
          };
          sf::dispatch_block_size(g, reg);
        }
}

}  // namespace bench
