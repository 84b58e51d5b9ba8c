// libFuzzer target for io::load_dense: any checkpoint, read with the tensor names w1, b1, w2, b2, w3, b3
// (with and without the optional ones), gives a consistent dense FFN or a sparse_ffn::error.
#include <sparse_ffn/io/model_io.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace io = sparse_ffn::io;
  try {
    const auto f = io::safetensors_file::from_memory(data, size);
    const io::dense_names names[] = {{"w1", "", "w2", "", "", ""},
                                     {"w1", "b1", "w2", "b2", "", ""},
                                     {"w1", "b1", "w2", "b2", "w3", "b3"},
                                     {"w1", "", "w2", "", "w3", ""}};
    for (const auto& n : names) {
      try {
        const auto d = io::load_dense(f, n);
        const auto F = static_cast<std::size_t>(d.d_ff), D = static_cast<std::size_t>(d.d_model);
        if (d.w1.size() != F * D || d.w2.size() != F * D || (d.gated() && d.w3.size() != F * D)) std::abort();
        sparse_ffn::validate(d.view());
      } catch (const sparse_ffn::error&) {
      }
    }
  } catch (const sparse_ffn::error&) {
  }
  return 0;
}
