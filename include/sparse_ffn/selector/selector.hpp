// sparse_ffn — what every selector provides, and the runtime names of the selectors.
//
// A selector is a tag struct (see avg_k.hpp, hash.hpp, learned_gate.hpp, oracle.hpp) with
//   kind, name               runtime identity
//   uses_token_ids           reads route_args::token_ids (hash)
//   weighted                 produces non-unit block weights (learned gate)
//   dense_scores             must compute every neuron's activation to score (oracle)
//   check(view, args, n)     host validation of the model and routing arguments (throws sparse_ffn::error)
//   scratch_floats(layout)   floats of per-thread scratch `route_token` needs
//   route_token<T, Act>(...) the host reference routing of one token
// plus SPARSE_FFN_HD helpers with the selector's math, shared by the CPU and CUDA kernels.
// Adding a selector: a new file here, a new selector_kind, a case in dispatch.hpp (docs/design.md).
#pragma once

#include <type_traits>

#include "../config.hpp"
#include "../error.hpp"
#include "../routing.hpp"

namespace sparse_ffn {

enum class selector_kind : int { avg_k = 0, hash, learned_gate, oracle };

inline const char* selector_name(selector_kind s) noexcept {
  switch (s) {
    case selector_kind::avg_k: return "avg_k";
    case selector_kind::hash: return "hash";
    case selector_kind::learned_gate: return "learned_gate";
    case selector_kind::oracle: return "oracle";
  }
  return "?";
}

template <class S, class = void>
struct is_selector : std::false_type {};
template <class S>
struct is_selector<S, std::void_t<decltype(S::kind), decltype(S::uses_token_ids), decltype(S::weighted)>>
    : std::is_same<std::remove_cv_t<decltype(S::kind)>, selector_kind> {};

namespace detail {

/// Checks shared by every selector: 1 <= k <= B, n >= 0.
inline void check_k(index_t k, index_t num_blocks) {
  require(k >= 1 && k <= num_blocks, status::invalid_argument, "k (", k,
          ") must be in [1, B] where B = d_ff / g = ", num_blocks);
}

}  // namespace detail
}  // namespace sparse_ffn
