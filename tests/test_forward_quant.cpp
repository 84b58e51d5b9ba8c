// Forward matrix for q8 / q4 weights: every selector × {q8,q4} × g ∈ {16,64} × activations ×
// n ∈ {1,3,64}, odd d (tail groups), I/O in float and bf16, against the float64 reference of the
// dequantised weights.
#include "support/forward_matrix.hpp"

TEST_CASE("cpu forward matrix, quantised weights: avg_k", "[forward][quant][avg_k]") {
  test::check_selector_matrix_quant<sparse_ffn::select::avg_k>();
}
TEST_CASE("cpu forward matrix, quantised weights: hash", "[forward][quant][hash]") {
  test::check_selector_matrix_quant<sparse_ffn::select::hash>();
}
TEST_CASE("cpu forward matrix, quantised weights: learned_gate", "[forward][quant][learned_gate]") {
  test::check_selector_matrix_quant<sparse_ffn::select::learned_gate>();
}
TEST_CASE("cpu forward matrix, quantised weights: oracle", "[forward][quant][oracle]") {
  test::check_selector_matrix_quant<sparse_ffn::select::oracle>();
}
