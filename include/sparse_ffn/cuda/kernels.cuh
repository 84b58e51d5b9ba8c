// sparse_ffn — CUDA kernels of the forward pass. All are deterministic: every output element is
// produced by one thread with a fixed summation order (no floating-point atomics).
//
//   prepare_x    X (any dtype) -> float rows padded to ld (zeros), so every later load is 16-byte
//                aligned; zeroes the call's error word
//   keys_values  decode (n < 16): per (token, slot, chunk of rows) the chunk's activations in shared
//                memory, then its nonzero value rows streamed into one partial row
//   keys         per (token, slot) pair and chunk of rows: h = act(k_i·x + b1 [, u_i·x + b3]), one warp
//                per row with 16-byte loads and a fixed butterfly reduction; also the oracle's dense
//                pass (pairs = every block of every token)
//   values       per (token, group of slots, column tile): Σ_slots Σ_i (w·h_i)·v_i[cols] into a partial
//                row (batched float / q8 / q4)
//   combine      y = Σ partial rows (fixed order) + b2, converted to the output dtype
// Device-side data (routing tables, token ids) is range-checked: a bad entry is replaced by a valid
// one (no out-of-bounds access) and recorded in the workspace's error word.
#pragma once

#include "../activation.hpp"
#include "../layout.hpp"
#include "common.cuh"

