// The dense forward against the float64 reference, and the sparse forward with k = B equal to the
// dense FFN (unweighted selectors), for every activation and dtype.
#include "support/test_support.hpp"

namespace {

template <class T, class A>
void dense_case(std::uint64_t salt) {
  auto r = test::rng(salt);
  const sfx::index_t d = std::uniform_int_distribution<sfx::index_t>(1, 90)(r);
  const sfx::index_t B = std::uniform_int_distribution<sfx::index_t>(1, 8)(r);
  const sfx::index_t F = 16 * B, n = 5;
  const bool biases = (r() & 1) != 0;
  INFO("dtype=" << sfx::dtype_traits<T>::name << " act=" << A::name << " d=" << d << " F=" << F);
  const auto dense_f = test::random_dense<T>(r, d, F, A::gated, biases);
  // The same values in T (exact), to run the dense forward on T weights.
  sfx::dense_ffn<T> dense_t(d, F, A::gated, biases);
  auto cvt = [](const std::vector<float>& s, std::vector<T>& o) {
    for (std::size_t i = 0; i < s.size(); ++i) o[i] = sfx::from_float<T>(s[i]);
  };
  cvt(dense_f.w1, dense_t.w1);
  cvt(dense_f.w2, dense_t.w2);
  cvt(dense_f.w3, dense_t.w3);
  cvt(dense_f.b1, dense_t.b1);
  cvt(dense_f.b2, dense_t.b2);
  cvt(dense_f.b3, dense_t.b3);

  std::vector<float> x(static_cast<std::size_t>(n * d));
  test::fill_normal(x, r, 1.0);
  test::guarded_output<float> yd(static_cast<std::size_t>(n * d));
  sfx::cpu::dense_forward<A>(dense_t.view(), n, x.data(), yd.data());
  REQUIRE(yd.all_written());
  REQUIRE(yd.guard_intact());
  for (sfx::index_t t = 0; t < n; ++t)
    REQUIRE(test::close_to(yd.data() + t * d, test::dense_ref(dense_f, A::kind, x.data() + t * d)));

  // Sparse with k = B, random permutation, unweighted selectors: equals the dense FFN.
  const auto perm = test::random_perm(r, F);
  sfx::pack_options po{16};
  po.permutation = perm.data();
  const auto model = sfx::pack<T>(dense_f.view(), po);
  std::vector<sfx::token_id_t> ids(static_cast<std::size_t>(n), 3);
  sfx::route_args a{B};
  a.token_ids = ids.data();
  a.vocab_size = 10;
  auto run = [&](auto policy_tag) {
    using P = typename decltype(policy_tag)::type;
    test::guarded_output<float> ys(static_cast<std::size_t>(n * d));
    sfx::cpu::forward<P>(model.view(), n, x.data(), ys.data(), a);
    REQUIRE(ys.guard_intact());
    for (sfx::index_t t = 0; t < n; ++t)
      REQUIRE(test::close_to(ys.data() + t * d, test::dense_ref(dense_f, A::kind, x.data() + t * d), nullptr,
                             test::activation_rounding<T>()));
  };
  run(sfx::type_tag<sfx::policy<16, sfx::select::avg_k, T, A>>{});
  run(sfx::type_tag<sfx::policy<16, sfx::select::hash, T, A>>{});
  run(sfx::type_tag<sfx::policy<16, sfx::select::oracle, T, A>>{});
}

template <class T>
void dense_all_acts(std::uint64_t salt) {
  dense_case<T, sfx::act::relu>(salt + 1);
  dense_case<T, sfx::act::gelu_erf>(salt + 2);
  dense_case<T, sfx::act::gelu_tanh>(salt + 3);
  dense_case<T, sfx::act::silu>(salt + 4);
  dense_case<T, sfx::act::swiglu>(salt + 5);
  dense_case<T, sfx::act::geglu>(salt + 6);
}

}  // namespace

TEST_CASE("dense forward matches float64; sparse with k = B equals dense", "[dense]") {
  for (int rep = 0; rep < 3; ++rep) {
    dense_all_acts<float>(100 * rep + 10);
    dense_all_acts<sfx::half_t>(100 * rep + 20);
    dense_all_acts<sfx::bfloat16_t>(100 * rep + 30);
  }
}

TEST_CASE("activations match their textbook formulas", "[dense][activation]") {
  for (double a = -12; a <= 12; a += 0.37) {
    const float f = static_cast<float>(a);
    REQUIRE(sfx::act::relu::apply(f) == Approx(test::act_ref(sfx::activation_kind::relu, f, 0)).margin(1e-6));
    REQUIRE(sfx::act::gelu_erf::apply(f) ==
            Approx(test::act_ref(sfx::activation_kind::gelu_erf, f, 0)).margin(1e-6));
    REQUIRE(sfx::act::gelu_tanh::apply(f) ==
            Approx(test::act_ref(sfx::activation_kind::gelu_tanh, f, 0)).margin(1e-6));
    REQUIRE(sfx::act::silu::apply(f) == Approx(test::act_ref(sfx::activation_kind::silu, f, 0)).margin(1e-6));
    REQUIRE(sfx::act::swiglu::apply(f, 1.5f) ==
            Approx(test::act_ref(sfx::activation_kind::swiglu, f, 1.5)).margin(1e-5));
    REQUIRE(sfx::act::geglu::apply(f, -0.5f) ==
            Approx(test::act_ref(sfx::activation_kind::geglu, f, -0.5)).margin(1e-5));
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(std::isnan(sfx::act::relu::apply(nan)));
  REQUIRE(std::isnan(sfx::act::gelu_erf::apply(nan)));
  REQUIRE(std::isnan(sfx::act::silu::apply(nan)));
  REQUIRE(sfx::activate<sfx::act::relu>(2.0f, 100.0f) == 2.0f);
  REQUIRE(sfx::activate<sfx::act::swiglu>(0.0f, 100.0f) == 0.0f);
}
