// sparse_ffn — a zero-initialised, 64-byte aligned, copyable array (host memory).
//
// Buffers of k_huge_page_bytes or more (a model's weights) are aligned to 2 MiB and, on Linux, advised
// as transparent huge pages (madvise(MADV_HUGEPAGE), before they are first touched): a forward at batch
// 1 reads 64 blocks of 0.1–0.5 MB scattered over the model, and with 4 KiB pages every page of them is a
// TLB miss (on an Emerald Rapids VM, batch 1: bf16 12–17%, q8 8–13% faster with huge pages;
// docs/benchmarks.md, stop 52). It is advice: where the system has THP off or no 2 MiB page free, the
// buffer gets 4 KiB pages and works the same. SPARSE_FFN_HUGE_PAGES=0 in the environment turns the
// advice off (read once).
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../config.hpp"
#include "../error.hpp"

namespace sparse_ffn {
namespace detail {

/// Host buffers of at least this many bytes are 2 MiB aligned and advised as huge pages (Linux).
inline constexpr std::size_t k_huge_page_bytes = std::size_t{2} << 20;

/// False where SPARSE_FFN_HUGE_PAGES=0 (read once).
inline bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("SPARSE_FFN_HUGE_PAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return wanted;
}

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
  /// The alignment of data() this buffer was allocated with (k_row_alignment, or 2 MiB for large ones).
  std::size_t alignment() const noexcept { return p_.get_deleter().alignment; }

 private:
  struct deleter {
    std::size_t alignment = k_row_alignment;
    void operator()(T* p) const noexcept {
      ::operator delete (static_cast<void*>(p), std::align_val_t{alignment});
    }
  };
  void allocate(index_t n) {
    n_ = 0;
    p_.reset();
    if (n <= 0) return;
    const index_t bytes = checked_mul(n, static_cast<index_t>(sizeof(T)), "allocation size");
    const std::size_t size = static_cast<std::size_t>(bytes);
    const bool huge = size >= k_huge_page_bytes && huge_pages_wanted();
    const std::size_t alignment = huge ? k_huge_page_bytes : k_row_alignment;
    void* raw = ::operator new (size, std::align_val_t{alignment});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) (void)::madvise(raw, size / k_huge_page_bytes * k_huge_page_bytes, MADV_HUGEPAGE);
#endif
    std::memset(raw, 0, size);
    p_ = std::unique_ptr<T, deleter>(static_cast<T*>(raw), deleter{alignment});
    n_ = n;
  }

  std::unique_ptr<T, deleter> p_;
  index_t n_ = 0;
};

}  // namespace detail
}  // namespace sparse_ffn
