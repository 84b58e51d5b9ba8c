// sparse_ffn — reading and writing safetensors files (the format trained checkpoints come in).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON {"name": {"dtype": "F32",
// "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value"}}, then the data.
// What is validated when a file is opened (open() or from_memory()), each violation throwing
// sparse_ffn::error(status::io_error) that names the file and the problem:
//   - the path is a regular file that can be read (not a directory, device or pipe);
//   - the 8-byte length was read and N is within the file and at most 100 MB;
//   - the header is well-formed JSON: an object of objects, no key twice in any object (a duplicate
//     tensor name is an error, not "last wins"), metadata values strings;
//   - each tensor has a known dtype, a shape of non-negative integers whose byte size (checked for
//     64-bit overflow) equals its data_offsets range, the range inside the data region, and no two
//     ranges overlap.
// Tensors are read on demand (a large checkpoint is not loaded whole); a read that comes up short
// (the file changed) is an io_error naming the tensor. Reading converts F32 / F16 / BF16 to float
// (read_float), I32 / I64 to int64 (read_int), or returns raw bytes of any known dtype. Nothing
// allocates more than the file holds. Values are not checked here: read_finite() adds the NaN/Inf
// check. Writing (safetensors_writer::write) is atomic (io/file.hpp) and supports F32 / F16 / BF16 /
// I32 / I64. Needs nlohmann/json (Debian: nlohmann-json3-dev).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "../detail/finite.hpp"
#include "../error.hpp"
#include "../types.hpp"
#include "file.hpp"

namespace sparse_ffn {
namespace io {

/// Bytes per element of a safetensors dtype name, 0 if unknown.
inline std::size_t dtype_size(const std::string& dt) {
  static const std::map<std::string, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1}};
  const auto it = sizes.find(dt);
  return it == sizes.end() ? 0 : it->second;
}

struct tensor_info {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< byte range within the data region
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

/// An opened safetensors file (or an in-memory buffer): the validated header; data read on demand.
class safetensors_file {
 public:
  /// Opens and validates a file.
  static safetensors_file open(const std::string& path) {
    safetensors_file f;
    f.name_ = path;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) io::detail::fail_errno(path, "cannot open file", errno);
    if (!S_ISREG(st.st_mode)) fail_io(path, "not a regular file");
    f.stream_ = std::make_shared<std::ifstream>(path, std::ios::binary);
    if (!*f.stream_) fail_io(path, "cannot open file");
    f.stream_->seekg(0, std::ios::end);
    const auto end = f.stream_->tellg();
    f.stream_->seekg(0);
    if (end < 0 || !*f.stream_) fail_io(path, "cannot determine the file size");
    const auto size = static_cast<std::uint64_t>(end);
    if (size < 8) fail_io(path, "file is shorter than the 8-byte header length");
    unsigned char len_bytes[8];
    f.stream_->read(reinterpret_cast<char*>(len_bytes), 8);
    if (!*f.stream_ || f.stream_->gcount() != 8) fail_io(path, "cannot read the 8-byte header length");
    const std::uint64_t n = read_le64(len_bytes);
    if (n > size - 8) fail_io(path, "header length ", n, " exceeds the file size ", size);
    if (n > k_max_header) fail_io(path, "header length ", n, " exceeds the 100 MB limit");
    std::string header(static_cast<std::size_t>(n), '\0');
    if (n > 0) f.stream_->read(&header[0], static_cast<std::streamsize>(n));
    if (!*f.stream_ || static_cast<std::uint64_t>(f.stream_->gcount()) != n)
      fail_io(path, "truncated header");
    f.data_offset_ = 8 + n;
    f.parse_header(header, size - 8 - n);
    return f;
  }

