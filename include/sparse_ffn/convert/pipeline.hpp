// sparse_ffn — the whole MoEfication conversion as one call:
//
//   convert::moefy_result r;
//   blocked_ffn<bfloat16_t> model = convert::moefy<bfloat16_t>(dense, x, n, options, &r);
//
// 1. split the neurons (random | kmeans | coactivation) into blocks of g,
// 2. pack (weights in T, Avg-K centroids computed),
// 3. fit / install the router: avg_k (mean keys, the default), similarity (mean normalised keys),
//    linear (fitted; installed as the Avg-K rows: selection only), mlp (fitted; returned in `r` and
//    used through forward_routed),
// 4. the quality report for `report_splits` (each evaluated on the held-out tokens).
// Activation sample for the co-activation split: the first `max_sample` tokens of x.
#pragma once

#include <string>
#include <vector>

#include "../dispatch.hpp"
#include "coactivation.hpp"
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
  index_t max_sample = 4096;                         ///< tokens used to build the co-activation graph
  std::vector<std::string> report_splits{"random"};  ///< splits reported besides the chosen one
  quality_options quality;                           ///< densities, held-out share, router training
  progress_fn progress;                              ///< optional
};

struct moefy_result {
  std::vector<std::int32_t> permutation;
  std::vector<quality_row> report;
  bool has_mlp = false;
  mlp_router mlp;
};

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

template <class T>
blocked_ffn<T> moefy(const dense_ffn<float>& dense, const float* x, index_t n, const moefy_options& o,
                     moefy_result* result = nullptr) {
  sparse_ffn::detail::require(dense.gated() == activation_is_gated(o.activation), status::invalid_argument,
                              "activation '", activation_name(o.activation), "' does not match the FFN (",
                              dense.gated() ? "gated" : "not gated", ")");
  sparse_ffn::detail::require(
      o.router == "avg_k" || o.router == "similarity" || o.router == "linear" || o.router == "mlp",
      status::invalid_argument, "unknown router '", o.router, "' (avg_k, similarity, linear, mlp)");
  sparse_ffn::detail::require(n >= 2, status::invalid_shape,
                              "moefy needs at least 2 tokens of hidden states");
  moefy_result local;
  moefy_result& r = result ? *result : local;
  blocked_ffn<T> model;
  dispatch_activation(o.activation, [&](auto a) {
    using Act = typename decltype(a)::type;
    r.permutation = make_split<Act>(o.split, dense, x, n, o);
    pack_options po{o.g};
    po.permutation = r.permutation.data();
    model = pack<T>(dense.view(), po);
    const index_t B = model.layout().num_blocks, d = dense.d_model;
    if (o.router != "avg_k") {
      const auto sim = similarity_rows(model.view());
      if (o.router == "similarity") {
        model.set_centroids(sim.data());
      } else {
        const auto fmodel = pack<float>(dense.view(), po);
        if (o.progress) o.progress("block masses", 0.0);
        const auto mass = block_mass<Act>(fmodel, x, n);
        if (o.router == "linear") {
          const auto lin = fit_linear_router(x, mass.data(), n, d, B, o.quality.train, sim.data());
          model.set_centroids(lin.w.data(), lin.b.data());
        } else {
          r.mlp = fit_mlp_router(x, mass.data(), n, d, B, o.quality.train, sim.data());
          r.has_mlp = true;
        }
      }
    }
    std::vector<std::string> splits{o.split};
    for (const auto& s : o.report_splits)
      if (s != o.split) splits.push_back(s);
    r.report.clear();
    for (const auto& s : splits) {
      const auto perm = s == o.split ? r.permutation : make_split<Act>(s, dense, x, n, o);
      const auto rows = evaluate_split<Act>(dense.view(), perm, o.g, x, n, s, o.quality);
      r.report.insert(r.report.end(), rows.begin(), rows.end());
    }
  });
  return model;
}

}  // namespace convert
}  // namespace sparse_ffn
