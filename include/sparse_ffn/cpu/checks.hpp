// sparse_ffn — argument checks shared by every CPU entry point (and the CUDA host-side checks).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "../error.hpp"
#include "../layout.hpp"
#include "../policy.hpp"
#include "../routing.hpp"

namespace sparse_ffn {
namespace detail {

/// Model vs policy: dtype matches by construction; block size and gating must match. Key and value
/// tiles (layout.hpp) only where `tiles_ok` (the CPU forward); elsewhere `what` names the refusing caller.
template <class Policy>
void check_model(const blocked_ffn_view<typename Policy::dtype>& w, bool tiles_ok = false,
                 const char* what = "this entry point") {
  validate(w);
  if (!tiles_ok) require_rows(w.layout, what);
  require(w.layout.g == Policy::block_size, status::invalid_argument, "model block size g=", w.layout.g,
          " does not match the policy's block size G=", Policy::block_size);
  require(w.layout.gated == Policy::gated, status::invalid_argument, "activation '", Policy::activation::name,
          "' is ", Policy::gated ? "gated" : "not gated", " but the model was packed ",
          w.layout.gated ? "with" : "without", " W3 (up projection)");
}

/// True when [a, a+na) and [b, b+nb) (bytes) overlap.
inline bool overlaps(const void* a, std::size_t na, const void* b, std::size_t nb) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
  return na && nb && pa < pb + nb && pb < pa + na;
}

/// X [n × d_model]: n >= 0, non-null for n > 0, element-aligned, sizes free of overflow.
template <class Tx>
void check_x(const block_layout& l, index_t n, const Tx* x) {
  static_assert(is_dtype<Tx>::value, "sparse_ffn: X must be float, half_t or bfloat16_t");
  require(n >= 0, status::invalid_shape, "number of tokens n must be >= 0 (got ", n, ")");
  // Token indices are stored as 32-bit integers in the routing and grouping tables.
  require(n <= std::numeric_limits<std::int32_t>::max(), status::size_overflow, "number of tokens n (", n,
          ") must be < 2^31");
  checked_elements<float>(n, l.d_model, "X/Y");
  if (n == 0) return;
  require_not_null(x, "X");
  require_aligned<Tx>(x, "X");
}

/// X and Y [n × d_model]: as check_x, and Y non-null, aligned and not overlapping X.
template <class Tx, class Ty>
void check_io(const block_layout& l, index_t n, const Tx* x, Ty* y) {
  static_assert(is_dtype<Ty>::value, "sparse_ffn: Y must be float, half_t or bfloat16_t");
  check_x(l, n, x);
  if (n == 0) return;
  require_not_null(y, "Y");
  require_aligned<Ty>(y, "Y");
  const auto elems = static_cast<std::size_t>(n * l.d_model);
  require(!overlaps(x, elems * sizeof(Tx), y, elems * sizeof(Ty)), status::invalid_argument,
          "X and Y must not overlap");
}

/// A caller's routing table: n rows, 1 <= k <= B, k distinct in-range blocks per row.
inline void check_routing(const block_layout& l, index_t n, const_routing_view r) {
  require(r.n == n, status::invalid_shape, "routing table has ", r.n, " rows but there are ", n, " tokens");
  check_k(r.k, l.num_blocks);
  checked_mul(n, r.k, "routing table");
  if (n == 0) return;
  require_not_null(r.blocks, "routing blocks");
  require_aligned<block_index_t>(r.blocks, "routing blocks");
  if (r.weights) require_aligned<float>(r.weights, "routing weights");
  std::vector<index_t> seen(static_cast<std::size_t>(l.num_blocks), -1);
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < r.k; ++j) {
      const block_index_t b = r.blocks[t * r.k + j];
      require(b >= 0 && b < l.num_blocks, status::out_of_range, "routing block ", b, " (token ", t, ", slot ",
              j, ") is outside [0, B=", l.num_blocks, ")");
      require(seen[static_cast<std::size_t>(b)] != t, status::invalid_argument, "routing row ", t,
              " lists block ", b, " twice");
      seen[static_cast<std::size_t>(b)] = t;
    }
}

/// A routing table to be written: n × k, blocks non-null (for n > 0), aligned.
inline void check_routing_out(index_t n, index_t k, const routing_view& out) {
  require(out.n == n && out.k == k, status::invalid_shape, "routing output is ", out.n, " × ", out.k,
          " but n × k is ", n, " × ", k);
  checked_mul(n, k, "routing table");
  if (n == 0) return;
  require_not_null(out.blocks, "routing output blocks");
  require_aligned<block_index_t>(out.blocks, "routing output blocks");
  if (out.weights) require_aligned<float>(out.weights, "routing output weights");
}

/// Cache buffers are optional; the up buffer only exists for gated FFNs.
inline void check_cache(const block_layout& l, index_t n, index_t k, const forward_cache* c) {
  if (!c) return;
  checked_elements<float>(checked_mul(n, k, "forward cache"), l.g, "forward cache");
  require(c->up == nullptr || l.gated, status::invalid_argument, "forward_cache::up is only for gated FFNs");
  if (c->blocks) require_aligned<block_index_t>(c->blocks, "forward_cache::blocks");
  const float* const cache_ptrs[] = {c->weights, c->pre, c->up, c->logits};
  for (const float* p : cache_ptrs)
    if (p) require_aligned<float>(p, "forward_cache buffer");
  if (c->logits) checked_elements<float>(n, l.num_blocks, "forward_cache::logits");
}

/// forward_cache::logits: only a fused forward (one that scores) with the learned gate writes them, and
/// only the learned gate's backward reads them.
template <class Sel>
void check_cache_logits(const forward_cache* c, bool scores) {
  if (!c || !c->logits) return;
  require(std::is_same<Sel, select::learned_gate>::value, status::invalid_argument,
          "forward_cache::logits is only for the learned gate (this policy's selector: ", Sel::name, ")");
  require(scores, status::invalid_argument,
          "forward_routed does not score the blocks: forward_cache::logits must be null");
}

}  // namespace detail
}  // namespace sparse_ffn
