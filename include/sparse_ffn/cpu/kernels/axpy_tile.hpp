// sparse_ffn — value micro-kernels: y_t += sum_i s[t][i] * v_i over a block's value rows.
//
// Every y element is updated as y = fma(s_i, v_i, y) for the listed rows i in ascending order, in
// every kernel and tile shape, so a token's output bits do not depend on tiling or batch size (up to
// the sign of an exact zero, see docs/design.md). `rows` lists the value rows to apply: rows whose
// coefficient is zero for every token of the tile are left out, so a ReLU block reads only the value
// rows of its active neurons.
#pragma once

#include "../../config.hpp"
#include "../simd.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {
namespace kernels {

/// Register tile: M tokens × C vectors of columns starting at column c0; y stays in registers while
/// the listed rows stream through. s[m] points at token m's g coefficients.
template <class Isa, int M, int C, class T>
inline void axpy_tile(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                      const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c0) {
  using V = simd<Isa>;
  using reg = typename V::reg;
  reg acc[M][C];
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < C; ++c) acc[m][c] = V::load(y[m] + c0 + c * V::width);
  for (index_t idx = 0; idx < nrows; ++idx) {
    const index_t i = rows[idx];
    const T* vi = v + i * ld + c0;
    reg vv[C];
    for (int c = 0; c < C; ++c) vv[c] = V::load(vi + c * V::width);
    for (int m = 0; m < M; ++m) {
      const reg sb = V::set1(s[m][i]);
      for (int c = 0; c < C; ++c) acc[m][c] = V::fma(sb, vv[c], acc[m][c]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < C; ++c) V::store(y[m] + c0 + c * V::width, acc[m][c]);
}

/// One token, row-streaming order: groups of four value rows are read front to back over the column
/// range [c_begin, c_end) (four sequential streams for the prefetcher), y in L1. Same arithmetic as
/// axpy_tile.
template <class Isa, class T>
inline void axpy_rows(float* SPARSE_FFN_RESTRICT y, const float* s, const std::int32_t* rows, index_t nrows,
                      const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_begin, index_t c_end) {
  using V = simd<Isa>;
  using reg = typename V::reg;
  index_t idx = 0;
  for (; idx + 4 <= nrows; idx += 4) {
    const T* v0 = v + rows[idx] * ld;
    const T* v1 = v + rows[idx + 1] * ld;
    const T* v2 = v + rows[idx + 2] * ld;
    const T* v3 = v + rows[idx + 3] * ld;
    const reg s0 = V::set1(s[rows[idx]]), s1 = V::set1(s[rows[idx + 1]]);
    const reg s2 = V::set1(s[rows[idx + 2]]), s3 = V::set1(s[rows[idx + 3]]);
    for (index_t c = c_begin; c < c_end; c += V::width) {
      reg a = V::load(y + c);
      a = V::fma(s0, V::load(v0 + c), a);
      a = V::fma(s1, V::load(v1 + c), a);
      a = V::fma(s2, V::load(v2 + c), a);
      a = V::fma(s3, V::load(v3 + c), a);
      V::store(y + c, a);
    }
  }
  for (; idx < nrows; ++idx) {
    const T* vi = v + rows[idx] * ld;
    const reg si = V::set1(s[rows[idx]]);
    for (index_t c = c_begin; c < c_end; c += V::width)
      V::store(y + c, V::fma(si, V::load(vi + c), V::load(y + c)));
  }
}

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
