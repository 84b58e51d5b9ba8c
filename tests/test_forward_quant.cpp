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

TEMPLATE_TEST_CASE("key tiles: tile_keys / untile_keys round trip; entry points that read rows refuse them",
                   "[forward][quant][tiles]", sparse_ffn::q8_t, sparse_ffn::q4_t) {
  namespace sfx = sparse_ffn;
  using T = TestType;
  auto r = test::rng(77);
  const sfx::index_t d = 200, F = 128, n = 3;
  const auto dense = test::random_dense<T>(r, d, F, true, true);
  sfx::pack_options po;
  po.g = 32;
  const auto model = sfx::pack<T>(dense.view(), po);
  auto tiled = model;
  tiled.tile_keys();
  REQUIRE(tiled.layout().key_tiles);
  const auto& l = model.layout();
  const auto bytes = static_cast<std::size_t>(l.total_elements());
  REQUIRE(std::memcmp(tiled.view().weights, model.view().weights, bytes) != 0);
  // Only the keys and up rows moved: every block's values are as they were.
  for (sfx::index_t b = 0; b < l.num_blocks; ++b)
    REQUIRE(std::memcmp(tiled.view().values(b), model.view().values(b),
                        static_cast<std::size_t>(l.g * l.ld)) == 0);
  auto back = tiled;
  back.untile_keys();
  REQUIRE(!back.layout().key_tiles);
  REQUIRE(std::memcmp(back.view().weights, model.view().weights, bytes) == 0);
  REQUIRE_ERROR(tiled.tile_keys(), sfx::status::invalid_argument, "the keys are already key tiles");
  REQUIRE_ERROR(back.untile_keys(), sfx::status::invalid_argument, "the keys are already rows");
  using P = sfx::policy<32, sfx::select::avg_k, T, sfx::act::swiglu>;
  std::vector<float> x(static_cast<std::size_t>(n * d)), y(x.size());
  test::fill_normal(x, r, 1.0);
  REQUIRE_ERROR(sfx::cpu::reference_forward<P>(tiled.view(), n, x.data(), y.data(), {2}),
                sfx::status::unsupported, "untile_keys()");
  REQUIRE_ERROR((void)sfx::unpack(tiled.view()), sfx::status::unsupported, "untile_keys()");
  REQUIRE_ERROR(tiled.compute_centroids(), sfx::status::unsupported, "untile_keys()");
  // g not a multiple of 16.
  sfx::pack_options p8;
  p8.g = 8;
  auto small = sfx::pack<T>(dense.view(), p8);
  REQUIRE_ERROR(small.tile_keys(), sfx::status::unsupported, "key tiles need g a multiple of 16");
  // A hand-made view claiming key tiles with g = 8.
  auto v = small.view();
  v.layout.key_tiles = true;
  REQUIRE_ERROR(sfx::validate(v), sfx::status::invalid_argument, "layout.key_tiles");
  // The forward on tiles gives the bits of the rows (the full matrix: support/forward_matrix.hpp).
  std::vector<float> y2(x.size());
  sfx::cpu::forward<P>(model.view(), n, x.data(), y.data(), {2});
  sfx::cpu::forward<P>(tiled.view(), n, x.data(), y2.data(), {2});
  REQUIRE(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)) == 0);
}

TEMPLATE_TEST_CASE(
    "value tiles: tile_values / untile_values round trip; entry points that read rows refuse them",
    "[forward][quant][tiles]", sparse_ffn::q8_t, sparse_ffn::q4_t) {
  namespace sfx = sparse_ffn;
  using T = TestType;
  auto r = test::rng(78);
  const sfx::index_t d = 200, F = 128, n = 3;
  const auto dense = test::random_dense<T>(r, d, F, true, true);
  sfx::pack_options po;
  po.g = 32;
  const auto model = sfx::pack<T>(dense.view(), po);
  auto tiled = model;
  tiled.tile_values();
  REQUIRE(tiled.layout().value_tiles);
  REQUIRE(!tiled.layout().key_tiles);
  const auto& l = model.layout();
  const auto bytes = static_cast<std::size_t>(l.total_elements());
  REQUIRE(std::memcmp(tiled.view().weights, model.view().weights, bytes) != 0);
  // Only the value rows moved: every block's keys and up rows are as they were.
  for (sfx::index_t b = 0; b < l.num_blocks; ++b)
    REQUIRE(std::memcmp(tiled.view().weights + l.key_offset(b), model.view().weights + l.key_offset(b),
                        static_cast<std::size_t>((l.matrices() - 1) * l.g * l.ld)) == 0);
  auto back = tiled;
  back.untile_values();
  REQUIRE(!back.layout().value_tiles);
  REQUIRE(std::memcmp(back.view().weights, model.view().weights, bytes) == 0);
  auto both = model;  // keys and values tiled, untiled in the other order
  both.tile_keys();
  both.tile_values();
  both.untile_keys();
  both.untile_values();
  REQUIRE(std::memcmp(both.view().weights, model.view().weights, bytes) == 0);
  REQUIRE_ERROR(tiled.tile_values(), sfx::status::invalid_argument, "the values are already value tiles");
  REQUIRE_ERROR(back.untile_values(), sfx::status::invalid_argument, "the values are already rows");
  using P = sfx::policy<32, sfx::select::avg_k, T, sfx::act::swiglu>;
  std::vector<float> x(static_cast<std::size_t>(n * d)), y(x.size());
  test::fill_normal(x, r, 1.0);
  REQUIRE_ERROR(sfx::cpu::reference_forward<P>(tiled.view(), n, x.data(), y.data(), {2}),
                sfx::status::unsupported, "untile_values()");
  REQUIRE_ERROR((void)sfx::unpack(tiled.view()), sfx::status::unsupported, "untile_values()");
  auto centroids = tiled;  // compute_centroids reads keys only
  centroids.compute_centroids();
  // g not a multiple of 32.
  sfx::pack_options p16;
  p16.g = 16;
  auto small = sfx::pack<T>(dense.view(), p16);
  REQUIRE_ERROR(small.tile_values(), sfx::status::unsupported, "value tiles need g a multiple of 32");
  small.tile_keys();  // key tiles need only 16
  // A hand-made view claiming value tiles with g = 16.
  auto v = small.view();
  v.layout.value_tiles = true;
  REQUIRE_ERROR(sfx::validate(v), sfx::status::invalid_argument, "layout.value_tiles");
  // The forward on tiles gives the bits of the rows (the full matrix: support/forward_matrix.hpp).
  std::vector<float> y2(x.size());
  sfx::cpu::forward<P>(model.view(), n, x.data(), y.data(), {2});
  sfx::cpu::forward<P>(tiled.view(), n, x.data(), y2.data(), {2});
  REQUIRE(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)) == 0);
}
