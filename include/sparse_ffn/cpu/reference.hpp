// sparse_ffn — the CPU reference path: simple, correct, parallel over tokens (OpenMP when enabled).
//
// Per token: convert x to float, route (the policy's selector), then for each selected block and each
// of its g neurons: a = k_i·x + b1_i (and u = w3_i·x + b3_i), h = act(a[, u]), y += w_b·h·v_i; finally
// y += b2. Accumulation is in float. Each token is computed by one thread in a fixed order, so results
// are bit-identical for any thread count. All arguments are validated before any compute.
#pragma once

#include <algorithm>
#include <vector>

#include "../activation.hpp"
#include "../detail/blas1.hpp"
#include "../layout.hpp"
#include "../policy.hpp"
#include "../routing.hpp"
#include "checks.hpp"

namespace sparse_ffn {
namespace cpu {
namespace detail {

using namespace sparse_ffn::detail;

/// Core loop shared by route / forward / forward_routed. `args` null = use `given` routing table.
/// `y` null = route only. Templated on what the code depends on (not on G: a runtime bound here).
template <class T, class Sel, class Act, class Tx, class Ty>
void reference_run(const blocked_ffn_view<T>& w, index_t n, const Tx* x, Ty* y, const route_args* args,
                   const_routing_view given, routing_view* route_out, const forward_cache* cache) {
  const block_layout& l = w.layout;
  const index_t k = args ? args->k : given.k;
  const index_t d = l.d_model, g = l.g;

#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel if (n > 1)
#endif
  {
    std::vector<float> xf(static_cast<std::size_t>(l.ld), 0.0f), acc(static_cast<std::size_t>(d));
    std::vector<float> scratch(static_cast<std::size_t>(std::max<index_t>(Sel::scratch_floats(l), 1)));
    std::vector<block_index_t> iscratch, blocks(static_cast<std::size_t>(k));
    std::vector<float> weights(static_cast<std::size_t>(k), 1.0f);
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t t = 0; t < n; ++t) {
      const Tx* xt = x + t * d;
      for (index_t c = 0; c < d; ++c) xf[static_cast<std::size_t>(c)] = to_float(xt[c]);
      if (args) {
        Sel::template route_token<T, Act>(w, xf.data(), t, *args, scratch.data(), iscratch, blocks.data(),
                                          weights.data());
      } else {
        std::copy(given.blocks + t * k, given.blocks + (t + 1) * k, blocks.begin());
        if (given.weights) std::copy(given.weights + t * k, given.weights + (t + 1) * k, weights.begin());
      }
      if (route_out) {
        std::copy(blocks.begin(), blocks.end(), route_out->blocks + t * k);
        if (route_out->weights) std::copy(weights.begin(), weights.end(), route_out->weights + t * k);
      }
      if (cache && cache->blocks) std::copy(blocks.begin(), blocks.end(), cache->blocks + t * k);
      if (cache && cache->weights) std::copy(weights.begin(), weights.end(), cache->weights + t * k);
      if (cache && cache->logits)  // the learned gate's (check_cache_logits): its scores of routed blocks
        std::copy(scratch.begin() + l.pinned, scratch.begin() + l.num_blocks,
                  cache->logits + t * l.num_blocks + l.pinned);
      if (!y) continue;

      std::fill(acc.begin(), acc.end(), 0.0f);
      for (index_t j = 0; j < k; ++j) {
        const index_t b = blocks[static_cast<std::size_t>(j)];
        const float wb = weights[static_cast<std::size_t>(j)];
        for (index_t i = 0; i < g; ++i) {
          const index_t neuron = b * g + i;
          const float pre = dot(w.keys(b) + i * l.ld, xf.data(), d) + (w.b1 ? w.b1[neuron] : 0.0f);
          float up = 0.0f;
          if constexpr (Act::gated) up = dot(w.up(b) + i * l.ld, xf.data(), d) + (w.b3 ? w.b3[neuron] : 0.0f);
          if (cache && cache->pre) cache->pre[(t * k + j) * g + i] = pre;
          if (cache && cache->up) cache->up[(t * k + j) * g + i] = up;
          axpy(wb * activate<Act>(pre, up), w.values(b) + i * l.ld, acc.data(), d);
        }
      }
      Ty* yt = y + t * d;
      for (index_t c = 0; c < d; ++c)
        yt[c] = from_float<Ty>(acc[static_cast<std::size_t>(c)] + (w.b2 ? w.b2[c] : 0.0f));
    }
  }
}

}  // namespace detail

/// Reference routing: fills `out` (n × args.k) with each token's blocks and weights.
template <class Policy, class Tx>
void reference_route(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x,
                     const route_args& args, routing_view out) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, false, "the reference forward");
  Policy::selector::check(w, args, n);
  sparse_ffn::detail::check_x(w.layout, n, x);
  sparse_ffn::detail::check_routing_out(n, args.k, out);
  detail::reference_run<typename Policy::dtype, typename Policy::selector, typename Policy::activation, Tx,
                        float>(w, n, x, nullptr, &args, {}, &out, nullptr);
}

/// Reference forward with a given routing table (bring your own router).
template <class Policy, class Tx, class Ty>
void reference_forward_routed(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x,
                              Ty* y, const_routing_view routing, const forward_cache* cache = nullptr) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, false, "the reference forward");
  sparse_ffn::detail::check_io(w.layout, n, x, y);
  sparse_ffn::detail::check_routing(w.layout, n, routing);
  sparse_ffn::detail::check_cache(w.layout, n, routing.k, cache);
  sparse_ffn::detail::check_cache_logits<typename Policy::selector>(cache, false);
  detail::reference_run<typename Policy::dtype, typename Policy::selector, typename Policy::activation>(
      w, n, x, y, nullptr, routing, nullptr, cache);
}

/// Reference fused forward: route with the policy's selector, then compute.
template <class Policy, class Tx, class Ty>
void reference_forward(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
                       const route_args& args, const forward_cache* cache = nullptr) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, false, "the reference forward");
  Policy::selector::check(w, args, n);
  sparse_ffn::detail::check_io(w.layout, n, x, y);
  sparse_ffn::detail::check_cache(w.layout, n, args.k, cache);
  sparse_ffn::detail::check_cache_logits<typename Policy::selector>(cache, true);
  detail::reference_run<typename Policy::dtype, typename Policy::selector, typename Policy::activation>(
      w, n, x, y, &args, {}, nullptr, cache);
}

}  // namespace cpu
}  // namespace sparse_ffn
