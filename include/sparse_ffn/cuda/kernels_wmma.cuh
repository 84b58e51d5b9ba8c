// sparse_ffn — the batched key and value passes on tensor cores (half / bfloat16 weights, g >= 16).
//
// Tokens are grouped by block: a stable CUB radix sort of the (block, pair) routing entries puts each
// block's pairs together in token order; per-block counts (integer atomics) and exclusive scans give
// each block's range and its number of 16-token tiles. One thread block per (block, 16-token tile)
// computes H = act(X_tile K_bᵀ + b1) with WMMA m16n16k16 (one warp per 16-row tile of the block's g
// rows, float accumulation; key rows staged through a cp.async pipeline), reading each key row once
// per tile instead of once per token; values_wmma multiplies the tile's coefficients by V_b the same way.
// X is rounded to the weight dtype for the tensor-core product (the decode path keeps it in float), so
// this path is used only from batched_threshold tokens up. Deterministic: fixed tiles, fixed MMA order.
#pragma once

#include <mma.h>

#include <cub/block/block_scan.cuh>

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
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, count) ids[e] = static_cast<std::int32_t>(e);
}

/// counts[b] = number of pairs routed to block b (counts has B + 1 zeroed entries).
__global__ void block_histogram(const block_index_t* __restrict__ blocks, index_t count,
                                int* __restrict__ counts) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, count) atomicAdd(&counts[blocks[e]], 1);
}

__global__ void tile_counts(const int* __restrict__ counts, index_t B, int* __restrict__ tiles) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(b, B + 1) tiles[b] = b < B ? (counts[b] + 15) / 16 : 0;
}

/// One-kernel grouping (group_pairs_block) for up to this many (token, slot) pairs and blocks; above,
/// iota_pairs + CUB's radix sort + block_histogram + scans + tile_counts (≈ 10 launches).
inline constexpr int k_group_threads = 512, k_group_items = 4;
inline constexpr index_t k_group_max_blocks = index_t{k_group_threads} * k_group_items - 1;
inline constexpr index_t k_group_max_pairs = 8192;

/// The grouping of the tensor-core path in one thread block: per-block counts (shared-memory integer
/// atomics), exclusive scans of the counts and of the 16-pair tiles (cub::BlockScan) into offsets and
/// tile_offsets (B + 1 entries each), then the pair ids scattered by block — stably: one warp walks the
/// pairs in order, 32 at a time, ranking equal blocks within the 32 with __match_any_sync — so each
/// block's pairs come in ascending order, exactly as the stable radix-sort path leaves them.
__global__ void __launch_bounds__(k_group_threads)
    group_pairs_block(const block_index_t* __restrict__ blocks, index_t nk, index_t B,
                      std::int32_t* __restrict__ sorted_pairs, int* __restrict__ offsets,
                      int* __restrict__ tile_offsets) {
  detail::grid_dependency();
  constexpr int NT = k_group_threads, E = k_group_items;
  using Scan = cub::BlockScan<int, NT>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ int cnt[NT * E];
  for (int i = threadIdx.x; i < NT * E; i += NT) cnt[i] = 0;
  __syncthreads();
  for (index_t e = threadIdx.x; e < nk; e += NT) atomicAdd(&cnt[blocks[e]], 1);
  __syncthreads();
  int c[E], t[E];
#pragma unroll
  for (int j = 0; j < E; ++j) {
    const int idx = threadIdx.x * E + j;
    c[j] = cnt[idx];  // zero past B
    t[j] = idx < B ? (c[j] + 15) / 16 : 0;
  }
  Scan(temp).ExclusiveSum(c, c);
  __syncthreads();
  Scan(temp).ExclusiveSum(t, t);
#pragma unroll
  for (int j = 0; j < E; ++j) {
    const int idx = threadIdx.x * E + j;
    if (idx <= B) {
      offsets[idx] = c[j];
      tile_offsets[idx] = t[j];
    }
  }
  __syncthreads();  // every count has been read: cnt becomes each block's write cursor
#pragma unroll
  for (int j = 0; j < E; ++j) cnt[threadIdx.x * E + j] = c[j];
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const unsigned below = (1u << lane) - 1u;
  for (index_t base = 0; base < nk; base += 32) {
    const index_t e = base + lane;
    const bool valid = e < nk;
    const int b = valid ? static_cast<int>(blocks[e]) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, b);
    const int leader = __ffs(peers) - 1;
    int pos = 0;
    if (valid && lane == leader) {
      pos = cnt[b];
      cnt[b] = pos + __popc(peers);
    }
    pos = __shfl_sync(0xffffffffu, pos, leader);
    if (valid) sorted_pairs[pos + __popc(peers & below)] = static_cast<std::int32_t>(e);
    __syncwarp();  // the cursors' updates are seen by the next 32
  }
}

