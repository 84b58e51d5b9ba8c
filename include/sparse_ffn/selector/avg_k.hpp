// sparse_ffn — Avg-K selector (Liu et al., EMNLP 2023).
//
// score_b = mean over the neurons i of block b of the pre-activation k_i·x + b1_i
//         = c_b·x + β_b,   c_b = mean of the block's keys, β_b = mean of its key biases
// (β_b = 0 for bias-free FFNs, where this is exactly x · mean(keys of b)). c_b and β_b are computed when
// the model is packed (blocked_ffn::compute_centroids); they are a [B × ld] matrix of T and [B] floats,
// so scoring costs one (B × d) GEMV: 1/g of the FFN's key bytes. Top-k by score; weights are 1.
// Gated FFNs score with the activated projection W1 (the "gate" of SwiGLU).
#pragma once

#include <vector>

#include "../detail/blas1.hpp"
#include "../layout.hpp"
#include "selector.hpp"
#include "topk.hpp"

namespace sparse_ffn {
namespace select {

struct avg_k {
  static constexpr selector_kind kind = selector_kind::avg_k;
  static constexpr const char* name = "avg_k";
  static constexpr bool uses_token_ids = false;
  static constexpr bool weighted = false;
  static constexpr scoring_kind scoring = scoring_kind::linear;

  /// Score of block b from the centroid dot product c_b·x and the centroid bias β_b.
  SPARSE_FFN_HD static float linear_score(float centroid_dot_x, float centroid_bias) {
    return centroid_dot_x + centroid_bias;
  }
  template <class T>
  static const T* linear_rows(const blocked_ffn_view<T>& w) {
    return w.centroids;
  }
  template <class T>
  static const float* linear_bias(const blocked_ffn_view<T>& w) {
    return w.centroid_bias;
  }
  /// Unweighted: every selected block has weight 1.
  static void weights(const float*, index_t, index_t, const block_index_t*, index_t k, const route_args&,
                      float* out) {
    for (index_t j = 0; j < k; ++j) out[j] = 1.0f;
  }

  template <class T>
  static void check(const blocked_ffn_view<T>& w, const route_args& a, index_t /*n*/) {
    detail::check_k(a.k, w.layout);
    detail::require(w.centroids != nullptr, status::invalid_argument,
                    "the avg_k selector needs centroids: pack with pack_options.centroids = true "
                    "or call blocked_ffn::compute_centroids()");
  }

  static index_t scratch_floats(const block_layout& l) { return l.num_blocks; }

  /// Host reference routing of one token: x is float [d_model].
  template <class T, class Act>
  static void route_token(const blocked_ffn_view<T>& w, const float* x, index_t /*token*/,
                          const route_args& a, float* scratch, std::vector<block_index_t>& iscratch,
                          block_index_t* blocks, float* weights) {
    detail::route_linear_token<avg_k>(w, x, a, scratch, iscratch, blocks, weights);
  }
};

}  // namespace select
}  // namespace sparse_ffn
