// libFuzzer target for io::load_blocked(path) in f32 and bf16: a file must load as a valid model (whose
// view validates) or be rejected with sparse_ffn::error — never crash, allocate what the file does not
// hold, or let std::bad_alloc escape.
#include <sparse_ffn/io/model_io.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = fuzz::as_file(data, size);
  try {
    sparse_ffn::io::blocked_file_info info;
    const auto m = sparse_ffn::io::load_blocked<float>(path, &info);
    sparse_ffn::validate(m.view());
  } catch (const sparse_ffn::error&) {
  }
  try {
    const auto m = sparse_ffn::io::load_blocked<sparse_ffn::bfloat16_t>(path);
    sparse_ffn::validate(m.view());
  } catch (const sparse_ffn::error&) {
  }
  return 0;
}
