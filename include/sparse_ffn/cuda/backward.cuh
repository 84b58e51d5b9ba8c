// sparse_ffn — the GPU backward pass (training), CUB style like cuda::forward: two-phase workspace,
// device pointers, a stream, a status; no allocation and no host synchronisation.
//
//   std::size_t bytes = 0;
//   cuda::backward<P>(nullptr, bytes, model, n, d_x, d_dy, cache, d_dx, grads, args);     // 1. size
//   cudaMalloc(&d_ws, bytes);
//   cuda::backward<P>(d_ws, bytes, model, n, d_x, d_dy, cache, d_dx, grads, args, stream); // 2. run
//
// The same computation as cpu::backward (cpu/backward.hpp has the formulas): from dY and what the
// forward kept (cuda::forward's forward_cache: the routing table, the block weights, the
// pre-activations and up projections of the selected neurons), dX and the gradients of the selected
// blocks in grad_layout (grads.hpp), the biases, the learned gate's rows and bias (straight-through
// for the selection, the softmax differentiated) and dL/d(block weight) per routing slot. Every
// pointer is a device pointer; the arguments are validated on the host first with the CPU path's
// checks (detail::check_backward_args) and messages. The routing table lives on the device and is
// checked there: an entry outside [0, B) is left out of every sum (never an out-of-bounds access)
// and sets kernels::bad_block_index in the workspace's error word; a learned-gate row whose slots
// [0, pinned) are not the pinned blocks in order sets kernels::bad_routing_order
// (cuda::device_errors reads the word).
//
// Launches (detail::plan_backward_steps; tests count them):
//   prepare      X and dY -> padded float rows (the learned gate: linear_scores, the forward's own
//                kernel, recomputes the logits bit for bit and pads X), error word zeroed
//   routing      the table range-checked into the workspace; pair ids; dw zeroed
//   sort         (token, slot) pairs grouped by block with CUB's stable radix sort (tokens ascending
//                within a block), then per-block offsets by binary search
//   pairs        per (token, slot) pair: s_i = v_i·dY_t (one warp per row), da, du, w·h, dw
//   weights      per (block, 512-column tile): dW2, dW1, dW3 rows (8 rows in registers, the block's
//                pairs in order) and db1, db3; blocks no token chose are written with zeros
//                (accumulate: left alone)
//   db2, route   dY's column sums; dw into grads.route_weights
//   gate         learned gate: dlogits through the softmax per token, then dWg and dbg per (block,
//                column tile)
//   dx           per (token, 512-column tile): Σ slots Σ rows da·k_i + du·u_i (+ Σ dlogit·Wg_c)
// Every float is summed by one thread in a fixed order (no floating-point atomics): the results are
// bit-identical across runs on the same GPU. They are not bit-identical to the CPU's (other summation
// orders), and dX's sums differ in order from cpu::backward's.
//
// The performance of these kernels has not been measured on a GPU (docs/cuda.md): they are written
// for correctness first — coalesced 16-byte rows, each block's weights read once per pair — and the
// weight-gradient pass is a plain outer product, not a tensor-core GEMM.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include "../grads.hpp"
#include "forward.cuh"

