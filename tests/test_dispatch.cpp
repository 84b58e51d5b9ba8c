// Runtime -> compile-time dispatch picks the policy the description names, and a dispatched forward
// gives the same bits as the compile-time one.
#include "support/test_support.hpp"

TEST_CASE("dispatch_policy instantiates the described policy", "[dispatch]") {
  for (sfx::index_t g : sfx::k_dispatch_block_sizes)
    for (auto s : {sfx::selector_kind::avg_k, sfx::selector_kind::hash, sfx::selector_kind::learned_gate,
                   sfx::selector_kind::oracle})
      for (auto t : {sfx::dtype::f32, sfx::dtype::f16, sfx::dtype::bf16})
        for (auto a :
             {sfx::activation_kind::relu, sfx::activation_kind::gelu_erf, sfx::activation_kind::gelu_tanh,
              sfx::activation_kind::silu, sfx::activation_kind::swiglu, sfx::activation_kind::geglu}) {
          const std::string got = sfx::dispatch_policy({g, s, t, a}, [](auto p) {
            using Q = typename decltype(p)::type;
            return std::to_string(Q::block_size) + "/" + Q::selector::name + "/" +
                   sfx::dtype_traits<typename Q::dtype>::name + "/" + Q::activation::name;
          });
          REQUIRE(got == std::to_string(g) + "/" + sfx::selector_name(s) + "/" + sfx::dtype_name(t) + "/" +
                             sfx::activation_name(a));
          REQUIRE(sfx::parse_selector(sfx::selector_name(s)) == s);
          REQUIRE(sfx::parse_dtype(sfx::dtype_name(t)) == t);
          REQUIRE(sfx::parse_activation(sfx::activation_name(a)) == a);
        }
}

TEST_CASE("a dispatched forward equals the compile-time forward", "[dispatch]") {
  auto r = test::rng(21);
  const sfx::index_t d = 40, g = 32, B = 8, n = 4;
  const auto dense = test::random_dense<sfx::bfloat16_t>(r, d, g * B, true, true);
  const auto model = sfx::pack<sfx::bfloat16_t>(dense.view(), {g});
  std::vector<float> x(n * d), y1(n * d), y2(n * d);
  test::fill_normal(x, r, 1.0);
  sfx::cpu::forward<sfx::policy<32, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::swiglu>>(
      model.view(), n, x.data(), y1.data(), {3});
  sfx::dispatch_block_size(g, [&](auto gc) {
    sfx::dispatch_selector(sfx::selector_kind::avg_k, [&](auto s) {
      using Q =
          sfx::policy<decltype(gc)::value, typename decltype(s)::type, sfx::bfloat16_t, sfx::act::swiglu>;
      sfx::cpu::forward<Q>(model.view(), n, x.data(), y2.data(), {3});
    });
  });
  REQUIRE(y1 == y2);
}
