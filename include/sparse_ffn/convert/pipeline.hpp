// sparse_ffn — the whole MoEfication conversion as one call:
//
//   convert::moefy_result r = convert::moefy(dense, x, n, options);     // split, routers, report
//   blocked_ffn<bfloat16_t> model = convert::moefy_pack<bfloat16_t>(dense, r);
//
// Everything that computes runs on float weights (the report measures the conversion, not the
// storage dtype); moefy_pack only packs the permuted weights into T and installs the router rows.
//
// 0. pinned neurons (pin.hpp): the outsized neurons by output energy on the fit tokens fill the first P
//    blocks, which every token computes,
// 1. split the other neurons (random | kmeans | coactivation) into the remaining blocks of g,
// 2. pack (weights in T, Avg-K centroids computed),
// 3. fit / install the router: avg_k (mean keys, the default), similarity (mean normalised keys),
//    linear (fitted; installed as the Avg-K rows: selection only), mlp (fitted; returned in `r` and
//    used through forward_routed),
// 4. the quality report for `report_splits` (each evaluated on the held-out tokens: the last
//    `quality.held_out` share; routers are fitted on the tokens before them, the saved one included).
//    `report = false` skips it (the router is then fitted on all tokens).
// Activation sample for the co-activation split: the first `max_sample` tokens of x.
// Checked before any work: the activation matches the FFN, the router name, n >= 2, the report's
// densities and held-out share, and that every weight, bias and hidden state is finite.
#pragma once

#include <string>
#include <vector>

#include "../detail/finite.hpp"
#include "../dispatch.hpp"
#include "coactivation.hpp"
#include "pin.hpp"
#include "report.hpp"
#include "router_fit.hpp"
#include "split.hpp"