namespace sparse_ffn {
namespace cuda {
namespace kernels {

/// Columns of one thread block of the weights / gate / dX passes (4 per thread).
inline constexpr int k_bwd_cols = k_threads * 4;
/// Rows of a weight gradient summed together in registers by one thread (per column quad).
inline constexpr int k_bwd_rows = 8;

/// The cached routing table into the workspace, range-checked: a block outside [0, B) becomes B
/// (sorted last, left out of every sum) and sets bad_block_index; for the learned gate
/// (gate_order), slot j < pinned must hold block j and the others a routed block, else
/// bad_routing_order. Also the pair ids 0..nk-1 for the sort and dw = 0.
__global__ void bwd_routing(const block_index_t* __restrict__ blocks, index_t nk, index_t k, index_t B,
                            index_t pinned, bool gate_order, block_index_t* __restrict__ clean,
                            std::int32_t* __restrict__ ids, float* __restrict__ dw, int* __restrict__ error) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(e, nk) {
    block_index_t b = blocks[e];
    if (b < 0 || b >= B) {
      atomicOr(error, bad_block_index);
      b = static_cast<block_index_t>(B);
    } else if (gate_order) {
      const index_t j = e % k;
      if (j < pinned ? b != j : b < pinned) atomicOr(error, bad_routing_order);
    }
    clean[e] = b;
    ids[e] = static_cast<std::int32_t>(e);
    dw[e] = 0.0f;
  }
}

/// offsets[b] = the first sorted position of block b (b <= B): binary search in the sorted blocks.
/// offsets[B] counts the valid pairs (the invalid ones, block B, come after them).
__global__ void bwd_offsets(const block_index_t* __restrict__ sorted, index_t nk, index_t B,
                            int* __restrict__ offsets) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(b, B + 1) {
    index_t lo = 0, hi = nk;
    while (lo < hi) {
      const index_t mid = lo + (hi - lo) / 2;
      if (sorted[mid] < b)
        lo = mid + 1;
      else
        hi = mid;
    }
    offsets[b] = static_cast<int>(lo);
  }
}

/// One thread block per sorted pair (token t, slot j, block b, weight w): s_i = v_i·dy_t for the
/// block's G rows (one warp per row, the forward's row_dots), then, by lane 0,
/// da_i, du_i = activation_backward(a_i, u_i, w·s_i) and w·h_i into [pair][i] arrays, and
/// dw = Σ_i h_i s_i (i ascending).
template <class T, class Act, int G>
__global__ void __launch_bounds__(k_threads)
    bwd_pairs(const blocked_ffn_view<T> w, const float* __restrict__ dypad, index_t xw,
              const block_index_t* __restrict__ sorted_blocks, const std::int32_t* __restrict__ sorted_pairs,
              const int* __restrict__ offsets, index_t B, index_t k, const float* __restrict__ cweights,
              const float* __restrict__ pre, const float* __restrict__ up, float* __restrict__ da,
              float* __restrict__ du, float* __restrict__ wh, float* __restrict__ dw) {
  detail::grid_dependency();
  __shared__ float hs[G];
  const index_t p = blockIdx.x;
  if (p >= offsets[B]) return;
  const index_t e = sorted_pairs[p], t = e / k, b = sorted_blocks[p], ld = w.layout.ld;
  const float wt = cweights ? cweights[e] : 1.0f;
  const float* dyt = dypad + t * xw;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = warp; i < G; i += k_threads / 32) {
    float s = 0.0f, unused = 0.0f;
    row_dots<T, false>(w.values(b) + i * ld, nullptr, dyt, xw, detail::row_unit<T>::end(ld, xw), lane, s,
                       unused);
    if (lane == 0) {
      const index_t at = e * G + i;
      const float a = pre[at], u = Act::gated ? up[at] : 0.0f;
      float dav = 0.0f, duv = 0.0f;
      activation_backward<Act>(a, u, wt * s, dav, duv);
      const float h = activate<Act>(a, u);
      da[at] = dav;
      if constexpr (Act::gated) du[at] = duv;
      wh[at] = wt * h;
      hs[i] = h * s;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int i = 0; i < G; ++i) acc += hs[i];
    dw[e] = acc;
  }
}

