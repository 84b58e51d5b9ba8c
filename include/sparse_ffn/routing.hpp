// sparse_ffn — routing tables: which k blocks each token uses, and with what weight.
//
// Selection and compute are separable. A selector fills a routing table (n × k block indices, best
// first, and optional float weights); `forward_routed` computes the FFN for any table, so callers can
// bring their own router. The fused `forward` does both and can hand the table back (forward_cache),
// together with the pre-activations of the selected neurons, for a backward pass.
#pragma once

#include <cstdint>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace sparse_ffn {

/// Runtime arguments of routing. Which fields a selector reads is listed on each field.
struct route_args {
  index_t k = 0;                          ///< blocks per token, 1 <= k <= B (all selectors)
  const token_id_t* token_ids = nullptr;  ///< hash: [n] token ids
  index_t vocab_size = 0;                 ///< hash: token ids must lie in [0, vocab_size)
  std::uint64_t seed = 0;                 ///< hash: selects the family of hash functions
  bool renormalize = false;               ///< learned_gate: weights / (sum of the top-k weights)
};

/// Mutable routing table (caller-owned memory): row t holds token t's k blocks, best first.
struct routing_view {
  index_t n = 0;
  index_t k = 0;
  block_index_t* blocks = nullptr;  ///< [n × k]
  float* weights = nullptr;         ///< [n × k]; may be null when the selector is unweighted
};

/// Read-only routing table, the input of `forward_routed`. Null weights = every weight is 1.
struct const_routing_view {
  index_t n = 0;
  index_t k = 0;
  const block_index_t* blocks = nullptr;  ///< [n × k], each row k distinct blocks in [0, B)
  const float* weights = nullptr;         ///< [n × k] or null

  const_routing_view() = default;
  const_routing_view(index_t n_, index_t k_, const block_index_t* b, const float* w)
      : n(n_), k(k_), blocks(b), weights(w) {}
  const_routing_view(const routing_view& r)  // NOLINT: a mutable table is readable
      : n(r.n), k(r.k), blocks(r.blocks), weights(r.weights) {}
};

/// Owning routing table.
struct routing_table {
  index_t n = 0, k = 0;
  std::vector<block_index_t> blocks;
  std::vector<float> weights;

  routing_table() = default;
  routing_table(index_t n_, index_t k_)
      : n(n_),
        k(k_),
        blocks(static_cast<std::size_t>(detail::checked_mul(n_, k_, "routing table"))),
        weights(static_cast<std::size_t>(n_ * k_)) {}
  routing_view view() { return {n, k, blocks.data(), weights.data()}; }
  const_routing_view cview() const { return {n, k, blocks.data(), weights.data()}; }
};

/// What a forward pass can save for backward. Every pointer is optional (null = not saved).
/// Pre-activations are float and in routing order: entry [t][j][i] belongs to neuron i of block
/// blocks[t][j].
struct forward_cache {
  block_index_t* blocks = nullptr;  ///< [n × k] routing table
  float* weights = nullptr;         ///< [n × k] block weights (1 for unweighted selectors)
  float* pre = nullptr;             ///< [n × k × g] a = k_i·x + b1_i
  float* up = nullptr;              ///< [n × k × g] u = w3_i·x + b3_i (gated FFNs only)
  /// [n × B] the learned gate's logits Wg_c·x + bg_c (optional; learned gate only): the fused forward
  /// writes columns [pinned, B) (pinned blocks have no logit), and the CPU backward then reads them
  /// instead of recomputing them (the same bits: the forward's kernels). forward_routed does not score,
  /// so it requires this to be null. The CUDA backward recomputes them either way.
  float* logits = nullptr;
};

}  // namespace sparse_ffn
