// sparse_ffn — selection on the GPU, for every selector, with no host synchronisation.
//
//   linear (avg_k, learned_gate)  scores[t][b] = Sel::linear_score(row_b·x_t, bias_b): one thread block
//                                 per row and group of 8 tokens, 16-byte loads, fixed-order reduction
//   dense (oracle)                the key pass over every block (kernels::keys with per_token = B), then
//                                 scores[t][b] = Σ_i neuron_score(act(pre, up))
//   token (hash)                  blocks[t][j] = Sel::block(token_key(id_t, seed), j, B), one thread each
// Top-k: every score becomes topk_sort_key(score, b) (the CPU's exact order: higher first, ties to the
// lower index, NaN last); for B <= k_topk_block_max one thread block per token sorts them in shared
// memory (topk_block, bitonic), else CUB's segmented radix sort orders each token's B keys; the
// first k give the blocks. Weights: 1, or the learned gate's softmax (in topk_block's launch, or one
// thread block per token after the radix sort). linear_scores is the first kernel of its calls: it
// reads X as given and also writes the padded X and zeroes the error word.
#pragma once

#include <cub/device/device_segmented_radix_sort.cuh>

#include "../selector/hash.hpp"
#include "../selector/learned_gate.hpp"
#include "../selector/topk.hpp"
#include "kernels.cuh"