/// out[i][c] (+)= Σ over the block's pairs q in [lo, hi) (sorted order) of coef[pair][i] · src[t][c],
/// for the G rows i of one matrix and the 4 columns at c (one thread). k_bwd_rows rows at a time.
template <int G>
__device__ __forceinline__ void bwd_outer_rows(float* __restrict__ out, index_t gld,
                                               const float* __restrict__ coef, const float* __restrict__ src,
                                               index_t xw, const std::int32_t* __restrict__ pairs, index_t lo,
                                               index_t hi, index_t k, index_t c, bool accumulate) {
  constexpr int R = G < k_bwd_rows ? G : k_bwd_rows;
  for (int i0 = 0; i0 < G; i0 += R) {
    float4 acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (index_t q = lo; q < hi; ++q) {
      const index_t e = pairs[q], t = e / k;
      const float4 sv = *reinterpret_cast<const float4*>(src + t * xw + c);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (i0 + r >= G) break;
        const float cf = coef[e * G + i0 + r];
        acc[r].x = fmaf(cf, sv.x, acc[r].x);
        acc[r].y = fmaf(cf, sv.y, acc[r].y);
        acc[r].z = fmaf(cf, sv.z, acc[r].z);
        acc[r].w = fmaf(cf, sv.w, acc[r].w);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (i0 + r >= G) break;
      float4* o = reinterpret_cast<float4*>(out + (i0 + r) * gld + c);
      if (accumulate) {
        const float4 old = *o;
        acc[r].x += old.x, acc[r].y += old.y, acc[r].z += old.z, acc[r].w += old.w;
      }
      *o = acc[r];
    }
  }
}

/// One thread block per (block b, column tile): dW2 = Σ w·h · dY, dW1 = Σ da · X, dW3 = Σ du · X over
/// the block's pairs, and (column tile 0) db1, db3. A block no token chose gets zeros (its sums are
/// empty), padding columns included (X and dY are zero-padded); with `accumulate` it is not touched.
template <class Act, int G>
__global__ void __launch_bounds__(k_threads)
    bwd_weights(const ffn_grads_view gr, const float* __restrict__ xpad, const float* __restrict__ dypad,
                index_t xw, const std::int32_t* __restrict__ sorted_pairs, const int* __restrict__ offsets,
                index_t k, const float* __restrict__ da, const float* __restrict__ du,
                const float* __restrict__ wh, bool accumulate) {
  detail::grid_dependency();
  const index_t b = blockIdx.x, lo = offsets[b], hi = offsets[b + 1];
  if (hi == lo && accumulate) return;
  if (blockIdx.y == 0)
    for (index_t i = threadIdx.x; i < G; i += k_threads) {
      float s1 = 0.0f, s3 = 0.0f;
      for (index_t q = lo; q < hi; ++q) {
        const index_t at = static_cast<index_t>(sorted_pairs[q]) * G + i;
        s1 += da[at];
        if constexpr (Act::gated) s3 += du[at];
      }
      if (gr.b1) gr.b1[b * G + i] = accumulate ? gr.b1[b * G + i] + s1 : s1;
      if constexpr (Act::gated)
        if (gr.b3) gr.b3[b * G + i] = accumulate ? gr.b3[b * G + i] + s3 : s3;
    }
  const index_t gld = gr.layout.ld, c = (static_cast<index_t>(blockIdx.y) * k_threads + threadIdx.x) * 4;
  if (!gr.weights || c >= gld) return;
  bwd_outer_rows<G>(gr.values(b), gld, wh, dypad, xw, sorted_pairs, lo, hi, k, c, accumulate);
  bwd_outer_rows<G>(gr.keys(b), gld, da, xpad, xw, sorted_pairs, lo, hi, k, c, accumulate);
  if constexpr (Act::gated)
    bwd_outer_rows<G>(gr.up(b), gld, du, xpad, xw, sorted_pairs, lo, hi, k, c, accumulate);
}

/// db2 = Σ_t dY_t (tokens in order, one thread per column) and route_weights = dw (element-wise).
__global__ void bwd_db2_route(const float* __restrict__ dypad, index_t n, index_t d, index_t xw,
                              const float* __restrict__ dw, index_t nk, float* __restrict__ db2,
                              float* __restrict__ route, bool accumulate) {
  detail::grid_dependency();
  if (db2) SPARSE_FFN_GRID_STRIDE(c, d) {
      float s = 0.0f;
      for (index_t t = 0; t < n; ++t) s += dypad[t * xw + c];
      db2[c] = accumulate ? db2[c] + s : s;
    }
  if (route) SPARSE_FFN_GRID_STRIDE(e, nk) route[e] = accumulate ? route[e] + dw[e] : dw[e];
}

