// GPU forward for the avg_k selector against the float64 reference (skipped without a GPU).
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

TEST_CASE("cuda forward: avg_k", "[cuda][avg_k]") {
  gpu::check_selector_gpu<sparse_ffn::select::avg_k>();
}

int main(int argc, char** argv) {
  return gpu_test_main(argc, argv, "test_cuda_avg_k");
}