namespace sparse_ffn {
namespace convert {

struct moefy_options {
  index_t g = 64;
  activation_kind activation = activation_kind::relu;
  std::string split = "kmeans";  ///< random | kmeans | coactivation
  std::string router = "avg_k";  ///< avg_k | similarity | linear | mlp
  std::uint64_t seed = 0;
  int kmeans_iterations = 10;
  int kmeans_restarts = 3;
  index_t max_sample = 4096;                         ///< tokens used to build the co-activation graph
  std::vector<std::string> report_splits{"random"};  ///< splits reported besides the chosen one
  bool report = true;                                ///< run the quality report at all
  quality_options quality;                           ///< densities, held-out share, router training
  pin_options pin;                                   ///< pinned neurons (pin.hpp); ratio 0 = none
  progress_fn progress;                              ///< optional
};

struct moefy_result {
  index_t g = 0;
  std::vector<std::int32_t> permutation;
  std::vector<quality_row> report;
  std::vector<float> router_rows;  ///< [B × d] rows for the Avg-K selector (empty: the mean keys)
  std::vector<float> router_bias;  ///< [B] (empty: none)
  bool has_mlp = false;
  mlp_router mlp;
  report_context context;  ///< g and the token counts: all tokens fit the router when report is off
  pin_result pinned;       ///< the pinned blocks (first `pinned.blocks` of the permutation's blocks)
};

/// Rejects NaN/Inf in the dense FFN's weights and biases and in the hidden states x [n × d_model],
/// naming the tensor and the index of the first one (nothing downstream is defined on them: the
/// k-means auction would not terminate and the report would divide NaN norms).
inline void check_finite(const dense_ffn<float>& dense, const float* x, index_t n) {
  using sparse_ffn::detail::require_finite;
  const std::int64_t F = dense.d_ff, d = dense.d_model;
  const std::pair<const char*, const std::vector<float>*> w[] = {{"W1", &dense.w1}, {"W2", &dense.w2},
                                                                 {"W3", &dense.w3}, {"b1", &dense.b1},
                                                                 {"b2", &dense.b2}, {"b3", &dense.b3}};
  const std::vector<std::int64_t> shapes[] = {{F, d}, {d, F}, {F, d}, {F}, {d}, {F}};
  for (int i = 0; i < 6; ++i)
    require_finite(w[i].second->data(), static_cast<index_t>(w[i].second->size()), w[i].first, shapes[i]);
  require_finite(x, sparse_ffn::detail::checked_mul(n, d, "hidden states"), "hidden states", {n, d});
}

/// A split by name (see moefy_options::split).
template <class Act>
std::vector<std::int32_t> make_split(const std::string& name, const dense_ffn<float>& dense, const float* x,
                                     index_t n, const moefy_options& o) {
  const index_t F = dense.d_ff;
  if (name == "random") return split_random(F, o.g, o.seed);
  if (name == "kmeans") {
    kmeans_options k;
    k.g = o.g;
    k.seed = o.seed;
    k.iterations = o.kmeans_iterations;
    k.restarts = o.kmeans_restarts;
    k.progress = o.progress;
    return split_kmeans(dense.w1.data(), F, dense.d_model, k);
  }
  if (name == "coactivation") {
    const index_t m = std::min(n, o.max_sample);
    const auto ident = pack<float>(dense.view(), pack_options{o.g, nullptr, nullptr, nullptr, false});
    if (o.progress) o.progress("activations", 0.0);
    const auto act = neuron_activations<Act>(ident, x, m);
    coactivation_options c;
    c.g = o.g;
    c.seed = o.seed;
    c.progress = o.progress;
    return split_coactivation(act.data(), m, F, c);
  }
  sparse_ffn::detail::fail(status::invalid_argument, "unknown split '", name,
                           "' (random, kmeans, coactivation)");
}

/// A split whose first pin.blocks blocks are the pinned neurons, the rest split by name.
template <class Act>
std::vector<std::int32_t> make_pinned_split(const std::string& name, const dense_ffn<float>& dense,
                                            const float* x, index_t n, const moefy_options& o,
                                            const pin_result& pin) {
  if (pin.blocks == 0) return make_split<Act>(name, dense, x, n, o);
  std::vector<std::int32_t> rest;
  const dense_ffn<float> sub = without_neurons(dense, pin.neurons, rest);
  const auto p = make_split<Act>(name, sub, x, n, o);
  std::vector<std::int32_t> perm(pin.neurons);
  for (std::int32_t j : p) perm.push_back(rest[static_cast<std::size_t>(j)]);
  return perm;
}

inline moefy_result moefy(const dense_ffn<float>& dense, const float* x, index_t n, const moefy_options& o) {
  sparse_ffn::detail::require(dense.gated() == activation_is_gated(o.activation), status::invalid_argument,
                              "activation '", activation_name(o.activation), "' does not match the FFN (",
                              dense.gated() ? "gated" : "not gated", ")");
  sparse_ffn::detail::require(
      o.router == "avg_k" || o.router == "similarity" || o.router == "linear" || o.router == "mlp",
      status::invalid_argument, "unknown router '", o.router, "' (avg_k, similarity, linear, mlp)");
  sparse_ffn::detail::require(n >= 2, status::invalid_shape,
                              "moefy needs at least 2 tokens of hidden states");
  sparse_ffn::detail::require_not_null(x, "hidden states");
  check_finite(dense, x, n);
  check_quality_options(o.quality);
  sparse_ffn::detail::require(o.g > 0 && dense.d_ff % o.g == 0, status::invalid_shape, "d_ff (", dense.d_ff,
                              ") is not divisible by block size g (", o.g, ")");
  check_pin_options(o.pin, dense.d_ff / o.g);
  moefy_result r;
  r.g = o.g;
  // With the report on, the router is fitted on the fit share only, exactly as the report fits the one
  // it scores: the saved router is the scored one, and never saw the held-out tokens.
  r.context.g = o.g;
  r.context.tokens = n;
  r.context.held_out = o.report ? o.quality.held_out : 0.0;
  r.context.held_out_tokens = o.report ? held_out_tokens(n, o.quality.held_out) : 0;
  r.context.fit_tokens = n - r.context.held_out_tokens;
  r.context.router_target = o.quality.train.target;
  const index_t n_fit = r.context.fit_tokens;
  dispatch_activation(o.activation, [&](auto a) {
    using Act = typename decltype(a)::type;
    if (o.pin.ratio > 0) {
      if (o.progress) o.progress("neuron energy", 0.0);
      r.pinned = choose_pinned(neuron_energy<Act>(dense, x, n_fit, o.g), o.g, o.pin);
    }
    r.context.pinned_blocks = r.pinned.blocks;
    r.context.hot_neurons = r.pinned.hot;
    r.context.pinned_share = r.pinned.pinned_share;
    r.context.max_energy_ratio = r.pinned.max_ratio;
    r.permutation = make_pinned_split<Act>(o.split, dense, x, n, o, r.pinned);
    pack_options po{o.g};
    po.permutation = r.permutation.data();
    po.pinned = r.pinned.blocks;
    const blocked_ffn<float> model = pack<float>(dense.view(), po);
    const index_t B = model.layout().num_blocks, d = dense.d_model;
    // The report's splits (the installed one first) and, in one dense pass for all of them, the dense
    // output and each split's block masses.
    std::vector<std::string> splits;
    std::vector<std::vector<std::int32_t>> other_perms;
    std::vector<float> y_dense;
    std::vector<std::vector<float>> masses;
    if (o.report) {
      splits.push_back(o.split);
      for (const auto& sp : o.report_splits)
        if (sp != o.split) splits.push_back(sp);
      std::vector<const std::vector<std::int32_t>*> perms{&r.permutation};
      other_perms.reserve(splits.size());
      for (std::size_t i = 1; i < splits.size(); ++i) {
        other_perms.push_back(make_pinned_split<Act>(splits[i], dense, x, n, o, r.pinned));
        perms.push_back(&other_perms.back());
      }
      // Unless a router learns the fit share's masses (the report's, or the installed one with target
      // mass), they are not read: the dense pass covers the held-out tokens only (rows [0, n_fit) stay
      // zero).
      const bool fit_share = o.quality.fit_routers || ((o.router == "linear" || o.router == "mlp") &&
                                                       o.quality.train.target == "mass");
      const index_t from = fit_share ? 0 : n_fit;
      if (o.progress) o.progress(fit_share ? "dense pass" : "dense pass (held-out tokens)", 0.0);
      dense_reference<Act>(dense.view(), o.g, perms, x + from * d, n - from, y_dense, masses);
      if (from > 0) {
        y_dense.insert(y_dense.begin(), static_cast<std::size_t>(from * d), 0.0f);
        for (auto& m : masses) m.insert(m.begin(), static_cast<std::size_t>(from * B), 0.0f);
      }
    }
    // The report first: the router it fits on the installed split is the one to install (same tokens,
    // same masses, same options), so it is not fitted twice.
    fitted_routers fitted;
    for (std::size_t i = 0; i < splits.size(); ++i) {
      const auto& perm = i == 0 ? r.permutation : other_perms[i - 1];
      const auto rows =
          evaluate_split<Act>(dense.view(), perm, o.g, x, n, splits[i], o.quality, r.pinned.blocks,
                              masses[i].data(), y_dense.data(), i == 0 ? &fitted : nullptr);
      r.report.insert(r.report.end(), rows.begin(), rows.end());
    }
    if (o.router != "avg_k") {
      const auto sim = similarity_rows(model.view());
      if (o.router == "similarity") {
        r.router_rows = sim;
      } else {
        if (o.progress && !fitted.fitted) o.progress("block masses", 0.0);
        // The fit share's masses: the first n_fit rows of the report's, or a dense pass of their own.
        const bool output_target = o.quality.train.target == "output";
        const auto mass = fitted.fitted   ? std::vector<float>()
                          : output_target ? block_output_norms<Act>(model, x, n_fit)
                          : o.report ? std::vector<float>(masses[0].begin(), masses[0].begin() + n_fit * B)
                                     : block_mass<Act>(model, x, n_fit);
        if (o.router == "linear") {
          const auto lin = fitted.fitted
                               ? fitted.linear
                               : fit_linear_router(x, mass.data(), n_fit, d, B, o.quality.train, sim.data());
          r.router_rows = lin.w;
          r.router_bias = lin.b;
        } else {
          r.mlp = fitted.fitted ? fitted.mlp
                                : fit_mlp_router(x, mass.data(), n_fit, d, B, o.quality.train, sim.data());
          r.has_mlp = true;
        }
      }
    }
  });
  return r;
}

/// The converted model in T: permuted weights, Avg-K centroids, and the router rows when the router
/// is similarity or linear (the MLP router stays in the result: save it with io::save_blocked).
template <class T>
blocked_ffn<T> moefy_pack(const dense_ffn<float>& dense, const moefy_result& r) {
  pack_options po{r.g};
  po.permutation = r.permutation.data();
  po.pinned = r.pinned.blocks;
  blocked_ffn<T> model = pack<T>(dense.view(), po);
  if (!r.router_rows.empty())
    model.set_centroids(r.router_rows.data(), r.router_bias.empty() ? nullptr : r.router_bias.data());
  return model;
}

}  // namespace convert
}  // namespace sparse_ffn
