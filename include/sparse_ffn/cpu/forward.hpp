// sparse_ffn — public CPU entry points.
//
//   cpu::route<P>(model, n, x, args, routing_out[, ws])             selection only
//   cpu::forward_routed<P>(model, n, x, y, routing[, cache, ws])     compute with a given routing table
//   cpu::forward<P>(model, n, x, y, args[, cache, ws])               fused: select + compute
//
// X and Y are [n × d_model] row-major of float, half_t or bfloat16_t (independently of the weights'
// dtype); accumulation is in float. Every argument is validated first; a bad one throws
// sparse_ffn::error and nothing is written. They run the fast path (fast.hpp): vectorised for the
// CPU it runs on (run-time dispatch, cpu/isa.hpp), OpenMP-parallel, bit-identical for any thread count. Pass
// a `workspace` to reuse scratch memory across calls (otherwise a per-thread one is used). The simple
// reference versions are in reference.hpp.
#pragma once

#include "checks.hpp"
#include "fast.hpp"
#include "reference.hpp"
#include "workspace.hpp"

namespace sparse_ffn {
namespace cpu {

/// Whether the kernels now active (active_isa()) round x to bf16 (key pass) for weights of type T:
/// avx512_bf16 with bf16 weights (docs/design.md, "Accuracy of the bf16 kernels"). On AMD CPUs the
/// value pass then rounds its coefficients to bf16 too (kernels::fast_bf16_dot).
template <class T>
bool rounds_inputs_to_bf16() {
  return kernels::ops_for<T>(active_isa()).bf16_x;
}

/// Whether the kernels now active quantise x to int8 per group of 32 (key pass) for weights of type T:
/// q8/q4 on avx2, avx512_vnni and avx512_bf16 (docs/design.md, "Quantised weights").
template <class T>
bool quantizes_inputs_to_int8() {
  return kernels::ops_for<T>(active_isa()).int8_x;
}

/// The largest magnitude of the integers the value kernels now active quantise the value coefficients
/// to for weights T (per token, chunk of 32 rows and group of 32 columns): 127 for q4 on avx2, 0 where
/// they stay float (docs/design.md, "Quantised weights"). On amx, value tiles of blocks shared by 8 (q8) /
/// 12 (q4) or more tokens are dequantised to bf16 instead, coefficients rounded to bf16 (design.md, "AMX").
template <class T>
std::int32_t value_coefficient_levels() {
  return kernels::ops_for<T>(active_isa()).value_levels;
}

/// Whether the kernels now active read key tiles (blocked_ffn::tile_keys) with their own kernel
/// (kernel_ops::dots_tiles: q4 on avx2, q8/q4 on avx512_vnni and up), i.e. whether tiling a model's keys
/// pays off on this CPU; elsewhere the forward unpacks each tile first (same bits, slower).
template <class T>
bool key_tile_kernel() {
  return kernels::ops_for<T>(active_isa()).dots_tiles != nullptr;
}

/// Whether the running ISA level has the value kernel for value tiles (kernel_ops::apply_tiles: q8/q4 on
/// avx512_vnni and up; amx also apply_tiles_amx); elsewhere the forward unpacks a block's tiles first (same
/// bits, slower).
template <class T>
bool value_tile_kernel() {
  return kernels::ops_for<T>(active_isa()).apply_tiles != nullptr;
}

template <class Policy, class Tx>
void route(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, const route_args& args,
           routing_view out, workspace* ws = nullptr) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, true);
  Policy::selector::check(w, args, n);
  sparse_ffn::detail::check_x(w.layout, n, x);
  sparse_ffn::detail::check_routing_out(n, args.k, out);
  detail::fast_run<Policy>(w, n, detail::io_rows::of(x, static_cast<float*>(nullptr)), &args, {}, &out,
                           nullptr, ws ? *ws : detail::thread_workspace());
}

template <class Policy, class Tx, class Ty>
void forward_routed(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
                    const_routing_view routing, const forward_cache* cache = nullptr,
                    workspace* ws = nullptr) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, true);
  sparse_ffn::detail::check_io(w.layout, n, x, y);
  sparse_ffn::detail::check_routing(w.layout, n, routing);
  sparse_ffn::detail::check_cache(w.layout, n, routing.k, cache);
  sparse_ffn::detail::check_cache_logits<typename Policy::selector>(cache, false);
  detail::fast_run<Policy>(w, n, detail::io_rows::of(x, y), nullptr, routing, nullptr, cache,
                           ws ? *ws : detail::thread_workspace());
}

template <class Policy, class Tx, class Ty>
void forward(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x, Ty* y,
             const route_args& args, const forward_cache* cache = nullptr, workspace* ws = nullptr) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  sparse_ffn::detail::check_model<Policy>(w, true);
  Policy::selector::check(w, args, n);
  sparse_ffn::detail::check_io(w.layout, n, x, y);
  sparse_ffn::detail::check_cache(w.layout, n, args.k, cache);
  sparse_ffn::detail::check_cache_logits<typename Policy::selector>(cache, true);
  detail::fast_run<Policy>(w, n, detail::io_rows::of(x, y), &args, {}, nullptr, cache,
                           ws ? *ws : detail::thread_workspace());
}

}  // namespace cpu
}  // namespace sparse_ffn