  /// Validates an in-memory safetensors image (used by the fuzzer and by tests).
  static safetensors_file from_memory(const unsigned char* data, std::size_t size,
                                      const std::string& name = "<memory>") {
    safetensors_file f;
    f.name_ = name;
    if (!data && size) fail_io(name, "null buffer");
    if (size < 8) fail_io(name, "buffer is shorter than the 8-byte header length");
    const std::uint64_t n = read_le64(data);
    if (n > size - 8) fail_io(name, "header length ", n, " exceeds the buffer size ", size);
    if (n > k_max_header) fail_io(name, "header length ", n, " exceeds the 100 MB limit");
    f.memory_.assign(data, data + size);
    f.data_offset_ = 8 + n;
    f.parse_header(std::string(reinterpret_cast<const char*>(data) + 8, static_cast<std::size_t>(n)),
                   size - 8 - n);
    return f;
  }

  const std::map<std::string, tensor_info>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& tensor) const { return tensors_.count(tensor) != 0; }

  const tensor_info& info(const std::string& tensor) const {
    const auto it = tensors_.find(tensor);
    if (it == tensors_.end()) fail_io(name_, "no tensor named '", tensor, "'");
    return it->second;
  }

  /// Raw bytes of a tensor.
  std::vector<unsigned char> bytes(const std::string& tensor) const {
    const tensor_info& t = info(tensor);
    std::vector<unsigned char> out(static_cast<std::size_t>(t.end - t.begin));
    if (out.empty()) return out;
    if (!memory_.empty()) {
      std::memcpy(out.data(), memory_.data() + data_offset_ + t.begin, out.size());
    } else {
      stream_->clear();
      stream_->seekg(static_cast<std::streamoff>(data_offset_ + t.begin));
      stream_->read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
      if (!*stream_ || static_cast<std::size_t>(stream_->gcount()) != out.size())
        fail_io(name_, "truncated data of tensor '", tensor, "'");
    }
    return out;
  }

  /// A floating-point tensor (F32, F16 or BF16) as float. With `shape` non-empty, the tensor's shape
  /// must equal it.
  std::vector<float> read_float(const std::string& tensor,
                                const std::vector<std::int64_t>& shape = {}) const {
    const tensor_info& t = info(tensor);
    check_shape(tensor, t, shape);
    const auto raw = bytes(tensor);
    const auto n = static_cast<std::size_t>(t.numel());
    std::vector<float> out(n);
    if (t.dtype == "F32") {
      if (n > 0) std::memcpy(out.data(), raw.data(), n * 4);  // empty vectors may hold null pointers
    } else if (t.dtype == "F16" || t.dtype == "BF16") {
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t b = static_cast<std::uint16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
        out[i] = t.dtype == "F16" ? float(half_t::from_bits(b)) : float(bfloat16_t::from_bits(b));
      }
    } else {
      fail_unsupported(tensor, t.dtype, "F32, F16 or BF16");
    }
    return out;
  }

  /// read_float, and every value finite: a NaN or Inf is an error (invalid_argument) naming the file,
  /// the tensor and the index of the first one.
  std::vector<float> read_finite(const std::string& tensor,
                                 const std::vector<std::int64_t>& shape = {}) const {
    std::vector<float> v = read_float(tensor, shape);
    sparse_ffn::detail::require_finite(v.data(), static_cast<index_t>(v.size()),
                                       name_ + ": tensor '" + tensor + "'", info(tensor).shape);
    return v;
  }

  /// An integer tensor (I32 or I64) as int64.
  std::vector<std::int64_t> read_int(const std::string& tensor,
                                     const std::vector<std::int64_t>& shape = {}) const {
    const tensor_info& t = info(tensor);
    check_shape(tensor, t, shape);
    const auto raw = bytes(tensor);
    const auto n = static_cast<std::size_t>(t.numel());
    std::vector<std::int64_t> out(n);
    if (t.dtype == "I32") {
      for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t u = 0;
        for (int b = 0; b < 4; ++b) u |= std::uint32_t(raw[4 * i + b]) << (8 * b);
        out[i] = static_cast<std::int32_t>(u);
      }
    } else if (t.dtype == "I64") {
      for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::int64_t>(read_le64(raw.data() + 8 * i));
    } else {
      fail_unsupported(tensor, t.dtype, "I32 or I64");
    }
    return out;
  }

  const std::string& name() const { return name_; }

 private:
  static constexpr std::uint64_t k_max_header = 100u * 1000u * 1000u;

  template <class... A>
  [[noreturn]] static void fail_io(const std::string& file, A&&... a) {
    sparse_ffn::detail::fail(status::io_error, file, ": ", std::forward<A>(a)...);
  }
  [[noreturn]] void fail_unsupported(const std::string& tensor, const std::string& dt,
                                     const char* want) const {
    sparse_ffn::detail::fail(status::unsupported, name_, ": tensor '", tensor, "' has dtype ", dt,
                             "; expected ", want);
  }
  void check_shape(const std::string& tensor, const tensor_info& t,
                   const std::vector<std::int64_t>& shape) const {
    if (shape.empty() || shape == t.shape) return;
    sparse_ffn::detail::fail(status::invalid_shape, name_, ": tensor '", tensor, "' has shape ",
                             sparse_ffn::detail::shape_string(t.shape), ", expected ",
                             sparse_ffn::detail::shape_string(shape));
  }
  static std::uint64_t read_le64(const unsigned char* p) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t(p[i]) << (8 * i);
    return v;
  }

  /// SAX handler that records the first key repeated within one JSON object (a set per open object:
  /// O(k log k) for k keys). Errors end the pass quietly; the DOM parse that follows reports them.
  struct duplicate_key_finder : nlohmann::json_sax<nlohmann::json> {
    std::vector<std::set<std::string>> open;
    std::string duplicate;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
      open.emplace_back();
      return true;
    }
    bool key(string_t& k) override {
      if (!open.empty() && !open.back().insert(k).second && duplicate.empty()) duplicate = k;
      return true;
    }
    bool end_object() override {
      if (!open.empty()) open.pop_back();
      return true;
    }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
      return false;
    }
  };

  void parse_header(const std::string& header, std::uint64_t data_size) {
    // nlohmann::json keeps the last of duplicate keys: a SAX pass sees every key first. (Not a parse
    // callback: nlohmann's callback parser rescans the parent object at every object's end, which is
    // quadratic in the number of tensors.)
    duplicate_key_finder dup;
    nlohmann::json::sax_parse(header, &dup, nlohmann::json::input_format_t::json, /*strict=*/true);
    const std::string& duplicate = dup.duplicate;
    const nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail_io(name_, "header is not valid JSON");
    if (!duplicate.empty()) fail_io(name_, "header has the key '", duplicate, "' twice");
    if (!j.is_object()) fail_io(name_, "header is not a JSON object");
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const nlohmann::json& v = it.value();
      if (key == "__metadata__") {
        if (!v.is_object()) fail_io(name_, "__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail_io(name_, "metadata value of '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object()) fail_io(name_, "entry '", key, "' is not an object");
      const auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
      if (dt == v.end() || !dt->is_string()) fail_io(name_, "tensor '", key, "' has no string dtype");
      if (sh == v.end() || !sh->is_array()) fail_io(name_, "tensor '", key, "' has no shape array");
      if (off == v.end() || !off->is_array() || off->size() != 2)
        fail_io(name_, "tensor '", key, "' needs data_offsets [begin, end]");
      tensor_info t;
      t.dtype = dt->get<std::string>();
      const std::size_t esize = dtype_size(t.dtype);
      if (esize == 0) fail_io(name_, "tensor '", key, "' has unknown dtype '", t.dtype, "'");
      std::uint64_t bytes = esize;
      for (const auto& d : *sh) {
        if (!d.is_number_unsigned())
          fail_io(name_, "tensor '", key, "' has a shape entry that is not a non-negative integer");
        const std::uint64_t dim = d.get<std::uint64_t>();
        if (dim > 0 && bytes > ~std::uint64_t{0} / dim)
          fail_io(name_, "tensor '", key, "': shape overflows 64 bits");
        if (dim > static_cast<std::uint64_t>(INT64_MAX))
          fail_io(name_, "tensor '", key, "': dimension too large");
        bytes *= dim;
        t.shape.push_back(static_cast<std::int64_t>(dim));
      }
      if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
        fail_io(name_, "tensor '", key, "': data_offsets must be non-negative integers");
      t.begin = (*off)[0].get<std::uint64_t>();
      t.end = (*off)[1].get<std::uint64_t>();
      if (t.begin > t.end) fail_io(name_, "tensor '", key, "': data_offsets begin > end");
      if (t.end > data_size)
        fail_io(name_, "tensor '", key, "': data_offsets end ", t.end, " is past the data (", data_size,
                " bytes)");
      if (t.end - t.begin != bytes)
        fail_io(name_, "tensor '", key, "': ", t.end - t.begin, " bytes of data for ", bytes,
                " bytes of shape × dtype");
      ranges.push_back({t.begin, t.end});
      tensors_[key] = t;
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) fail_io(name_, "tensor data ranges overlap");
  }

  std::string name_;
  std::shared_ptr<std::ifstream> stream_;
  std::vector<unsigned char> memory_;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file: add tensors (their bytes are copied), metadata, then write().
class safetensors_writer {
 public:
  void add_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void add(const std::string& name, const std::string& dtype, const std::vector<std::int64_t>& shape,
           const void* data, std::size_t bytes) {
    const std::size_t es = dtype_size(dtype);
    sparse_ffn::detail::require(es != 0, status::unsupported, "safetensors_writer: unknown dtype ", dtype);
    std::uint64_t n = es;
    for (auto s : shape) {
      sparse_ffn::detail::require(s >= 0, status::invalid_shape, "safetensors_writer: negative dimension in ",
                                  name);
      n *= static_cast<std::uint64_t>(s);
    }
    sparse_ffn::detail::require(n == bytes, status::invalid_shape, "safetensors_writer: ", name, " has ",
                                bytes, " bytes for a shape of ", n);
    sparse_ffn::detail::require(name != "__metadata__" && !entries_.count(name), status::invalid_argument,
                                "safetensors_writer: duplicate or reserved tensor name ", name);
    entry e{dtype, shape,
            std::vector<unsigned char>(static_cast<const unsigned char*>(data),
                                       static_cast<const unsigned char*>(data) + bytes)};
    entries_[name] = std::move(e);
  }
  void add_float(const std::string& name, const std::vector<std::int64_t>& shape,
                 const std::vector<float>& v) {
    add(name, "F32", shape, v.data(), v.size() * 4);
  }
  template <class T>
  void add_typed(const std::string& name, const std::vector<std::int64_t>& shape, const T* data,
                 std::size_t count) {
    static_assert(is_dtype<T>::value, "add_typed takes float, half_t or bfloat16_t");
    const char* dt = std::is_same<T, float>::value ? "F32" : std::is_same<T, half_t>::value ? "F16" : "BF16";
    add(name, dt, shape, data, count * sizeof(T));
  }

  /// The whole file as bytes.
  std::vector<unsigned char> serialize() const {
    nlohmann::json h = nlohmann::json::object();
    std::uint64_t off = 0;
    for (const auto& [name, e] : entries_) {
      h[name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {off, off + e.data.size()}}};
      off += e.data.size();
    }
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    std::string header = h.dump();
    while ((header.size() + 8) % 8) header.push_back(' ');  // align the data to 8 bytes
    std::vector<unsigned char> out;
    out.reserve(8 + header.size() + off);
    for (int i = 0; i < 8; ++i)
      out.push_back(static_cast<unsigned char>((std::uint64_t(header.size()) >> (8 * i)) & 0xff));
    out.insert(out.end(), header.begin(), header.end());
    for (const auto& kv : entries_) out.insert(out.end(), kv.second.data.begin(), kv.second.data.end());
    return out;
  }

  /// Writes the file atomically (temporary file, fsync, rename: see io/file.hpp).
  void write(const std::string& path) const {
    const auto bytes = serialize();
    atomic_write(path, bytes.data(), bytes.size());
  }

 private:
  struct entry {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> data;
  };
  std::map<std::string, entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
}  // namespace sparse_ffn
