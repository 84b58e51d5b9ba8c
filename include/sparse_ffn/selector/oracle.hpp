// sparse_ffn — the oracle ("ground truth") selector of MoEfication (Zhang et al., 2022).
//
// Computes every neuron's activation h_i = act(k_i·x + b1_i) (gated: act(a)·u), scores block b by the
// sum of |h_i| over its neurons, and keeps the top-k. For ReLU FFNs this is MoEfication's sum of
// positive activations. It costs a full dense key pass: it is the quality upper bound the other
// selectors are measured against, not a fast path. Weights are 1.
#pragma once

#include <cmath>
#include <vector>

#include "../activation.hpp"
#include "../detail/blas1.hpp"
#include "../layout.hpp"
#include "selector.hpp"
#include "topk.hpp"

namespace sparse_ffn {
namespace select {

struct oracle {
  static constexpr selector_kind kind = selector_kind::oracle;
  static constexpr const char* name = "oracle";
  static constexpr bool uses_token_ids = false;
  static constexpr bool weighted = false;
  static constexpr scoring_kind scoring = scoring_kind::dense;

  /// A neuron's contribution to its block's score.
  SPARSE_FFN_HD static float neuron_score(float h) { return ::fabsf(h); }

  template <class T>
  static void check(const blocked_ffn_view<T>& w, const route_args& a, index_t /*n*/) {
    detail::check_k(a.k, w.layout);
  }

  static index_t scratch_floats(const block_layout& l) { return l.num_blocks; }

  template <class T, class Act>
  static void route_token(const blocked_ffn_view<T>& w, const float* x, index_t /*token*/,
                          const route_args& a, float* scores, std::vector<block_index_t>& iscratch,
                          block_index_t* blocks, float* weights) {
    const block_layout& l = w.layout;
    for (index_t b = 0; b < l.num_blocks; ++b) {
      float s = 0.0f;
      for (index_t i = 0; i < l.g; ++i) {
        const index_t j = b * l.g + i;
        const float pre = detail::dot(w.keys(b) + i * l.ld, x, l.d_model) + (w.b1 ? w.b1[j] : 0.0f);
        float up = 0.0f;
        if constexpr (Act::gated)
          up = detail::dot(w.up(b) + i * l.ld, x, l.d_model) + (w.b3 ? w.b3[j] : 0.0f);
        s += neuron_score(activate<Act>(pre, up));
      }
      scores[b] = ranking_score(s, b, l.pinned);
    }
    topk(scores, l.num_blocks, a.k, blocks, iscratch);
    if (weights)
      for (index_t j = 0; j < a.k; ++j) weights[j] = 1.0f;
  }
};

}  // namespace select
}  // namespace sparse_ffn
