// sparse_ffn — value micro-kernel: y_t += sum_i s[t][i] * v_i over a block's value rows.
//
// Every y element is updated as y = fma(s_i, v_i, y) for the listed rows i in ascending order, in
// every kernel and tile shape, so a token's output bits do not depend on tiling or batch size (up to
// the sign of an exact zero, see docs/design.md). `rows` lists the value rows to apply: rows whose
// coefficient is zero for every token of the tile are left out, so a ReLU block reads only the value
// rows of its active neurons.
//
// axpy_rows<M> applies groups of four value rows to M tokens, streaming the rows front to back over
// the column range (four sequential streams, software-prefetched across row groups) with the 4·M
// coefficients in registers and y in L1/L2.
#pragma once

#include "../../config.hpp"
#include "../simd.hpp"

SPARSE_FFN_SIMD_WARNINGS_OFF

namespace sparse_ffn {
namespace cpu {
namespace kernels {

template <class Isa, int M, class T>
inline void axpy_rows(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                      const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_begin, index_t c_end) {
  using V = simd<Isa>;
  using reg = typename V::reg;
  constexpr index_t ahead = 1024 / sizeof(T), per_line = 64 / sizeof(T);
  const index_t span = c_end - c_begin;
  index_t idx = 0;
  for (; idx + 4 <= nrows; idx += 4) {
    const T* vr[4];
    const T* next[4];
    reg sb[M][4];
    for (int u = 0; u < 4; ++u) {
      vr[u] = v + rows[idx + u] * ld;
      next[u] = idx + 4 + u < nrows ? v + rows[idx + 4 + u] * ld : vr[u];
      for (int m = 0; m < M; ++m) sb[m][u] = V::set1(s[m][rows[idx + u]]);
    }
    for (index_t c = c_begin; c < c_end; c += V::width) {
      if ((c - c_begin) % per_line == 0) {  // one prefetch per cache line and row
        const index_t p = c + ahead;
        for (int u = 0; u < 4; ++u)
          V::prefetch(p < c_end ? vr[u] + p : next[u] + c_begin + (p - c_end) % span);
      }
      reg vv[4];
      for (int u = 0; u < 4; ++u) vv[u] = V::load(vr[u] + c);
      for (int m = 0; m < M; ++m) {
        reg a = V::load(y[m] + c);
        for (int u = 0; u < 4; ++u) a = V::fma(sb[m][u], vv[u], a);
        V::store(y[m] + c, a);
      }
    }
  }
  for (; idx < nrows; ++idx) {
    const T* vi = v + rows[idx] * ld;
    for (int m = 0; m < M; ++m) {
      const reg si = V::set1(s[m][rows[idx]]);
      for (index_t c = c_begin; c < c_end; c += V::width)
        V::store(y[m] + c, V::fma(si, V::load(vi + c), V::load(y[m] + c)));
    }
  }
}

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

SPARSE_FFN_SIMD_WARNINGS_ON
