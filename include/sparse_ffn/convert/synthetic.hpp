// sparse_ffn — a synthetic ReLU FFN with planted block structure, for tests and examples.
//
// The input space is split into `groups` disjoint subspaces of d_model / groups dimensions. Group j has
// a direction u_j in its subspace; its `per_group` neurons have keys normalise(u_j + 0.5·noise) (noise
// in the same subspace) and bias −`bias`, so they fire together when a token has energy along u_j.
// Each token activates `active` random groups with amplitudes in [1, 2], plus small noise everywhere.
// Neurons are shuffled, so the groups are hidden: `group[i]` is the planted group of neuron i.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "../pack.hpp"
#include "split.hpp"

namespace sparse_ffn {
namespace convert {

struct planted_ffn {
  dense_ffn<float> dense;           ///< ReLU FFN, no W3, with biases
  std::vector<std::int32_t> group;  ///< [d_ff] planted group of each neuron
  std::vector<float> x;             ///< [n × d_model] hidden states
};

namespace detail {
/// Deterministic standard normal from (seed, counter) (Box–Muller on two uniform draws).
inline double normal(std::uint64_t seed, std::uint64_t counter) {
  const double u1 = (double(uniform(seed, 2 * counter, 1ull << 53)) + 0.5) / double(1ull << 53);
  const double u2 = double(uniform(seed, 2 * counter + 1, 1ull << 53)) / double(1ull << 53);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
}  // namespace detail

inline planted_ffn make_planted_ffn(index_t d_model, index_t groups, index_t per_group, index_t n,
                                    index_t active, std::uint64_t seed, float noise = 0.25f,
                                    float bias = 0.3f) {
  sparse_ffn::detail::require(groups > 0 && d_model % groups == 0, status::invalid_shape,
                              "make_planted_ffn: d_model must be a multiple of groups");
  sparse_ffn::detail::require(active >= 1 && active <= groups, status::invalid_argument,
                              "make_planted_ffn: active must be in [1, groups]");
  const index_t sub = d_model / groups, F = groups * per_group;
  std::uint64_t ctr = 0;
  auto nrm = [&]() { return detail::normal(seed, ctr++); };
  std::vector<double> u(static_cast<std::size_t>(groups * sub));
  for (index_t j = 0; j < groups; ++j) {
    double s = 0;
    for (index_t c = 0; c < sub; ++c) s += std::pow(u[static_cast<std::size_t>(j * sub + c)] = nrm(), 2);
    for (index_t c = 0; c < sub; ++c) u[static_cast<std::size_t>(j * sub + c)] /= std::sqrt(s);
  }
  planted_ffn p;
  p.dense = dense_ffn<float>(d_model, F, false, true);
  p.group.resize(static_cast<std::size_t>(F));
  const auto order = detail::shuffled(F, seed ^ 0x5eedull);
  for (index_t i = 0; i < F; ++i) {
    const index_t j = order[static_cast<std::size_t>(i)] / per_group;  // planted group of neuron i
    p.group[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(j);
    std::vector<double> k(static_cast<std::size_t>(sub));
    double s = 0;
    for (index_t c = 0; c < sub; ++c)
      s += std::pow(k[static_cast<std::size_t>(c)] =
                        u[static_cast<std::size_t>(j * sub + c)] + 0.5 * nrm() / std::sqrt(double(sub)),
                    2);
    for (index_t c = 0; c < sub; ++c)
      p.dense.w1[static_cast<std::size_t>(i * d_model + j * sub + c)] =
          static_cast<float>(k[static_cast<std::size_t>(c)] / std::sqrt(s));
    p.dense.b1[static_cast<std::size_t>(i)] = -bias;
    for (index_t c = 0; c < d_model; ++c)
      p.dense.w2[static_cast<std::size_t>(c * F + i)] =
          static_cast<float>(nrm() / std::sqrt(double(per_group * active)));
  }
  for (index_t c = 0; c < d_model; ++c) p.dense.b2[static_cast<std::size_t>(c)] = 0.0f;
  p.x.assign(static_cast<std::size_t>(n * d_model), 0.0f);
  for (index_t t = 0; t < n; ++t) {
    float* xt = p.x.data() + t * d_model;
    for (index_t c = 0; c < d_model; ++c) xt[c] = static_cast<float>(noise * nrm());
    const auto pick = detail::shuffled(groups, seed + 7919 * static_cast<std::uint64_t>(t + 1));
    for (index_t a = 0; a < active; ++a) {
      const index_t j = pick[static_cast<std::size_t>(a)];
      const double amp = 1.0 + double(detail::uniform(seed, ctr++, 1000)) / 1000.0;
      for (index_t c = 0; c < sub; ++c)
        xt[j * sub + c] += static_cast<float>(
            amp * (u[static_cast<std::size_t>(j * sub + c)] + 0.3 * nrm() / std::sqrt(double(sub))));
    }
  }
  return p;
}

/// Purity of a split against planted groups: the share of neurons whose block's majority group is
/// their own group.
inline double split_purity(const std::vector<std::int32_t>& perm, const std::vector<std::int32_t>& group,
                           index_t g) {
  const auto F = static_cast<index_t>(perm.size());
  index_t agree = 0;
  for (index_t b = 0; b < F / g; ++b) {
    std::vector<index_t> count(group.size(), 0);
    index_t best = 0;
    for (index_t i = 0; i < g; ++i)
      best = std::max(best, ++count[static_cast<std::size_t>(
                                group[static_cast<std::size_t>(perm[static_cast<std::size_t>(b * g + i)])])]);
    agree += best;
  }
  return double(agree) / double(F);
}

}  // namespace convert
}  // namespace sparse_ffn
