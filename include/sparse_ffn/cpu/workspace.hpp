// sparse_ffn — reusable scratch memory of the CPU fast path.
//
// A forward needs O(n·(d + k·g + B)) floats of scratch (padded inputs, float accumulators, routing,
// hidden activations, block→token lists). A `workspace` keeps one 64-byte aligned arena that grows to
// the largest call it has seen and is then reused: pass the same workspace to every call and the hot
// path never allocates. Calls made without one use a per-thread workspace (allocated on first use).
// `forward_workspace_bytes(...)` tells how much a call needs, to reserve up front.
#pragma once

#include <cstddef>

#include "../detail/aligned_buffer.hpp"
#include "../error.hpp"

namespace sparse_ffn {
namespace cpu {

class workspace {
 public:
  workspace() = default;
  explicit workspace(std::size_t bytes) { reserve(bytes); }

  /// Grows the arena to at least `bytes` (never shrinks).
  void reserve(std::size_t bytes) {
    if (bytes > static_cast<std::size_t>(buf_.size()))
      buf_ = sparse_ffn::detail::aligned_buffer<unsigned char>(static_cast<index_t>(bytes));
  }
  std::size_t capacity() const { return static_cast<std::size_t>(buf_.size()); }
  unsigned char* data() { return buf_.data(); }

 private:
  sparse_ffn::detail::aligned_buffer<unsigned char> buf_;
};

namespace detail {

/// Carves 64-byte aligned arrays out of a byte range; first run it with base = nullptr to size it.
class arena_plan {
 public:
  explicit arena_plan(unsigned char* base) : base_(base) {}
  template <class T>
  T* take(index_t count) {
    const index_t bytes =
        sparse_ffn::detail::checked_mul(count, static_cast<index_t>(sizeof(T)), "workspace");
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ = sparse_ffn::detail::checked_add(used_, (bytes + 63) / 64 * 64, "workspace");
    return p;
  }
  std::size_t bytes() const { return static_cast<std::size_t>(used_); }

 private:
  unsigned char* base_;
  index_t used_ = 0;
};

inline workspace& thread_workspace() {
  static thread_local workspace ws;
  return ws;
}

}  // namespace detail
}  // namespace cpu
}  // namespace sparse_ffn
