// sparse_ffn — the compile-time policy of a sparse FFN: block size × selector × dtype × activation.
//
//   using P = sparse_ffn::policy<64, sparse_ffn::select::avg_k, sparse_ffn::bfloat16_t,
//                                sparse_ffn::act::swiglu>;
//   sparse_ffn::cpu::forward<P>(model.view(), n, x, y, {/*k=*/64});
//
// Every kernel (CPU reference, CPU fast path, CUDA) is a function of the policy. Invalid components
// fail to compile here with a message; a kernel that does not support a valid combination says so in
// its own static_assert. The block size G is a compile-time constant so kernels can size registers /
// shared memory by it; the model's runtime g must equal G (checked on every call).
#pragma once

#include <type_traits>

#include "activation.hpp"
#include "quant.hpp"
#include "selector/avg_k.hpp"
#include "selector/hash.hpp"
#include "selector/learned_gate.hpp"
#include "selector/oracle.hpp"
#include "selector/selector.hpp"
#include "types.hpp"

namespace sparse_ffn {

/// Largest compile-time block size.
inline constexpr int k_max_block_size = 1024;

template <int G, class Selector, class T, class Act>
struct policy {
  static_assert(G >= 1 && G <= k_max_block_size && (G & (G - 1)) == 0,
                "sparse_ffn::policy: block size G must be a power of two in [1, 1024]");
  static_assert(is_selector<Selector>::value,
                "sparse_ffn::policy: Selector must be a selector tag (sparse_ffn::select::avg_k, hash, "
                "learned_gate or oracle)");
  static_assert(is_weight_dtype<T>::value,
                "sparse_ffn::policy: T must be float, sparse_ffn::half_t, sparse_ffn::bfloat16_t, "
                "sparse_ffn::q8_t or sparse_ffn::q4_t");
  static_assert(is_activation<Act>::value,
                "sparse_ffn::policy: Act must be an activation tag (sparse_ffn::act::relu, gelu_erf, "
                "gelu_tanh, silu, swiglu or geglu)");

  static constexpr int block_size = G;
  using selector = Selector;
  using dtype = T;
  using activation = Act;
  using accum_type = typename dtype_traits<T>::accum_type;
  static constexpr bool gated = Act::gated;
};

template <class P>
struct is_policy : std::false_type {};
template <int G, class S, class T, class A>
struct is_policy<policy<G, S, T, A>> : std::true_type {};

}  // namespace sparse_ffn
