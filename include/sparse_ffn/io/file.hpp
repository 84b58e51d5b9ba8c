// sparse_ffn — writing files so that a crash, a full disk or a wrong path never costs the user data.
//
//   atomic_write(path, bytes)        the bytes go to a fresh temporary file in the same directory
//                                    (mkstemp), every write is checked, the file is fsynced and then
//                                    renamed over `path`, and the directory is fsynced. Until the rename
//                                    the previous file at `path` is untouched; after it the new one is
//                                    complete. A symbolic link at `path` is followed: its target is
//                                    replaced, the link is kept. An existing `path` that is not a
//                                    regular file (a directory, a device such as /dev/full, a pipe) is
//                                    refused.
//   same_file(a, b)                  whether two paths name the same file: for existing files by device
//                                    and inode (so links and different spellings count), otherwise by
//                                    the canonical directory and the file name.
//   check_output_path(out, inputs)   what atomic_write would refuse, checked up front (before a long
//                                    conversion): the directory exists and is writable, `out` is not a
//                                    non-regular file, and `out` is none of `inputs`.
//
// Every failure throws sparse_ffn::error(status::io_error) naming the path and the system's reason.
// POSIX only (Linux, macOS).
#pragma once

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../error.hpp"

namespace sparse_ffn {
namespace io {

namespace detail {

[[noreturn]] inline void fail_errno(const std::string& path, const char* what, int err) {
  sparse_ffn::detail::fail(status::io_error, path, ": ", what, ": ", std::strerror(err));
}

/// The directory part of a path ("." when there is none).
inline std::string dir_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

inline std::string base_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// realpath() as a string, or "" when the path does not resolve.
inline std::string real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (!r) return {};
  std::string out(r);
  std::free(r);
  return out;
}

/// The path a write to `path` must replace: the target of a symbolic link (followed to the end), or
/// `path` itself when nothing exists there yet. Refuses an existing non-regular file.
inline std::string write_target(const std::string& path) {
  sparse_ffn::detail::require(!path.empty(), status::io_error, "output path is empty");
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode))
      sparse_ffn::detail::fail(status::io_error, path,
                               ": exists and is not a regular file; refusing to replace it");
    const std::string r = real_path(path);
    return r.empty() ? path : r;
  }
  if (errno != ENOENT) fail_errno(path, "cannot check the output path", errno);
  return path;
}

/// Canonical form of a path that may not exist yet: realpath of its directory + its file name.
inline std::string canonical_new(const std::string& path) {
  const std::string dir = real_path(dir_name(path));
  return dir.empty() ? path : dir + "/" + base_name(path);
}

}  // namespace detail

/// Whether two paths name the same file (see the file comment).
inline bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  const bool ea = ::stat(a.c_str(), &sa) == 0, eb = ::stat(b.c_str(), &sb) == 0;
  if (ea && eb) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  if (ea != eb) return false;
  return detail::canonical_new(a) == detail::canonical_new(b);
}

/// Checks up front that atomic_write(out, …) can succeed and would not replace any of `inputs`.
inline void check_output_path(const std::string& out, const std::vector<std::string>& inputs = {}) {
  const std::string target = detail::write_target(out);
  for (const auto& in : inputs)
    if (!in.empty() && same_file(out, in))
      sparse_ffn::detail::fail(status::io_error, out, ": is the same file as the input ", in,
                               "; refusing to overwrite an input");
  const std::string dir = detail::dir_name(target);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) detail::fail_errno(out, "output directory does not exist", errno);
  if (!S_ISDIR(st.st_mode)) sparse_ffn::detail::fail(status::io_error, out, ": ", dir, " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    detail::fail_errno(out, "output directory is not writable", errno);
}

/// Writes `size` bytes to `path` atomically (see the file comment).
inline void atomic_write(const std::string& path, const void* data, std::size_t size) {
  sparse_ffn::detail::require(data != nullptr || size == 0, status::null_pointer, "atomic_write: null data");
  const std::string target = detail::write_target(path);
  const std::string dir = detail::dir_name(target);
  std::string tmp = target + ".tmp.XXXXXX";
  std::vector<char> name(tmp.begin(), tmp.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) detail::fail_errno(path, "cannot create a temporary file in the output directory", errno);
  tmp.assign(name.data());
  auto abandon = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    detail::fail_errno(path, what, err);
  };
  // Keep the permissions of the file being replaced (mkstemp creates 0600).
  struct stat old;
  const mode_t mode = ::stat(target.c_str(), &old) == 0 ? (old.st_mode & 07777) : mode_t(0644);
  if (::fchmod(fd, mode) != 0) abandon("cannot set permissions on the temporary file", errno);
  const char* p = static_cast<const char*>(data);
  std::size_t left = size;
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      abandon("write failed", errno);
    }
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0) abandon("fsync failed", errno);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    detail::fail_errno(path, "close failed", err);
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    detail::fail_errno(path, "cannot rename the temporary file into place", err);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {  // best effort: the data itself is already durable
    ::fsync(dfd);
    ::close(dfd);
  }
}

inline void atomic_write(const std::string& path, const std::string& text) {
  atomic_write(path, text.data(), text.size());
}

}  // namespace io
}  // namespace sparse_ffn