inline constexpr int k_wmma_kc = 32;     ///< d elements staged per step (ld is a multiple of 32 for 16-bit)
inline constexpr int k_wmma_stages = 3;  ///< keys_wmma's cp.async pipeline depth (2 for gated g = 256)

/// 16 bytes global -> shared without passing through registers (cp.async, sm_80+), in the current
/// commit group; a plain copy on older architectures.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned sa = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
/// Waits until at most N of this thread's commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/// The tile of 16 pairs that thread block q of a tensor-core pass handles: its block b (tile_offsets[b]
/// <= q < tile_offsets[b + 1], by binary search) is returned, and `pair` (shared, 16 entries) gets the
/// tile's pair ids, -1 past the block's last pair. -1 (nothing to do) for q past the last tile.
__device__ inline index_t pair_tile(int q, index_t B, const int* __restrict__ offsets,
                                    const int* __restrict__ tile_offsets,
                                    const std::int32_t* __restrict__ sorted_pairs, std::int32_t* pair) {
  if (q >= tile_offsets[B]) return -1;
  int lo = 0, hi = static_cast<int>(B);
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (tile_offsets[mid] <= q)
      lo = mid;
    else
      hi = mid;
  }
  const int first = offsets[lo] + 16 * (q - tile_offsets[lo]);
  const int rows = min(16, offsets[lo + 1] - first);
  if (threadIdx.x < 16) pair[threadIdx.x] = threadIdx.x < rows ? sorted_pairs[first + threadIdx.x] : -1;
  return lo;
}

/// keys_wmma's shape: warps, row tiles per warp, and its dynamic shared memory — the pipeline's
/// stages of key (and up) tiles, G rows × KC columns each, and the X tile; the epilogue's float
/// tiles reuse the stages' bytes.
template <class T, class Act, int G>
struct keys_wmma_shape {
  static constexpr int warps = G / 16 < 8 ? G / 16 : 8;
  static constexpr int threads = 32 * warps;
  static constexpr int row_tiles = (G / 16 + warps - 1) / warps;  ///< per warp
  static constexpr int mats = Act::gated ? 2 : 1;
  /// Stages: at most 83 KiB of shared memory for every g ≤ 256, within what sm_80 and newer (also
  /// sm_86/89's 99 KiB) grant a thread block.
  static constexpr int S = mats * G >= 512 ? 2 : k_wmma_stages;
  static constexpr int KC = k_wmma_kc, LDK = KC + 8, LDA = KC + 8, LDC = G + 4;
  static constexpr std::size_t stage_bytes = std::size_t(mats) * S * G * LDK * sizeof(T);
  static constexpr std::size_t epilogue_bytes = std::size_t(mats) * 16 * LDC * sizeof(float);
  static constexpr std::size_t a_offset = stage_bytes > epilogue_bytes ? stage_bytes : epilogue_bytes;
  static constexpr std::size_t smem_bytes = a_offset + 16 * LDA * sizeof(T);
};

