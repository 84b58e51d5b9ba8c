// sparse_ffn — key micro-kernel: an M-token × R-row tile of dot products.
//
//   out[m*R + r] = sum_q rows[r*ld + q] * x[m][q]      q < len (a multiple of the vector width)
//
// Each (m, r) pair owns one vector accumulator that runs over q in order and is reduced with the
// ISA's fixed tree, so a dot product's bits are the same in every tile shape (M, R): a token gets the
// same pre-activations alone or inside a batch. Used for the key / up projections of selected blocks
// and for the linear selector scores (centroid or gate rows).
#pragma once

#include "../../config.hpp"
#include "../simd.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {
namespace kernels {

template <class Isa, int M, int R, class T>
inline void dot_tile(const float* const* x, const T* SPARSE_FFN_RESTRICT rows, index_t ld, index_t len,
                     float* SPARSE_FFN_RESTRICT out) {
  using V = simd<Isa>;
  using reg = typename V::reg;
  reg acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = V::zero();
  for (index_t q = 0; q < len; q += V::width) {
    reg xv[M];
    for (int m = 0; m < M; ++m) xv[m] = V::load(x[m] + q);
    for (int r = 0; r < R; ++r) {
      const reg kv = V::load(rows + r * ld + q);
      for (int m = 0; m < M; ++m) acc[m][r] = V::fma(kv, xv[m], acc[m][r]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) out[m * R + r] = V::hsum(acc[m][r]);
}

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

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