namespace sparse_ffn {
namespace cuda {
namespace kernels {

inline constexpr int k_threads = 128;  ///< threads per block of every kernel here
inline constexpr int k_rows_per_cta = 16;

/// Device error word bits. bad_routing_order: a backward's learned-gate routing row whose slots
/// [0, pinned) are not the pinned blocks in order, or whose other slots hold a pinned block.
enum device_error : int { bad_block_index = 1, bad_token_id = 2, bad_routing_order = 4 };

/// X -> padded float rows; also zeroes the call's error word (the first kernel of the call when no
/// scoring kernel does it: hash, a caller's routing, the oracle).
template <class Tx>
__global__ void prepare_x(const Tx* __restrict__ x, float* __restrict__ xpad, index_t n, index_t d,
                          index_t ld, int* __restrict__ error) {
  detail::grid_dependency();
  if (blockIdx.x == 0 && threadIdx.x == 0) *error = 0;
  const index_t total = n * ld;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t t = e / ld, c = e % ld;
    xpad[e] = c < d ? to_float(x[t * d + c]) : 0.0f;
  }
}

/// One warp's dot products of a key row (and, gated, its up row) with x: lane-strided 16-byte units,
/// `key_units` units loaded before any is used (more bytes in flight than a loop whose every
/// iteration waits at its bound check), each lane's units added in ascending order, then a fixed
/// butterfly across the lanes. Every lane returns the sums.
template <class T>
struct key_unroll {
  static constexpr int values = detail::row_unit<T>::values;
  static constexpr int units = values <= 8 ? 4 : (values <= 16 ? 2 : 1);
};

template <class T, bool Gated>
__device__ __forceinline__ void row_dots(const T* __restrict__ key, const T* __restrict__ upr,
                                         const float* __restrict__ x, index_t xw, index_t end, int lane,
                                         float& a, float& u) {
  using RU = detail::row_unit<T>;
  constexpr int V = detail::vec<T>::n, U = RU::values, KU = key_unroll<T>::units;
  constexpr index_t stride = 32 * V;
  float acc = 0.0f, accu = 0.0f;
  index_t q = static_cast<index_t>(lane) * V;
  for (; q + (KU - 1) * stride < end; q += KU * stride) {
    float kv[KU][U], uv[Gated ? KU : 1][U];
#pragma unroll
    for (int j = 0; j < KU; ++j) {
      RU::load(key, q + j * stride, xw, kv[j]);
      if constexpr (Gated) RU::load(upr, q + j * stride, xw, uv[j]);
    }
#pragma unroll
    for (int j = 0; j < KU; ++j) {
      float xv[U];
      detail::load_x<T>(x, q + j * stride, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) acc = fmaf(kv[j][e], xv[e], acc);
      if constexpr (Gated)
#pragma unroll
        for (int e = 0; e < U; ++e) accu = fmaf(uv[j][e], xv[e], accu);
    }
  }
  for (; q < end; q += stride) {
    float kv[U], xv[U];
    RU::load(key, q, xw, kv);
    detail::load_x<T>(x, q, xv);
#pragma unroll
    for (int e = 0; e < U; ++e) acc = fmaf(kv[e], xv[e], acc);
    if constexpr (Gated) {
      float uv[U];
      RU::load(upr, q, xw, uv);
#pragma unroll
      for (int e = 0; e < U; ++e) accu = fmaf(uv[e], xv[e], accu);
    }
  }
  a = detail::warp_sum(acc);
  u = Gated ? detail::warp_sum(accu) : 0.0f;
}

/// Pre-activations of neuron r of block b (one warp, row_dots): a = k·x + b1, u = up·x + b3 (gated).
template <class T, bool Gated>
__device__ __forceinline__ void neuron_pre(const blocked_ffn_view<T>& w, index_t b, int r, int G,
                                           const float* __restrict__ x, index_t xw, index_t end, int lane,
                                           float& a, float& u) {
  const index_t ld = w.layout.ld, neuron = b * G + r;
  row_dots<T, Gated>(w.keys(b) + r * ld, Gated ? w.up(b) + r * ld : nullptr, x, xw, end, lane, a, u);
  a += w.b1 ? w.b1[neuron] : 0.0f;
  if (Gated) u += w.b3 ? w.b3[neuron] : 0.0f;
}

/// One thread block per (pair p, chunk of rows). Pair p belongs to token p / per_token; its block is
/// blocks[p] (routed) or p % per_token (dense pass). Outputs are indexed [p][i] (i < G): `h` gets the
/// activation, `pre`/`up` (optional) the pre-activations.
template <class T, class Act, int G>
__global__ void __launch_bounds__(k_threads)
    keys(blocked_ffn_view<T> w, const float* __restrict__ xpad, index_t xw,
         const block_index_t* __restrict__ blocks, index_t pairs, index_t per_token, float* __restrict__ h,
         float* __restrict__ pre, float* __restrict__ up, int* __restrict__ error) {
  detail::grid_dependency();
  constexpr int R = G < k_rows_per_cta ? G : k_rows_per_cta;
  constexpr int chunks = (G + R - 1) / R;
  using RU = detail::row_unit<T>;
  const index_t item = blockIdx.x;
  const index_t p = item / chunks;
  if (p >= pairs) return;
  const int r0 = static_cast<int>(item % chunks) * R;
  const index_t t = p / per_token;
  index_t b = blocks ? blocks[p] : p % per_token;
  if (b < 0 || b >= w.layout.num_blocks) {
    if (threadIdx.x == 0) atomicOr(error, bad_block_index);
    b = 0;
  }
  const index_t ld = w.layout.ld, end = RU::end(ld, xw);
  const float* x = xpad + t * xw;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = r0 + warp; r < r0 + R; r += k_threads / 32) {
    float a, u;
    neuron_pre<T, Act::gated>(w, b, r, G, x, xw, end, lane, a, u);
    if (lane == 0) {
      const index_t at = p * G + r;
      if (h) h[at] = activate<Act>(a, u);
      if (pre) pre[at] = a;
      if (up) up[at] = u;
    }
  }
}

/// One thread block per (token t, group of `group` slots, column tile of k_threads 16-byte units):
/// partial[t][grp][cols] = Σ_{j in group} Σ_i weight_tj · h_tj,i · V_b(tj)[i][cols]. Each thread owns
/// one unit of every value row (row_unit: V columns, or a q8/q4 quant_unit); partial rows are xw wide.
template <class T, int G>
__global__ void __launch_bounds__(k_threads)
    values(blocked_ffn_view<T> w, const block_index_t* __restrict__ blocks, const float* __restrict__ weights,
           const float* __restrict__ h, index_t n, index_t k, index_t group, index_t groups, index_t tiles,
           index_t xw, float* __restrict__ partial, int* __restrict__ error) {
  detail::grid_dependency();
  using RU = detail::row_unit<T>;
  constexpr int V = detail::vec<T>::n, U = RU::values;
  __shared__ float s[G];
  const index_t item = blockIdx.x;
  const index_t tile = item % tiles, grp = (item / tiles) % groups, t = item / (tiles * groups);
  if (t >= n) return;
  const index_t ld = w.layout.ld, end = RU::end(ld, xw);
  const index_t c = (tile * k_threads + static_cast<index_t>(threadIdx.x)) * V;  // element offset in a row
  float acc[U];
#pragma unroll
  for (int e = 0; e < U; ++e) acc[e] = 0.0f;
  const index_t j_end = (grp + 1) * group < k ? (grp + 1) * group : k;
  for (index_t j = grp * group; j < j_end; ++j) {
    index_t b = blocks[t * k + j];
    if (b < 0 || b >= w.layout.num_blocks) {
      if (threadIdx.x == 0) atomicOr(error, bad_block_index);
      b = 0;
    }
    const float wt = weights ? weights[t * k + j] : 1.0f;
    __syncthreads();
    for (int i = threadIdx.x; i < G; i += k_threads) s[i] = wt * h[(t * k + j) * G + i];
    __syncthreads();
    if (c < end) {
      const T* v = w.values(b);
      for (int i = 0; i < G; ++i) {
        const float si = s[i];
        if (si == 0.0f) continue;  // uniform across the block: ReLU rows are skipped, not read
        float vv[U];
        RU::load(v + static_cast<index_t>(i) * ld, c, xw, vv);
#pragma unroll
        for (int e = 0; e < U; ++e) acc[e] = fmaf(si, vv[e], acc[e]);
      }
    }
  }
  if (c < end) {
    float* out = partial + (t * groups + grp) * xw;
#pragma unroll
    for (int e = 0; e < U; ++e) out[RU::column(c, e)] = acc[e];
  }
}

/// Rows of a block that one thread block of keys_values handles: the block's g rows, halved while the
/// launch would have fewer than k_decode_ctas thread blocks (down to min(g, 8) rows). A fixed function
/// of (n, k, g), not of the GPU, so results are the same on every device.
inline constexpr index_t k_decode_ctas = 512;
SPARSE_FFN_HD index_t decode_rows(index_t n, index_t k, index_t G) {
  const index_t lo = G < 8 ? G : 8;
  index_t R = G;
  while (R / 2 >= lo && n * k * ((G + R - 1) / R) < k_decode_ctas) R /= 2;
  return R;
}

/// keys_values' unrolling: value rows in flight per thread and 16-byte column units per thread per
/// pass (registers: rows × units × row_unit<T>::values floats).
template <class T>
struct decode_unroll {
  static constexpr int values = detail::row_unit<T>::values;
  static constexpr int units = values <= 8 ? 2 : 1;
  static constexpr int rows = values <= 16 ? 4 : 2;
};

/// keys_values keeps the token's x in shared memory up to this many bytes (d ≤ 12288 floats; above,
/// it reads the padded X through L1).
inline constexpr index_t k_decode_x_shared_max = 48 * 1024;

/// The fused decode path (n < k_batched_threshold, every dtype): one thread block per (pair
/// p = t·k + j, chunk of R rows of block b = blocks[p]); x_t in shared memory (x_shared: launched
/// with xw floats of dynamic shared memory).
///   1. h_i = act(k_i·x_t + b1 [, u_i·x_t + b3]) for its rows: one warp per row (row_dots, as
///      `keys`); the coefficients w_p·h_i stay in shared memory (pre/up saved if
///      asked). H never goes through global memory.
///   2. the rows with a nonzero coefficient are listed in row order; each thread then streams its
///      column units of those value rows with unconditional 16-byte loads (`rows` rows × `units` units
///      in flight, 32-bit row offsets), accumulating in that fixed row order.
///   3. the sums go to partial row p·chunks + chunk (xw floats); combine adds a token's k·chunks rows in
///      a fixed order. No atomics on floats.
template <class T, class Act, int G>
__global__ void __launch_bounds__(k_threads)
    keys_values(blocked_ffn_view<T> w, const float* __restrict__ xpad, index_t xw,
                const block_index_t* __restrict__ blocks, const float* __restrict__ weights, index_t pairs,
                index_t k, int R, int chunks, bool x_shared, float* __restrict__ partial,
                float* __restrict__ pre, float* __restrict__ up, int* __restrict__ error) {
  detail::grid_dependency();
  using RU = detail::row_unit<T>;
  using DU = decode_unroll<T>;
  constexpr int V = detail::vec<T>::n, U = RU::values, CU = DU::units, RD = DU::rows;
  __shared__ float coef[G];
  __shared__ int nz[G];
  __shared__ int nnz;
  const index_t item = blockIdx.x;
  const index_t p = item / chunks;
  if (p >= pairs) return;
  const int chunk = static_cast<int>(item % chunks);
  const int r0 = chunk * R, r1 = r0 + R < G ? r0 + R : G;
  index_t b = blocks[p];
  if (b < 0 || b >= w.layout.num_blocks) {
    if (threadIdx.x == 0) atomicOr(error, bad_block_index);
    b = 0;
  }
  const float wt = weights[p];
  const index_t ld = w.layout.ld, end = RU::end(ld, xw);
  const float* x = xpad + (p / k) * xw;
  if (x_shared) {  // the token's x in shared memory (dynamic, xw floats): read by every row of the chunk
    extern __shared__ float4 xs4[];
    const float4* src = reinterpret_cast<const float4*>(x);
    for (index_t e = threadIdx.x; e < xw / 4; e += k_threads) xs4[e] = src[e];
    x = reinterpret_cast<const float*>(xs4);
    __syncthreads();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // 1. activations of rows [r0, r1)
  for (int r = r0 + warp; r < r1; r += k_threads / 32) {
    float a, u;
    neuron_pre<T, Act::gated>(w, b, r, G, x, xw, end, lane, a, u);
    if (lane == 0) {
      coef[r - r0] = wt * activate<Act>(a, u);
      const index_t at = p * G + r;
      if (pre) pre[at] = a;
      if (up) up[at] = u;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // at most g entries: cheaper than a parallel scan's synchronisation
    int m = 0;
    for (int i = 0; i < r1 - r0; ++i)
      if (coef[i] != 0.0f) nz[m++] = i;
    nnz = m;
  }
  __syncthreads();
  // 2. value rows [r0, r1) with a nonzero coefficient, columns in units of 16 bytes
  const int m = nnz;
  const T* v = w.values(b) + static_cast<index_t>(r0) * ld;
  const unsigned uld = static_cast<unsigned>(ld);  // g·ld < 2^31 (layout checks)
  float* out = partial + (p * chunks + chunk) * xw;
  for (index_t c0 = static_cast<index_t>(threadIdx.x) * V; c0 < end;
       c0 += static_cast<index_t>(k_threads) * V * CU) {
    index_t cu[CU];
#pragma unroll
    for (int u = 0; u < CU; ++u) {
      const index_t c = c0 + static_cast<index_t>(u) * k_threads * V;
      cu[u] = c < end ? c : c0;  // past the end: reload a valid unit, never stored
    }
    float acc[CU][U];
#pragma unroll
    for (int u = 0; u < CU; ++u)
#pragma unroll
      for (int e = 0; e < U; ++e) acc[u][e] = 0.0f;
    int i = 0;
    for (; i + RD <= m; i += RD) {
      float vv[RD][CU][U];
#pragma unroll
      for (int rr = 0; rr < RD; ++rr)
#pragma unroll
        for (int u = 0; u < CU; ++u)
          RU::load(v + static_cast<unsigned>(nz[i + rr]) * uld, cu[u], xw, vv[rr][u]);
#pragma unroll
      for (int rr = 0; rr < RD; ++rr) {
        const float sc = coef[nz[i + rr]];
#pragma unroll
        for (int u = 0; u < CU; ++u)
#pragma unroll
          for (int e = 0; e < U; ++e) acc[u][e] = fmaf(sc, vv[rr][u][e], acc[u][e]);
      }
    }
    for (; i < m; ++i) {
      const float sc = coef[nz[i]];
#pragma unroll
      for (int u = 0; u < CU; ++u) {
        float vv[U];
        RU::load(v + static_cast<unsigned>(nz[i]) * uld, cu[u], xw, vv);
#pragma unroll
        for (int e = 0; e < U; ++e) acc[u][e] = fmaf(sc, vv[e], acc[u][e]);
      }
    }
#pragma unroll
    for (int u = 0; u < CU; ++u) {
      const index_t c = c0 + static_cast<index_t>(u) * k_threads * V;
      if (c < end)
#pragma unroll
        for (int e = 0; e < U; ++e) out[RU::column(c, e)] = acc[u][e];
    }
  }
}

/// Column tile of one combine thread block: one column per lane.
inline constexpr index_t k_combine_cols = 32;

/// y[t][c] = Σ_{g < groups} partial[t·groups + g][c] + b2[c] in the output dtype. One thread block per
/// (token, 32 columns): warp w adds groups [w·q, (w+1)·q) in order (q = ⌈groups / warps⌉), then the
/// warps' sums are added in warp order — a fixed order, whatever the GPU; 128-byte coalesced rows.
template <class Ty>
__global__ void __launch_bounds__(k_threads)
    combine(const float* __restrict__ partial, const float* __restrict__ b2, Ty* __restrict__ y, index_t n,
            index_t d, index_t ld, index_t groups) {
  detail::grid_dependency();
  constexpr int W = k_threads / 32;
  __shared__ float red[W][32];
  const index_t tiles = (d + k_combine_cols - 1) / k_combine_cols;
  const index_t t = blockIdx.x / tiles;
  if (t >= n) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const index_t c = (blockIdx.x % tiles) * k_combine_cols + lane;
  const index_t q = (groups + W - 1) / W, g0 = warp * q, g1 = g0 + q < groups ? g0 + q : groups;
  float s = 0.0f;
  if (c < d)
    for (index_t g = g0; g < g1; ++g) s += partial[(t * groups + g) * ld + c];
  red[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && c < d) {
    float total = red[0][lane];
#pragma unroll
    for (int wi = 1; wi < W; ++wi) total += red[wi][lane];
    y[t * d + c] = from_float<Ty>(total + (b2 ? b2[c] : 0.0f));
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace sparse_ffn
