// sparse_ffn — compiler configuration shared by host and device code.
//
// SPARSE_FFN_HD marks functions that are compiled for both the CPU and the GPU. Under nvcc it expands
// to `__host__ __device__ inline`; under a plain C++ compiler it is just `inline`, so every header that
// uses it builds without CUDA installed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "version.hpp"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SPARSE_FFN_HD __host__ __device__ __forceinline__
#define SPARSE_FFN_DEVICE __device__ __forceinline__
#define SPARSE_FFN_HOST_DEVICE __host__ __device__
#else
#define SPARSE_FFN_HD inline
#define SPARSE_FFN_HOST_DEVICE
#endif

// True while nvcc compiles the device side of a translation unit.
#if defined(__CUDA_ARCH__)
#define SPARSE_FFN_DEVICE_PASS 1
#else
#define SPARSE_FFN_DEVICE_PASS 0
#endif

#if defined(_OPENMP)
#define SPARSE_FFN_HAS_OPENMP 1
#else
#define SPARSE_FFN_HAS_OPENMP 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SPARSE_FFN_RESTRICT __restrict__
#define SPARSE_FFN_LIKELY(x) __builtin_expect(!!(x), 1)
#define SPARSE_FFN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SPARSE_FFN_RESTRICT
#define SPARSE_FFN_LIKELY(x) (x)
#define SPARSE_FFN_UNLIKELY(x) (x)
#endif

/// Forces a kernel helper inline where GCC's cost model would call it and pass its register arrays
/// through memory (kernels.inl lanes8_pair: 2.3x slower out of line, measured on a Zen 3).
#if defined(__GNUC__) || defined(__clang__)
#define SPARSE_FFN_FORCE_INLINE inline __attribute__((always_inline))
#else
#define SPARSE_FFN_FORCE_INLINE inline
#endif

namespace sparse_ffn {

/// Sizes and offsets on the host are 64-bit everywhere; see docs/design.md ("Index arithmetic").
using index_t = std::int64_t;

/// Block indices in routing tables (B < 2^31 is checked when a model is packed).
using block_index_t = std::int32_t;

/// Token ids fed to the hash selector.
using token_id_t = std::int64_t;

/// Byte alignment of every row of the blocked layout (one cache line; also a 16-byte multiple for
/// the GPU's vector loads).
inline constexpr std::size_t k_row_alignment = 64;

}  // namespace sparse_ffn