namespace sparse_ffn {
namespace cuda {
namespace kernels {

inline constexpr int k_score_tokens = 8;

/// The first kernel of a call for linear selectors: scores from the caller's X as given (load_x_raw),
/// and, by the thread blocks of row 0, the padded float copy of X the later kernels read (prepare_x's
/// work) and the zeroed error word — one launch where there were two and a memset.
template <class Sel, class T, class Tx>
__global__ void __launch_bounds__(k_threads)
    linear_scores(const T* __restrict__ rows, const float* __restrict__ bias, const Tx* __restrict__ x,
                  index_t d, index_t n, index_t B, index_t ld, index_t xw, float* __restrict__ scores,
                  float* __restrict__ xpad, int* __restrict__ error) {
  detail::grid_dependency();
  using RU = detail::row_unit<T>;  // 16-byte units of the row (q8/q4: xw = row_format<T>::cols)
  constexpr int V = detail::vec<T>::n, U = RU::values, M = k_score_tokens;
  __shared__ float red[k_threads / 32][M];
  const index_t b = blockIdx.x, t0 = static_cast<index_t>(blockIdx.y) * M;
  if (b == 0) {
    if (blockIdx.y == 0 && threadIdx.x == 0) *error = 0;
    const index_t m_end = t0 + M < n ? M : n - t0;
    for (index_t e = threadIdx.x; e < m_end * xw; e += k_threads) {
      const index_t t = t0 + e / xw, c = e % xw;
      xpad[t * xw + c] = c < d ? to_float(x[t * d + c]) : 0.0f;
    }
  }
  const T* row = rows + b * ld;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  for (index_t q = static_cast<index_t>(threadIdx.x) * V; q < RU::end(ld, xw); q += k_threads * V) {
    float rv[U];
    RU::load(row, q, xw, rv);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (t0 + m >= n) break;
      float xv[U];
      detail::load_x_raw<T>(x + (t0 + m) * d, d, q, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) acc[m] = fmaf(rv[e], xv[e], acc[m]);
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = detail::warp_sum(acc[m]);
    if (lane == 0) red[warp][m] = s;
  }
  __syncthreads();
  if (threadIdx.x < M && t0 + threadIdx.x < n) {
    float s = 0.0f;
    for (int wi = 0; wi < k_threads / 32; ++wi) s += red[wi][threadIdx.x];  // fixed order
    scores[(t0 + threadIdx.x) * B + b] = Sel::linear_score(s, bias ? bias[b] : 0.0f);
  }
}

/// Where the top-k reads a token's block scores: stored by linear_scores / dense_scores ...
struct stored_scores {
  const float* s;
  __device__ float operator()(index_t t, index_t B, index_t b) const { return s[t * B + b]; }
};

/// ... or summed from the oracle's dense key pass on the fly (Σ_i neuron_score(act(pre, up))).
template <class Act, int G>
struct dense_block_scores {
  const float* pre;
  const float* up;
  __device__ float operator()(index_t t, index_t B, index_t b) const {
    const index_t e = t * B + b;
    float s = 0.0f;
    for (int i = 0; i < G; ++i)
      s += select::oracle::neuron_score(activate<Act>(pre[e * G + i], Act::gated ? up[e * G + i] : 0.0f));
    return s;
  }
};

template <class Act, int G>
__global__ void dense_scores(const float* __restrict__ pre, const float* __restrict__ up, index_t n,
                             index_t B, float* __restrict__ scores) {
  detail::grid_dependency();
  const dense_block_scores<Act, G> score{pre, up};
  SPARSE_FFN_GRID_STRIDE(e, n * B) scores[e] = score(e / B, B, e % B);
}

__global__ void sort_keys(const float* __restrict__ scores, index_t n, index_t B, index_t pinned,
                          std::uint64_t* __restrict__ keys, int* __restrict__ offsets) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, n * B > n + 1 ? n * B : n + 1) {
    if (e < n * B) keys[e] = topk_sort_key(ranking_score(scores[e], e % B, pinned), e % B);
    if (e <= n) offsets[e] = static_cast<int>(e * B);
  }
}

/// Up to this many blocks, top-k runs in one kernel (topk_block: 32 KiB of keys in shared memory);
/// above it, sort_keys + CUB's segmented radix sort + take_topk.
inline constexpr index_t k_topk_block_max = 4096;

/// Learned-gate weights of one token, written to wrow[0, k): the softmax over blocks [pinned, B) of
/// its logits `l`, for the chosen blocks blk[0, k) (selector/learned_gate.hpp's formulas), sums in a
/// fixed order. Pinned blocks weigh 1. Called by every thread of a k_threads block; `red` is
/// k_threads floats of shared memory.
__device__ inline void gate_weights_token(const float* __restrict__ l, const block_index_t* __restrict__ blk,
                                          index_t B, index_t k, index_t pinned, bool renormalize,
                                          float* __restrict__ wrow, float* red) {
  if (k == pinned) {  // nothing routed (uniform across the block)
    for (index_t j = threadIdx.x; j < k; j += k_threads) wrow[j] = 1.0f;
    return;
  }
  const float mx = l[blk[pinned]];
  float s = 0.0f;
  for (index_t b = pinned + threadIdx.x; b < B; b += k_threads)
    s += select::learned_gate::softmax_term(l[b], mx);
  red[threadIdx.x] = s;
  __syncthreads();
  for (int o = k_threads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  const float all = red[0];
  if (threadIdx.x == 0) {
    float top = 0.0f;
    for (index_t j = 0; j < pinned; ++j) wrow[j] = 1.0f;
    for (index_t j = pinned; j < k; ++j) top += select::learned_gate::softmax_term(l[blk[j]], mx);
    for (index_t j = pinned; j < k; ++j)
      wrow[j] = select::learned_gate::weight(select::learned_gate::softmax_term(l[blk[j]], mx), all, top,
                                             renormalize);
  }
}

/// Top-k of one token's B scores per thread block: the keys of sort_keys (topk_sort_key of the
/// ranking score; padding keys of all ones sort last) in shared memory, an ascending bitonic sort
/// (bitonic_step, shared with the host and tested there against std::sort and topk), the first k —
/// the same blocks in the same order as the radix-sort path and the CPU. `Score` reads the scores
/// (stored_scores, or dense_block_scores: the oracle's sums without a kernel of their own). Gate: the
/// learned gate's weights from `logits` in the same launch; else unit weights. One launch where the
/// radix path takes 13 or more (sort_keys, CUB's segmented sort, take_topk, gate_weights).
template <class Score, bool Gate>
__global__ void __launch_bounds__(k_threads)
    topk_block(Score score, index_t n, index_t B, index_t k, index_t pinned,
               block_index_t* __restrict__ blocks, float* __restrict__ weights,
               const float* __restrict__ logits, bool renormalize) {
  detail::grid_dependency();
  __shared__ std::uint64_t keys[k_topk_block_max];
  __shared__ float red[k_threads];
  const index_t t = blockIdx.x;
  if (t >= n) return;
  const index_t width = bitonic_width(B);
  for (index_t e = threadIdx.x; e < width; e += k_threads)
    keys[e] = e < B ? topk_sort_key(ranking_score(score(t, B, e), e, pinned), e) : ~std::uint64_t{0};
  __syncthreads();
  for (index_t size = 2; size <= width; size <<= 1)
    for (index_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (index_t i = threadIdx.x; i < width; i += k_threads) bitonic_step(keys, i, size, stride);
      __syncthreads();
    }
  for (index_t j = threadIdx.x; j < k; j += k_threads) {
    blocks[t * k + j] = topk_key_block(keys[j]);
    if (!Gate) weights[t * k + j] = 1.0f;
  }
  if constexpr (Gate) {
    __syncthreads();  // this token's blocks, written above, are visible to the whole thread block
    gate_weights_token(logits + t * B, blocks + t * k, B, k, pinned, renormalize, weights + t * k, red);
  }
}

/// blocks[t][j] from the sorted keys; weights for unweighted selectors.
__global__ void take_topk(const std::uint64_t* __restrict__ sorted, index_t n, index_t B, index_t k,
                          block_index_t* __restrict__ blocks, float* __restrict__ weights,
                          bool unit_weights) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, n * k) {
    const index_t t = e / k, j = e % k;
    blocks[e] = topk_key_block(sorted[t * B + j]);
    if (unit_weights) weights[e] = 1.0f;
  }
}

