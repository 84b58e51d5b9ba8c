// sparse_ffn — key micro-kernel: dot products of M tokens with R weight rows, cache-blocked over d.
//
//   out[m][r] = sum_q rows[r*ld + q] * x[m][q]      q < len (a multiple of the vector width)
//
// Each (m, r) pair owns one vector accumulator that runs over q in order and is reduced with the
// ISA's fixed tree, so a dot product's bits are the same in every tile shape and blocking: a token
// gets the same pre-activations alone or inside a batch. `project` walks d in chunks of k_dchunk so
// that the R rows' chunk stays in L1 while every token tile of the batch uses it; accumulators are
// parked in a per-thread spill buffer between chunks (exact: no rounding).
#pragma once

#include <algorithm>
#include <type_traits>

#include "../../config.hpp"
#include "../simd.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {
namespace kernels {

/// Elements of d per cache block of the key kernel.
inline constexpr index_t k_dchunk = 512;

/// Calls f(std::integral_constant<int, v>{}) for the runtime v in [1, Max].
template <int Max, class F>
inline void dispatch_count(int v, F&& f) {
  static_assert(Max >= 1 && Max <= 8, "dispatch_count supports 1..8");
  switch (v) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2:
      if constexpr (Max >= 2) f(std::integral_constant<int, 2>{});
      break;
    case 3:
      if constexpr (Max >= 3) f(std::integral_constant<int, 3>{});
      break;
    case 4:
      if constexpr (Max >= 4) f(std::integral_constant<int, 4>{});
      break;
    case 5:
      if constexpr (Max >= 5) f(std::integral_constant<int, 5>{});
      break;
    case 6:
      if constexpr (Max >= 6) f(std::integral_constant<int, 6>{});
      break;
    case 7:
      if constexpr (Max >= 7) f(std::integral_constant<int, 7>{});
      break;
    case 8:
      if constexpr (Max >= 8) f(std::integral_constant<int, 8>{});
      break;
    default: break;
  }
}

/// acc[m][r] += rows[r][q] * x[m][q] for q in [q0, q1). acc holds M*R vectors (spill format);
/// `first` starts from zero. With `prefetch`, software prefetch runs 1 KiB ahead along each row and,
/// near the end of the rows, into the next R rows (the next tile of a block); the caller asks for it
/// on the first token tile of a chunk only (later tiles find the chunk in L1).
template <class Isa, int M, int R, class T>
inline void dot_tile_acc(const float* const* x, const T* SPARSE_FFN_RESTRICT rows, index_t ld, index_t len,
                         index_t q0, index_t q1, float* SPARSE_FFN_RESTRICT acc, bool first, bool prefetch) {
  using V = simd<Isa>;
  using reg = typename V::reg;
  constexpr index_t ahead = 1024 / sizeof(T), per_line = 64 / sizeof(T);
  reg a[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) a[m][r] = first ? V::zero() : V::load(acc + (m * R + r) * V::width);
  for (index_t q = q0; q < q1; q += V::width) {
    if (prefetch && q % per_line == 0) {  // one prefetch per cache line and row
      const index_t p = q + ahead;
      const T* pf = p < len ? rows + p : rows + R * ld + (p - len);
      for (int r = 0; r < R; ++r) V::prefetch(pf + r * ld);
    }
    reg xv[M];
    for (int m = 0; m < M; ++m) xv[m] = V::load(x[m] + q);
    for (int r = 0; r < R; ++r) {
      const reg kv = V::load(rows + r * ld + q);
      for (int m = 0; m < M; ++m) a[m][r] = V::fma(kv, xv[m], a[m][r]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) V::store(acc + (m * R + r) * V::width, a[m][r]);
}

/// out[m*R + r] = dot(rows[r], x[m]) for m tokens (any number) and R rows, over len elements.
/// `spill` holds m*R vectors. Token tiles have up to MT tokens.
template <class Isa, int MT, int R, class T>
inline void project(const float* const* x, index_t m, const T* rows, index_t ld, index_t len, float* spill,
                    float* out) {
  using V = simd<Isa>;
  for (index_t q0 = 0; q0 < len; q0 += k_dchunk) {
    const index_t q1 = std::min(len, q0 + k_dchunk);
    for (index_t m0 = 0; m0 < m; m0 += MT) {
      dispatch_count<MT>(static_cast<int>(std::min<index_t>(MT, m - m0)), [&](auto M) {
        dot_tile_acc<Isa, decltype(M)::value, R>(x + m0, rows, ld, len, q0, q1, spill + m0 * R * V::width,
                                                 q0 == 0, m0 == 0);
      });
    }
  }
  for (index_t i = 0; i < m * R; ++i) out[i] = V::hsum(V::load(spill + i * V::width));
}

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
