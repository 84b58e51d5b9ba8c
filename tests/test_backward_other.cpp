// Backward matrix for the selectors without router parameters that are not linear (hash, oracle): every
// activation × dtype × g × n against the float64 reference (support/backward_matrix.hpp).
#include "support/backward_matrix.hpp"

TEST_CASE("cpu backward matrix: hash", "[backward][hash]") {
  test::check_backward_matrix<sfx::select::hash>(0xb1);
}

TEST_CASE("cpu backward matrix: oracle", "[backward][oracle]") {
  test::check_backward_matrix<sfx::select::oracle>(0xb2);
}
