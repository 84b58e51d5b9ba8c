// sparse_ffn — a zero-initialised, 64-byte aligned, copyable array (host memory).
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "../config.hpp"
#include "../error.hpp"

namespace sparse_ffn {
namespace detail {

template <class T>
class aligned_buffer {
  static_assert(std::is_trivially_copyable<T>::value, "aligned_buffer holds trivially copyable types");

 public:
  aligned_buffer() = default;
  explicit aligned_buffer(index_t n) { allocate(n); }
  aligned_buffer(const aligned_buffer& o) {
    allocate(o.n_);
    if (n_) std::memcpy(p_.get(), o.p_.get(), static_cast<std::size_t>(n_) * sizeof(T));
  }
  aligned_buffer& operator=(const aligned_buffer& o) {
    if (this != &o) {
      aligned_buffer tmp(o);
      swap(tmp);
    }
    return *this;
  }
  aligned_buffer(aligned_buffer&& o) noexcept : p_(std::move(o.p_)), n_(o.n_) { o.n_ = 0; }
  aligned_buffer& operator=(aligned_buffer&& o) noexcept {
    p_ = std::move(o.p_);
    n_ = o.n_;
    o.n_ = 0;
    return *this;
  }
  void swap(aligned_buffer& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
  }

  T* data() noexcept { return p_.get(); }
  const T* data() const noexcept { return p_.get(); }
  index_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  T& operator[](index_t i) noexcept { return p_.get()[i]; }
  const T& operator[](index_t i) const noexcept { return p_.get()[i]; }

 private:
  struct deleter {
    void operator()(T* p) const noexcept {
      ::operator delete (static_cast<void*>(p), std::align_val_t{k_row_alignment});
    }
  };
  void allocate(index_t n) {
    n_ = 0;
    p_.reset();
    if (n <= 0) return;
    const index_t bytes = checked_mul(n, static_cast<index_t>(sizeof(T)), "allocation size");
    void* raw = ::operator new (static_cast<std::size_t>(bytes), std::align_val_t{k_row_alignment});
    std::memset(raw, 0, static_cast<std::size_t>(bytes));
    p_.reset(static_cast<T*>(raw));
    n_ = n;
  }

  std::unique_ptr<T, deleter> p_;
  index_t n_ = 0;
};

}  // namespace detail
}  // namespace sparse_ffn