/// The learned gate's dL/dlogit for one token per thread (cpu::backward's formulas, same order):
/// dlog[t][c] over every block c (zero for the pinned ones, and for a row with a bad entry).
template <class Sel>
__global__ void bwd_gate_logits(const float* __restrict__ logits, const block_index_t* __restrict__ blocks,
                                const float* __restrict__ dw, index_t n, index_t k, index_t B, index_t P,
                                bool renormalize, float* __restrict__ dlog) {
  detail::grid_dependency();
  SPARSE_FFN_GRID_STRIDE(t, n) {
    const float* lg = logits + t * B;
    const block_index_t* bl = blocks + t * k;
    float* dl = dlog + t * B;
    for (index_t c = 0; c < B; ++c) dl[c] = 0.0f;
    bool valid = k > P;
    for (index_t j = 0; j < k; ++j) valid &= bl[j] < B;
    if (!valid) continue;
    const float max_logit = lg[bl[P]];
    float sum_all = 0.0f, sum_topk = 0.0f;
    for (index_t c = P; c < B; ++c) sum_all += Sel::softmax_term(lg[c], max_logit);
    for (index_t j = P; j < k; ++j) sum_topk += Sel::softmax_term(lg[bl[j]], max_logit);
    auto prob = [&](index_t c) {
      return Sel::weight(Sel::softmax_term(lg[c], max_logit), sum_all, sum_topk, renormalize);
    };
    float gsum = 0.0f;
    for (index_t j = P; j < k; ++j) gsum += dw[t * k + j] * prob(bl[j]);
    if (!renormalize)
      for (index_t c = P; c < B; ++c) dl[c] = -prob(c) * gsum;
    for (index_t j = P; j < k; ++j) {
      const float p = prob(bl[j]);
      dl[bl[j]] = renormalize ? p * (dw[t * k + j] - gsum) : dl[bl[j]] + p * dw[t * k + j];
    }
  }
}

/// One thread block per (gate row c, column tile): dWg_c (+)= Σ_t dlog[t][c] · x_t (tokens in order),
/// and (tile 0, thread 0) dbg_c (+)= Σ_t dlog[t][c].
__global__ void __launch_bounds__(k_threads)
    bwd_gate_rows(const float* __restrict__ dlog, const float* __restrict__ xpad, index_t n, index_t B,
                  index_t xw, index_t gld, float* __restrict__ gw, float* __restrict__ gb, bool accumulate) {
  detail::grid_dependency();
  const index_t cb = blockIdx.x;
  if (gb && blockIdx.y == 0 && threadIdx.x == 0) {
    float s = 0.0f;
    for (index_t t = 0; t < n; ++t) s += dlog[t * B + cb];
    gb[cb] = accumulate ? gb[cb] + s : s;
  }
  const index_t c = (static_cast<index_t>(blockIdx.y) * k_threads + threadIdx.x) * 4;
  if (!gw || c >= gld) return;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (index_t t = 0; t < n; ++t) {
    const float cf = dlog[t * B + cb];
    if (cf == 0.0f) continue;
    const float4 xv = *reinterpret_cast<const float4*>(xpad + t * xw + c);
    acc.x = fmaf(cf, xv.x, acc.x);
    acc.y = fmaf(cf, xv.y, acc.y);
    acc.z = fmaf(cf, xv.z, acc.z);
    acc.w = fmaf(cf, xv.w, acc.w);
  }
  float4* o = reinterpret_cast<float4*>(gw + cb * gld + c);
  if (accumulate) {
    const float4 old = *o;
    acc.x += old.x, acc.y += old.y, acc.z += old.z, acc.w += old.w;
  }
  *o = acc;
}

/// acc[0..3] += coef · row[c..c+3] (a weight row of type T; c + 3 < ld).
template <class T>
__device__ __forceinline__ void bwd_axpy4(float coef, const T* __restrict__ row, index_t c, float (&acc)[4]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) acc[q] = fmaf(coef, to_float(row[c + q]), acc[q]);
}

