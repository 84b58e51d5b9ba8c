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
// Paths (detail::path_for; the launches of each in detail::plan_steps, docs/cuda.md):
//   decode (n < k_batched_threshold, every dtype): one fused kernel computes each (token, slot, row
//     chunk)'s activations and streams its value rows — 4 kernels per forward for Avg-K, the learned
//     gate, hash and a caller's routing table;
//   wmma (n >= 16, half/bf16, 16 <= g <= 256): pairs grouped by block, key pass and value pass (a
//     grouped GEMM into per-pair rows) on tensor cores;
//   gather (n >= 16 otherwise): key pass per pair, value pass per (token, slot group, column tile).
// Each path ends with a combine kernel that adds partial rows in a fixed order — no floating-point
// atomics anywhere.
#pragma once

#include <cstdlib>

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

/// How a call computes Y: decode = the fused keys_values kernel (n < k_batched_threshold, every dtype);
/// wmma = tensor-core key and value passes (n >= k_batched_threshold, half/bf16, 16 <= g <= 256);
/// gather = keys then values per token (the other batched cases: float, q8/q4, other g).
enum class compute_path { none, decode, wmma, gather };

template <class Policy>
compute_path path_for(index_t n, bool compute) {
  if (!compute) return compute_path::none;
  if (n < k_batched_threshold) return compute_path::decode;
  return use_wmma<Policy>(n) ? compute_path::wmma : compute_path::gather;
}

/// Whether the tensor-core path groups its pairs in one kernel (kernels::group_pairs_block).
inline bool group_in_one_kernel(index_t n, index_t k, index_t B) {
  return n * k <= kernels::k_group_max_pairs && B <= kernels::k_group_max_blocks;
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
  float* partial = nullptr;  ///< rows that combine adds: groups per token, act_width floats each
  index_t groups = 1;        ///< partial rows per token: k·chunks (decode), k (wmma), slot groups (gather)
  index_t group = 1, tiles = 1;  ///< gather: slots per group, column tiles
  int rows = 1, chunks = 1;      ///< decode: rows per thread block (kernels::decode_rows), chunks per block
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
  const compute_path path = path_for<Policy>(n, compute);
  if (path == compute_path::wmma) {
    const index_t nk = n * k;
    sparse_ffn::detail::require(nk < 0x7fffffff, status::size_overflow, "n × k (", nk,
                                ") must be < 2^31 on the GPU");
    b.sorted_pairs = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
    b.offsets = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    b.toffsets = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
    if (!group_in_one_kernel(n, k, B)) {  // the multi-launch grouping's own buffers
      b.pair_ids = static_cast<std::int32_t*>(take(static_cast<std::size_t>(nk) * 4));
      b.sorted_blocks = static_cast<block_index_t*>(take(static_cast<std::size_t>(nk) * 4));
      b.counts = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
      b.tcounts = static_cast<int*>(take(static_cast<std::size_t>(B + 1) * 4));
      std::size_t sort_bytes = 0, scan_bytes = 0;
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, b.blocks, b.sorted_blocks, b.pair_ids,
                                      b.sorted_pairs, static_cast<int>(nk), 0, bits_for(B));
      cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, b.counts, b.offsets, static_cast<int>(B + 1));
      b.group_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
      b.group_temp = take(b.group_bytes);
    }
    b.groups = k;  // one row per (token, slot): the grouped GEMM's output, added in slot order
  } else if (path == compute_path::decode) {
    b.rows = static_cast<int>(kernels::decode_rows(n, k, G));
    b.chunks = static_cast<int>((G + b.rows - 1) / b.rows);
    b.groups = sparse_ffn::detail::checked_mul(k, b.chunks, "partial rows");
  } else if (path == compute_path::gather) {
    choose_groups(n, k, value_tiles<T>(l), b);
  }
  if (path == compute_path::wmma || path == compute_path::gather)
    b.h = static_cast<float*>(take(floats(sparse_ffn::detail::checked_elements<float>(n * k, G, "H"))));
  if (path != compute_path::none)
    b.partial = static_cast<float*>(take(floats(sparse_ffn::detail::checked_elements<float>(
        sparse_ffn::detail::checked_mul(n, b.groups, "partial rows"), act_width<T>(l), "partial sums"))));
  b.total = off;
  return b;
}

