// sparse_ffn — runtime -> compile-time dispatch, for frameworks that know g / dtype / selector /
// activation only at run time.
//
//   sparse_ffn::dispatch_policy({64, selector_kind::avg_k, dtype::bf16, activation_kind::swiglu},
//       [&](auto p) {
//         using P = typename decltype(p)::type;          // a sparse_ffn::policy<...>
//         sparse_ffn::cpu::forward<P>(model.view(), n, x, y, args);
//       });
//
// Each dispatcher is a closed switch: a value outside the supported set throws sparse_ffn::error
// (status::unsupported) naming the supported values. dispatch_policy instantiates the callable for the
// whole product (5 × 4 × 3 × 6 = 360 policies); dispatch on fewer axes where the others are fixed.
#pragma once

#include <string>
#include <type_traits>

#include "activation.hpp"
#include "error.hpp"
#include "policy.hpp"
#include "types.hpp"

namespace sparse_ffn {

/// A type carried as a value (what the dispatchers pass to the callable).
template <class T>
struct type_tag {
  using type = T;
};

/// The block sizes the runtime dispatch supports (any power of two works at compile time).
inline constexpr index_t k_dispatch_block_sizes[] = {1, 16, 32, 64, 128};

/// Runtime description of a policy.
struct policy_desc {
  index_t g = 64;
  selector_kind selector = selector_kind::avg_k;
  dtype type = dtype::f32;
  activation_kind activation = activation_kind::relu;
};

template <class F>
decltype(auto) dispatch_block_size(index_t g, F&& f) {
  switch (g) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default:
      detail::fail(status::unsupported, "block size g=", g,
                   " is not in the dispatch set {1, 16, 32, 64, 128}; use a compile-time policy");
  }
}

template <class F>
decltype(auto) dispatch_dtype(dtype d, F&& f) {
  switch (d) {
    case dtype::f32: return f(type_tag<float>{});
    case dtype::f16: return f(type_tag<half_t>{});
    case dtype::bf16: return f(type_tag<bfloat16_t>{});
    default:
      // q8/q4 are not dispatched at run time yet (each would add every policy's instantiation to
      // a dispatching consumer's build): name them in the policy at compile time.
      detail::fail(status::unsupported, "dtype ", static_cast<int>(d), " (", dtype_name(d),
                   ") is not dispatched at run time (f32, f16, bf16); q8/q4: name q8_t/q4_t in the policy");
  }
}

template <class F>
decltype(auto) dispatch_selector(selector_kind s, F&& f) {
  switch (s) {
    case selector_kind::avg_k: return f(type_tag<select::avg_k>{});
    case selector_kind::hash: return f(type_tag<select::hash>{});
    case selector_kind::learned_gate: return f(type_tag<select::learned_gate>{});
    case selector_kind::oracle: return f(type_tag<select::oracle>{});
    default:
      detail::fail(status::unsupported, "selector ", static_cast<int>(s),
                   " is not one of avg_k, hash, learned_gate, oracle");
  }
}

template <class F>
decltype(auto) dispatch_activation(activation_kind a, F&& f) {
  switch (a) {
    case activation_kind::relu: return f(type_tag<act::relu>{});
    case activation_kind::gelu_erf: return f(type_tag<act::gelu_erf>{});
    case activation_kind::gelu_tanh: return f(type_tag<act::gelu_tanh>{});
    case activation_kind::silu: return f(type_tag<act::silu>{});
    case activation_kind::swiglu: return f(type_tag<act::swiglu>{});
    case activation_kind::geglu: return f(type_tag<act::geglu>{});
    default:
      detail::fail(status::unsupported, "activation ", static_cast<int>(a),
                   " is not one of relu, gelu_erf, gelu_tanh, silu, swiglu, geglu");
  }
}

/// Calls f(type_tag<policy<G, S, T, A>>{}) for the runtime description.
template <class F>
decltype(auto) dispatch_policy(const policy_desc& d, F&& f) {
  return dispatch_block_size(d.g, [&](auto g) -> decltype(auto) {
    return dispatch_selector(d.selector, [&](auto s) -> decltype(auto) {
      return dispatch_dtype(d.type, [&](auto t) -> decltype(auto) {
        return dispatch_activation(d.activation, [&](auto a) -> decltype(auto) {
          using P = policy<decltype(g)::value, typename decltype(s)::type, typename decltype(t)::type,
                           typename decltype(a)::type>;
          return f(type_tag<P>{});
        });
      });
    });
  });
}

// ---- names <-> enums (CLIs, file metadata) --------------------------------------------------------

inline selector_kind parse_selector(const std::string& s) {
  for (selector_kind k :
       {selector_kind::avg_k, selector_kind::hash, selector_kind::learned_gate, selector_kind::oracle})
    if (s == selector_name(k)) return k;
  detail::fail(status::unsupported, "unknown selector '", s, "' (avg_k, hash, learned_gate, oracle)");
}

inline dtype parse_dtype(const std::string& s) {
  for (dtype d : {dtype::f32, dtype::f16, dtype::bf16})
    if (s == dtype_name(d)) return d;
  detail::fail(status::unsupported, "unknown dtype '", s, "' (f32, f16, bf16)");
}

inline activation_kind parse_activation(const std::string& s) {
  for (activation_kind a : {activation_kind::relu, activation_kind::gelu_erf, activation_kind::gelu_tanh,
                            activation_kind::silu, activation_kind::swiglu, activation_kind::geglu})
    if (s == activation_name(a)) return a;
  detail::fail(status::unsupported, "unknown activation '", s,
               "' (relu, gelu_erf, gelu_tanh, silu, swiglu, geglu)");
}

}  // namespace sparse_ffn
