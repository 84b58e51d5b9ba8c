// sparse_ffn — public CPU entry points.
//
//   cpu::route<P>(model, n, x, args, routing_out)             selection only
//   cpu::forward_routed<P>(model, n, x, y, routing[, cache])   compute with a given routing table
//   cpu::forward<P>(model, n, x, y, args[, cache])             fused: select + compute
//
// X and Y are [n × d_model] row-major of float, half_t or bfloat16_t (independently of the weights'
// dtype); accumulation is in float. Every argument is validated first; a bad one throws
// sparse_ffn::error and nothing is written. These currently run the reference path (reference.hpp).
#pragma once

#include "reference.hpp"

namespace sparse_ffn {
namespace cpu {

template <class Policy, class Tx>
void route(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, const route_args& args,
           routing_view out) {
  reference_route<Policy>(w, n, x, args, out);
}

template <class Policy, class Tx, class Ty>
void forward_routed(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
                    const_routing_view routing, const forward_cache* cache = nullptr) {
  reference_forward_routed<Policy>(w, n, x, y, routing, cache);
}

template <class Policy, class Tx, class Ty>
void forward(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
             const route_args& args, const forward_cache* cache = nullptr) {
  reference_forward<Policy>(w, n, x, y, args, cache);
}

}  // namespace cpu
}  // namespace sparse_ffn
