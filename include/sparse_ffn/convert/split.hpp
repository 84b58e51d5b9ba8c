// sparse_ffn — MoEfication splits (Zhang et al., ACL Findings 2022): a permutation of the d_ff neurons
// into B = d_ff / g equal blocks. The result feeds pack_options::permutation: packed position j holds
// neuron permutation[j]; block b is positions b·g … b·g + g − 1.
//
//   split_random(d_ff, g, seed)                    seeded shuffle (Fisher–Yates on splitmix64)
//   split_kmeans(W1, d_ff, d_model, {g, seed})     balanced k-means on the L2-normalised keys; every
//                                                  assignment step is an exactly balanced auction
//                                                  (detail/balanced_assign.hpp), not post-hoc trimming
//   split_coactivation(...)                        co-activation graph + METIS (coactivation.hpp)
//
// All are deterministic for a given seed (and, for k-means, independent of the thread count).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "../cpu/isa.hpp"
#include "../cpu/kernels/kernels.hpp"
#include "../detail/aligned_buffer.hpp"
#include "../error.hpp"
#include "../layout.hpp"
#include "../selector/hash.hpp"
#include "../types.hpp"
#include "detail/balanced_assign.hpp"

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif

namespace sparse_ffn {
namespace convert {

/// Progress callback: (what, fraction done in [0, 1]). Optional everywhere.
using progress_fn = std::function<void(const std::string&, double)>;

namespace detail {

/// The float level-1 loops of the ISA now active (cpu/kernels: vectorised for the running CPU even
/// in a build without -march; the portable loops of detail/blas1.hpp are compiled for the baseline).
/// Every converter loop takes its kernels from here.
inline const cpu::kernels::kernel_ops<float>& level1() {
  return cpu::kernels::ops_for<float>(cpu::active_isa());
}

inline void check_split(index_t d_ff, index_t g) {
  sparse_ffn::detail::require(d_ff > 0, status::invalid_shape, "d_ff must be positive (got ", d_ff, ")");
  sparse_ffn::detail::require(g > 0, status::invalid_argument, "block size g must be positive (got ", g, ")");
  sparse_ffn::detail::require(d_ff % g == 0, status::invalid_shape, "d_ff (", d_ff,
                              ") is not divisible by block size g (", g, ")");
  sparse_ffn::detail::require(d_ff <= 0x7fffffff, status::size_overflow, "d_ff must be < 2^31");
}

/// Deterministic uniform integer in [0, n) from (seed, counter), platform independent.
inline std::uint64_t uniform(std::uint64_t seed, std::uint64_t counter, std::uint64_t n) {
  return select::hash::mix(seed * 0x9e3779b97f4a7c15ull + select::hash::mix(counter)) % n;
}

/// Seeded Fisher–Yates shuffle of [0, n).
inline std::vector<std::int32_t> shuffled(index_t n, std::uint64_t seed) {
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  for (index_t i = n - 1; i > 0; --i)
    std::swap(p[static_cast<std::size_t>(i)],
              p[static_cast<std::size_t>(
                  uniform(seed, static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(i + 1)))]);
  return p;
}

}  // namespace detail

/// Random split: a seeded permutation.
inline std::vector<std::int32_t> split_random(index_t d_ff, index_t g, std::uint64_t seed) {
  detail::check_split(d_ff, g);
  return detail::shuffled(d_ff, seed);
}

struct kmeans_options {
  index_t g = 0;           ///< neurons per block
  std::uint64_t seed = 0;  ///< initial random balanced split (restart r > 0 derives its own)
  int iterations = 10;     ///< maximum assignment steps, >= 1 (stops early when nothing moves)
  int restarts = 3;        ///< independent seedings; the best (lowest within-block distance) is kept
  progress_fn progress;    ///< optional
};

namespace detail {

/// One balanced k-means run on normalised keys X [N × ld] from a seeded random balanced split: at most
/// `iterations` rounds of (centroids, balanced assignment). Returns the labels.
inline std::vector<std::int32_t> kmeans_once(const float* X, index_t N, index_t d_model, index_t ld,
                                             index_t g, std::uint64_t seed, int iterations,
                                             const progress_fn& progress) {
  const auto& ops = level1();
  const index_t R = ops.key_r;
  const index_t B = N / g;
  sparse_ffn::detail::aligned_buffer<float> C(B * ld);
  std::vector<const float*> cptr(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) cptr[static_cast<std::size_t>(b)] = C.data() + b * ld;
  std::vector<float> half_norm(static_cast<std::size_t>(B));

  // Start from a random balanced split: neuron init[j] goes to block j / g.
  std::vector<std::int32_t> label(static_cast<std::size_t>(N));
  {
    const auto init = shuffled(N, seed);
    for (index_t j = 0; j < N; ++j)
      label[static_cast<std::size_t>(init[static_cast<std::size_t>(j)])] = static_cast<std::int32_t>(j / g);
  }
  std::vector<float> value(static_cast<std::size_t>(N * B));
  for (int it = 0; it < iterations; ++it) {
    // Centroids: mean of each block's normalised keys (double accumulation, fixed order).
    std::vector<double> acc(static_cast<std::size_t>(B * d_model), 0.0);
    for (index_t i = 0; i < N; ++i) {
      double* a = acc.data() + label[static_cast<std::size_t>(i)] * d_model;
      for (index_t c = 0; c < d_model; ++c) a[c] += X[i * ld + c];
    }
    for (index_t b = 0; b < B; ++b) {
      double nn = 0;
      for (index_t c = 0; c < d_model; ++c) {
        const float v = static_cast<float>(acc[static_cast<std::size_t>(b * d_model + c)] / double(g));
        C[b * ld + c] = v;
        nn += double(v) * v;
      }
      half_norm[static_cast<std::size_t>(b)] = static_cast<float>(nn / 2);
    }
    // value[i][b] = x_i·c_b − |c_b|²/2: neurons are the "rows", centroids the "tokens" of the kernel.
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
    {
      sparse_ffn::detail::aligned_buffer<float> spill(B * R * cpu::kernels::k_max_width), dots(B * R);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
      for (index_t i0 = 0; i0 < N; i0 += R) {
        const int rr = static_cast<int>(std::min<index_t>(R, N - i0));
        ops.dots(cptr.data(), nullptr, nullptr, B, X + i0 * ld, rr, ld, ld, spill.data(), dots.data());
        for (index_t b = 0; b < B; ++b)
          for (int r = 0; r < rr; ++r)
            value[static_cast<std::size_t>((i0 + r) * B + b)] =
                dots[b * rr + r] - half_norm[static_cast<std::size_t>(b)];
      }
    }
    auto next = detail::balanced_assign(value.data(), N, B, g);
    const bool moved = next != label;
    label.swap(next);
    if (progress) progress("k-means", double(it + 1) / iterations);
    if (!moved) break;
  }
  return label;
}

}  // namespace detail

/// Balanced k-means on the L2-normalised keys (rows of W1 [d_ff × d_model]): MoEfication's parameter
/// clustering. Each run starts from a seeded random balanced split; each iteration recomputes the
/// centroids and reassigns every neuron with an exactly balanced auction maximising Σ x·c − |c|²/2
/// (i.e. minimising the within-block squared distance). Scores use the library's key micro-kernel.
/// The balance constraint makes local minima sticky (a block holding two half groups cannot be undone
/// by Lloyd steps), so `restarts` independent runs are made and the best one is kept: on the planted
/// test FFN one run lands in such a minimum for ~1% of seeds, three runs for none of 1000.
template <class T>
std::vector<std::int32_t> split_kmeans(const T* w1, index_t d_ff, index_t d_model, const kmeans_options& o) {
  static_assert(is_dtype<T>::value, "sparse_ffn: split_kmeans reads float, half_t or bfloat16_t keys");
  detail::check_split(d_ff, o.g);
  sparse_ffn::detail::require(d_model > 0, status::invalid_shape, "d_model must be positive");
  sparse_ffn::detail::require_not_null(w1, "W1");
  sparse_ffn::detail::require(o.iterations >= 1, status::invalid_argument, "iterations must be >= 1 (got ",
                              o.iterations, ")");
  sparse_ffn::detail::require(o.restarts >= 1, status::invalid_argument, "restarts must be >= 1 (got ",
                              o.restarts, ")");
  const index_t N = d_ff, B = d_ff / o.g, g = o.g, ld = padded_ld<float>(d_model);
  sparse_ffn::detail::checked_elements<float>(N, ld, "normalised keys");
  for (index_t i = 0; i < N * d_model; ++i)
    if (!std::isfinite(to_float(w1[i])))
      sparse_ffn::detail::fail(status::invalid_argument, "split_kmeans: W1[", i / d_model, ", ", i % d_model,
                               "] is not finite (", to_float(w1[i]), "); NaN and Inf are not accepted");

  // Normalised keys, padded rows (zero rows stay zero).
  sparse_ffn::detail::aligned_buffer<float> X(N * ld);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (index_t i = 0; i < N; ++i) {
    double s = 0;
    for (index_t c = 0; c < d_model; ++c)
      s += double(to_float(w1[i * d_model + c])) * to_float(w1[i * d_model + c]);
    const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
    for (index_t c = 0; c < d_model; ++c)
      X[i * ld + c] = static_cast<float>(to_float(w1[i * d_model + c]) * inv);
  }

  // Keep the restart with the smallest within-block squared distance Σ|x_i|² − g·Σ_b|c_b|², i.e. the
  // largest Σ_b |c_b|² (c_b = mean of block b's keys); ties keep the earlier restart.
  std::vector<std::int32_t> best;
  double best_score = -1;
  for (int r = 0; r < o.restarts; ++r) {
    progress_fn step;
    if (o.progress) step = [&](const std::string& what, double f) { o.progress(what, (r + f) / o.restarts); };
    auto label = detail::kmeans_once(X.data(), N, d_model, ld, g,
                                     r == 0 ? o.seed : select::hash::mix(o.seed + std::uint64_t(r)),
                                     o.iterations, step);
    std::vector<double> acc(static_cast<std::size_t>(B * d_model), 0.0);
    for (index_t i = 0; i < N; ++i) {
      double* a = acc.data() + label[static_cast<std::size_t>(i)] * d_model;
      for (index_t c = 0; c < d_model; ++c) a[c] += X[i * ld + c];
    }
    double score = 0;
    for (double v : acc) score += (v / double(g)) * (v / double(g));
    if (score > best_score) {
      best_score = score;
      best.swap(label);
    }
  }
  return detail::labels_to_permutation(best, B);
}

}  // namespace convert
}  // namespace sparse_ffn
