// sparse_ffn — gradients of a blocked FFN's parameters (what the backward pass writes).
//
// Gradients are float and use the blocked layout of the model (layout.hpp) with float rows:
// grad_layout(model layout) has the same shape, blocks and pinned count, and ld = padded_ld<float>(d).
// Block b's gradient is then one contiguous run [dK g × ld][dU g × ld (gated)][dV g × ld] at
// grad_layout.key_offset(b), ... — the same positions as the weights it belongs to, so an optimiser
// steps block by block (and only over the blocks a batch touched). Padding columns stay zero.
//
//   ffn_grads_view   non-owning pointers (every one optional: null = that gradient is not computed)
//   ffn_grads        owning, zero-initialised, 64-byte aligned storage for a model; view() for kernels
//   backward_args    k, renormalize, accumulate: the arguments of cpu::backward and cuda::backward
#pragma once

#include "cpu/checks.hpp"
#include "detail/aligned_buffer.hpp"
#include "error.hpp"
#include "layout.hpp"
#include "policy.hpp"
#include "selector/learned_gate.hpp"
#include "selector/selector.hpp"

namespace sparse_ffn {

/// The gradient layout of a model layout: float rows (see the file comment).
inline block_layout grad_layout(const block_layout& model) {
  block_layout g = model;
  g.ld = padded_ld<float>(model.d_model);
  return g;
}

/// Where the backward pass writes (caller-owned float buffers). Null pointers are not computed.
struct ffn_grads_view {
  block_layout layout;             ///< grad_layout(model.layout)
  float* weights = nullptr;        ///< [B × layout.block_stride()]: dW1 (keys), dW3 (up), dW2 (values)
  float* b1 = nullptr;             ///< [d_ff] packed order
  float* b3 = nullptr;             ///< [d_ff] packed order (gated)
  float* b2 = nullptr;             ///< [d_model]
  float* gate_w = nullptr;         ///< [B × layout.ld] learned gate rows
  float* gate_b = nullptr;         ///< [B] learned gate bias
  float* route_weights = nullptr;  ///< [n × k] dL/d(block weight) per routing slot (any selector)

  SPARSE_FFN_HD float* keys(index_t b) const { return weights + layout.key_offset(b); }
  SPARSE_FFN_HD float* up(index_t b) const { return weights + layout.up_offset(b); }
  SPARSE_FFN_HD float* values(index_t b) const { return weights + layout.value_offset(b); }
};

/// Owning gradient storage for a model of the given layout (zero-initialised). `gate` adds the learned
/// gate's rows and bias.
class ffn_grads {
 public:
  ffn_grads() = default;
  ffn_grads(const block_layout& model, bool gate) : layout_(grad_layout(model)) {
    weights_ = detail::aligned_buffer<float>(layout_.total_elements());
    b1_ = detail::aligned_buffer<float>(layout_.d_ff);
    if (layout_.gated) b3_ = detail::aligned_buffer<float>(layout_.d_ff);
    b2_ = detail::aligned_buffer<float>(layout_.d_model);
    if (gate) {
      gate_w_ =
          detail::aligned_buffer<float>(detail::checked_mul(layout_.num_blocks, layout_.ld, "gate rows"));
      gate_b_ = detail::aligned_buffer<float>(layout_.num_blocks);
    }
  }
  const block_layout& layout() const { return layout_; }
  ffn_grads_view view() {
    ffn_grads_view v;
    v.layout = layout_;
    v.weights = weights_.data();
    v.b1 = b1_.empty() ? nullptr : b1_.data();
    v.b3 = b3_.empty() ? nullptr : b3_.data();
    v.b2 = b2_.empty() ? nullptr : b2_.data();
    v.gate_w = gate_w_.empty() ? nullptr : gate_w_.data();
    v.gate_b = gate_b_.empty() ? nullptr : gate_b_.data();
    return v;
  }