/// Learned-gate weights after the radix-sort top-k (B > k_topk_block_max), one thread block per token.
__global__ void __launch_bounds__(k_threads)
    gate_weights(const float* __restrict__ logits, const block_index_t* __restrict__ blocks, index_t B,
                 index_t k, index_t pinned, bool renormalize, float* __restrict__ weights) {
  detail::grid_dependency();
  __shared__ float red[k_threads];
  const index_t t = blockIdx.x;
  gate_weights_token(logits + t * B, blocks + t * k, B, k, pinned, renormalize, weights + t * k, red);
}

__global__ void hash_route(const token_id_t* __restrict__ ids, index_t n, index_t k, index_t B,
                           index_t pinned, index_t vocab, std::uint64_t seed,
                           block_index_t* __restrict__ blocks, float* __restrict__ weights,
                           int* __restrict__ error) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, n * k) {
    token_id_t id = ids[e / k];
    if (id < 0 || id >= vocab) {
      if (e % k == 0) atomicOr(error, bad_token_id);
      id = 0;
    }
    blocks[e] = static_cast<block_index_t>(
        select::hash::routed_block(select::hash::token_key(id, seed), e % k, B, pinned));
    weights[e] = 1.0f;
  }
}

/// Copies a caller's routing table (weights default to 1), checking the block indices.
__global__ void copy_routing(const block_index_t* __restrict__ in_blocks,
                             const float* __restrict__ in_weights, index_t nk, index_t B,
                             block_index_t* __restrict__ blocks, float* __restrict__ weights,
                             int* __restrict__ error) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, nk) {
    block_index_t b = in_blocks[e];
    if (b < 0 || b >= B) {
      atomicOr(error, bad_block_index);
      b = 0;
    }
    blocks[e] = b;
    weights[e] = in_weights ? in_weights[e] : 1.0f;
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace sparse_ffn
