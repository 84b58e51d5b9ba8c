// sparse_ffn — the GPU entry points (CUB style: two-phase workspace, device pointers, a stream, a
// status; no allocation and no host synchronisation, so a forward can be captured in a CUDA graph).
//
//   std::size_t bytes = 0;
//   cuda::forward<P>(nullptr, bytes, model, n, d_x, d_y, args);           // 1. size the workspace
//   cudaMalloc(&d_ws, bytes);
//   cuda::result r = cuda::forward<P>(d_ws, bytes, model, n, d_x, d_y, args, nullptr, stream);  // 2. run
//
// `model` is a blocked_ffn_view whose pointers are device pointers (see cuda::device_model).
// All arguments are validated on the host before any launch, with the CPU path's messages; data that
// lives on the device (token ids, a caller's routing table) is checked on the device: an out-of-range
// entry is replaced by a valid one (never an out-of-bounds access) and recorded in the workspace's
// error word, which cuda::device_errors(d_ws, stream) returns (that call synchronises the stream).
// Results are deterministic (bit-identical across runs on the same GPU and configuration).
//
// Paths: decode (n < k_batched_threshold, or float weights): the key pass is one warp per row per
// (token, slot); batched (n >= 16, half/bf16, 16 <= g <= 256): pairs are grouped by block and the key
// pass runs on tensor cores (kernels_wmma.cuh). The value pass gathers each token's blocks (one
// thread block per token × slot group × column tile) into partial sums that a combine kernel adds
// in a fixed order — no floating-point atomics in either path.
#pragma once

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "../cpu/checks.hpp"
#include "../pack.hpp"
#include "../policy.hpp"
#include "kernels.cuh"
#include "kernels_wmma.cuh"
#include "route.cuh"

