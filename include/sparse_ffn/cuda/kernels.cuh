// sparse_ffn — CUDA kernels of the forward pass. All are deterministic: every output element is
// produced by one thread with a fixed summation order (no floating-point atomics).
//
//   prepare_x   X (any dtype) -> float rows padded to ld (zeros), so every later load is 16-byte aligned
//   keys        per (token, slot) pair and chunk of rows: h = act(k_i·x + b1 [, u_i·x + b3]), one warp
//               per row with 16-byte loads and a fixed butterfly reduction; also the oracle's dense
//               pass (pairs = every block of every token)
//   values      per (token, group of slots, column tile): Σ_slots Σ_i (w·h_i)·v_i[cols] into a partial
//               row; many thread blocks in flight for decode (n·groups·tiles), 16-byte coalesced loads
//   combine     y = Σ_groups partial (in order) + b2, converted to the output dtype
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

/// Device error word bits.
enum device_error : int { bad_block_index = 1, bad_token_id = 2 };

template <class Tx>
__global__ void prepare_x(const Tx* __restrict__ x, float* __restrict__ xpad, index_t n, index_t d,
                          index_t ld) {
  const index_t total = n * ld;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t t = e / ld, c = e % ld;
    xpad[e] = c < d ? to_float(x[t * d + c]) : 0.0f;
  }
}

/// One thread block per (pair p, chunk of rows). Pair p belongs to token p / per_token; its block is
/// blocks[p] (routed) or p % per_token (dense pass). Outputs are indexed [p][i] (i < G): `h` gets the
/// activation, `pre`/`up` (optional) the pre-activations.
template <class T, class Act, int G>
__global__ void __launch_bounds__(k_threads)
    keys(blocked_ffn_view<T> w, const float* __restrict__ xpad, index_t xw,
         const block_index_t* __restrict__ blocks, index_t pairs, index_t per_token, float* __restrict__ h,
         float* __restrict__ pre, float* __restrict__ up, int* __restrict__ error) {
  constexpr int R = G < k_rows_per_cta ? G : k_rows_per_cta;
  constexpr int chunks = (G + R - 1) / R;
  using RU = detail::row_unit<T>;
  constexpr int V = detail::vec<T>::n, U = RU::values;
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
    const T* key = w.keys(b) + r * ld;
    const T* upr = Act::gated ? w.up(b) + r * ld : nullptr;
    float acc = 0.0f, accu = 0.0f;
    for (index_t q = static_cast<index_t>(lane) * V; q < end; q += 32 * V) {
      float kv[U], xv[U];
      RU::load(key, q, xw, kv);
      detail::load_x<T>(x, q, xv);
#pragma unroll
      for (int e = 0; e < U; ++e) acc = fmaf(kv[e], xv[e], acc);
      if constexpr (Act::gated) {
        float uv[U];
        RU::load(upr, q, xw, uv);
#pragma unroll
        for (int e = 0; e < U; ++e) accu = fmaf(uv[e], xv[e], accu);
      }
    }
    acc = detail::warp_sum(acc);
    if constexpr (Act::gated) accu = detail::warp_sum(accu);
    if (lane == 0) {
      const index_t neuron = b * G + r;
      const float a = acc + (w.b1 ? w.b1[neuron] : 0.0f);
      const float u = Act::gated ? accu + (w.b3 ? w.b3[neuron] : 0.0f) : 0.0f;
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

template <class Ty>
__global__ void combine(const float* __restrict__ partial, const float* __restrict__ b2, Ty* __restrict__ y,
                        index_t n, index_t d, index_t ld, index_t groups) {
  const index_t total = n * d;
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t t = e / d, c = e % d;
    float s = 0.0f;
    for (index_t g = 0; g < groups; ++g) s += partial[(t * groups + g) * ld + c];
    y[e] = from_float<Ty>(s + (b2 ? b2[c] : 0.0f));
  }
}

}  // namespace kernels
}  // namespace cuda
}  // namespace sparse_ffn
