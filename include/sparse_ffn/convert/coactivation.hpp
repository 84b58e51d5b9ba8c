// sparse_ffn — MoEfication's co-activation split: neurons that fire together go to the same block.
//
// From a sample of activations A [n tokens × d_ff] (neuron i is active on token t when
// A[t][i] > threshold): count, for every pair of neurons, the tokens on which both are active (bit-
// packed AND + popcount); keep each neuron's `neighbors` strongest co-activations (symmetrised) as a
// weighted graph; partition it into B = d_ff / g parts with METIS (k-way, minimal imbalance); then move
// the fewest, least-connected neurons from oversized to undersized parts until every part has
// exactly g neurons (greedy by connectivity gain). Deterministic for a given seed.
//
// METIS is an optional dependency: define SPARSE_FFN_WITH_METIS and link libmetis (CMake:
// sparse_ffn::metis). Without it split_coactivation throws status::unsupported.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../error.hpp"
#include "split.hpp"

#if defined(SPARSE_FFN_WITH_METIS)
#include <metis.h>
#endif

namespace sparse_ffn {
namespace convert {

struct coactivation_options {
  index_t g = 0;           ///< neurons per block
  float threshold = 0.0f;  ///< a neuron is active when its activation is > threshold
  index_t neighbors = 32;  ///< strongest co-activations kept per neuron
  std::uint64_t seed = 0;  ///< METIS seed
  progress_fn progress;    ///< optional
};

/// Symmetric weighted graph in CSR form (what METIS takes).
struct coactivation_graph {
  std::vector<std::int64_t> xadj;    ///< d_ff + 1
  std::vector<std::int32_t> adjncy;  ///< neighbours
  std::vector<std::int32_t> weight;  ///< co-activation counts (>= 1)
};

/// Builds the top-`neighbors` co-activation graph from activations [n × d_ff] (row-major).
inline coactivation_graph build_coactivation_graph(const float* act, index_t n, index_t d_ff,
                                                   const coactivation_options& o) {
  sparse_ffn::detail::require_not_null(act, "activations");
  sparse_ffn::detail::require(n > 0, status::invalid_shape, "need at least one token of activations");
  sparse_ffn::detail::require(o.neighbors > 0, status::invalid_argument, "neighbors must be positive");
  const index_t words = (n + 63) / 64, K = std::min<index_t>(o.neighbors, d_ff - 1);
  sparse_ffn::detail::checked_elements<std::uint64_t>(d_ff, words, "co-activation bitmaps");
  std::vector<std::uint64_t> bits(static_cast<std::size_t>(d_ff * words), 0);
  for (index_t t = 0; t < n; ++t)
    for (index_t i = 0; i < d_ff; ++i)
      if (act[t * d_ff + i] > o.threshold)
        bits[static_cast<std::size_t>(i * words + t / 64)] |= std::uint64_t{1} << (t % 64);
  // Top-K neighbours per neuron by co-activation count (ties to the lower index).
  std::vector<std::int32_t> top(static_cast<std::size_t>(d_ff * std::max<index_t>(K, 1)), -1);
  std::vector<std::int32_t> topw(top.size(), 0);
  index_t done = 0;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
  {
    std::vector<std::int32_t> count(static_cast<std::size_t>(d_ff)), order(static_cast<std::size_t>(d_ff));
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(dynamic, 16)
#endif
    for (index_t i = 0; i < d_ff; ++i) {
      const std::uint64_t* bi = bits.data() + i * words;
      for (index_t j = 0; j < d_ff; ++j) {
        const std::uint64_t* bj = bits.data() + j * words;
        std::int32_t c = 0;
        for (index_t w = 0; w < words; ++w)
          c += static_cast<std::int32_t>(__builtin_popcountll(bi[w] & bj[w]));
        count[static_cast<std::size_t>(j)] = j == i ? -1 : c;
      }
      std::iota(order.begin(), order.end(), 0);
      auto better = [&](std::int32_t a, std::int32_t b) {
        return count[static_cast<std::size_t>(a)] > count[static_cast<std::size_t>(b)] ||
               (count[static_cast<std::size_t>(a)] == count[static_cast<std::size_t>(b)] && a < b);
      };
      std::partial_sort(order.begin(), order.begin() + K, order.end(), better);
      for (index_t q = 0; q < K; ++q) {
        const std::int32_t j = order[static_cast<std::size_t>(q)];
        if (count[static_cast<std::size_t>(j)] <= 0) break;
        top[static_cast<std::size_t>(i * K + q)] = j;
        topw[static_cast<std::size_t>(i * K + q)] = count[static_cast<std::size_t>(j)];
      }
      if (o.progress) {
#if SPARSE_FFN_HAS_OPENMP
#pragma omp atomic
#endif
        ++done;
        if (SPARSE_FFN_HAS_OPENMP == 0 || (i % 1024) == 0)
          o.progress("co-activation graph", double(done) / double(d_ff));
      }
    }
  }
  // Symmetrise: an edge exists if either side keeps it; weight = the co-activation count.
  std::vector<std::vector<std::pair<std::int32_t, std::int32_t>>> adj(static_cast<std::size_t>(d_ff));
  for (index_t i = 0; i < d_ff; ++i)
    for (index_t q = 0; q < K; ++q) {
      const std::int32_t j = top[static_cast<std::size_t>(i * K + q)];
      if (j < 0) break;
      const std::int32_t w = topw[static_cast<std::size_t>(i * K + q)];
      adj[static_cast<std::size_t>(i)].push_back({j, w});
      adj[static_cast<std::size_t>(j)].push_back({static_cast<std::int32_t>(i), w});
    }
  coactivation_graph gr;
  gr.xadj.push_back(0);
  for (auto& a : adj) {
    std::sort(a.begin(), a.end());
    a.erase(std::unique(a.begin(), a.end()), a.end());
    for (const auto& e : a) {
      gr.adjncy.push_back(e.first);
      gr.weight.push_back(e.second);
    }
    gr.xadj.push_back(static_cast<std::int64_t>(gr.adjncy.size()));
  }
  return gr;
}

namespace detail {

/// Moves neurons from parts with more than g members to parts with fewer until all have exactly g:
/// repeatedly the move with the largest connectivity gain (weight to the target part minus weight to
/// the own part), ties to lower indices.
inline void rebalance(const coactivation_graph& gr, std::vector<std::int32_t>& part, index_t B, index_t g) {
  const auto N = static_cast<index_t>(part.size());
  std::vector<index_t> size(static_cast<std::size_t>(B), 0);
  for (auto p : part) ++size[static_cast<std::size_t>(p)];
  std::vector<double> link(static_cast<std::size_t>(B));
  for (;;) {
    index_t over = -1;
    for (index_t b = 0; b < B && over < 0; ++b)
      if (size[static_cast<std::size_t>(b)] > g) over = b;
    if (over < 0) return;
    double best_gain = -1e300;
    index_t best_i = -1, best_to = -1;
    for (index_t i = 0; i < N; ++i) {
      if (part[static_cast<std::size_t>(i)] != over) continue;
      std::fill(link.begin(), link.end(), 0.0);
      for (std::int64_t e = gr.xadj[static_cast<std::size_t>(i)];
           e < gr.xadj[static_cast<std::size_t>(i + 1)]; ++e)
        link[static_cast<std::size_t>(
            part[static_cast<std::size_t>(gr.adjncy[static_cast<std::size_t>(e)])])] +=
            gr.weight[static_cast<std::size_t>(e)];
      for (index_t b = 0; b < B; ++b) {
        if (size[static_cast<std::size_t>(b)] >= g) continue;
        const double gain = link[static_cast<std::size_t>(b)] - link[static_cast<std::size_t>(over)];
        if (gain > best_gain) {
          best_gain = gain;
          best_i = i;
          best_to = b;
        }
      }
    }
    part[static_cast<std::size_t>(best_i)] = static_cast<std::int32_t>(best_to);
    --size[static_cast<std::size_t>(over)];
    ++size[static_cast<std::size_t>(best_to)];
  }
}

}  // namespace detail

/// Co-activation split from activations [n × d_ff] (row-major). Returns the neuron permutation.
inline std::vector<std::int32_t> split_coactivation(const float* act, index_t n, index_t d_ff,
                                                    const coactivation_options& o) {
  detail::check_split(d_ff, o.g);
  const index_t B = d_ff / o.g;
#if !defined(SPARSE_FFN_WITH_METIS)
  (void)act;
  (void)n;
  (void)B;
  sparse_ffn::detail::fail(status::unsupported,
                           "split_coactivation needs METIS: this build has no SPARSE_FFN_WITH_METIS (install "
                           "libmetis-dev and link sparse_ffn::metis)");
#else
  if (B == 1) return split_random(d_ff, o.g, 0);
  const coactivation_graph gr = build_coactivation_graph(act, n, d_ff, o);
  if (o.progress) o.progress("METIS partition", 0.0);
  idx_t nvtxs = static_cast<idx_t>(d_ff), ncon = 1, nparts = static_cast<idx_t>(B), objval = 0;
  std::vector<idx_t> xadj(gr.xadj.begin(), gr.xadj.end()), adjncy(gr.adjncy.begin(), gr.adjncy.end()),
      adjwgt(gr.weight.begin(), gr.weight.end()), part(static_cast<std::size_t>(d_ff), 0);
  sparse_ffn::detail::require(gr.adjncy.size() < 0x7fffffff, status::size_overflow,
                              "co-activation graph too large for METIS");
  idx_t options[METIS_NOPTIONS];
  METIS_SetDefaultOptions(options);
  options[METIS_OPTION_SEED] = static_cast<idx_t>(o.seed & 0x7fffffff);
  options[METIS_OPTION_UFACTOR] = 1;  // 0.1% imbalance; rebalanced exactly below
  options[METIS_OPTION_NUMBERING] = 0;
  const int rc = METIS_PartGraphKway(&nvtxs, &ncon, xadj.data(), adjncy.empty() ? nullptr : adjncy.data(),
                                     nullptr, nullptr, adjwgt.empty() ? nullptr : adjwgt.data(), &nparts,
                                     nullptr, nullptr, options, &objval, part.data());
  sparse_ffn::detail::require(rc == METIS_OK, status::invalid_argument, "METIS_PartGraphKway failed (code ",
                              rc, ")");
  std::vector<std::int32_t> labels(part.begin(), part.end());
  detail::rebalance(gr, labels, B, o.g);
  if (o.progress) o.progress("METIS partition", 1.0);
  return detail::labels_to_permutation(labels, B);
#endif
}

}  // namespace convert
}  // namespace sparse_ffn
