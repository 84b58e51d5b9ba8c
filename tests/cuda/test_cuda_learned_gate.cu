// GPU forward for the learned_gate selector against the float64 reference (skipped without a GPU).
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

TEST_CASE("cuda forward: learned_gate", "[cuda][learned_gate]") {
  gpu::check_selector_gpu<sparse_ffn::select::learned_gate>();
}

int main(int argc, char** argv) {
  return gpu_test_main(argc, argv, "test_cuda_learned_gate");
}