namespace sparse_ffn {
namespace cuda {

/// From this many tokens, half/bf16 models with 16 <= g <= 256 compute the key pass on tensor cores
/// (kernels_wmma.cuh), which rounds X to the weight dtype; below it the decode kernels keep X in float.
inline constexpr index_t k_batched_threshold = 16;

namespace detail {

template <class Policy>
constexpr bool wmma_capable() {
  using T = typename Policy::dtype;
  return (std::is_same<T, half_t>::value || std::is_same<T, bfloat16_t>::value) && Policy::block_size >= 16 &&
         Policy::block_size <= 256;
}

template <class Policy>
bool use_wmma(index_t n) {
  return wmma_capable<Policy>() && n >= k_batched_threshold;
}

inline int bits_for(index_t B) {
  int bits = 1;
  while ((index_t{1} << bits) < B) ++bits;
  return bits;
}

inline std::size_t align256(std::size_t b) {
  return (b + 255) / 256 * 256;
}

/// Device scratch of one call, carved from the workspace (base null = sizing only).
struct buffers {
  int* error = nullptr;
  float* xpad = nullptr;
  block_index_t* blocks = nullptr;
  float* weights = nullptr;
  float* scores = nullptr;
  std::uint64_t* keys_in = nullptr;
  std::uint64_t* keys_out = nullptr;
  int* seg = nullptr;
  void* sort_temp = nullptr;
  std::size_t sort_bytes = 0;
  float* pre_all = nullptr;
  float* up_all = nullptr;
  float* h = nullptr;
  float* partial = nullptr;
  index_t groups = 1, group = 1, tiles = 1;
  // batched (tensor-core) key pass
  std::int32_t* pair_ids = nullptr;
  block_index_t* sorted_blocks = nullptr;
  std::int32_t* sorted_pairs = nullptr;
  int* counts = nullptr;
  int* offsets = nullptr;
  int* tcounts = nullptr;
  int* toffsets = nullptr;
  void* group_temp = nullptr;
  std::size_t group_bytes = 0;
  std::size_t total = 0;
};

/// Floats per token in the padded X and the partial rows: the row stride for float weights (as
/// before), row_format<T>::cols for q8/q4 (their ld counts bytes of quants and scales).
template <class T>
index_t act_width(const block_layout& l) {
  if constexpr (is_quantized<T>::value) {
    return row_format<T>::cols(l.d_model);
  } else {
    return l.ld;
  }
}

template <class T>
index_t value_tiles(const block_layout& l) {
  // One thread per 16-byte unit (kernels::values, detail::row_unit): of the row, or of its quants.
  index_t end = l.ld;
  if constexpr (is_quantized<T>::value) end = row_format<T>::quant_bytes(act_width<T>(l));
  return (end + kernels::k_threads * vec<T>::n - 1) / (kernels::k_threads * vec<T>::n);
}

/// Fixed (device-independent) split of the slots into groups so that decode launches ~512 blocks.
inline void choose_groups(index_t n, index_t k, index_t tiles, buffers& b) {
  const index_t target = 512, per = n * tiles;
  index_t groups = per >= target ? 1 : (target + per - 1) / per;
  groups = groups > k ? k : groups;
  b.group = (k + groups - 1) / groups;
  b.groups = (k + b.group - 1) / b.group;
  b.tiles = tiles;
}

template <class Policy>
buffers plan(unsigned char* base, const block_layout& l, index_t n, index_t k, bool routed, bool compute) {
  using T = typename Policy::dtype;
  using Sel = typename Policy::selector;
  using Act = typename Policy::activation;
  buffers b;
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) -> void* {
    void* p = base ? base + off : nullptr;
    off += align256(bytes);
    return p;
  };
  const index_t B = l.num_blocks, G = l.g;
  const index_t nB = sparse_ffn::detail::checked_mul(n, B, "scores");
  b.error = static_cast<int*>(take(sizeof(int)));
  auto floats = [](index_t count) { return static_cast<std::size_t>(count) * sizeof(float); };
  b.xpad =
      static_cast<float*>(take(floats(sparse_ffn::detail::checked_elements<float>(n, act_width<T>(l), "X"))));
  b.blocks = static_cast<block_index_t*>(take(static_cast<std::size_t>(n * k) * sizeof(block_index_t)));
  b.weights = static_cast<float*>(take(static_cast<std::size_t>(n * k) * 4));
  if (!routed && Sel::scoring != scoring_kind::token) {
    sparse_ffn::detail::require(nB < 0x7fffffff, status::size_overflow, "n × B (", nB,
                                ") must be < 2^31 for the GPU top-k");
    b.scores = static_cast<float*>(take(static_cast<std::size_t>(nB) * 4));
    if (B > kernels::k_topk_block_max) {  // the radix-sort top-k (else topk_block needs nothing more)
      b.keys_in = static_cast<std::uint64_t*>(take(static_cast<std::size_t>(nB) * 8));
      b.keys_out = static_cast<std::uint64_t*>(take(static_cast<std::size_t>(nB) * 8));
      b.seg = static_cast<int*>(take(static_cast<std::size_t>(n + 1) * 4));
      cub::DeviceSegmentedRadixSort::SortKeys(nullptr, b.sort_bytes, b.keys_in, b.keys_out,
                                              static_cast<int>(nB), static_cast<int>(n), b.seg, b.seg + 1);
      b.sort_temp = take(b.sort_bytes);
    }
    if (Sel::scoring == scoring_kind::dense) {
      const index_t cells = sparse_ffn::detail::checked_elements<float>(nB, G, "dense activations");
      b.pre_all = static_cast<float*>(take(floats(cells)));
      if (Act::gated) b.up_all = static_cast<float*>(take(floats(cells)));
    }
  }
  if (compute && use_wmma<Policy>(n)) {
    const index_t nk = n * k;
    sparse_ffn::detail::require(nk < 0x7fffffff, status::size_overflow, "n × k (", nk,
                                ") must be < 2^31 on the GPU");
    b.pair_ids = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
    b.sorted_blocks = static_cast<block_index_t*>(take(static_cast<std::size_t>(nk) * 4));
    b.sorted_pairs = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
    b.counts = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    b.offsets = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    b.tcounts = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    b.toffsets = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    std::size_t sort_bytes = 0, scan_bytes = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, b.blocks, b.sorted_blocks, b.pair_ids,
                                    b.sorted_pairs, static_cast<int>(nk), 0, bits_for(B));
    cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, b.counts, b.offsets, static_cast<int>(B + 1));
    b.group_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
    b.group_temp = take(b.group_bytes);
  }
  if (compute) {
    b.h = static_cast<float*>(take(floats(sparse_ffn::detail::checked_elements<float>(n * k, G, "H"))));
    choose_groups(n, k, value_tiles<T>(l), b);
    b.partial = static_cast<float*>(take(
        floats(sparse_ffn::detail::checked_elements<float>(n * b.groups, act_width<T>(l), "partial sums"))));
  }
  b.total = off;
  return b;
}