/// One thread block per (token t, column tile): dx_t = Σ_slots Σ_i da_i k_i (+ du_i u_i) over the
/// token's valid slots in order, then (learned gate) + Σ_c dlog[t][c] Wg_c over the blocks in order.
template <class T, class Tdx, bool Gated, bool Gate, int G>
__global__ void __launch_bounds__(k_threads)
    bwd_dx(const blocked_ffn_view<T> w, const block_index_t* __restrict__ blocks, index_t k, index_t B,
           const float* __restrict__ da, const float* __restrict__ du, const float* __restrict__ dlog,
           Tdx* __restrict__ dx) {
  detail::grid_dependency();
  const index_t t = blockIdx.x, d = w.layout.d_model, ld = w.layout.ld;
  const index_t c = (static_cast<index_t>(blockIdx.y) * k_threads + threadIdx.x) * 4;
  if (c >= d) return;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (index_t j = 0; j < k; ++j) {
    const index_t b = blocks[t * k + j], e = t * k + j;
    if (b >= B) continue;
    for (int i = 0; i < G; ++i) {
      const float a = da[e * G + i];
      if (a != 0.0f) bwd_axpy4(a, w.keys(b) + i * ld, c, acc);
      if constexpr (Gated) {
        const float u = du[e * G + i];
        if (u != 0.0f) bwd_axpy4(u, w.up(b) + i * ld, c, acc);
      }
    }
  }
  if constexpr (Gate)
    for (index_t cb = w.layout.pinned; cb < B; ++cb) {
      const float g = dlog[t * B + cb];
      if (g != 0.0f) bwd_axpy4(g, w.gate_w + cb * ld, c, acc);
    }
#pragma unroll
  for (int q = 0; q < 4; ++q)
    if (c + q < d) dx[t * d + c + q] = from_float<Tdx>(acc[q]);
}

}  // namespace kernels

namespace detail {

/// Floats per row of the padded X and dY: the weights' row stride or the gradients' (float), whichever
/// is wider — the key/value passes read ld columns, the gradient passes grad_layout's ld (an odd
/// number of 64-byte lines in each dtype: for d = 32, bf16 rows are 32 wide and float rows 48).
inline index_t bwd_width(const block_layout& l) {
  const index_t gld = padded_ld<float>(l.d_model);
  return l.ld > gld ? l.ld : gld;
}

/// Device scratch of one backward call, carved from the workspace (base null = sizing only).
struct bwd_buffers {
  int* error = nullptr;
  float* xpad = nullptr;
  float* dypad = nullptr;
  block_index_t* clean = nullptr;
  std::int32_t* ids = nullptr;
  block_index_t* sorted_blocks = nullptr;
  std::int32_t* sorted_pairs = nullptr;
  int* offsets = nullptr;
  void* sort_temp = nullptr;
  std::size_t sort_bytes = 0;
  float* da = nullptr;
  float* du = nullptr;
  float* wh = nullptr;
  float* dw = nullptr;
  float* logits = nullptr;
  float* dlog = nullptr;
  std::size_t total = 0;
};

template <class Policy>
bwd_buffers plan_backward(unsigned char* base, const block_layout& l, index_t n, index_t k) {
  using Sel = typename Policy::selector;
  constexpr bool Gate = std::is_same<Sel, select::learned_gate>::value;
  using sparse_ffn::detail::checked_elements;
  using sparse_ffn::detail::checked_mul;
  bwd_buffers b;
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) -> void* {
    void* p = base ? base + off : nullptr;
    off += align256(bytes);
    return p;
  };
  auto floats = [&](index_t count) { return static_cast<float*>(take(static_cast<std::size_t>(count) * 4)); };
  const index_t B = l.num_blocks, G = l.g, xw = bwd_width(l), nk = checked_mul(n, k, "n × k");
  sparse_ffn::detail::require(nk < 0x7fffffff, status::size_overflow, "n × k (", nk,
                              ") must be < 2^31 on the GPU");
  b.error = static_cast<int*>(take(sizeof(int)));
  b.xpad = floats(checked_elements<float>(n, xw, "X"));
  b.dypad = floats(checked_elements<float>(n, xw, "dY"));
  b.clean = static_cast<block_index_t*>(take(static_cast<std::size_t>(nk) * sizeof(block_index_t)));
  b.ids = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
  b.sorted_blocks = static_cast<block_index_t*>(take(static_cast<std::size_t>(nk) * sizeof(block_index_t)));
  b.sorted_pairs = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
  b.offsets = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
  const cudaError_t sized =
      cub::DeviceRadixSort::SortPairs(nullptr, b.sort_bytes, b.clean, b.sorted_blocks, b.ids, b.sorted_pairs,
                                      static_cast<int>(nk), 0, bits_for(B + 1));
  sparse_ffn::detail::require(sized == cudaSuccess, status::cuda_error,
                              "sizing CUB's radix sort failed: ", cudaGetErrorString(sized));
  b.sort_temp = take(b.sort_bytes);
  const index_t cells = checked_elements<float>(nk, G, "per-pair gradients");
  b.da = floats(cells);
  if (Policy::gated) b.du = floats(cells);
  b.wh = floats(cells);
  b.dw = floats(nk);
  if (Gate) {
    const index_t nB = checked_elements<float>(n, B, "logits");
    b.logits = floats(nB);
    b.dlog = floats(nB);
  }
  b.total = off;
  return b;
}

