// sparse_ffn benchmarks — the bytes a sparse forward reads from memory, shared by the CPU benchmark
// (bench_common.hpp) and the GPU one (cuda_bench.cu): both kernels read the same rows.
#pragma once

#include <sparse_ffn/sparse_ffn.hpp>

#include <vector>

namespace sf = sparse_ffn;

namespace bench {

/// Bytes a forward reads from memory, from its routing (blocks: n × k) and pre-activations (pre, and
/// up for gated activations: n × k × g, as forward_cache keeps them): the selector's rows (linear) or
/// every key (oracle), the keys (and up rows) of each block the batch selected, and each selected
/// block's value rows whose activation is nonzero for at least one of its tokens (the kernels skip the
/// others; value tiles: each tile holding such a row, less its quads that hold none). *touched_frac: the
/// fraction of blocks selected.
template <class P>
double bytes_touched(const sf::blocked_ffn_view<typename P::dtype>& w, sf::index_t n, sf::index_t k,
                     const std::vector<sf::block_index_t>& blocks, const std::vector<float>& pre,
                     const std::vector<float>& up, double* touched_frac) {
  using T = typename P::dtype;
  const auto& l = w.layout;
  const sf::index_t G = l.g;
  const double row = double(l.ld) * sizeof(T);
  double bytes = 0;
  if (P::selector::scoring == sf::scoring_kind::linear) bytes += double(l.num_blocks) * row;
  if (P::selector::scoring == sf::scoring_kind::dense) bytes += double(l.d_ff) * row;
  std::vector<char> used(static_cast<std::size_t>(l.num_blocks), 0),
      live(static_cast<std::size_t>(l.d_ff), 0);
  for (sf::index_t e = 0; e < n * k; ++e) {
    const auto b = blocks[static_cast<std::size_t>(e)];
    used[static_cast<std::size_t>(b)] = 1;
    for (sf::index_t i = 0; i < G; ++i) {
      const std::size_t at = static_cast<std::size_t>(e * G + i);
      if (sf::activate<typename P::activation>(pre[at], up.empty() ? 0.0f : up[at]) != 0.0f)
        live[static_cast<std::size_t>(b * G + i)] = 1;
    }
  }
  const double key_rows = P::activation::gated ? 2.0 : 1.0;  // keys (and up rows)
  double nb = 0;
  for (sf::index_t b = 0; b < l.num_blocks; ++b) {
    if (!used[static_cast<std::size_t>(b)]) continue;
    nb += 1;
    if (P::selector::scoring != sf::scoring_kind::dense) bytes += key_rows * double(G) * row;
    if constexpr (sf::is_quantized<T>::value)
      if (l.value_tiles) {  // a tile with a live row: its scales and every quad with a live row
        using VT = sf::value_tile<T>;
        const sf::index_t cols = sf::row_format<T>::cols(l.d_model);
        for (sf::index_t t0 = 0; t0 < G; t0 += VT::rows) {
          double quads = 0;
          for (sf::index_t q = t0; q < t0 + VT::rows; q += 4) {
            bool any = false;
            for (sf::index_t i = q; i < q + 4; ++i) any |= live[static_cast<std::size_t>(b * G + i)] != 0;
            quads += any ? 1.0 : 0.0;
          }
          if (quads > 0)
            bytes += double(VT::quants_at(cols)) + quads * 4.0 * double(sf::row_format<T>::quant_bytes(cols));
        }
        continue;
      }
    for (sf::index_t i = 0; i < G; ++i) bytes += live[static_cast<std::size_t>(b * G + i)] ? row : 0.0;
  }
  *touched_frac = nb / double(l.num_blocks);
  return bytes;
}

}  // namespace bench