/// Host-side checks that do not read device memory (the CPU checks that would are done on the device).
template <class Policy>
void check_common(const blocked_ffn_view<typename Policy::dtype>& w, index_t k) {
  sparse_ffn::detail::check_model<Policy>(w);
  sparse_ffn::detail::check_k(k, w.layout.num_blocks);
}

template <class Policy>
void check_selector(const blocked_ffn_view<typename Policy::dtype>& w, const route_args& a, index_t n) {
  using Sel = typename Policy::selector;
  if constexpr (Sel::scoring == scoring_kind::token) {
    sparse_ffn::detail::require(a.vocab_size > 0, status::invalid_argument,
                                "the hash selector needs route_args::vocab_size > 0 (got ", a.vocab_size,
                                ")");
    if (n > 0) {
      sparse_ffn::detail::require(a.token_ids != nullptr, status::null_pointer,
                                  "the hash selector needs route_args::token_ids (one id per token)");
      sparse_ffn::detail::require_aligned<token_id_t>(a.token_ids, "route_args::token_ids");
    }
  } else {
    Sel::check(w, a, n);  // avg_k / learned_gate / oracle: model pointers and k only
  }
}

/// Row chunks per (pair, block) of the key kernel.
template <int G>
constexpr int key_chunks() {
  return (G + (G < kernels::k_rows_per_cta ? G : kernels::k_rows_per_cta) - 1) /
         (G < kernels::k_rows_per_cta ? G : kernels::k_rows_per_cta);
}

/// Grid sizes of the launches with one thread block per work item. Computed and checked on the host
/// with the other arguments, before anything is queued: an oversized grid is the same status from
/// the workspace-size query and from the run, never an exception after launches have started.
struct grids {
  dim3 scores{1, 1, 1};
  unsigned dense_keys = 1, gate = 1, topk = 1, batched_keys = 1, keys = 1, values = 1;
};

template <class Policy>
grids plan_grids(const block_layout& l, index_t n, index_t k, const buffers& b, bool routed, bool compute) {
  using Sel = typename Policy::selector;
  constexpr int chunks = key_chunks<Policy::block_size>();
  using sparse_ffn::detail::checked_mul;
  const index_t B = l.num_blocks;
  grids g;
  if (!routed) {
    if constexpr (Sel::scoring == scoring_kind::linear) {
      g.scores = dim3(grid_for(B, "scores"),
                      grid_for((n + kernels::k_score_tokens - 1) / kernels::k_score_tokens, "scores"));
      sparse_ffn::detail::require(g.scores.y <= 65535, status::size_overflow,
                                  "too many tokens for one call (n ≤ 524280)");
    } else if constexpr (Sel::scoring == scoring_kind::dense) {
      g.dense_keys =
          grid_for(checked_mul(checked_mul(n, B, "dense keys"), chunks, "dense keys"), "dense keys");
    }
    if constexpr (Sel::scoring != scoring_kind::token)
      if (B <= kernels::k_topk_block_max) g.topk = grid_for(n, "top-k");
    if constexpr (Sel::weighted) g.gate = grid_for(n, "gate weights");
  }
  if (compute) {
    if (wmma_capable<Policy>() && use_wmma<Policy>(n))
      g.batched_keys = grid_for(checked_mul(n, k, "batched keys") / 16 + B, "batched keys");
    else
      g.keys = grid_for(checked_mul(checked_mul(n, k, "keys"), chunks, "keys"), "keys");
    g.values = grid_for(checked_mul(checked_mul(n, b.groups, "values"), b.tiles, "values"), "values");
  }
  return g;
}

