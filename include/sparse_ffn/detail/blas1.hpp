// sparse_ffn — portable level-1 loops (host) shared by the reference paths: a dot product with
// independent partial sums (so the compiler vectorises it without -ffast-math) and an axpy.
#pragma once

#include <type_traits>

#include "../config.hpp"
#include "../quant.hpp"
#include "../types.hpp"

namespace sparse_ffn {
namespace detail {

/// sum_j float(w[j]) * x[j], j < n, accumulated in float with 16 independent partial sums.
/// A quantised row (quant.hpp) of n values: the dequantised values (exact in float) times x, in the
/// order of the element-type dot below.
template <class T, std::enable_if_t<is_quantized<T>::value, int> = 0>
inline float dot(const T* SPARSE_FFN_RESTRICT w, const float* SPARSE_FFN_RESTRICT x, index_t n) {
  constexpr int L = 16;
  float acc[L] = {};
  for (index_t j = 0; j < n; ++j) acc[j % L] += row_format<T>::get(w, j, n) * x[j];
  float s = 0.0f;
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

/// y[j] += a * value j of a quantised row of n values.
template <class T, std::enable_if_t<is_quantized<T>::value, int> = 0>
inline void axpy(float a, const T* SPARSE_FFN_RESTRICT v, float* SPARSE_FFN_RESTRICT y, index_t n) {
  for (index_t j = 0; j < n; ++j) y[j] += a * row_format<T>::get(v, j, n);
}

template <class T, std::enable_if_t<!is_quantized<T>::value, int> = 0>
inline float dot(const T* SPARSE_FFN_RESTRICT w, const float* SPARSE_FFN_RESTRICT x, index_t n) {
  constexpr int L = 16;
  float acc[L] = {};
  index_t j = 0;
  for (; j + L <= n; j += L)
    for (int l = 0; l < L; ++l) acc[l] += to_float(w[j + l]) * x[j + l];
  for (int l = 0; j + l < n; ++l) acc[l] += to_float(w[j + l]) * x[j + l];
  float s = 0.0f;
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

/// y[j] += a * float(v[j]), j < n.
template <class T, std::enable_if_t<!is_quantized<T>::value, int> = 0>
inline void axpy(float a, const T* SPARSE_FFN_RESTRICT v, float* SPARSE_FFN_RESTRICT y, index_t n) {
  for (index_t j = 0; j < n; ++j) y[j] += a * to_float(v[j]);
}

}  // namespace detail
}  // namespace sparse_ffn