/// The launches of one backward call, in stream order (each one kernel, except sort: CUB's radix
/// sort); tests compare them with what the documentation says.
enum class bwd_step : unsigned char {
  linear_scores,  ///< learned gate: logits and padded X (the forward's kernel); error word zeroed
  prepare_x,      ///< other selectors: padded X; error word zeroed
  prepare_dy,     ///< padded dY
  routing,        ///< range-checked table, pair ids, dw = 0
  sort,           ///< CUB radix sort of the pairs by block
  offsets,        ///< per-block offsets
  pairs,          ///< s, da, du, w·h, dw per pair
  weights,        ///< dW2, dW1, dW3, db1, db3
  db2_route,      ///< db2, route_weights
  gate_logits,    ///< learned gate: dlogits
  gate_rows,      ///< learned gate: dWg, dbg
  dx,             ///< dX
};

struct bwd_step_list {
  bwd_step at[12];
  int count = 0;
  void add(bwd_step s) { at[count++] = s; }
  const bwd_step* begin() const { return at; }
  const bwd_step* end() const { return at + count; }
};

template <class Policy>
bwd_step_list plan_backward_steps(const ffn_grads_view& gr, bool dx) {
  constexpr bool Gate = std::is_same<typename Policy::selector, select::learned_gate>::value;
  bwd_step_list s;
  s.add(Gate ? bwd_step::linear_scores : bwd_step::prepare_x);
  s.add(bwd_step::prepare_dy);
  s.add(bwd_step::routing);
  s.add(bwd_step::sort);
  s.add(bwd_step::offsets);
  s.add(bwd_step::pairs);
  if (gr.weights || gr.b1 || gr.b3) s.add(bwd_step::weights);
  if (gr.b2 || gr.route_weights) s.add(bwd_step::db2_route);
  if (Gate && (gr.gate_w || gr.gate_b || dx)) s.add(bwd_step::gate_logits);
  if (Gate && (gr.gate_w || gr.gate_b)) s.add(bwd_step::gate_rows);
  if (dx) s.add(bwd_step::dx);
  return s;
}

/// Grid sizes, computed and checked on the host before anything is queued.
struct bwd_grids {
  dim3 scores{1, 1, 1}, weights{1, 1, 1}, gate_rows{1, 1, 1}, dx{1, 1, 1};
  unsigned pairs = 1;
};

