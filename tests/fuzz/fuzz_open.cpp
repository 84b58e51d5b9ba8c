// libFuzzer target for safetensors_file::open(path): any file must either open (and then every tensor
// it declares must read) or be rejected with sparse_ffn::error — never crash, hang or read out of bounds.
#include <sparse_ffn/io/safetensors.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    fuzz::read_all(sparse_ffn::io::safetensors_file::open(fuzz::as_file(data, size)));
  } catch (const sparse_ffn::error&) {
  }
  return 0;
}
