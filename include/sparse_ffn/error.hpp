// sparse_ffn — errors.
//
// Host entry points validate every argument before touching memory and throw `sparse_ffn::error`
// (derived from std::invalid_argument or std::runtime_error through `std::exception`) carrying a
// `status` code and a message that starts with "sparse_ffn: ". CUDA entry points return the same
// `status` instead of throwing (CUB style); `status_string()` names it.
#pragma once

#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "config.hpp"

namespace sparse_ffn {

enum class status : int {
  success = 0,
  invalid_shape,       ///< a dimension is zero/negative or two dimensions disagree
  invalid_argument,    ///< a value is out of its documented range (k, g, seed, options)
  null_pointer,        ///< a required pointer is null
  misaligned_pointer,  ///< a pointer is not aligned as documented
  out_of_range,        ///< an input value (token id, block index, permutation entry) is out of range
  size_overflow,       ///< index arithmetic for these sizes would overflow
  unsupported,         ///< a policy combination / runtime value outside the supported set
  io_error,            ///< a file could not be read or written, or is malformed
  cuda_error,          ///< the CUDA runtime reported an error
};

inline const char* status_string(status s) noexcept {
  switch (s) {
    case status::success: return "success";
    case status::invalid_shape: return "invalid shape";
    case status::invalid_argument: return "invalid argument";
    case status::null_pointer: return "null pointer";
    case status::misaligned_pointer: return "misaligned pointer";
    case status::out_of_range: return "out of range";
    case status::size_overflow: return "size overflow";
    case status::unsupported: return "unsupported";
    case status::io_error: return "I/O error";
    case status::cuda_error: return "CUDA error";
  }
  return "unknown status";
}

/// The one exception type of the library. `what()` starts with "sparse_ffn: ".
class error : public std::runtime_error {
 public:
  error(status code, const std::string& message)
      : std::runtime_error("sparse_ffn: " + message), code_(code) {}
  status code() const noexcept { return code_; }

 private:
  status code_;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(status code, Args&&... args) {
  throw error(code, concat(std::forward<Args>(args)...));
}

template <class... Args>
void require(bool ok, status code, Args&&... args) {
  if (SPARSE_FFN_UNLIKELY(!ok)) fail(code, std::forward<Args>(args)...);
}

inline void require_not_null(const void* p, const char* what) {
  require(p != nullptr, status::null_pointer, what, " must not be null");
}

template <class T>
void require_aligned(const void* p, const char* what, std::size_t alignment = alignof(T)) {
  require(reinterpret_cast<std::uintptr_t>(p) % alignment == 0, status::misaligned_pointer, what,
          " must be aligned to ", alignment, " bytes (got address ", p, ")");
}

/// a * b, or an error naming `what` if the product of non-negative sizes overflows index_t.
inline index_t checked_mul(index_t a, index_t b, const char* what) {
  require(a >= 0 && b >= 0, status::invalid_shape, what, ": negative size");
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a)
    fail(status::size_overflow, what, ": ", a, " * ", b, " overflows 64-bit index arithmetic");
  return a * b;
}

/// a + b for non-negative sizes, or an error naming `what` on overflow.
inline index_t checked_add(index_t a, index_t b, const char* what) {
  require(a >= 0 && b >= 0, status::invalid_shape, what, ": negative size");
  if (a > std::numeric_limits<index_t>::max() - b)
    fail(status::size_overflow, what, ": ", a, " + ", b, " overflows 64-bit index arithmetic");
  return a + b;
}

/// a * b * sizeof(T) fits in both index_t and size_t (used before allocating or offsetting bytes).
template <class T>
index_t checked_elements(index_t a, index_t b, const char* what) {
  const index_t n = checked_mul(a, b, what);
  checked_mul(n, static_cast<index_t>(sizeof(T)), what);
  return n;
}

}  // namespace detail
}  // namespace sparse_ffn