template <class Policy>
bwd_grids plan_backward_grids(const block_layout& l, index_t n, index_t k) {
  const index_t B = l.num_blocks;
  const index_t gld = padded_ld<float>(l.d_model);
  auto tiles = [](index_t cols, const char* what) {
    const index_t t = (cols + kernels::k_bwd_cols - 1) / kernels::k_bwd_cols;
    sparse_ffn::detail::require(t <= 65535, status::size_overflow, what, ": d_model too large for one call");
    return static_cast<unsigned>(t > 0 ? t : 1);
  };
  bwd_grids g;
  g.scores = dim3(grid_for(B, "gate logits"),
                  grid_for((n + kernels::k_score_tokens - 1) / kernels::k_score_tokens, "gate logits"));
  if (std::is_same<typename Policy::selector, select::learned_gate>::value)
    sparse_ffn::detail::require(g.scores.y <= 65535, status::size_overflow,
                                "too many tokens for one call (n ≤ 524280)");
  g.pairs = grid_for(sparse_ffn::detail::checked_mul(n, k, "pairs"), "pairs");
  g.weights = dim3(grid_for(B, "weight gradients"), tiles(gld, "weight gradients"));
  g.gate_rows = dim3(grid_for(B, "gate gradients"), tiles(gld, "gate gradients"));
  g.dx = dim3(grid_for(n, "dX"), tiles(l.d_model, "dX"));
  return g;
}

template <class Policy, class Tx, class Tdy, class Tdx>
result launch_backward(const bwd_buffers& b, const bwd_grids& gr,
                       const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x,
                       const Tdy* dy, const forward_cache& cache, Tdx* dx, const ffn_grads_view& g,
                       const backward_args& args, cudaStream_t s) {
  using T = typename Policy::dtype;
  using Sel = typename Policy::selector;
  using Act = typename Policy::activation;
  constexpr int G = Policy::block_size;
  constexpr bool Gate = std::is_same<Sel, select::learned_gate>::value;
  constexpr int threads = kernels::k_threads;
  const block_layout& l = w.layout;
  const index_t B = l.num_blocks, d = l.d_model, ld = l.ld, xw = bwd_width(l), k = args.k, nk = n * k;
  const bool acc = args.accumulate;
  cudaError_t e = cudaSuccess;
  for (const bwd_step st : plan_backward_steps<Policy>(g, dx != nullptr)) {
    switch (st) {
      case bwd_step::linear_scores:
        if constexpr (Gate)
          e = launch_kernel(false, kernels::linear_scores<Sel, T, Tx>, gr.scores, threads, 0, s, w.gate_w,
                            w.gate_b, x, d, n, B, ld, xw, b.logits, b.xpad, b.error);
        break;
      case bwd_step::prepare_x:
        e = launch_kernel(false, kernels::prepare_x<Tx>, elementwise_grid(n * xw), threads, 0, s, x, b.xpad,
                          n, d, xw, b.error);
        break;
      case bwd_step::prepare_dy:  // (zeroes the error word again: nothing has been recorded yet)
        e = launch_kernel(false, kernels::prepare_x<Tdy>, elementwise_grid(n * xw), threads, 0, s, dy,
                          b.dypad, n, d, xw, b.error);
        break;
      case bwd_step::routing:
        e = launch_kernel(false, kernels::bwd_routing, elementwise_grid(nk), threads, 0, s, cache.blocks, nk,
                          k, B, l.pinned, Gate, b.clean, b.ids, b.dw, b.error);
        break;
      case bwd_step::sort: {
        std::size_t bytes = b.sort_bytes;
        e = cub::DeviceRadixSort::SortPairs(b.sort_temp, bytes, b.clean, b.sorted_blocks, b.ids,
                                            b.sorted_pairs, static_cast<int>(nk), 0, bits_for(B + 1), s);
        break;
      }
      case bwd_step::offsets:
        e = launch_kernel(false, kernels::bwd_offsets, elementwise_grid(B + 1), threads, 0, s,
                          b.sorted_blocks, nk, B, b.offsets);
        break;
      case bwd_step::pairs:
        e = launch_kernel(false, kernels::bwd_pairs<T, Act, G>, gr.pairs, threads, 0, s, w, b.dypad, xw,
                          b.sorted_blocks, b.sorted_pairs, b.offsets, B, k, cache.weights, cache.pre,
                          cache.up, b.da, b.du, b.wh, b.dw);
        break;
      case bwd_step::weights:
        e = launch_kernel(false, kernels::bwd_weights<Act, G>, gr.weights, threads, 0, s, g, b.xpad, b.dypad,
                          xw, b.sorted_pairs, b.offsets, k, b.da, b.du, b.wh, acc);
        break;
      case bwd_step::db2_route:
        e = launch_kernel(false, kernels::bwd_db2_route, elementwise_grid(d > nk ? d : nk), threads, 0, s,
                          b.dypad, n, d, xw, b.dw, nk, g.b2, g.route_weights, acc);
        break;
      case bwd_step::gate_logits:
        if constexpr (Gate)
          e = launch_kernel(false, kernels::bwd_gate_logits<Sel>, elementwise_grid(n), threads, 0, s,
                            b.logits, b.clean, b.dw, n, k, B, l.pinned, args.renormalize, b.dlog);
        break;
      case bwd_step::gate_rows:
        e = launch_kernel(false, kernels::bwd_gate_rows, gr.gate_rows, threads, 0, s, b.dlog, b.xpad, n, B,
                          xw, g.layout.ld, g.gate_w, g.gate_b, acc);
        break;
      case bwd_step::dx:
        e = launch_kernel(false, kernels::bwd_dx<T, Tdx, Act::gated, Gate, G>, gr.dx, threads, 0, s, w,
                          b.clean, k, B, b.da, b.du, b.dlog, dx);
        break;
    }
    if (e != cudaSuccess) return from_cuda(e);
  }
  return from_cuda(cudaPeekAtLastError());
}

