// sparse_ffn — hash selector (HashLayer, Roller et al. 2021): blocks chosen from the token id alone.
//
// Token t uses blocks π_t(0), π_t(1), …, π_t(k-1) where π_t is a pseudo-random permutation of [0, B)
// keyed by (seed, t): hash function j is h_j(t) = π_t(j). Because π_t is a bijection the k blocks are
// always distinct, with no rejection loop and no memory. π_t is a 4-round Feistel network on the
// smallest even number of bits m with 2^m >= B, cycle-walked into [0, B) (expected < 4 rounds of
// walking), then rotated by a key-dependent offset r_t uniform in [0, B): π_t(j) = (F_t(j) + r_t) mod B.
// The rotation makes every marginal P(π_t(j) = b) exactly 1/B: a 4-round Feistel on a tiny domain is
// far from a uniform permutation, and cycle-walking turned that into a load imbalance (B = 7 without
// the rotation: 14.9% of tokens on blocks 0–3, 13.2% on 4–6). Round functions use the splitmix64
// finaliser. Weights are 1.
//
// With pinned blocks (layout.hpp) a token's row is the P pinned blocks, then π_t over the B - P others.
//
// Token ids must lie in [0, route_args::vocab_size); out-of-range ids are rejected before any compute.
#pragma once

#include <cstdint>
#include <vector>

#include "../layout.hpp"
#include "selector.hpp"

namespace sparse_ffn {
namespace select {

struct hash {
  static constexpr selector_kind kind = selector_kind::hash;
  static constexpr const char* name = "hash";
  static constexpr bool uses_token_ids = true;
  static constexpr bool weighted = false;
  static constexpr scoring_kind scoring = scoring_kind::token;

  /// splitmix64 finaliser: a bijective 64-bit mixer.
  SPARSE_FFN_HD static std::uint64_t mix(std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  /// Per-token key of the permutation family.
  SPARSE_FFN_HD static std::uint64_t token_key(token_id_t token, std::uint64_t seed) {
    return mix(mix(static_cast<std::uint64_t>(token)) ^ (seed * 0xd1b54a32d192ed03ull));
  }

  /// π_key(j) for j in [0, B): the j-th block of the token with this key.
  SPARSE_FFN_HD static index_t block(std::uint64_t key, index_t j, index_t num_blocks) {
    if (num_blocks <= 1) return 0;
    int m = 2;
    while ((index_t{1} << m) < num_blocks) m += 2;
    const int half = m / 2;
    const std::uint64_t mask = (std::uint64_t{1} << half) - 1u;
    std::uint64_t v = static_cast<std::uint64_t>(j);
    do {  // cycle-walk: the cycle through j contains j < B, so this terminates
      std::uint64_t left = v >> half, right = v & mask;
      for (std::uint64_t r = 0; r < 4; ++r) {
        const std::uint64_t f = mix(key + r * 0x632be59bd9b4e019ull + right) & mask;
        const std::uint64_t next = left ^ f;
        left = right;
        right = next;
      }
      v = (left << half) | right;
    } while (v >= static_cast<std::uint64_t>(num_blocks));
    const std::uint64_t rotation = mix(key ^ 0xa0761d6478bd642full) % static_cast<std::uint64_t>(num_blocks);
    return static_cast<index_t>((v + rotation) % static_cast<std::uint64_t>(num_blocks));
  }

  /// The j-th block of a token's row when blocks [0, pinned) are pinned: those first, then π over the
  /// B - pinned others.
  SPARSE_FFN_HD static index_t routed_block(std::uint64_t key, index_t j, index_t num_blocks,
                                            index_t pinned) {
    return j < pinned ? j : pinned + block(key, j - pinned, num_blocks - pinned);
  }

  template <class T>
  static void check(const blocked_ffn_view<T>& w, const route_args& a, index_t n) {
    detail::check_k(a.k, w.layout);
    detail::require(a.vocab_size > 0, status::invalid_argument,
                    "the hash selector needs route_args::vocab_size > 0 (got ", a.vocab_size, ")");
    if (n == 0) return;
    detail::require(a.token_ids != nullptr, status::null_pointer,
                    "the hash selector needs route_args::token_ids (one id per token)");
    detail::require_aligned<token_id_t>(a.token_ids, "route_args::token_ids");
    for (index_t t = 0; t < n; ++t)
      detail::require(a.token_ids[t] >= 0 && a.token_ids[t] < a.vocab_size, status::out_of_range, "token id ",
                      a.token_ids[t], " of token ", t, " is outside [0, vocab_size=", a.vocab_size, ")");
  }

  static index_t scratch_floats(const block_layout&) { return 0; }

  template <class T, class Act>
  static void route_token(const blocked_ffn_view<T>& w, const float* /*x*/, index_t token,
                          const route_args& a, float* /*scratch*/, std::vector<block_index_t>&,
                          block_index_t* blocks, float* weights) {
    const std::uint64_t key = token_key(a.token_ids[token], a.seed);
    for (index_t j = 0; j < a.k; ++j) {
      blocks[j] = static_cast<block_index_t>(routed_block(key, j, w.layout.num_blocks, w.layout.pinned));
      if (weights) weights[j] = 1.0f;
    }
  }
};

}  // namespace select
}  // namespace sparse_ffn