inline unsigned elementwise_grid(index_t count) {
  const index_t blocks = (count + kernels::k_threads - 1) / kernels::k_threads;
  return blocks > 65535 * 8 ? 65535 * 8 : static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

/// The launches of one call. `given` non-null = forward_routed; `y` null = route only.
template <class Policy, class Tx, class Ty>
result launch(const buffers& b, const grids& gr, const blocked_ffn_view<typename Policy::dtype>& w, index_t n,
              index_t k, const Tx* x, Ty* y, const route_args* args, const const_routing_view* given,
              routing_view* out, const forward_cache* cache, cudaStream_t s) {
  using T = typename Policy::dtype;
  using Sel = typename Policy::selector;
  using Act = typename Policy::activation;
  constexpr int G = Policy::block_size;
  constexpr int threads = kernels::k_threads;
  const block_layout& l = w.layout;
  const index_t B = l.num_blocks, ld = l.ld, d = l.d_model, xw = act_width<T>(l);
  cudaError_t e = cudaMemsetAsync(b.error, 0, sizeof(int), s);
  if (e != cudaSuccess) return from_cuda(e);
  kernels::prepare_x<Tx><<<elementwise_grid(n * xw), threads, 0, s>>>(x, b.xpad, n, d, xw);
  // ---- route -----------------------------------------------------------------------------------
  if (given) {
    kernels::copy_routing<<<elementwise_grid(n * k), threads, 0, s>>>(given->blocks, given->weights, n * k, B,
                                                                      b.blocks, b.weights, b.error);
  } else if constexpr (Sel::scoring == scoring_kind::token) {
    kernels::hash_route<<<elementwise_grid(n * k), threads, 0, s>>>(
        args->token_ids, n, k, B, l.pinned, args->vocab_size, args->seed, b.blocks, b.weights, b.error);
  } else {
    if constexpr (Sel::scoring == scoring_kind::linear) {
      kernels::linear_scores<Sel, T><<<gr.scores, threads, 0, s>>>(Sel::linear_rows(w), Sel::linear_bias(w),
                                                                   b.xpad, n, B, ld, xw, b.scores);
    } else {
      kernels::keys<T, Act, G><<<gr.dense_keys, threads, 0, s>>>(w, b.xpad, xw, nullptr, n * B, B, nullptr,
                                                                 b.pre_all, b.up_all, b.error);
      kernels::dense_scores<Act, G>
          <<<elementwise_grid(n * B), threads, 0, s>>>(b.pre_all, b.up_all, n, B, b.scores);
    }
    if (B <= kernels::k_topk_block_max) {
      kernels::topk_block<<<gr.topk, threads, 0, s>>>(b.scores, n, B, k, l.pinned, b.blocks, b.weights,
                                                      !Sel::weighted);
    } else {
      kernels::sort_keys<<<elementwise_grid(n * B + 1), threads, 0, s>>>(b.scores, n, B, l.pinned, b.keys_in,
                                                                         b.seg);
      std::size_t bytes = b.sort_bytes;
      e = cub::DeviceSegmentedRadixSort::SortKeys(b.sort_temp, bytes, b.keys_in, b.keys_out,
                                                  static_cast<int>(n * B), static_cast<int>(n), b.seg,
                                                  b.seg + 1, 0, 64, s);
      if (e != cudaSuccess) return from_cuda(e);
      kernels::take_topk<<<elementwise_grid(n * k), threads, 0, s>>>(b.keys_out, n, B, k, b.blocks, b.weights,
                                                                     !Sel::weighted);
    }
    if constexpr (Sel::weighted)
      kernels::gate_weights<<<gr.gate, threads, 0, s>>>(b.scores, b.blocks, B, k, l.pinned, args->renormalize,
                                                        b.weights);
  }
  auto copy = [&](void* dst, const void* src, std::size_t bytes) {
    if (dst && e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
  };
  if (out) {
    copy(out->blocks, b.blocks, static_cast<std::size_t>(n * k) * sizeof(block_index_t));
    copy(out->weights, b.weights, static_cast<std::size_t>(n * k) * 4);
  }
  if (cache) {
    copy(cache->blocks, b.blocks, static_cast<std::size_t>(n * k) * sizeof(block_index_t));
    copy(cache->weights, b.weights, static_cast<std::size_t>(n * k) * 4);
  }
  if (e != cudaSuccess) return from_cuda(e);
  if (!y) return from_cuda(cudaPeekAtLastError());  // observe; never clear errors of other code
  // ---- keys, values, combine ------------------------------------------------------------------
  float* const cpre = cache ? cache->pre : nullptr;
  float* const cup = cache ? cache->up : nullptr;
  if constexpr (wmma_capable<Policy>()) {
    if (use_wmma<Policy>(n)) {  // batched: group pairs by block, tensor-core tiles of 16 tokens
      const index_t nk = n * k;
      kernels::iota_pairs<<<elementwise_grid(nk), threads, 0, s>>>(b.pair_ids, nk);
      std::size_t bytes = b.group_bytes;
      e = cub::DeviceRadixSort::SortPairs(b.group_temp, bytes, b.blocks, b.sorted_blocks, b.pair_ids,
                                          b.sorted_pairs, static_cast<int>(nk), 0, bits_for(B), s);
      if (e == cudaSuccess) e = cudaMemsetAsync(b.counts, 0, static_cast<std::size_t>(B + 1) * 4, s);
      if (e != cudaSuccess) return from_cuda(e);
      kernels::block_histogram<<<elementwise_grid(nk), threads, 0, s>>>(b.blocks, nk, b.counts);
      bytes = b.group_bytes;
      e = cub::DeviceScan::ExclusiveSum(b.group_temp, bytes, b.counts, b.offsets, static_cast<int>(B + 1), s);
      if (e != cudaSuccess) return from_cuda(e);
      kernels::tile_counts<<<elementwise_grid(B + 1), threads, 0, s>>>(b.counts, B, b.tcounts);
      bytes = b.group_bytes;
      e = cub::DeviceScan::ExclusiveSum(b.group_temp, bytes, b.tcounts, b.toffsets, static_cast<int>(B + 1),
                                        s);
      if (e != cudaSuccess) return from_cuda(e);
      constexpr int wt = 32 * (G / 16 < 8 ? G / 16 : 8);
      kernels::keys_wmma<T, Act, G><<<gr.batched_keys, wt, 0, s>>>(w, b.xpad, b.sorted_pairs, b.offsets,
                                                                   b.toffsets, B, k, b.h, cpre, cup);
    } else {
      kernels::keys<T, Act, G>
          <<<gr.keys, threads, 0, s>>>(w, b.xpad, xw, b.blocks, n * k, k, b.h, cpre, cup, b.error);
    }
  } else {
    kernels::keys<T, Act, G>
        <<<gr.keys, threads, 0, s>>>(w, b.xpad, xw, b.blocks, n * k, k, b.h, cpre, cup, b.error);
  }
  kernels::values<T, G><<<gr.values, threads, 0, s>>>(w, b.blocks, b.weights, b.h, n, k, b.group, b.groups,
                                                      b.tiles, xw, b.partial, b.error);
  kernels::combine<Ty><<<elementwise_grid(n * d), threads, 0, s>>>(b.partial, w.b2, y, n, d, xw, b.groups);
  return from_cuda(cudaPeekAtLastError());  // observe; never clear errors of other code
}

template <class Policy, class Tx, class Ty>
result run(void* ws, std::size_t& ws_bytes, const blocked_ffn_view<typename Policy::dtype>& w, index_t n,
           const Tx* x, Ty* y, const route_args* args, const const_routing_view* given, routing_view* out,
           const forward_cache* cache, cudaStream_t s) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  buffers sizing;
  grids gr;
  const index_t k = args ? args->k : given->k;
  result r = guard([&] {
    check_common<Policy>(w, k);
    if (args) {
      sparse_ffn::detail::check_k(k, w.layout);  // k counts the pinned blocks
      check_selector<Policy>(w, *args, n);
    }
    if (y) {
      sparse_ffn::detail::check_io(w.layout, n, x, y);
    } else {
      sparse_ffn::detail::check_x(w.layout, n, x);
      sparse_ffn::detail::check_routing_out(n, k, *out);
    }
    if (given) {
      sparse_ffn::detail::require(given->n == n, status::invalid_shape, "routing table has ", given->n,
                                  " rows but there are ", n, " tokens");
      if (n > 0) {
        sparse_ffn::detail::require_not_null(given->blocks, "routing blocks");
        sparse_ffn::detail::require_aligned<block_index_t>(given->blocks, "routing blocks");
        if (given->weights) sparse_ffn::detail::require_aligned<float>(given->weights, "routing weights");
      }
    }
    sparse_ffn::detail::check_cache(w.layout, n, k, cache);
    sparse_ffn::detail::require_aligned<float>(w.weights, "blocked weights", 16);
    sizing = plan<Policy>(nullptr, w.layout, n, k, given != nullptr, y != nullptr);
    gr = plan_grids<Policy>(w.layout, n, k, sizing, given != nullptr, y != nullptr);
  });
  if (!r) return r;
  if (ws == nullptr) {
    ws_bytes = sizing.total;
    return ok();
  }
  if (ws_bytes < sizing.total)
    return {status::invalid_argument,
            "sparse_ffn: workspace too small (query its size with a null workspace first)"};
  if (reinterpret_cast<std::uintptr_t>(ws) % 256 != 0)
    return {status::misaligned_pointer, "sparse_ffn: the workspace must be 256-byte aligned (cudaMalloc is)"};
  if (n == 0) return ok();
  const buffers b =
      plan<Policy>(static_cast<unsigned char*>(ws), w.layout, n, k, given != nullptr, y != nullptr);
  return launch<Policy>(b, gr, w, n, k, x, y, args, given, out, cache, s);
}

}  // namespace detail

