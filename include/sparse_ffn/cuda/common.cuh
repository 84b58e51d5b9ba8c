// sparse_ffn — CUDA support shared by the GPU kernels: status handling, 16-byte vector loads that
// convert to float, warp reductions with a fixed tree, and host-side launch-size checks.
#pragma once

#if !defined(__CUDACC__)
#error \
    "sparse_ffn/cuda/*.cuh must be compiled by nvcc (include <sparse_ffn/sparse_ffn.hpp> for the CPU library)"
#endif

#include <cuda_runtime.h>

#include <cstdint>

#include "../config.hpp"
#include "../error.hpp"
#include "../quant.hpp"
#include "../types.hpp"

namespace sparse_ffn {
namespace cuda {

/// Result of a CUDA entry point: a status and, on failure, a message (static storage).
struct result {
  sparse_ffn::status code = sparse_ffn::status::success;
  const char* message = "";
  explicit operator bool() const { return code == sparse_ffn::status::success; }
};

inline result ok() {
  return {};
}

/// Runs `f` (host-side validation that throws sparse_ffn::error) and turns an error into a result.
/// The message is kept in thread-local storage until the next failing call on this thread.
template <class F>
result guard(F&& f) {
  static thread_local std::string last;
  try {
    f();
    return ok();
  } catch (const sparse_ffn::error& e) {
    last = e.what();
    return {e.code(), last.c_str()};
  } catch (const std::exception& e) {
    last = std::string("sparse_ffn: ") + e.what();
    return {sparse_ffn::status::invalid_argument, last.c_str()};
  }
}

inline result from_cuda(cudaError_t e) {
  if (e == cudaSuccess) return ok();
  return {sparse_ffn::status::cuda_error, cudaGetErrorString(e)};
}

namespace detail {

/// The two-phase workspace protocol of the entry points: with a null workspace, writes the size the
/// call needs into `bytes` and returns false (out = success: the query is done); otherwise checks the
/// given size and the 256-byte alignment, returning false with the error in `out` when either is
/// wrong, and true when the call may run.
inline bool workspace_ready(const void* ws, std::size_t& bytes, std::size_t total, result& out) {
  out = ok();
  if (ws == nullptr) {
    bytes = total;
    return false;
  }
  if (bytes < total)
    out = {sparse_ffn::status::invalid_argument,
           "sparse_ffn: workspace too small (query its size with a null workspace first)"};
  else if (reinterpret_cast<std::uintptr_t>(ws) % 256 != 0)
    out = {sparse_ffn::status::misaligned_pointer,
           "sparse_ffn: the workspace must be 256-byte aligned (cudaMalloc is)"};
  return out.code == sparse_ffn::status::success;
}

}  // namespace detail

namespace detail {

/// Elements of T in one 16-byte load.
template <class T>
struct vec {
  static constexpr int n = static_cast<int>(16 / sizeof(T));
};

/// Loads 16 bytes (16-byte aligned) and converts them to float.
template <class T>
__device__ __forceinline__ void load16(const T* p, float (&out)[vec<T>::n]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < vec<T>::n; ++i) out[i] = to_float(e[i]);
}

/// One 16-byte unit of a q8/q4 row's quants at byte offset `byte` (quant_unit<T>), dequantised in
/// registers: out[16·r + i] = value run_start(byte, r) + i, times its group's bfloat16 scale.
template <class T>
__device__ __forceinline__ void load_quant(const std::uint8_t* row, const bfloat16_t* scales, index_t byte,
                                           float (&out)[quant_unit<T>::values]) {
  using U = quant_unit<T>;
  const uint4 raw = *reinterpret_cast<const uint4*>(row + byte);
  int q[U::values];
  U::ints(reinterpret_cast<const std::uint8_t*>(&raw), q);
#pragma unroll
  for (int r = 0; r < U::runs; ++r) {
    const float sc = to_float(scales[U::run_start(byte, r) / k_quant_group]);
#pragma unroll
    for (int i = 0; i < 16; ++i) out[16 * r + i] = static_cast<float>(q[16 * r + i]) * sc;
  }
}

/// What one thread loads from a weight row: the 16 bytes at element offset `off` (a multiple of
/// vec<T>::n), dequantised to `values` floats, and the column of each. Float/half/bf16: vec<T>::n values
/// at columns off, off + 1, …; q8/q4: a quant_unit (16 values, or 32 in two runs of 16). Columns come in
/// runs of at least 4 starting at multiples of 4, so x and partial rows are read with float4.
/// `end(ld, xw)`: the offsets to cover (the row stride; the quants' bytes of xw = row_format::cols).
template <class T, bool Quantized = is_quantized<T>::value>
struct row_unit {
  static constexpr int values = vec<T>::n;
  __device__ static index_t end(index_t ld, index_t /*xw*/) { return ld; }
  __device__ static void load(const T* row, index_t off, index_t /*xw*/, float (&out)[values]) {
    load16(row + off, out);
  }
  __device__ static index_t column(index_t off, int e) { return off + e; }
};
template <class T>
struct row_unit<T, true> {
  using U = quant_unit<T>;
  static constexpr int values = U::values;
  __device__ static index_t end(index_t /*ld*/, index_t xw) { return U::quant_bytes(xw); }
  __device__ static void load(const T* row, index_t off, index_t xw, float (&out)[values]) {
    const auto* rb = reinterpret_cast<const std::uint8_t*>(row);
    load_quant<T>(rb, reinterpret_cast<const bfloat16_t*>(rb + U::quant_bytes(xw)), off, out);
  }
  __device__ static index_t column(index_t off, int e) { return U::run_start(off, e / 16) + e % 16; }
};

/// The `values` floats of x at the columns of the unit at `off` (row_unit<T>::column).
template <class T>
__device__ __forceinline__ void load_x(const float* __restrict__ x, index_t off,
                                       float (&out)[row_unit<T>::values]) {
#pragma unroll
  for (int e = 0; e < row_unit<T>::values; e += 4) {
    const float4 f = *reinterpret_cast<const float4*>(x + row_unit<T>::column(off, e));
    out[e] = f.x, out[e + 1] = f.y, out[e + 2] = f.z, out[e + 3] = f.w;
  }
}

/// The same floats read from a caller's unpadded X row (any dtype, any alignment; d columns, zeros
/// past them): for the first kernel of a call, which runs before the padded copy exists.
template <class T, class Tx>
__device__ __forceinline__ void load_x_raw(const Tx* __restrict__ x, index_t d, index_t off,
                                           float (&out)[row_unit<T>::values]) {
#pragma unroll
  for (int e = 0; e < row_unit<T>::values; ++e) {
    const index_t c = row_unit<T>::column(off, e);
    out[e] = c < d ? to_float(x[c]) : 0.0f;
  }
}

/// Programmatic dependent launch (sm_90+; docs/cuda.md): a kernel launched with the attribute may be
/// scheduled before its predecessor in the stream has finished. Every kernel here calls this first:
/// it waits for the predecessor's completion and memory (griddepcontrol.wait), then lets the next
/// kernel be scheduled (it can start only once every thread block of this one has begun, and waits
/// in turn). Both are no-ops for a plain launch and before sm_90.
__device__ __forceinline__ void grid_dependency() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/// Sum over the 32 lanes, fixed butterfly order: every lane gets the same bits on every run.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Grid-stride loop over [0, count): every element is visited exactly once whatever the grid size
/// (elementwise launches cap their grid, so a kernel must never assume one thread per element).
#define SPARSE_FFN_GRID_STRIDE(e, count)                                                                    \
  for (::sparse_ffn::index_t e = blockIdx.x * static_cast<::sparse_ffn::index_t>(blockDim.x) + threadIdx.x; \
       e < (count); e += static_cast<::sparse_ffn::index_t>(gridDim.x) * blockDim.x)

/// Grid size for `count` work items of one block each; checked to fit the x dimension.
inline unsigned grid_for(index_t count, const char* what) {
  sparse_ffn::detail::require(count >= 0 && count <= 0x7fffffff, status::size_overflow, what, ": ", count,
                              " thread blocks exceed the grid limit");
  return static_cast<unsigned>(count > 0 ? count : 1);
}

}  // namespace detail
}  // namespace cuda
}  // namespace sparse_ffn
