// sparse_ffn — activation policies.
//
// Plain activations map one pre-activation `a = k_i·x + b1_i` to `h_i = act(a)`. Gated activations
// (GLU family, e.g. LLaMA's SwiGLU) also read the "up" projection `u = w3_i·x + b3_i` and give
// `h_i = act(a) * u`. Every policy is a tag struct with a `SPARSE_FFN_HD` `apply`, so CPU and CUDA kernels
// share the same math; `activate<Act>(a, u)` calls either form.
//
// NaN in, NaN out for every activation (relu(NaN) is NaN, not 0); see docs/api.md "NaN and Inf".
//
// Each plain activation also has `grad(a)` = d act / d a (the backward pass, cpu/backward.hpp);
// `activation_backward<Act>(a, u, dh, da, du)` applies the chain rule for either form. relu'(0) = 0.
#pragma once

#include <cmath>
#include <type_traits>

#include "config.hpp"

namespace sparse_ffn {

/// Runtime names of the activations (dispatch, file metadata).
enum class activation_kind : int { relu = 0, gelu_erf, gelu_tanh, silu, swiglu, geglu };
/// How many activation kinds there are (tables indexed by activation_kind).
inline constexpr int k_activation_kinds = 6;

namespace detail {
SPARSE_FFN_HD float erf_f(float x) {
  return ::erff(x);
}
SPARSE_FFN_HD float tanh_f(float x) {
  return ::tanhf(x);
}
SPARSE_FFN_HD float exp_f(float x) {
  return ::expf(x);
}
}  // namespace detail

namespace act {

struct relu {
  static constexpr activation_kind kind = activation_kind::relu;
  static constexpr bool gated = false;
  static constexpr const char* name = "relu";
  SPARSE_FFN_HD static float apply(float a) { return a < 0.0f ? 0.0f : a; }
  /// 1 for a > 0, 0 for a <= 0, NaN for NaN.
  SPARSE_FFN_HD static float grad(float a) { return a > 0.0f ? 1.0f : (a <= 0.0f ? 0.0f : a); }
};

/// GELU, exact form: a/2 * (1 + erf(a/sqrt 2)) (PyTorch `gelu`, approximate='none').
struct gelu_erf {
  static constexpr activation_kind kind = activation_kind::gelu_erf;
  static constexpr bool gated = false;
  static constexpr const char* name = "gelu_erf";
  SPARSE_FFN_HD static float apply(float a) {
    return 0.5f * a * (1.0f + detail::erf_f(a * 0.70710678118654752f));
  }
  /// Φ(a) + a·φ(a).
  SPARSE_FFN_HD static float grad(float a) {
    return 0.5f * (1.0f + detail::erf_f(a * 0.70710678118654752f)) +
           a * 0.39894228040143268f * detail::exp_f(-0.5f * a * a);
  }
};

/// GELU, tanh form (PyTorch approximate='tanh', "gelu_new").
struct gelu_tanh {
  static constexpr activation_kind kind = activation_kind::gelu_tanh;
  static constexpr bool gated = false;
  static constexpr const char* name = "gelu_tanh";
  SPARSE_FFN_HD static float apply(float a) {
    const float inner = 0.79788456080286536f * (a + 0.044715f * a * a * a);
    return 0.5f * a * (1.0f + detail::tanh_f(inner));
  }
  /// 0.5(1 + t) + 0.5·a·(1 − t²)·c·(1 + 3·0.044715·a²), t = tanh(c·(a + 0.044715·a³)).
  SPARSE_FFN_HD static float grad(float a) {
    const float t = detail::tanh_f(0.79788456080286536f * (a + 0.044715f * a * a * a));
    return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * 0.79788456080286536f * (1.0f + 0.134145f * a * a);
  }
};

/// SiLU / swish: a * sigmoid(a).
struct silu {
  static constexpr activation_kind kind = activation_kind::silu;
  static constexpr bool gated = false;
  static constexpr const char* name = "silu";
  SPARSE_FFN_HD static float apply(float a) { return a / (1.0f + detail::exp_f(-a)); }
  /// σ(a)·(1 + a·(1 − σ(a))).
  SPARSE_FFN_HD static float grad(float a) {
    const float s = 1.0f / (1.0f + detail::exp_f(-a));
    return s * (1.0f + a * (1.0f - s));
  }
};

/// Gated linear unit over an inner activation: h = Inner(a) * u.
template <class Inner>
struct glu {
  static_assert(!Inner::gated, "sparse_ffn: glu<> takes a plain (non-gated) activation");
  static constexpr bool gated = true;
  using inner = Inner;
  SPARSE_FFN_HD static float apply(float a, float u) { return Inner::apply(a) * u; }
};

/// SwiGLU (LLaMA, Mistral): silu(W1 x) * (W3 x).
struct swiglu : glu<silu> {
  static constexpr activation_kind kind = activation_kind::swiglu;
  static constexpr const char* name = "swiglu";
};

/// GeGLU with the tanh GELU (T5 v1.1 "gated-gelu", Gemma).
struct geglu : glu<gelu_tanh> {
  static constexpr activation_kind kind = activation_kind::geglu;
  static constexpr const char* name = "geglu";
};

}  // namespace act

/// True for the activation tag structs above (and user types that provide the same members).
template <class A, class = void>
struct is_activation : std::false_type {};
template <class A>
struct is_activation<A, std::void_t<decltype(A::gated), decltype(A::name)>> : std::true_type {};

/// True for the six activations above (those with an activation_kind and vectorised CPU kernels).
template <class A>
inline constexpr bool is_builtin_activation =
    std::is_same<A, act::relu>::value || std::is_same<A, act::gelu_erf>::value ||
    std::is_same<A, act::gelu_tanh>::value || std::is_same<A, act::silu>::value ||
    std::is_same<A, act::swiglu>::value || std::is_same<A, act::geglu>::value;

/// h = act(a) for plain activations, act(a) * u for gated ones (u is ignored for plain ones).
template <class Act>
SPARSE_FFN_HD float activate(float a, float u) {
  if constexpr (Act::gated) {
    return Act::apply(a, u);
  } else {
    (void)u;
    return Act::apply(a);
  }
}

/// Chain rule through h = act(a) (plain) or h = inner(a)·u (gated), given dh = dL/dh: da = dL/da and,
/// gated, du = dL/du (left unchanged for plain activations).
template <class Act>
SPARSE_FFN_HD void activation_backward(float a, float u, float dh, float& da, float& du) {
  if constexpr (Act::gated) {
    da = dh * u * Act::inner::grad(a);
    du = dh * Act::inner::apply(a);
  } else {
    (void)u;
    (void)du;
    da = dh * Act::grad(a);
  }
}

inline const char* activation_name(activation_kind k) noexcept {
  switch (k) {
    case activation_kind::relu: return "relu";
    case activation_kind::gelu_erf: return "gelu_erf";
    case activation_kind::gelu_tanh: return "gelu_tanh";
    case activation_kind::silu: return "silu";
    case activation_kind::swiglu: return "swiglu";
    case activation_kind::geglu: return "geglu";
  }
  return "?";
}

inline bool activation_is_gated(activation_kind k) noexcept {
  return k == activation_kind::swiglu || k == activation_kind::geglu;
}

}  // namespace sparse_ffn
