// sparse_ffn — per-layer budgets: how many blocks each sparse FFN of a model computes.
//
// A uniform density wastes bytes: on all-MiniLM-L6-v2 the oracle's error at 25% of the blocks is 0.12
// on layer 0 and 0.42 on layer 3. Given each layer's measured error curve (relative output error on
// held-out tokens against k, e.g. from the quality report at several densities), `allocate_blocks`
// picks one k per layer that minimises the summed squared errors Σ_l w_l · e_l(k_l)² under a total
// budget of bytes Σ_l k_l · bytes_per_block_l ≤ budget. Squared relative errors add like independent
// perturbations of the layers' outputs (a first-order proxy for the model's error; weight a layer by
// w_l to say how much its output matters). Only measured k are chosen (no interpolation), every k is
// at least the layer's `min_k` (its pinned blocks, at least 1).
//
// The other way round, `allocate_blocks_for_error` finds the fewest bytes whose objective is at most a
// target (moefy --target-error E: the layers' root-mean-square error at most E, i.e. Σ e_l² <= L·E²).
//
// Exact: a multiple-choice knapsack solved by dynamic programming over the budget in units of the
// greatest common divisor of the block sizes (block bytes of real layers share large factors; the
// table is capped at 2^24 cells); deterministic: among equal objectives the smaller total wins.
//
// The objective is a proxy: layers' errors do not add on a real model (one layer's error changes what
// the next layer sees). `refine_allocation` takes the objective itself — a function the caller
// measures on the whole model with every layer sparse, e.g. 1 − the mean cosine of sentence embeddings
// on calibration text — and improves a starting allocation by local search: it moves `step` blocks from
// one layer to another (or adds them where the budget has room), keeps a move when the measured loss
// drops, and halves the step down to one block when no move helps. Every allocation it tries stays
// within the budget and the layers' bounds; it evaluates each allocation at most once.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "../error.hpp"
#include "../types.hpp"

