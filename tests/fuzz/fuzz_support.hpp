// Shared by the libFuzzer targets: the input bytes as a real file (memfd), so the targets exercise the
// path-taking entry points (safetensors_file::open, io::load_blocked) and not only from_memory; and
// reading every tensor of an opened file.
#pragma once

#include <sparse_ffn/io/safetensors.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace fuzz {

/// A path whose file holds exactly `data` (one memfd, rewritten on every call).
inline std::string as_file(const std::uint8_t* data, std::size_t size) {
  static const int fd = ::memfd_create("sparse_ffn_fuzz", 0);
  if (fd < 0) std::abort();
  if (::ftruncate(fd, 0) != 0 || ::lseek(fd, 0, SEEK_SET) != 0) std::abort();
  for (std::size_t done = 0; done < size;) {
    const ssize_t w = ::write(fd, data + done, size - done);
    if (w <= 0) std::abort();
    done += static_cast<std::size_t>(w);
  }
  return "/proc/self/fd/" + std::to_string(fd);
}

/// Reads every tensor an opened file declares, the way its dtype allows.
inline void read_all(const sparse_ffn::io::safetensors_file& f) {
  for (const auto& [name, t] : f.tensors()) {
    (void)f.bytes(name);
    if (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16") (void)f.read_finite(name);
    if (t.dtype == "I32" || t.dtype == "I64") (void)f.read_int(name);
  }
}

}  // namespace fuzz