 private:
  block_layout layout_;
  detail::aligned_buffer<float> weights_, b1_, b3_, b2_, gate_w_, gate_b_;
};

/// Arguments of the backward pass (cpu::backward, cuda::backward).
struct backward_args {
  index_t k = 0;             ///< the forward's k (the width of the cached routing table)
  bool renormalize = false;  ///< learned_gate: as in the forward's route_args
  bool accumulate = false;   ///< add into the gradient buffers (beta = 1) instead of overwriting them
};

namespace detail {

/// The checks of a backward call that read no tensor data (shared by the CPU entry point and the GPU
/// one, whose buffers are device memory): model vs policy, k, shapes, null and misaligned pointers,
/// dX overlapping X or dY, the cache's buffers, the gradients' layout. The CPU entry point then checks
/// the routing table's entries; the GPU kernels check them on the device.
template <class Policy, class Tx, class Tdy, class Tdx>
void check_backward_args(const blocked_ffn_view<typename Policy::dtype>& w, index_t n, const Tx* x,
                         const Tdy* dy, const forward_cache& cache, const Tdx* dx,
                         const ffn_grads_view& grads, const backward_args& args) {
  static_assert(is_policy<Policy>::value, "sparse_ffn: the first template argument must be a policy<>");
  static_assert(!is_quantized<typename Policy::dtype>::value,
                "sparse_ffn backward: weights must be float, half_t or bfloat16_t (q8/q4 are inference "
                "formats: train in float or bf16 and quantise with pack)");
  static_assert(is_dtype<Tdy>::value, "sparse_ffn: dY must be float, half_t or bfloat16_t");
  static_assert(is_dtype<Tdx>::value, "sparse_ffn: dX must be float, half_t or bfloat16_t");
  using Sel = typename Policy::selector;
  const block_layout& l = w.layout;
  check_model<Policy>(w, false, "the backward");
  check_k(args.k, l);
  check_x(l, n, x);
  if (n > 0) {
    require_not_null(dy, "dY");
    require_aligned<Tdy>(dy, "dY");
  }
  if (dx && n > 0) {
    require_aligned<Tdx>(dx, "dX");
    const auto elems = static_cast<std::size_t>(n * l.d_model);
    require(!overlaps(x, elems * sizeof(Tx), dx, elems * sizeof(Tdx)) &&
                !overlaps(dy, elems * sizeof(Tdy), dx, elems * sizeof(Tdx)),
            status::invalid_argument, "dX must not overlap X or dY");
  }
  check_cache(l, n, args.k, &cache);
  check_cache_logits<Sel>(&cache, true);
  if (n > 0) {
    require(cache.blocks != nullptr && cache.pre != nullptr, status::invalid_argument,
            "backward needs the forward's routing table and pre-activations (forward_cache::blocks, ::pre)");
    require(!Policy::gated || cache.up != nullptr, status::invalid_argument,
            "backward of a gated FFN needs the forward's up projections (forward_cache::up)");
    require(!Sel::weighted || cache.weights != nullptr, status::invalid_argument, "backward with the ",
            Sel::name, " selector needs the forward's block weights (forward_cache::weights)");
    checked_mul(n, args.k, "routing table");
  }
  const block_layout gl = grad_layout(l);
  const block_layout& have = grads.layout;
  require(have.d_model == gl.d_model && have.d_ff == gl.d_ff && have.g == gl.g &&
              have.num_blocks == gl.num_blocks && have.ld == gl.ld && have.gated == gl.gated &&
              have.pinned == gl.pinned,
          status::invalid_shape, "grads.layout must be grad_layout(model layout) (d_model ", gl.d_model,
          ", d_ff ", gl.d_ff, ", g ", gl.g, ", ld ", gl.ld, gl.gated ? ", gated" : "", ", pinned ", gl.pinned,
          ")");
  if (grads.weights) require_aligned<float>(grads.weights, "grads.weights", k_row_alignment);
  if (grads.gate_w) require_aligned<float>(grads.gate_w, "grads.gate_w", k_row_alignment);
  const float* const gptrs[] = {grads.b1, grads.b3, grads.b2, grads.gate_b, grads.route_weights};
  for (const float* p : gptrs)
    if (p) require_aligned<float>(p, "gradient pointer");
  require(grads.b3 == nullptr || l.gated, status::invalid_argument, "grads.b3 given for a non-gated FFN");
  if constexpr (std::is_same<Sel, select::learned_gate>::value) {
    require(w.gate_w != nullptr, status::invalid_argument,
            "the learned_gate selector needs gate weights: pack_options.gate_w or blocked_ffn::set_gate()");
  } else {
    require(grads.gate_w == nullptr && grads.gate_b == nullptr, status::invalid_argument,
            "grads.gate_w / gate_b are only for the learned_gate selector (", Sel::name,
            " has no router parameters)");
  }
}

}  // namespace detail

}  // namespace sparse_ffn
