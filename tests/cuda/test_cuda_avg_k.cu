// GPU forward for the avg_k selector against the float64 reference (skipped without a GPU).
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

TEST_CASE("cuda forward: avg_k", "[cuda][avg_k]") {
  gpu::check_selector_gpu<sparse_ffn::select::avg_k>();
}

TEST_CASE("cuda forward: captured in a CUDA graph and replayed", "[cuda][graph]") {
  using D =
      sparse_ffn::policy<64, sparse_ffn::select::avg_k, sparse_ffn::bfloat16_t, sparse_ffn::act::swiglu>;
  gpu::check_graph_capture<D, sparse_ffn::bfloat16_t>(7001, 1);   // decode: 4 kernels
  gpu::check_graph_capture<D, sparse_ffn::bfloat16_t>(7002, 64);  // tensor-core path, CUB sort inside
  using Q = sparse_ffn::policy<32, sparse_ffn::select::avg_k, sparse_ffn::q4_t, sparse_ffn::act::silu>;
  gpu::check_graph_capture<Q, float>(7003, 3);
}

int main(int argc, char** argv) {
  return gpu_test_main(argc, argv, "test_cuda_avg_k");
}
