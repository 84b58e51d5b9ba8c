// sparse_ffn — the batched key pass on tensor cores (half / bfloat16 weights, g >= 16).
//
// Tokens are grouped by block: a stable CUB radix sort of the (block, pair) routing entries puts each
// block's pairs together in token order; per-block counts (integer atomics) and exclusive scans give
// each block's range and its number of 16-token tiles. One thread block per (block, 16-token tile)
// computes H = act(X_tile K_bᵀ + b1) with WMMA m16n16k16 (one warp per 16-row tile of the block's g
// rows, float accumulation), reading each key row once per tile instead of once per token.
// X is rounded to the weight dtype for the tensor-core product (the decode path keeps it in float), so
// this path is used only from batched_threshold tokens up. Deterministic: fixed tiles, fixed MMA order.
#pragma once

#include <mma.h>

#include "kernels.cuh"

namespace sparse_ffn {
namespace cuda {
namespace kernels {

template <class T>
struct wmma_type;
template <>
struct wmma_type<half_t> {
  using type = __half;
};
template <>
struct wmma_type<bfloat16_t> {
  using type = __nv_bfloat16;
};

__global__ void iota_pairs(std::int32_t* __restrict__ ids, index_t count) {
  SPARSE_FFN_GRID_STRIDE(e, count) ids[e] = static_cast<std::int32_t>(e);
}

/// counts[b] = number of pairs routed to block b (counts has B + 1 zeroed entries).
__global__ void block_histogram(const block_index_t* __restrict__ blocks, index_t count,
                                int* __restrict__ counts) {
  SPARSE_FFN_GRID_STRIDE(e, count) atomicAdd(&counts[blocks[e]], 1);
}

__global__ void tile_counts(const int* __restrict__ counts, index_t B, int* __restrict__ tiles) {
  SPARSE_FFN_GRID_STRIDE(b, B + 1) tiles[b] = b < B ? (counts[b] + 15) / 16 : 0;
}

inline constexpr int k_wmma_kc = 32;  ///< d elements staged per step (ld is a multiple of 32 for 16-bit)

template <class T, class Act, int G>
__global__ void __launch_bounds__(32 * (G / 16 < 8 ? G / 16 : 8))
    keys_wmma(blocked_ffn_view<T> w, const float* __restrict__ xpad,
              const std::int32_t* __restrict__ sorted_pairs, const int* __restrict__ offsets,
              const int* __restrict__ tile_offsets, index_t B, index_t k, float* __restrict__ h,
              float* __restrict__ pre, float* __restrict__ up) {
  static_assert(G % 16 == 0, "keys_wmma needs g to be a multiple of 16");
  namespace wm = nvcuda::wmma;
  using WT = typename wmma_type<T>::type;
  constexpr int WARPS = G / 16 < 8 ? G / 16 : 8;
  constexpr int RT = (G / 16 + WARPS - 1) / WARPS;  // row tiles per warp
  constexpr int KC = k_wmma_kc, LDA = KC + 8, LDC = G + 4;
  __shared__ __align__(32) WT sA[16 * LDA];
  __shared__ __align__(32) float sC[16 * LDC];
  __shared__ __align__(32) float sU[Act::gated ? 16 * LDC : 1];
  __shared__ std::int32_t pair[16];

  const int q = static_cast<int>(blockIdx.x);
  if (q >= tile_offsets[B]) return;
  int lo = 0, hi = static_cast<int>(B);  // block b: tile_offsets[b] <= q < tile_offsets[b + 1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (tile_offsets[mid] <= q)
      lo = mid;
    else
      hi = mid;
  }
  const index_t b = lo;
  const int first = offsets[b] + 16 * (q - tile_offsets[b]);
  const int rows = min(16, offsets[b + 1] - first);
  if (threadIdx.x < 16) pair[threadIdx.x] = threadIdx.x < rows ? sorted_pairs[first + threadIdx.x] : -1;
  const index_t ld = w.layout.ld;
  const int warp = threadIdx.x / 32;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[RT], accu[RT];
  for (int r = 0; r < RT; ++r) {
    wm::fill_fragment(acc[r], 0.0f);
    if constexpr (Act::gated) wm::fill_fragment(accu[r], 0.0f);
  }
  __syncthreads();
  for (index_t q0 = 0; q0 < ld; q0 += KC) {
    for (int e = threadIdx.x; e < 16 * KC; e += 32 * WARPS) {
      const int r = e / KC, c = e % KC;
      const std::int32_t p = pair[r];
      const float v = p >= 0 ? xpad[(static_cast<index_t>(p) / k) * ld + q0 + c] : 0.0f;
      sA[r * LDA + c] = static_cast<WT>(v);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KC; kk += 16) {
      wm::fragment<wm::matrix_a, 16, 16, 16, WT, wm::row_major> a;
      wm::load_matrix_sync(a, sA + kk, LDA);
      for (int r = 0; r < RT; ++r) {
        const int rt = warp + r * WARPS;
        if (rt >= G / 16) break;
        wm::fragment<wm::matrix_b, 16, 16, 16, WT, wm::col_major> kb;
        wm::load_matrix_sync(kb, reinterpret_cast<const WT*>(w.keys(b) + rt * 16 * ld + q0 + kk),
                             static_cast<unsigned>(ld));
        wm::mma_sync(acc[r], a, kb, acc[r]);
        if constexpr (Act::gated) {
          wm::fragment<wm::matrix_b, 16, 16, 16, WT, wm::col_major> ub;
          wm::load_matrix_sync(ub, reinterpret_cast<const WT*>(w.up(b) + rt * 16 * ld + q0 + kk),
                               static_cast<unsigned>(ld));
          wm::mma_sync(accu[r], a, ub, accu[r]);
        }
      }
    }
    __syncthreads();
  }
  for (int r = 0; r < RT; ++r) {
    const int rt = warp + r * WARPS;
    if (rt >= G / 16) break;
    wm::store_matrix_sync(sC + rt * 16, acc[r], LDC, wm::mem_row_major);
    if constexpr (Act::gated) wm::store_matrix_sync(sU + rt * 16, accu[r], LDC, wm::mem_row_major);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * G; e += 32 * WARPS) {
    const int r = e / G, i = e % G;
    const std::int32_t p = pair[r];
    if (p < 0) continue;
    const index_t neuron = b * G + i;
    const float a = sC[r * LDC + i] + (w.b1 ? w.b1[neuron] : 0.0f);
    const float u = Act::gated ? sU[r * LDC + i] + (w.b3 ? w.b3[neuron] : 0.0f) : 0.0f;
    const index_t at = static_cast<index_t>(p) * G + i;
    h[at] = activate<Act>(a, u);
    if (pre) pre[at] = a;
    if (up) up[at] = u;
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace sparse_ffn
