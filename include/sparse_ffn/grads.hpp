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
#pragma once

#include "detail/aligned_buffer.hpp"
#include "error.hpp"
#include "layout.hpp"
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

  float* keys(index_t b) const { return weights + layout.key_offset(b); }
  float* up(index_t b) const { return weights + layout.up_offset(b); }
  float* values(index_t b) const { return weights + layout.value_offset(b); }
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

}  // namespace sparse_ffn
