// Forward matrix for the avg_k selector: every dtype × g ∈ {1,16,64,128} × activation × n ∈ {1,3,64},
// I/O in float and in the weight dtype, against the float64 reference.
#include "support/forward_matrix.hpp"

TEST_CASE("cpu forward matrix: avg_k", "[forward][avg_k]") {
  test::check_selector_matrix<sparse_ffn::select::avg_k>();
}
