// sparse_ffn — exactly balanced assignment of N = B·g items to B bins of capacity g, maximising the
// total value Σ value[i][bin(i)], by the auction algorithm for the transportation problem (Bertsekas,
// "similar objects": bin b has g identical slots, each with its own price) with ε-scaling.
//
// Each unassigned item bids for its best bin (value minus the bin's lowest slot price), raising that
// slot's price by the margin over its second-best option plus ε, and evicts the slot's previous owner.
// At the end of the last phase every item's bin is within ε of its best choice at the final prices
// (ε-complementary slackness), so the total is within N·ε of the optimum. Deterministic: items bid in
// a fixed FIFO order and ties go to the lower bin index.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <vector>

#include "../../error.hpp"

namespace sparse_ffn {
namespace convert {
namespace detail {

/// labels[i] in [0, B) for N = B * g items; value is row-major N × B. Each bin gets exactly g items.
inline std::vector<std::int32_t> balanced_assign(const float* value, index_t N, index_t B, index_t g,
                                                 double eps_final = 1e-4) {
  sparse_ffn::detail::require(N == B * g && B > 0 && g > 0, status::invalid_shape,
                              "balanced_assign: N must equal B * g");
  std::vector<std::int32_t> label(static_cast<std::size_t>(N), -1);
  if (B == 1) {
    std::fill(label.begin(), label.end(), 0);
    return label;
  }
  // Per bin a min-heap of its g slots: (price, owner).
  struct slot {
    double price;
    std::int32_t owner;
  };
  std::vector<slot> heap(static_cast<std::size_t>(N), slot{0.0, -1});
  auto bin_heap = [&](index_t b) { return heap.data() + b * g; };
  auto sift_down = [&](slot* h) {
    index_t i = 0;
    for (;;) {
      index_t l = 2 * i + 1, r = l + 1, m = i;
      if (l < g && (h[l].price < h[m].price || (h[l].price == h[m].price && h[l].owner < h[m].owner))) m = l;
      if (r < g && (h[r].price < h[m].price || (h[r].price == h[m].price && h[r].owner < h[m].owner))) m = r;
      if (m == i) return;
      std::swap(h[i], h[m]);
      i = m;
    }
  };
  // A NaN or Inf value would make bids that evict each other forever: refuse them (the auction
  // terminates for every finite input: each phase raises prices by at least eps per bid).
  double vmin = std::numeric_limits<double>::infinity(), vmax = -vmin;
  for (index_t i = 0; i < N * B; ++i) {
    sparse_ffn::detail::require(std::isfinite(value[i]), status::invalid_argument, "balanced_assign: value[",
                                i / B, "][", i % B, "] is not finite (", value[i], ")");
    vmin = std::min<double>(vmin, value[i]);
    vmax = std::max<double>(vmax, value[i]);
  }
  const double range = std::max(vmax - vmin, 1e-12);
  std::deque<std::int32_t> queue;
  for (double eps = range / 4;; eps = std::max(eps / 8, eps_final * range)) {
    // New phase: everyone unassigned, prices kept.
    std::fill(label.begin(), label.end(), -1);
    for (auto& s : heap) s.owner = -1;
    queue.clear();
    for (index_t i = 0; i < N; ++i) queue.push_back(static_cast<std::int32_t>(i));
    while (!queue.empty()) {
      const std::int32_t i = queue.front();
      queue.pop_front();
      const float* v = value + static_cast<index_t>(i) * B;
      index_t b1 = 0;
      double v1 = -std::numeric_limits<double>::infinity(), v2 = v1;
      for (index_t b = 0; b < B; ++b) {
        const double net = v[b] - bin_heap(b)[0].price;
        if (net > v1) {
          v2 = v1;
          v1 = net;
          b1 = b;
        } else if (net > v2) {
          v2 = net;
        }
      }
      slot* h = bin_heap(b1);
      if (g > 1) {  // the bin's second-cheapest slot is another option
        const double second = std::min(h[1].price, g > 2 ? h[2].price : h[1].price);
        v2 = std::max(v2, v[b1] - second);
      }
      const double bid = h[0].price + (v1 - v2) + eps;
      if (h[0].owner >= 0) {
        label[static_cast<std::size_t>(h[0].owner)] = -1;
        queue.push_back(h[0].owner);
      }
      h[0] = slot{bid, i};
      label[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(b1);
      sift_down(h);
    }
    if (eps <= eps_final * range) break;
  }
  return label;
}

/// Permutation from balanced labels: bins in order, items ascending within a bin.
inline std::vector<std::int32_t> labels_to_permutation(const std::vector<std::int32_t>& label, index_t B) {
  std::vector<std::int32_t> perm;
  perm.reserve(label.size());
  std::vector<std::vector<std::int32_t>> members(static_cast<std::size_t>(B));
  for (std::size_t i = 0; i < label.size(); ++i)
    members[static_cast<std::size_t>(label[i])].push_back(static_cast<std::int32_t>(i));
  for (const auto& m : members) perm.insert(perm.end(), m.begin(), m.end());
  return perm;
}

}  // namespace detail
}  // namespace convert
}  // namespace sparse_ffn