namespace sparse_ffn {
namespace convert {

/// One layer's measured error curve.
struct layer_curve {
  std::vector<index_t> k;        ///< blocks computed (ascending, distinct, >= 1)
  std::vector<double> error;     ///< relative output error at each k (finite, >= 0)
  index_t min_k = 1;             ///< fewest blocks allowed (pinned blocks; >= 1)
  std::int64_t block_bytes = 1;  ///< bytes of one block (> 0)
  double weight = 1.0;           ///< w_l (finite, >= 0)
};

struct budget_result {
  std::vector<index_t> k;     ///< chosen k per layer
  std::vector<double> error;  ///< its error per layer
  std::int64_t bytes = 0;     ///< Σ k_l · block_bytes_l
  double objective = 0;       ///< Σ w_l e_l²
};

namespace detail {
/// The DP of the file comment. max_objective < 0: the least objective within `budget` bytes;
/// otherwise the fewest bytes (within `budget`) whose objective is <= max_objective.
inline budget_result allocate_blocks_impl(const std::vector<layer_curve>& layers, std::int64_t budget,
                                          double max_objective) {
  using sparse_ffn::detail::require;
  require(!layers.empty(), status::invalid_argument, "allocate_blocks needs at least one layer");
  require(budget >= 0, status::invalid_argument, "budget (", budget, ") must be >= 0");
  std::int64_t unit = 0, least = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const layer_curve& c = layers[l];
    require(!c.k.empty() && c.k.size() == c.error.size(), status::invalid_argument, "layer ", l,
            ": k and error must be non-empty and of the same length");
    require(c.block_bytes > 0, status::invalid_argument, "layer ", l, ": block_bytes must be > 0");
    require(c.min_k >= 1, status::invalid_argument, "layer ", l, ": min_k must be >= 1");
    require(std::isfinite(c.weight) && c.weight >= 0, status::invalid_argument, "layer ", l,
            ": weight must be finite and >= 0");
    bool any = false;
    for (std::size_t i = 0; i < c.k.size(); ++i) {
      require(c.k[i] >= 1 && (i == 0 || c.k[i] > c.k[i - 1]), status::invalid_argument, "layer ", l,
              ": k must be ascending, distinct and >= 1");
      require(std::isfinite(c.error[i]) && c.error[i] >= 0, status::invalid_argument, "layer ", l,
              ": error at k = ", c.k[i], " is not a finite number >= 0");
      require(c.k[i] <= std::numeric_limits<std::int64_t>::max() / c.block_bytes, status::size_overflow,
              "layer ", l, ": k × block_bytes overflows");
      any = any || c.k[i] >= c.min_k;
    }
    require(any, status::invalid_argument, "layer ", l, ": no measured k >= min_k (", c.min_k, ")");
    unit = std::gcd(unit, c.block_bytes);
    std::int64_t smallest = 0;
    for (index_t k : c.k)
      if (k >= c.min_k) {
        smallest = k * c.block_bytes;
        break;
      }
    least += smallest;
  }
  require(least <= budget, status::invalid_argument, "the budget (", budget,
          " bytes) is below the smallest allowed model (", least, " bytes)");
  const std::int64_t cells = budget / unit + 1;
  require(cells * static_cast<std::int64_t>(layers.size()) <= (std::int64_t{1} << 24),
          status::invalid_argument, "allocate_blocks: budget / gcd(block bytes) too fine (", cells,
          " cells per layer)");
  const double inf = std::numeric_limits<double>::infinity();
  const auto L = layers.size();
  const auto C = static_cast<std::size_t>(cells);
  // best[c] after layer l: least objective of layers 0..l using exactly c units; choice[l][c]: option.
  std::vector<double> best(C, inf), next(C);
  std::vector<std::vector<std::int32_t>> choice(L, std::vector<std::int32_t>(C, -1));
  best[0] = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const layer_curve& c = layers[l];
    std::fill(next.begin(), next.end(), inf);
    for (std::size_t i = 0; i < c.k.size(); ++i) {
      if (c.k[i] < c.min_k) continue;
      const auto cost = static_cast<std::size_t>(c.k[i] * (c.block_bytes / unit));
      const double v = c.weight * c.error[i] * c.error[i];
      for (std::size_t u = 0; u + cost < C; ++u) {
        if (best[u] == inf) continue;
        const double t = best[u] + v;
        if (t < next[u + cost]) {  // strict: the first (smallest) k wins a tie
          next[u + cost] = t;
          choice[l][u + cost] = static_cast<std::int32_t>(i);
        }
      }
    }
    best.swap(next);
  }
  std::size_t at = 0;
  if (max_objective < 0) {
    for (std::size_t u = 1; u < C; ++u)
      if (best[u] < best[at]) at = u;  // strict: the smaller total wins a tie
  } else {
    at = C;
    double least = inf;
    for (std::size_t u = 0; u < C; ++u) {
      least = std::min(least, best[u]);
      if (best[u] <= max_objective) {
        at = u;  // the first (fewest bytes) that reaches the target
        break;
      }
    }
    require(at < C, status::invalid_argument, "no choice of the measured k reaches the target (least Σ w·e² ",
            least, " > ", max_objective, ")");
  }
  budget_result r;
  r.objective = best[at];
  r.k.assign(L, 0);
  r.error.assign(L, 0.0);
  for (std::size_t l = L; l-- > 0;) {
    const layer_curve& c = layers[l];
    const auto i = static_cast<std::size_t>(choice[l][at]);
    r.k[l] = c.k[i];
    r.error[l] = c.error[i];
    r.bytes += c.k[i] * c.block_bytes;
    at -= static_cast<std::size_t>(c.k[i] * (c.block_bytes / unit));
  }
  return r;
}
}  // namespace detail

/// The best k per layer for at most `budget` bytes (see the file comment). Throws invalid_argument on
/// a malformed curve and when even the smallest allowed k of every layer exceeds the budget.
inline budget_result allocate_blocks(const std::vector<layer_curve>& layers, std::int64_t budget) {
  return detail::allocate_blocks_impl(layers, budget, -1.0);
}

/// The fewest bytes (at most `budget`) whose Σ_l w_l e_l(k_l)² is at most `max_objective` (>= 0); among
/// choices with those bytes, the least objective. Throws invalid_argument when no measured choice
/// within the budget reaches it (the message gives the least reachable objective).
inline budget_result allocate_blocks_for_error(const std::vector<layer_curve>& layers, double max_objective,
                                               std::int64_t budget) {
  sparse_ffn::detail::require(std::isfinite(max_objective) && max_objective >= 0, status::invalid_argument,
                              "the target objective (", max_objective, ") must be finite and >= 0");
  return detail::allocate_blocks_impl(layers, budget, max_objective);
}

/// A layer's bounds for `refine_allocation`.
struct layer_range {
  index_t min_k = 1;             ///< fewest blocks (pinned blocks; >= 1)
  index_t max_k = 1;             ///< most blocks (the layer's B; >= min_k)
  std::int64_t block_bytes = 1;  ///< bytes of one block (> 0)
};