/// Fused select + compute. Device pointers throughout (x, y, args.token_ids, cache buffers).
template <class Policy, class Tx, class Ty>
result forward(void* d_workspace, std::size_t& workspace_bytes,
               const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
               const route_args& args, const forward_cache* cache = nullptr, cudaStream_t stream = 0) {
  return detail::run<Policy>(d_workspace, workspace_bytes, w, n, x, y, &args, nullptr, nullptr, cache,
                             stream);
}

/// Compute with a caller's routing table (device pointers).
template <class Policy, class Tx, class Ty>
result forward_routed(void* d_workspace, std::size_t& workspace_bytes,
                      const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
                      const_routing_view routing, const forward_cache* cache = nullptr,
                      cudaStream_t stream = 0) {
  return detail::run<Policy>(d_workspace, workspace_bytes, w, n, x, y, nullptr, &routing, nullptr, cache,
                             stream);
}

/// Selection only: fills `out` (device pointers).
template <class Policy, class Tx>
result route(void* d_workspace, std::size_t& workspace_bytes,
             const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x,
             const route_args& args, routing_view out, cudaStream_t stream = 0) {
  return detail::run<Policy, Tx, float>(d_workspace, workspace_bytes, w, n, x, nullptr, &args, nullptr, &out,
                                        nullptr, stream);
}

