// libFuzzer target for the safetensors reader: any byte string must either open (and then every tensor
// it declares must read) or be rejected with sparse_ffn::error — never crash, hang or read out of bounds.
//   cmake -DSPARSE_FFN_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ ...; ./tests/fuzz_safetensors tests/fuzz/corpus
// Inputs it finds worth keeping go to tests/fuzz/corpus/, which test_io replays on every test run.
#include <sparse_ffn/io/safetensors.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    fuzz::read_all(sparse_ffn::io::safetensors_file::from_memory(data, size));
  } catch (const sparse_ffn::error&) {
  }
  return 0;
}