/// One thread block per (block, 16-token tile): H = act(X_tile K_bᵀ + b1 [, X_tile U_bᵀ + b3]) with WMMA
/// m16n16k16 (one warp per 16-row tile of the block's g rows, float accumulation). The key (and up)
/// rows stream through a k_wmma_stages-deep cp.async pipeline in shared memory — stage i + 2 is in
/// flight while stage i feeds the tensor cores — and each is read once per tile of 16 tokens.
template <class T, class Act, int G>
__global__ void __launch_bounds__(keys_wmma_shape<T, Act, G>::threads)
    keys_wmma(blocked_ffn_view<T> w, const float* __restrict__ xpad,
              const std::int32_t* __restrict__ sorted_pairs, const int* __restrict__ offsets,
              const int* __restrict__ tile_offsets, index_t B, index_t k, float* __restrict__ h,
              float* __restrict__ pre, float* __restrict__ up) {
  detail::grid_dependency();
  static_assert(G % 16 == 0, "keys_wmma needs g to be a multiple of 16");
  namespace wm = nvcuda::wmma;
  using WT = typename wmma_type<T>::type;
  using Sh = keys_wmma_shape<T, Act, G>;
  constexpr int WARPS = Sh::warps, RT = Sh::row_tiles, NT = Sh::threads;
  constexpr int KC = Sh::KC, S = Sh::S, LDK = Sh::LDK, LDA = Sh::LDA, LDC = Sh::LDC;
  extern __shared__ __align__(128) unsigned char smem[];
  WT* const sK = reinterpret_cast<WT*>(smem);        // [S][G][LDK]
  WT* const sUk = sK + S * G * LDK;                  // [S][G][LDK], gated only
  float* const sC = reinterpret_cast<float*>(smem);  // epilogue, over the stages
  float* const sU = sC + 16 * LDC;                   // epilogue, gated only
  WT* const sA = reinterpret_cast<WT*>(smem + Sh::a_offset);
  __shared__ std::int32_t pair[16];

  const index_t b = pair_tile(static_cast<int>(blockIdx.x), B, offsets, tile_offsets, sorted_pairs, pair);
  if (b < 0) return;
  const index_t ld = w.layout.ld, steps = ld / KC;
  const T* const keys = w.keys(b);
  const T* const ups = Act::gated ? w.up(b) : nullptr;
  auto issue = [&](index_t step) {  // stage `step` into buffer step % S (an empty group past the end)
    if (step < steps) {
      const index_t q0 = step * KC;
      const int buf = static_cast<int>(step % S);
      for (int c = threadIdx.x; c < G * (KC / 8); c += NT) {
        const int r = c / (KC / 8), part = (c % (KC / 8)) * 8;
        cp_async16(sK + (buf * G + r) * LDK + part, keys + r * ld + q0 + part);
        if constexpr (Act::gated) cp_async16(sUk + (buf * G + r) * LDK + part, ups + r * ld + q0 + part);
      }
    }
    cp_async_commit();
  };
  const int warp = threadIdx.x / 32;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[RT], accu[RT];
  for (int r = 0; r < RT; ++r) {
    wm::fill_fragment(acc[r], 0.0f);
    if constexpr (Act::gated) wm::fill_fragment(accu[r], 0.0f);
  }
  for (int st = 0; st < S - 1; ++st) issue(st);
  for (index_t i = 0; i < steps; ++i) {
    cp_async_wait<S - 2>();  // stage i has landed (this thread's copies) ...
    __syncthreads();         // ... everyone's; and iteration i - 1 no longer reads sA or buffer (i - 1) % S
    issue(i + S - 1);
    const index_t q0 = i * KC;
    for (int e = threadIdx.x; e < 16 * KC; e += NT) {
      const int r = e / KC, c = e % KC;
      const std::int32_t p = pair[r];
      const float v = p >= 0 ? xpad[(static_cast<index_t>(p) / k) * ld + q0 + c] : 0.0f;
      sA[r * LDA + c] = static_cast<WT>(v);
    }
    __syncthreads();
    const WT* const kb = sK + static_cast<int>(i % S) * G * LDK;
    const WT* const ub = sUk + static_cast<int>(i % S) * G * LDK;
#pragma unroll
    for (int kk = 0; kk < KC; kk += 16) {
      wm::fragment<wm::matrix_a, 16, 16, 16, WT, wm::row_major> a;
      wm::load_matrix_sync(a, sA + kk, LDA);
      for (int r = 0; r < RT; ++r) {
        const int rt = warp + r * WARPS;
        if (rt >= G / 16) break;
        wm::fragment<wm::matrix_b, 16, 16, 16, WT, wm::col_major> kf;
        wm::load_matrix_sync(kf, kb + rt * 16 * LDK + kk, LDK);
        wm::mma_sync(acc[r], a, kf, acc[r]);
        if constexpr (Act::gated) {
          wm::fragment<wm::matrix_b, 16, 16, 16, WT, wm::col_major> uf;
          wm::load_matrix_sync(uf, ub + rt * 16 * LDK + kk, LDK);
          wm::mma_sync(accu[r], a, uf, accu[r]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages' bytes become the epilogue's tiles
  for (int r = 0; r < RT; ++r) {
    const int rt = warp + r * WARPS;
    if (rt >= G / 16) break;
    wm::store_matrix_sync(sC + rt * 16, acc[r], LDC, wm::mem_row_major);
    if constexpr (Act::gated) wm::store_matrix_sync(sU + rt * 16, accu[r], LDC, wm::mem_row_major);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * G; e += NT) {
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

/// Columns of one values_wmma thread block: 4 warps × 2 fragments of 16.
inline constexpr int k_wmma_value_cols = 128;

/// The batched value pass on tensor cores (a grouped GEMM): one thread block per (block b, tile of 16
/// of its pairs, 128 columns) computes C = S_tile · V_b — S the pairs' coefficients w_p·h_p,i rounded to
/// the weight dtype, V_b the block's g value rows — with WMMA m16n16k16 and float accumulation, each
/// value fragment read once per tile of 16 tokens instead of once per token; C's rows go to the pairs'
/// own rows of `pair_rows` (xw floats each), which combine adds per token in slot order (as vLLM's
/// moe_sum): deterministic, no atomics. Rows with a zero coefficient are not skipped (tensor cores).
template <class T, int G>
__global__ void __launch_bounds__(128)
    values_wmma(blocked_ffn_view<T> w, const float* __restrict__ h, const float* __restrict__ weights,
                const std::int32_t* __restrict__ sorted_pairs, const int* __restrict__ offsets,
                const int* __restrict__ tile_offsets, index_t B, index_t xw, float* __restrict__ pair_rows) {
  detail::grid_dependency();
  static_assert(G % 16 == 0, "values_wmma needs g to be a multiple of 16");
  namespace wm = nvcuda::wmma;
  using WT = typename wmma_type<T>::type;
  constexpr int CT = k_wmma_value_cols, LDA = G + 8, LDC = CT + 4;
  __shared__ __align__(32) WT sA[16 * LDA];
  __shared__ __align__(32) float sC[16 * LDC];
  __shared__ std::int32_t pair[16];

  const index_t b = pair_tile(static_cast<int>(blockIdx.x), B, offsets, tile_offsets, sorted_pairs, pair);
  if (b < 0) return;
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * G; e += 128) {
    const int r = e / G, i = e % G;
    const std::int32_t pr = pair[r];
    const float v = pr >= 0 ? weights[pr] * h[static_cast<index_t>(pr) * G + i] : 0.0f;
    sA[r * LDA + i] = static_cast<WT>(v);
  }
  __syncthreads();
  const index_t ld = w.layout.ld, c0 = static_cast<index_t>(blockIdx.y) * CT;
  const int warp = threadIdx.x / 32;
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[2];
  wm::fill_fragment(acc[0], 0.0f);
  wm::fill_fragment(acc[1], 0.0f);
  const WT* vb = reinterpret_cast<const WT*>(w.values(b));
#pragma unroll
  for (int kk = 0; kk < G; kk += 16) {
    wm::fragment<wm::matrix_a, 16, 16, 16, WT, wm::row_major> a;
    wm::load_matrix_sync(a, sA + kk, LDA);
#pragma unroll
    for (int f = 0; f < 2; ++f) {
      const index_t c = c0 + warp * 32 + f * 16;
      if (c + 16 > ld) break;  // ld is a multiple of 32 elements for 16-bit weights: whole fragments
      wm::fragment<wm::matrix_b, 16, 16, 16, WT, wm::row_major> vf;
      wm::load_matrix_sync(vf, vb + kk * ld + c, static_cast<unsigned>(ld));
      wm::mma_sync(acc[f], a, vf, acc[f]);
    }
  }
#pragma unroll
  for (int f = 0; f < 2; ++f) wm::store_matrix_sync(sC + warp * 32 + f * 16, acc[f], LDC, wm::mem_row_major);
  __syncthreads();
  const index_t cols = xw - c0 < CT ? xw - c0 : CT;
  for (int e = threadIdx.x; e < 16 * CT; e += 128) {
    const int r = e / CT, c = e % CT;
    const std::int32_t pr = pair[r];
    if (pr >= 0 && c < cols) pair_rows[static_cast<index_t>(pr) * xw + c0 + c] = sC[r * LDC + c];
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace sparse_ffn