/// The device-side error word of the last call that used this workspace: 0, or a combination of
/// kernels::bad_block_index and kernels::bad_token_id. Synchronises `stream`.
inline result device_errors(const void* d_workspace, int& errors, cudaStream_t stream = 0) {
  errors = 0;
  cudaError_t e = cudaMemcpyAsync(&errors, d_workspace, sizeof(int), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  return from_cuda(e);
}

/// A blocked model in device memory: copies of the host buffers, owned here; view() for the kernels.
template <class T>
class device_model {
 public:
  device_model() = default;
  device_model(const device_model&) = delete;
  device_model& operator=(const device_model&) = delete;
  ~device_model() { release(); }

  /// Uploads a host model (synchronous copies). Returns the CUDA status.
  result upload(const blocked_ffn<T>& m) {
    release();
    const blocked_ffn_view<T> h = m.view();
    const block_layout& l = h.layout;
    view_ = h;
    auto put = [&](const void* src, std::size_t bytes, const void*& dst) {
      if (!src) {
        dst = nullptr;
        return cudaSuccess;
      }
      void* p = nullptr;
      cudaError_t e = cudaMalloc(&p, bytes);
      if (e != cudaSuccess) return e;
      owned_.push_back(p);
      dst = p;
      return cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice);
    };
    const void* p = nullptr;
    cudaError_t e = put(h.weights, static_cast<std::size_t>(l.total_elements()) * sizeof(T), p);
    view_.weights = static_cast<const T*>(p);
    auto put_f = [&](const float* src, index_t count, const float*& dst) {
      const void* q = nullptr;
      if (e == cudaSuccess) e = put(src, static_cast<std::size_t>(count) * 4, q);
      dst = static_cast<const float*>(q);
    };
    auto put_t = [&](const T* src, index_t count, const T*& dst) {
      const void* q = nullptr;
      if (e == cudaSuccess) e = put(src, static_cast<std::size_t>(count) * sizeof(T), q);
      dst = static_cast<const T*>(q);
    };
    put_f(h.b1, l.d_ff, view_.b1);
    put_f(h.b3, l.d_ff, view_.b3);
    put_f(h.b2, l.d_model, view_.b2);
    put_t(h.centroids, l.num_blocks * l.ld, view_.centroids);
    put_f(h.centroid_bias, l.num_blocks, view_.centroid_bias);
    put_t(h.gate_w, l.num_blocks * l.ld, view_.gate_w);
    put_f(h.gate_b, l.num_blocks, view_.gate_b);
    view_.perm = nullptr;  // host-side metadata only
    return from_cuda(e);
  }
  const blocked_ffn_view<T>& view() const { return view_; }

 private:
  void release() {
    for (void* p : owned_) cudaFree(p);
    owned_.clear();
  }
  blocked_ffn_view<T> view_{};
  std::vector<void*> owned_;
};

}  // namespace cuda
}  // namespace sparse_ffn
