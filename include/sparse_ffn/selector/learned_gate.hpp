// sparse_ffn — learned gate (Switch Transformer / GShard style linear router).
//
// logits_b = Wg_b·x + bg_b (Wg: [B × d_model] stored with the model, bg: [B] optional);
// p = softmax(logits); the top-k blocks by logit (= by p) are used and block b's output is scaled by
//   w_b = p_b                          (route_args::renormalize = false, Switch; weights sum to <= 1)
//   w_b = p_b / sum over top-k of p    (renormalize = true, GShard top-2; weights sum to 1)
// The softmax is computed stably (max subtracted). Pinned blocks (layout.hpp) have weight 1; the softmax
// and the renormalisation run over the other B - P blocks. y = b2 + sum_b w_b · V_bᵀ act(K_b x + b1_b).
#pragma once

#include <cmath>
#include <vector>

#include "../detail/blas1.hpp"
#include "../layout.hpp"
#include "selector.hpp"
#include "topk.hpp"

namespace sparse_ffn {
namespace select {

struct learned_gate {
  static constexpr selector_kind kind = selector_kind::learned_gate;
  static constexpr const char* name = "learned_gate";
  static constexpr bool uses_token_ids = false;
  static constexpr bool weighted = true;
  static constexpr scoring_kind scoring = scoring_kind::linear;

  /// logit_b = Wg_b·x + bg_b.
  SPARSE_FFN_HD static float linear_score(float gate_dot_x, float gate_bias) {
    return gate_dot_x + gate_bias;
  }
  template <class T>
  static const T* linear_rows(const blocked_ffn_view<T>& w) {
    return w.gate_w;
  }
  template <class T>
  static const float* linear_bias(const blocked_ffn_view<T>& w) {
    return w.gate_b;
  }

  /// exp(logit - max_logit): the unnormalised softmax term (host and device).
  SPARSE_FFN_HD static float softmax_term(float logit, float max_logit) { return ::expf(logit - max_logit); }

  /// Block weight from its softmax term, the sum over all B terms and the sum over the top-k terms.
  SPARSE_FFN_HD static float weight(float term, float sum_all, float sum_topk, bool renormalize) {
    return term / (renormalize ? sum_topk : sum_all);
  }

  template <class T>
  static void check(const blocked_ffn_view<T>& w, const route_args& a, index_t /*n*/) {
    detail::check_k(a.k, w.layout);
    detail::require(w.gate_w != nullptr, status::invalid_argument,
                    "the learned_gate selector needs gate weights: pack_options.gate_w or "
                    "blocked_ffn::set_gate()");
  }

  static index_t scratch_floats(const block_layout& l) { return l.num_blocks; }

  /// Weights of the selected blocks (best first: the `pinned` blocks, then the routed ones) from the
  /// B logits: 1 for a pinned block; the softmax over the routed blocks [pinned, B) otherwise.
  static void weights(const float* logits, index_t num_blocks, index_t pinned, const block_index_t* blocks,
                      index_t k, const route_args& a, float* out) {
    for (index_t j = 0; j < pinned; ++j) out[j] = 1.0f;
    if (k == pinned) return;
    const float max_logit = logits[blocks[pinned]];  // best routed (NaN only if every logit is NaN)
    float sum_all = 0.0f, sum_topk = 0.0f;
    for (index_t b = pinned; b < num_blocks; ++b) sum_all += softmax_term(logits[b], max_logit);
    for (index_t j = pinned; j < k; ++j) sum_topk += softmax_term(logits[blocks[j]], max_logit);
    for (index_t j = pinned; j < k; ++j)
      out[j] = weight(softmax_term(logits[blocks[j]], max_logit), sum_all, sum_topk, a.renormalize);
  }

  template <class T, class Act>
  static void route_token(const blocked_ffn_view<T>& w, const float* x, index_t /*token*/,
                          const route_args& a, float* logits, std::vector<block_index_t>& iscratch,
                          block_index_t* blocks, float* weights_out) {
    detail::route_linear_token<learned_gate>(w, x, a, logits, iscratch, blocks, weights_out);
  }
};

}  // namespace select
}  // namespace sparse_ffn
