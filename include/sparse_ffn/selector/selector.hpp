// sparse_ffn — what every selector provides, and the runtime names of the selectors.
//
// A selector is a tag struct (see avg_k.hpp, hash.hpp, learned_gate.hpp, oracle.hpp) with
//   kind, name               runtime identity
//   scoring                  how it scores blocks (below); fast kernels dispatch on this, not on kind
//   uses_token_ids           reads route_args::token_ids (hash)
//   weighted                 produces non-unit block weights (learned gate)
//   check(view, args, n)     host validation of the model and routing arguments (throws sparse_ffn::error)
//   scratch_floats(layout)   floats of per-thread scratch `route_token` needs
//   route_token<T, Act>(...) the host reference routing of one token
// plus, by scoring family,
//   linear: linear_rows(view) [B × ld] rows, linear_bias(view) [B] or null, SPARSE_FFN_HD
//           linear_score(dot, bias), and weights(scores, B, blocks, k, args, out)
//   dense:  SPARSE_FFN_HD neuron_score(h): a block's score is the sum over its neurons
//   token:  route_token reads only the token id
// The SPARSE_FFN_HD helpers are the selector's math, shared by the CPU and CUDA kernels.
// Adding a selector: a new file here, a new selector_kind, a case in dispatch.hpp (docs/design.md).
//
// Pinned blocks (layout.hpp): blocks [0, P) with P = layout.pinned. Every selector puts them first in a
// token's row, in index order, and picks the other k - P among blocks [P, B) by its own rule, so
// k >= max(P, 1). Scoring selectors rank by ranking_score (a pinned block scores +Inf: it ties only
// with a routed +Inf and wins the tie by its lower index), which keeps one top-k order on the CPU and
// the GPU; pinned blocks get weight 1 and stay out of the learned gate's softmax.
#pragma once

#include <cmath>
#include <type_traits>

#include <vector>

#include "../config.hpp"
#include "../detail/blas1.hpp"
#include "../error.hpp"
#include "../layout.hpp"
#include "../routing.hpp"
#include "topk.hpp"

namespace sparse_ffn {

enum class selector_kind : int { avg_k = 0, hash, learned_gate, oracle };

/// How a selector scores blocks.
enum class scoring_kind : int {
  linear,  ///< score_b = row_b · x + bias_b, one (B × d) GEMV per token (avg_k, learned_gate)
  dense,   ///< score_b = sum over block b's neurons of neuron_score(h_i): needs every h (oracle)
  token,   ///< blocks from the token id alone (hash)
};

inline const char* selector_name(selector_kind s) noexcept {
  switch (s) {
    case selector_kind::avg_k: return "avg_k";
    case selector_kind::hash: return "hash";
    case selector_kind::learned_gate: return "learned_gate";
    case selector_kind::oracle: return "oracle";
  }
  return "?";
}

template <class S, class = void>
struct is_selector : std::false_type {};
template <class S>
struct is_selector<S, std::void_t<decltype(S::kind), decltype(S::uses_token_ids), decltype(S::weighted)>>
    : std::is_same<std::remove_cv_t<decltype(S::kind)>, selector_kind> {};

namespace detail {

/// A routing table's width: 1 <= k <= B.
inline void check_k(index_t k, index_t num_blocks) {
  require(k >= 1 && k <= num_blocks, status::invalid_argument, "k (", k,
          ") must be in [1, B] where B = d_ff / g = ", num_blocks);
}

/// Checks shared by every selector: max(1, P) <= k <= B (P = pinned blocks, which k counts).
inline void check_k(index_t k, const block_layout& l) {
  check_k(k, l.num_blocks);
  require(k >= l.pinned, status::invalid_argument, "k (", k, ") must be >= the model's pinned blocks (",
          l.pinned, "): k counts them, every token computes them");
}

}  // namespace detail

/// The score block b ranks by: +Inf for a pinned block (b < pinned), which then ranks before every
/// routed block (see the file comment), else the selector's own score.
SPARSE_FFN_HD float ranking_score(float score, index_t b, index_t pinned) {
  return b < pinned ? INFINITY : score;
}

namespace detail {

/// Host reference routing of one token for a linear-scoring selector: scores, top-k, weights.
template <class Sel, class T>
void route_linear_token(const blocked_ffn_view<T>& w, const float* x, const route_args& a, float* scores,
                        std::vector<block_index_t>& iscratch, block_index_t* blocks, float* weights) {
  const block_layout& l = w.layout;
  const T* rows = Sel::linear_rows(w);
  const float* bias = Sel::linear_bias(w);
  for (index_t b = 0; b < l.num_blocks; ++b)
    scores[b] = ranking_score(Sel::linear_score(dot(rows + b * l.ld, x, l.d_model), bias ? bias[b] : 0.0f), b,
                              l.pinned);
  topk(scores, l.num_blocks, a.k, blocks, iscratch);
  if (weights) Sel::weights(scores, l.num_blocks, l.pinned, blocks, a.k, a, weights);
}

}  // namespace detail
}  // namespace sparse_ffn
