// sparse_ffn — finding NaN / Inf in host arrays (the converter and the loaders reject them up front).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../error.hpp"

namespace sparse_ffn {
namespace detail {

/// Index of the first NaN or ±Inf among p[0, n), or -1.
inline index_t first_non_finite(const float* p, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

/// "[a, b, c]": a shape or a multi-index, as the error messages print them.
inline std::string shape_string(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

/// "[i, j, …]" of flat index `flat` in a row-major array of `shape` ("[flat]" without a shape).
inline std::string multi_index(index_t flat, const std::vector<std::int64_t>& shape) {
  if (shape.empty()) return shape_string({flat});
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    const std::int64_t s = shape[d] > 0 ? shape[d] : 1;
    idx[d] = flat % s;
    flat /= s;
  }
  return shape_string(idx);
}

/// Throws invalid_argument naming `what` and the first non-finite element of p [shape].
inline void require_finite(const float* p, index_t n, const std::string& what,
                           const std::vector<std::int64_t>& shape = {}) {
  const index_t i = first_non_finite(p, n);
  if (i < 0) return;
  fail(status::invalid_argument, what, " has a non-finite value (", p[i], ") at index ",
       multi_index(i, shape), "; NaN and Inf are not accepted");
}

}  // namespace detail
}  // namespace sparse_ffn