struct refine_options {
  index_t step = 1;                    ///< first move size in blocks (>= 1), halved down to 1
  std::int64_t max_evaluations = 500;  ///< stop after this many calls of the loss (>= 1)
};

struct refine_result {
  std::vector<index_t> k;        ///< the best allocation found
  double loss = 0;               ///< its measured loss
  double start_loss = 0;         ///< the starting allocation's loss
  std::int64_t bytes = 0;        ///< Σ k_l · block_bytes_l
  std::int64_t evaluations = 0;  ///< calls of the loss (the start included)
  std::int64_t moves = 0;        ///< accepted moves
};

/// Local search on a measured loss (see the file comment). `loss(const std::vector<index_t>& k)` returns
/// a finite number, lower is better; it is called first on `start`, which must lie within the layers'
/// bounds and the budget. Moves are tried in a fixed order (for each receiving layer j, each giving
/// layer i ≠ j, then a pure addition to j), the first that lowers the loss is taken (ties keep the
/// current allocation), and a full pass without a gain halves the step; the result is deterministic for
/// a deterministic loss. Throws invalid_argument on bad bounds, a start out of bounds or over budget, or
/// a non-finite loss.
template <class Loss>
refine_result refine_allocation(const std::vector<layer_range>& layers, std::vector<index_t> start,
                                std::int64_t budget, Loss&& loss, const refine_options& opt = {}) {
  using sparse_ffn::detail::require;
  require(!layers.empty() && start.size() == layers.size(), status::invalid_argument,
          "refine_allocation: start has ", start.size(), " layers, the bounds ", layers.size(), " (>= 1)");
  require(opt.step >= 1 && opt.max_evaluations >= 1, status::invalid_argument,
          "refine_allocation: step and max_evaluations must be >= 1");
  std::int64_t bytes = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const layer_range& c = layers[l];
    require(c.min_k >= 1 && c.max_k >= c.min_k && c.block_bytes > 0, status::invalid_argument, "layer ", l,
            ": need 1 <= min_k <= max_k and block_bytes > 0");
    require(c.max_k <= std::numeric_limits<std::int64_t>::max() / c.block_bytes /
                           static_cast<std::int64_t>(layers.size()),
            status::size_overflow, "layer ", l, ": max_k × block_bytes overflows");
    require(start[l] >= c.min_k && start[l] <= c.max_k, status::invalid_argument, "layer ", l, ": start k ",
            start[l], " is outside [", c.min_k, ", ", c.max_k, "]");
    bytes += start[l] * c.block_bytes;
  }
  require(bytes <= budget, status::invalid_argument, "the start (", bytes, " bytes) is over the budget (",
          budget, " bytes)");
  std::set<std::vector<index_t>> seen;  // allocations measured
  refine_result r;
  auto measure = [&](const std::vector<index_t>& k) {
    const double v = static_cast<double>(loss(k));
    require(std::isfinite(v), status::invalid_argument, "refine_allocation: the loss is not finite");
    ++r.evaluations;
    seen.insert(k);
    return v;
  };
  r.k = std::move(start);
  r.bytes = bytes;
  r.loss = r.start_loss = measure(r.k);
  const std::size_t L = layers.size();
  for (index_t step = opt.step; step >= 1; step /= 2) {
    bool gained = true;
    while (gained && r.evaluations < opt.max_evaluations) {
      gained = false;
      for (std::size_t j = 0; j < L && r.evaluations < opt.max_evaluations; ++j)
        for (std::size_t i = 0; i <= L && r.evaluations < opt.max_evaluations; ++i) {
          if (i == j) continue;  // i == L: add to j without taking from another layer
          if (step > layers[j].max_k - r.k[j] || (i < L && step > r.k[i] - layers[i].min_k)) continue;
          std::vector<index_t> k = r.k;
          k[j] += step;
          std::int64_t b = r.bytes + step * layers[j].block_bytes;
          if (i < L) {
            k[i] -= step;
            b -= step * layers[i].block_bytes;
          }
          if (b > budget || seen.count(k)) continue;
          const double v = measure(k);
          if (v < r.loss) {
            r.k = std::move(k);
            r.loss = v;
            r.bytes = b;
            ++r.moves;
            gained = true;
          }
        }
    }
  }
  return r;
}

}  // namespace convert
}  // namespace sparse_ffn
