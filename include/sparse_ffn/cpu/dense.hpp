// sparse_ffn — dense FFN forward on the CPU (for comparison; equals the sparse forward with k = B and
// an unweighted selector). Reads the PyTorch-layout dense view directly; float accumulation.
#pragma once

#include <vector>

#include "../activation.hpp"
#include "../detail/blas1.hpp"
#include "../layout.hpp"
#include "checks.hpp"

namespace sparse_ffn {
namespace cpu {

/// y = W2 · act(W1 x + b1 [, W3 x + b3]) + b2 for n tokens (X, Y: [n × d_model] row-major).
template <class Act, class T, class Tx, class Ty>
void dense_forward(const dense_ffn_view<T>& f, index_t n, const Tx* x, Ty* y) {
  static_assert(is_activation<Act>::value, "sparse_ffn: dense_forward<Act>: Act must be an activation tag");
  validate(f);
  sparse_ffn::detail::require(f.gated() == Act::gated, status::invalid_argument, "activation '", Act::name,
                              "' is ", Act::gated ? "gated" : "not gated", " but the dense FFN ",
                              f.gated() ? "has" : "has no", " W3");
  block_layout l;
  l.d_model = f.d_model;
  l.d_ff = f.d_ff;
  sparse_ffn::detail::check_io(l, n, x, y);
  const index_t d = f.d_model, F = f.d_ff;
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel if (n > 1)
#endif
  {
    std::vector<float> xf(static_cast<std::size_t>(d)), h(static_cast<std::size_t>(F));
#if SPARSE_FFN_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (index_t t = 0; t < n; ++t) {
      for (index_t c = 0; c < d; ++c) xf[static_cast<std::size_t>(c)] = to_float(x[t * d + c]);
      for (index_t i = 0; i < F; ++i) {
        const float a =
            sparse_ffn::detail::dot(f.w1 + i * d, xf.data(), d) + (f.b1 ? to_float(f.b1[i]) : 0.0f);
        float u = 0.0f;
        if constexpr (Act::gated)
          u = sparse_ffn::detail::dot(f.w3 + i * d, xf.data(), d) + (f.b3 ? to_float(f.b3[i]) : 0.0f);
        h[static_cast<std::size_t>(i)] = activate<Act>(a, u);
      }
      for (index_t c = 0; c < d; ++c)
        y[t * d + c] = from_float<Ty>(sparse_ffn::detail::dot(f.w2 + c * F, h.data(), F) +
                                      (f.b2 ? to_float(f.b2[c]) : 0.0f));
    }
  }
}

}  // namespace cpu
}  // namespace sparse_ffn
