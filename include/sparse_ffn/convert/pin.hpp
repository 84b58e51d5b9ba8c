// sparse_ffn — pinned (always-on) neurons: the converter's rule for a layer's outsized neurons.
//
// Pretrained Transformers have a few "massive activation" neurons: on all-MiniLM-L6-v2 one neuron of
// layer 0 carries 94% of the FFN output's energy. A block selector that scores whole blocks (Avg-K
// averages g pre-activations) drops it at small k and the layer's output is lost. The converter finds
// such neurons and puts them in pinned blocks that every token computes (layout.hpp), outside the top-k.
//
// Rule. The output energy of neuron i on the calibration tokens is
//   E_i = ‖v_i‖² · Σ_t h_i(t)²      (v_i: its value, the W2 column; h_i: its activation, gated product
//                                    for SwiGLU/GeGLU)
// (its contribution's squared norm summed over the tokens). Neuron i is hot when
//   E_i ≥ ratio · mean_j E_j        (pin_options::ratio, default 64; 0 turns pinning off).
// P = ceil(hot / g) blocks are pinned, at most pin_options::max_blocks (default: max(1, B / 8)); they
// hold the P·g neurons of highest energy, hottest first (the hot ones and, filling the last block, the
// next ones). The split then groups the other d_ff − P·g neurons into the remaining B − P blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../pack.hpp"
#include "router_fit.hpp"

namespace sparse_ffn {
namespace convert {

struct pin_options {
  double ratio = 64.0;      ///< hot: energy ≥ ratio × mean energy; 0 = never pin
  index_t max_blocks = -1;  ///< at most this many pinned blocks; -1 = max(1, B / 8)
};

struct pin_result {
  index_t blocks = 0;                 ///< P pinned blocks
  index_t hot = 0;                    ///< neurons over the threshold (<= P·g)
  std::vector<std::int32_t> neurons;  ///< the P·g pinned neurons (original indices), hottest first
  std::vector<double> share;          ///< each pinned neuron's share of Σ_j E_j
  double pinned_share = 0;            ///< the pinned neurons' share together
  double max_ratio = 0;               ///< largest E_i / mean E (whether pinned or not)
};

/// E_i for every neuron (original order) on tokens x [n × d], in chunks of tokens.
template <class Act>
std::vector<double> neuron_energy(const dense_ffn<float>& dense, const float* x, index_t n, index_t g) {
  const index_t F = dense.d_ff, d = dense.d_model;
  const auto ident = pack<float>(dense.view(), pack_options{g, nullptr, nullptr, nullptr, false});
  std::vector<double> e(static_cast<std::size_t>(F), 0.0);
  const index_t chunk = std::max<index_t>(1, (index_t{1} << 22) / F);
  for (index_t t0 = 0; t0 < n; t0 += chunk) {
    const index_t m = std::min(chunk, n - t0);
    const auto h = neuron_activations<Act>(ident, x + t0 * d, m);
    // Each neuron's sum in token order (deterministic); a thread owns a range of neurons and walks
    // the tokens' rows (contiguous), not one neuron's column (stride d_ff) at a time.
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel
#endif
    {
      const index_t i0 = F * cpu::detail::thread_id() / cpu::detail::num_threads(),
                    i1 = F * (cpu::detail::thread_id() + 1) / cpu::detail::num_threads();
      double* acc = e.data();
      for (index_t t = 0; t < m; ++t) {
        const float* row = h.data() + t * F;
        for (index_t i = i0; i < i1; ++i) acc[i] += double(row[i]) * row[i];
      }
    }
  }
  for (index_t i = 0; i < F; ++i) {
    double vv = 0;
    for (index_t c = 0; c < d; ++c) {
      const double w = dense.w2[static_cast<std::size_t>(c * F + i)];
      vv += w * w;
    }
    e[static_cast<std::size_t>(i)] *= vv;
  }
  return e;
}

/// The most blocks pinning may take for B blocks: checks the options (ratio finite and >= 0,
/// max_blocks <= B).
inline index_t check_pin_options(const pin_options& o, index_t B) {
  sparse_ffn::detail::require(std::isfinite(o.ratio) && o.ratio >= 0, status::invalid_argument, "pin ratio (",
                              o.ratio, ") must be finite and >= 0");
  const index_t cap = o.max_blocks < 0 ? std::max<index_t>(1, B / 8) : o.max_blocks;
  sparse_ffn::detail::require(cap <= B, status::invalid_argument, "max pinned blocks (", cap,
                              ") exceeds B = ", B);
  return cap;
}

/// Applies the rule of the file comment to per-neuron energies (ties: the lower neuron index first).
inline pin_result choose_pinned(const std::vector<double>& energy, index_t g, const pin_options& o) {
  const auto F = static_cast<index_t>(energy.size());
  sparse_ffn::detail::require(g > 0 && F % g == 0, status::invalid_shape, "d_ff (", F,
                              ") is not divisible by block size g (", g, ")");
  const index_t B = F / g;
  const index_t cap = check_pin_options(o, B);
  pin_result r;
  const double total = std::accumulate(energy.begin(), energy.end(), 0.0);
  const double mean = total / double(F);
  if (!(mean > 0)) return r;
  std::vector<std::int32_t> order(static_cast<std::size_t>(F));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return energy[static_cast<std::size_t>(a)] > energy[static_cast<std::size_t>(b)];
  });
  r.max_ratio = energy[static_cast<std::size_t>(order[0])] / mean;
  if (o.ratio <= 0) return r;
  for (std::int32_t i : order)
    if (energy[static_cast<std::size_t>(i)] >= o.ratio * mean) ++r.hot;
  r.blocks = std::min(cap, (r.hot + g - 1) / g);
  r.neurons.assign(order.begin(), order.begin() + r.blocks * g);
  for (std::int32_t i : r.neurons) {
    r.share.push_back(energy[static_cast<std::size_t>(i)] / total);
    r.pinned_share += r.share.back();
  }
  return r;
}