/// n = 0: an overwrite zeroes every gradient buffer given (nothing was selected); accumulate adds
/// nothing.
inline result zero_grads(const ffn_grads_view& g, cudaStream_t s) {
  const block_layout& l = g.layout;
  cudaError_t e = cudaSuccess;
  auto zero = [&](float* p, index_t count) {
    if (p && e == cudaSuccess) e = cudaMemsetAsync(p, 0, static_cast<std::size_t>(count) * 4, s);
  };
  zero(g.weights, l.total_elements());
  zero(g.b1, l.d_ff);
  zero(g.b3, l.d_ff);
  zero(g.b2, l.d_model);
  zero(g.gate_w, l.num_blocks * l.ld);
  zero(g.gate_b, l.num_blocks);
  return from_cuda(e);
}

}  // namespace detail

/// The backward pass on the GPU (see the file comment; the arguments as cpu::backward's, every
/// pointer a device pointer). With d_workspace null, writes the workspace size and returns.
template <class Policy, class Tx, class Tdy, class Tdx>
result backward(void* d_workspace, std::size_t& workspace_bytes,
                const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, const Tdy* dy,
                const forward_cache& cache, Tdx* dx, const ffn_grads_view& grads, const backward_args& args,
                cudaStream_t stream = 0) {
  detail::bwd_buffers sizing;
  detail::bwd_grids gr;
  result r = guard([&] {
    sparse_ffn::detail::check_backward_args<Policy>(w, n, x, dy, cache, dx, grads, args);
    sparse_ffn::detail::require_aligned<float>(w.weights, "blocked weights", 16);
    sizing = detail::plan_backward<Policy>(nullptr, w.layout, n, args.k);
    gr = detail::plan_backward_grids<Policy>(w.layout, n, args.k);
  });
  if (!r || !detail::workspace_ready(d_workspace, workspace_bytes, sizing.total, r)) return r;
  if (n == 0) {
    // The error word still reads 0 afterwards (device_errors).
    cudaError_t e = cudaMemsetAsync(d_workspace, 0, sizeof(int), stream);
    if (e != cudaSuccess) return from_cuda(e);
    return args.accumulate ? ok() : detail::zero_grads(grads, stream);
  }
  const detail::bwd_buffers b =
      detail::plan_backward<Policy>(static_cast<unsigned char*>(d_workspace), w.layout, n, args.k);
  return detail::launch_backward<Policy>(b, gr, w, n, x, dy, cache, dx, grads, args, stream);
}

}  // namespace cuda
}  // namespace sparse_ffn
