// GPU forward for the hash selector against the float64 reference (skipped without a GPU).
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

TEST_CASE("cuda forward: hash", "[cuda][hash]") {
  gpu::check_selector_gpu<sparse_ffn::select::hash>();
}

int main(int argc, char** argv) {
  return gpu_test_main(argc, argv, "test_cuda_hash");
}