/// Host-side checks that do not read device memory (the CPU checks that would are done on the device).
template <class Policy>
void check_common(const blocked_ffn_view<typename Policy::dtype>& w, index_t k) {
  sparse_ffn::detail::check_model<Policy>(w, false, "the CUDA forward");
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

/// The operations one call queues, in stream order: launch() issues exactly these (tests count them).
/// Each is one kernel launch, except copy_routing_out (two device copies) and group_pairs (iota, CUB's
/// radix sort, a memset, a histogram, two scans and tile counts: for large n·k or B).
enum class step : unsigned char {
  prepare_x,      ///< X -> padded float rows; zeroes the error word
  linear_scores,  ///< avg_k / learned_gate scores; also the padded X and the zeroed error word
  dense_keys,     ///< oracle: every block's activations
  dense_scores,   ///< oracle's block scores (only before the radix-sort top-k)
  topk_block,     ///< one thread block per token (B <= k_topk_block_max), gate weights fused
  sort_keys,      ///< B > k_topk_block_max: keys, CUB's segmented sort, take_topk (+ gate_weights)
  segmented_sort,
  take_topk,
  gate_weights,
  hash_route,
  copy_routing,       ///< a caller's routing table, range-checked
  copy_routing_out,   ///< the table into a cache / route() output that the kernels could not write
  group_pairs,        ///< wmma: pairs sorted by block, per-block counts, offsets and 16-token tiles
  group_pairs_block,  ///< the same in one kernel (n·k <= k_group_max_pairs, B <= k_group_max_blocks)
  keys_wmma,
  values_wmma,
  keys,         ///< gather: activations per (token, slot)
  values,       ///< gather: value rows per (token, slot group)
  keys_values,  ///< decode: the fused key and value pass
  combine,
};

struct step_list {
  step at[20];
  int count = 0;
  void add(step s) { at[count++] = s; }
  const step* begin() const { return at; }
  const step* end() const { return at + count; }
};

/// Where the routing kernels write the table: straight into a forward cache's (or route()'s output)
/// blocks and weights when both are given, so no copy follows; else into the workspace.
struct routing_target {
  block_index_t* blocks;
  float* weights;
  bool copy_out;  ///< a cache / output exists that must be copied from the workspace afterwards
};

inline routing_target routing_for(const buffers& b, bool routed, routing_view* out,
                                  const forward_cache* cache) {
  auto direct = [](block_index_t* bl, float* wt) { return bl != nullptr && wt != nullptr; };
  if (!routed) {  // (a caller's own table may alias its cache: it is copied, never written in place)
    if (cache && direct(cache->blocks, cache->weights)) return {cache->blocks, cache->weights, false};
    if (out && direct(out->blocks, out->weights)) return {out->blocks, out->weights, false};
  }
  const bool copy = (out && (out->blocks || out->weights)) || (cache && (cache->blocks || cache->weights));
  return {b.blocks, b.weights, copy};
}

template <class Policy>
step_list plan_steps(index_t n, index_t k, index_t B, bool routed, bool copy_out, bool compute) {
  using Sel = typename Policy::selector;
  step_list s;
  if (routed) {
    s.add(step::prepare_x);
    s.add(step::copy_routing);
  } else if constexpr (Sel::scoring == scoring_kind::token) {
    s.add(step::prepare_x);
    s.add(step::hash_route);
  } else {
    if constexpr (Sel::scoring == scoring_kind::linear) {
      s.add(step::linear_scores);
    } else {
      s.add(step::prepare_x);
      s.add(step::dense_keys);
    }
    if (B <= kernels::k_topk_block_max) {
      s.add(step::topk_block);
    } else {
      if constexpr (Sel::scoring == scoring_kind::dense) s.add(step::dense_scores);
      s.add(step::sort_keys);
      s.add(step::segmented_sort);
      s.add(step::take_topk);
      if constexpr (Sel::weighted) s.add(step::gate_weights);
    }
  }
  if (copy_out) s.add(step::copy_routing_out);
  switch (path_for<Policy>(n, compute)) {
    case compute_path::none: return s;
    case compute_path::decode: s.add(step::keys_values); break;
    case compute_path::wmma:
      s.add(group_in_one_kernel(n, k, B) ? step::group_pairs_block : step::group_pairs);
      s.add(step::keys_wmma);
      s.add(step::values_wmma);
      break;
    case compute_path::gather:
      s.add(step::keys);
      s.add(step::values);
      break;
  }
  s.add(step::combine);
  return s;
}

/// Grid sizes of the launches with one thread block per work item. Computed and checked on the host
/// with the other arguments, before anything is queued: an oversized grid is the same status from
/// the workspace-size query and from the run, never an exception after launches have started.
struct grids {
  dim3 scores{1, 1, 1}, values_wmma{1, 1, 1};
  unsigned dense_keys = 1, gate = 1, topk = 1, batched_keys = 1, keys = 1, values = 1, keys_values = 1,
           combine = 1;
};

template <class Policy>
grids plan_grids(const block_layout& l, index_t n, index_t k, const buffers& b, bool routed, bool compute) {
  using Sel = typename Policy::selector;
  using T = typename Policy::dtype;
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
  switch (path_for<Policy>(n, compute)) {
    case compute_path::none: return g;
    case compute_path::decode:
      g.keys_values =
          grid_for(checked_mul(checked_mul(n, k, "keys/values"), b.chunks, "keys/values"), "keys/values");
      sparse_ffn::detail::require(checked_mul(l.g, l.ld, "block") < 0x7fffffff, status::size_overflow,
                                  "a block of ", l.g, " rows × ", l.ld,
                                  " exceeds the GPU's 32-bit row offsets");
      break;
    case compute_path::wmma: {
      g.batched_keys = grid_for(checked_mul(n, k, "batched keys") / 16 + B, "batched keys");
      const index_t col_tiles =
          (act_width<T>(l) + kernels::k_wmma_value_cols - 1) / kernels::k_wmma_value_cols;
      sparse_ffn::detail::require(col_tiles <= 65535, status::size_overflow,
                                  "d_model too large for one call");
      g.values_wmma = dim3(g.batched_keys, static_cast<unsigned>(col_tiles), 1);
      break;
    }
    case compute_path::gather:
      g.keys = grid_for(checked_mul(checked_mul(n, k, "keys"), chunks, "keys"), "keys");
      g.values = grid_for(checked_mul(checked_mul(n, b.groups, "values"), b.tiles, "values"), "values");
      break;
  }
  const index_t col_tiles = (l.d_model + kernels::k_combine_cols - 1) / kernels::k_combine_cols;
  g.combine = grid_for(checked_mul(n, col_tiles, "combine"), "combine");
  return g;
}

inline unsigned elementwise_grid(index_t count) {
  const index_t blocks = (count + kernels::k_threads - 1) / kernels::k_threads;
  return blocks > 65535 * 8 ? 65535 * 8 : static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

/// Whether this call's kernels use programmatic dependent launch: a GPU of compute capability 9.0 or
/// newer (Hopper), unless SPARSE_FFN_CUDA_PDL=0 is set in the environment (read once).
inline bool use_pdl() {
  static const bool allowed = [] {
    const char* v = std::getenv("SPARSE_FFN_CUDA_PDL");
    return !(v && v[0] == '0');
  }();
  if (!allowed) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 9;
}

/// Launches one of our kernels; with `pdl`, as a programmatic dependent of the previous work in the
/// stream (each kernel starts with grid_dependency(), so it waits for that work's results).
template <class... Params, class... Args>
cudaError_t launch_kernel(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
                          cudaStream_t s, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

/// The launches of one call: the steps of plan_steps, in order. `given` non-null = forward_routed;
/// `y` null = route only.
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
  const index_t B = l.num_blocks, ld = l.ld, d = l.d_model, xw = act_width<T>(l), nk = n * k;
  const routing_target rt = routing_for(b, given != nullptr, out, cache);
  block_index_t* const blocks = rt.blocks;
  float* const weights = rt.weights;
  float* const cpre = cache ? cache->pre : nullptr;
  float* const cup = cache ? cache->up : nullptr;
  cudaError_t e = cudaSuccess;
  auto copy = [&](void* dst, const void* src, std::size_t bytes) {
    if (dst && e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
  };
  const step_list steps = plan_steps<Policy>(n, k, B, given != nullptr, rt.copy_out, y != nullptr);
  if constexpr (wmma_capable<Policy>()) {
    // Host-side setting, before anything is queued: keys_wmma's pipeline needs more than the default
    // 48 KiB of shared memory from g = 128 (gated) — an error here (a GPU with less) queues nothing.
    using Sh = kernels::keys_wmma_shape<T, Act, G>;
    if (Sh::smem_bytes > 48 * 1024 && path_for<Policy>(n, y != nullptr) == compute_path::wmma) {
      e = cudaFuncSetAttribute(kernels::keys_wmma<T, Act, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(Sh::smem_bytes));
      if (e != cudaSuccess) return from_cuda(e);
    }
  }
  // Programmatic dependent launch between consecutive kernels of the call (sm_90+): never for the
  // call's first kernel, nor right after a copy or CUB's kernels.
  const bool pdl_device = use_pdl();
  bool prev_kernel = false;
  for (const step st : steps) {
    const bool pdl = pdl_device && prev_kernel;
    prev_kernel = st != step::copy_routing_out && st != step::segmented_sort && st != step::group_pairs;
    switch (st) {
      case step::prepare_x:
        e = launch_kernel(pdl, kernels::prepare_x<Tx>, elementwise_grid(n * xw), threads, 0, s, x, b.xpad, n,
                          d, xw, b.error);
        break;
      case step::linear_scores:
        if constexpr (Sel::scoring == scoring_kind::linear)
          e = launch_kernel(pdl, kernels::linear_scores<Sel, T, Tx>, gr.scores, threads, 0, s,
                            Sel::linear_rows(w), Sel::linear_bias(w), x, d, n, B, ld, xw, b.scores, b.xpad,
                            b.error);
        break;
      case step::dense_keys:
        e = launch_kernel(pdl, kernels::keys<T, Act, G>, gr.dense_keys, threads, 0, s, w, b.xpad, xw, nullptr,
                          n * B, B, nullptr, b.pre_all, b.up_all, b.error);
        break;
      case step::dense_scores:
        e = launch_kernel(pdl, kernels::dense_scores<Act, G>, elementwise_grid(n * B), threads, 0, s,
                          b.pre_all, b.up_all, n, B, b.scores);
        break;
      case step::topk_block:
        if constexpr (Sel::scoring == scoring_kind::dense) {
          e = launch_kernel(pdl, kernels::topk_block<kernels::dense_block_scores<Act, G>, false>, gr.topk,
                            threads, 0, s, kernels::dense_block_scores<Act, G>{b.pre_all, b.up_all}, n, B, k,
                            l.pinned, blocks, weights, nullptr, false);
        } else if constexpr (Sel::scoring == scoring_kind::linear) {
          e = launch_kernel(pdl, kernels::topk_block<kernels::stored_scores, Sel::weighted>, gr.topk, threads,
                            0, s, kernels::stored_scores{b.scores}, n, B, k, l.pinned, blocks, weights,
                            b.scores, args->renormalize);
        }
        break;
      case step::sort_keys:
        e = launch_kernel(pdl, kernels::sort_keys, elementwise_grid(n * B + 1), threads, 0, s, b.scores, n, B,
                          l.pinned, b.keys_in, b.seg);
        break;
      case step::segmented_sort: {
        std::size_t bytes = b.sort_bytes;
        e = cub::DeviceSegmentedRadixSort::SortKeys(b.sort_temp, bytes, b.keys_in, b.keys_out,
                                                    static_cast<int>(n * B), static_cast<int>(n), b.seg,
                                                    b.seg + 1, 0, 64, s);
        break;
      }
      case step::take_topk:
        e = launch_kernel(pdl, kernels::take_topk, elementwise_grid(nk), threads, 0, s, b.keys_out, n, B, k,
                          blocks, weights, !Sel::weighted);
        break;
      case step::gate_weights:
        e = launch_kernel(pdl, kernels::gate_weights, gr.gate, threads, 0, s, b.scores, blocks, B, k,
                          l.pinned, args->renormalize, weights);
        break;
      case step::hash_route:
        if constexpr (Sel::scoring == scoring_kind::token)
          e = launch_kernel(pdl, kernels::hash_route, elementwise_grid(nk), threads, 0, s, args->token_ids, n,
                            k, B, l.pinned, args->vocab_size, args->seed, blocks, weights, b.error);
        break;
      case step::copy_routing:
        e = launch_kernel(pdl, kernels::copy_routing, elementwise_grid(nk), threads, 0, s, given->blocks,
                          given->weights, nk, B, blocks, weights, b.error);
        break;
      case step::copy_routing_out:
        if (out) {
          copy(out->blocks, blocks, static_cast<std::size_t>(nk) * sizeof(block_index_t));
          copy(out->weights, weights, static_cast<std::size_t>(nk) * 4);
        }
        if (cache) {
          copy(cache->blocks, blocks, static_cast<std::size_t>(nk) * sizeof(block_index_t));
          copy(cache->weights, weights, static_cast<std::size_t>(nk) * 4);
        }
        break;
      case step::group_pairs:
        if constexpr (wmma_capable<Policy>()) {
          e = launch_kernel(false, kernels::iota_pairs, elementwise_grid(nk), threads, 0, s, b.pair_ids, nk);
          std::size_t bytes = b.group_bytes;
          e = cub::DeviceRadixSort::SortPairs(b.group_temp, bytes, blocks, b.sorted_blocks, b.pair_ids,
                                              b.sorted_pairs, static_cast<int>(nk), 0, bits_for(B), s);
          if (e == cudaSuccess) e = cudaMemsetAsync(b.counts, 0, static_cast<std::size_t>(B + 1) * 4, s);
          if (e != cudaSuccess) break;
          e = launch_kernel(false, kernels::block_histogram, elementwise_grid(nk), threads, 0, s, blocks, nk,
                            b.counts);
          bytes = b.group_bytes;
          e = cub::DeviceScan::ExclusiveSum(b.group_temp, bytes, b.counts, b.offsets, static_cast<int>(B + 1),
                                            s);
          if (e != cudaSuccess) break;
          e = launch_kernel(false, kernels::tile_counts, elementwise_grid(B + 1), threads, 0, s, b.counts, B,
                            b.tcounts);
          bytes = b.group_bytes;
          e = cub::DeviceScan::ExclusiveSum(b.group_temp, bytes, b.tcounts, b.toffsets,
                                            static_cast<int>(B + 1), s);
        }
        break;
      case step::group_pairs_block:
        if constexpr (wmma_capable<Policy>())
          e = launch_kernel(pdl, kernels::group_pairs_block, 1, kernels::k_group_threads, 0, s, blocks, nk, B,
                            b.sorted_pairs, b.offsets, b.toffsets);
        break;
      case step::keys_wmma:
        if constexpr (wmma_capable<Policy>()) {
          using Sh = kernels::keys_wmma_shape<T, Act, G>;
          e = launch_kernel(pdl, kernels::keys_wmma<T, Act, G>, gr.batched_keys, Sh::threads, Sh::smem_bytes,
                            s, w, b.xpad, b.sorted_pairs, b.offsets, b.toffsets, B, k, b.h, cpre, cup);
        }
        break;
      case step::values_wmma:
        if constexpr (wmma_capable<Policy>())
          e = launch_kernel(pdl, kernels::values_wmma<T, G>, gr.values_wmma, 128, 0, s, w, b.h, weights,
                            b.sorted_pairs, b.offsets, b.toffsets, B, xw, b.partial);
        break;
      case step::keys:
        e = launch_kernel(pdl, kernels::keys<T, Act, G>, gr.keys, threads, 0, s, w, b.xpad, xw, blocks, nk, k,
                          b.h, cpre, cup, b.error);
        break;
      case step::values:
        e = launch_kernel(pdl, kernels::values<T, G>, gr.values, threads, 0, s, w, blocks, weights, b.h, n, k,
                          b.group, b.groups, b.tiles, xw, b.partial, b.error);
        break;
      case step::keys_values: {
        const std::size_t xbytes = static_cast<std::size_t>(xw) * sizeof(float);
        const bool xs = xbytes <= static_cast<std::size_t>(kernels::k_decode_x_shared_max);
        e = launch_kernel(pdl, kernels::keys_values<T, Act, G>, gr.keys_values, threads, xs ? xbytes : 0, s,
                          w, b.xpad, xw, blocks, weights, nk, k, b.rows, b.chunks, xs, b.partial, cpre, cup,
                          b.error);
        break;
      }
      case step::combine:
        e = launch_kernel(pdl, kernels::combine<Ty>, gr.combine, threads, 0, s, b.partial, w.b2, y, n, d, xw,
                          b.groups);
        break;
    }
    if (e != cudaSuccess) return from_cuda(e);
  }
  if constexpr (std::is_same<Sel, select::learned_gate>::value) {
    // The logits the forward scored with (linear_scores), for the caller's backward: columns [pinned, B).
    if (cache && cache->logits && !given && B > l.pinned) {
      const std::size_t pitch = static_cast<std::size_t>(B) * sizeof(float);
      e = cudaMemcpy2DAsync(cache->logits + l.pinned, pitch, b.scores + l.pinned, pitch,
                            static_cast<std::size_t>(B - l.pinned) * sizeof(float),
                            static_cast<std::size_t>(n), cudaMemcpyDeviceToDevice, s);
      if (e != cudaSuccess) return from_cuda(e);
    }
  }
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
    sparse_ffn::detail::check_cache_logits<typename Policy::selector>(cache, given == nullptr);
    sparse_ffn::detail::require_aligned<float>(w.weights, "blocked weights", 16);
    sizing = plan<Policy>(nullptr, w.layout, n, k, given != nullptr, y != nullptr);
    gr = plan_grids<Policy>(w.layout, n, k, sizing, given != nullptr, y != nullptr);
  });
  if (!r || !workspace_ready(ws, ws_bytes, sizing.total, r)) return r;
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
/// kernels::bad_block_index, kernels::bad_token_id and (backward) kernels::bad_routing_order.
/// Synchronises `stream`.
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