/// The dense FFN restricted to the neurons not in `pinned` (their original order), and their indices.
inline dense_ffn<float> without_neurons(const dense_ffn<float>& dense,
                                        const std::vector<std::int32_t>& pinned,
                                        std::vector<std::int32_t>& rest) {
  const index_t F = dense.d_ff, d = dense.d_model;
  std::vector<char> is_pinned(static_cast<std::size_t>(F), 0);
  for (std::int32_t i : pinned) is_pinned[static_cast<std::size_t>(i)] = 1;
  rest.clear();
  for (index_t i = 0; i < F; ++i)
    if (!is_pinned[static_cast<std::size_t>(i)]) rest.push_back(static_cast<std::int32_t>(i));
  const auto R = static_cast<index_t>(rest.size());
  dense_ffn<float> out(d, R, dense.gated(), !dense.b1.empty() || !dense.b2.empty() || !dense.b3.empty());
  auto vec = [](const std::vector<float>& v, std::size_t n) {
    return v.empty() ? std::vector<float>(n, 0.0f) : v;
  };
  const std::vector<float> b1 = vec(dense.b1, static_cast<std::size_t>(F)),
                           b3 = vec(dense.b3, static_cast<std::size_t>(F));
  for (index_t j = 0; j < R; ++j) {
    const auto src = static_cast<std::size_t>(rest[static_cast<std::size_t>(j)]);
    std::copy_n(dense.w1.begin() + static_cast<std::ptrdiff_t>(src * d), d, out.w1.begin() + j * d);
    if (dense.gated())
      std::copy_n(dense.w3.begin() + static_cast<std::ptrdiff_t>(src * d), d, out.w3.begin() + j * d);
    for (index_t c = 0; c < d; ++c)
      out.w2[static_cast<std::size_t>(c * R + j)] = dense.w2[static_cast<std::size_t>(c) * F + src];
    if (!out.b1.empty()) out.b1[static_cast<std::size_t>(j)] = b1[src];
    if (!out.b3.empty()) out.b3[static_cast<std::size_t>(j)] = b3[src];
  }
  if (!out.b2.empty()) out.b2 = vec(dense.b2, static_cast<std::size_t>(d));
  return out;
}

}  // namespace convert
}  // namespace sparse_ffn
