// sparse_ffn — deterministic top-k over block scores.
//
// Order: higher score first; equal scores go to the lower block index; NaN ranks below every number
// (below -Inf too), so a NaN input still yields k distinct, in-range blocks. This is a strict total
// order on (score, index) pairs, which makes top-k unique: every kernel (CPU, CUDA, any thread count)
// selects the same blocks from the same scores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace sparse_ffn {

/// True when (sa, ia) ranks strictly before (sb, ib).
SPARSE_FFN_HD bool ranks_before(float sa, index_t ia, float sb, index_t ib) {
  const bool na = sa != sa, nb = sb != sb;  // NaN
  if (na != nb) return nb;                  // the number beats the NaN
  if (!na && sa != sb) return sa > sb;
  return ia < ib;
}

/// A 64-bit key whose ascending order is the ranking order: sorting (score, index) pairs by it with any
/// integer sort (e.g. CUB radix sort on the GPU) puts the top-k first, ties to the lower index, NaN
/// last. High 32 bits: the score mapped to an order-reversed unsigned integer; low 32 bits: the index.
/// -0 is keyed as +0: they are equal scores, so the lower index goes first (before 2026-12-07 -0 sorted
/// after +0, and the GPU's top-k could differ from the host's on a tie of -0 and +0).
SPARSE_FFN_HD std::uint64_t topk_sort_key(float score, index_t index) {
  std::uint32_t u;
  std::memcpy(&u, &score, sizeof u);
  if (u == 0x80000000u) u = 0u;  // -0 -> +0
  std::uint32_t ordered;  // larger score -> larger value; NaN -> 0
  if (score != score) {
    ordered = 0u;
  } else {
    ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // >= 0x00800000 for non-NaN
  }
  return (static_cast<std::uint64_t>(0xffffffffu - ordered) << 32) | static_cast<std::uint32_t>(index);
}

/// The block index a topk_sort_key carries (its low 32 bits): the one place that decodes the key.
SPARSE_FFN_HD block_index_t topk_key_block(std::uint64_t key) {
  return static_cast<block_index_t>(key & 0xffffffffu);
}

/// Smallest power of two >= B (>= 1): the width of the bitonic sort below.
SPARSE_FFN_HD index_t bitonic_width(index_t B) {
  index_t w = 1;
  while (w < B) w <<= 1;
  return w;
}

/// One compare-exchange of an ascending bitonic sort of a power-of-two number of keys: element i and
/// element i ^ stride, inside bitonic sequences of length `size` (ascending where i & size is 0). A
/// full sort runs, for size = 2, 4, …, width and stride = size/2, …, 1, this step for every i < width;
/// the pairs of one (size, stride) are disjoint and each is handled by its lower index only, so a GPU
/// thread block runs a step's i in parallel with a barrier between steps (the one-kernel top-k in
/// cuda/route.cuh) and bitonic_sort runs them in order on the host (tested against std::sort).
SPARSE_FFN_HD void bitonic_step(std::uint64_t* keys, index_t i, index_t size, index_t stride) {
  const index_t j = i ^ stride;
  if (j <= i) return;
  const std::uint64_t a = keys[i], b = keys[j];
  if ((a > b) == ((i & size) == 0)) {
    keys[i] = b;
    keys[j] = a;
  }
}

/// Ascending bitonic sort of keys[0, width), width a power of two, on the host (the network of
/// bitonic_step in its order).
inline void bitonic_sort(std::uint64_t* keys, index_t width) {
  for (index_t size = 2; size <= width; size <<= 1)
    for (index_t stride = size >> 1; stride > 0; stride >>= 1)
      for (index_t i = 0; i < width; ++i) bitonic_step(keys, i, size, stride);
}

/// Inserts (score, index) into the sorted list out_score/out_index of length `len` (capacity k).
/// Returns the new length. O(k) per call; used by per-thread top-k on host and device.
SPARSE_FFN_HD index_t topk_insert(float score, index_t index, float* out_score, block_index_t* out_index,
                                  index_t len, index_t k) {
  if (len == k && !ranks_before(score, index, out_score[k - 1], out_index[k - 1])) return len;
  index_t pos = len < k ? len : k - 1;
  while (pos > 0 && ranks_before(score, index, out_score[pos - 1], out_index[pos - 1])) {
    out_score[pos] = out_score[pos - 1];
    out_index[pos] = out_index[pos - 1];
    --pos;
  }
  out_score[pos] = score;
  out_index[pos] = static_cast<block_index_t>(index);
  return len < k ? len + 1 : len;
}

/// Top-k of scores[0..B) by insertion: O(B·k); good for small k. out_* hold k entries.
SPARSE_FFN_HD void topk_small(const float* scores, index_t B, index_t k, float* out_score,
                              block_index_t* out_index) {
  index_t len = 0;
  for (index_t b = 0; b < B; ++b) len = topk_insert(scores[b], b, out_score, out_index, len, k);
}

/// B up to which the host top-k selects on topk_sort_key in a stack array (below).
inline constexpr index_t k_topk_key_blocks = 1024;

/// Host top-k: indices of the k best of scores[0..B), best first, into out[0..k). `scratch` holds B
/// entries (used for large k and B > k_topk_key_blocks: selection + sort, O(B + k log k)); no
/// allocation. Large k with B <= k_topk_key_blocks: the same selection + sort on topk_sort_key, whose
/// integer compares need no NaN tests nor an indirection (B 256, k 64: ~4.5 µs against ~8).
inline void topk(const float* scores, index_t B, index_t k, block_index_t* out, block_index_t* scratch) {
  if (k <= 16) {
    float best[16];
    topk_small(scores, B, k, best, out);
    return;
  }
  if (B <= k_topk_key_blocks) {
    std::uint64_t keys[k_topk_key_blocks];
    for (index_t b = 0; b < B; ++b) keys[b] = topk_sort_key(scores[b], b);
    if (k < B) std::nth_element(keys, keys + k - 1, keys + B);
    std::sort(keys, keys + k);
    for (index_t j = 0; j < k; ++j) out[j] = topk_key_block(keys[j]);
    return;
  }
  for (index_t b = 0; b < B; ++b) scratch[b] = static_cast<block_index_t>(b);
  auto before = [scores](block_index_t a, block_index_t b) {
    return ranks_before(scores[a], a, scores[b], b);
  };
  block_index_t *first = scratch, *kth = scratch + k;
  if (k < B) std::nth_element(first, kth - 1, scratch + B, before);
  std::sort(first, kth, before);
  std::copy(first, kth, out);
}

/// As above, with a vector that is grown to B entries when needed.
inline void topk(const float* scores, index_t B, index_t k, block_index_t* out,
                 std::vector<block_index_t>& scratch) {
  if (k > 16 && static_cast<index_t>(scratch.size()) < B) scratch.resize(static_cast<std::size_t>(B));
  topk(scores, B, k, out, scratch.data());
}

}  // namespace sparse_ffn
