// libFuzzer target for safetensors_file::open(path): any file must either open (and then every tensor
// it declares must read) or be rejected with sparse_ffn::error — never crash, hang or read out of bounds.
#include <sparse_ffn/io/safetensors.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto f = sparse_ffn::io::safetensors_file::open(fuzz::as_file(data, size));
    for (const auto& [name, t] : f.tensors()) {
      (void)f.bytes(name);
      if (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16") (void)f.read_finite(name);
      if (t.dtype == "I32" || t.dtype == "I64") (void)f.read_int(name);
    }
  } catch (const sparse_ffn::error&) {
  }
  return 0;
}
