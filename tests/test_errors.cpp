// Every bad input is rejected with sparse_ffn::error, the right status and a message naming the
// problem, before anything is written; NaN/Inf inputs behave as documented.
#include "support/test_support.hpp"

using sfx::status;

namespace {

struct fixture {
  static constexpr sfx::index_t d = 12, g = 4, B = 6, F = g * B, n = 3;
  std::mt19937_64 r = test::rng(77);
  sfx::dense_ffn<float> dense = test::random_dense<float>(r, d, F, false, true);
  sfx::blocked_ffn<float> model = sfx::pack<float>(dense.view(), {g});
  std::vector<float> x = std::vector<float>(n * d, 0.5f);
  std::vector<float> y = std::vector<float>(n * d, 0.0f);
};
using P = sfx::policy<4, sfx::select::avg_k, float, sfx::act::relu>;

}  // namespace

TEST_CASE("layout and pack errors", "[errors]") {
  fixture f;
  REQUIRE_ERROR(sfx::make_layout<float>(12, 30, 4, false), status::invalid_shape,
                "not divisible by block size g");
  REQUIRE_ERROR(sfx::make_layout<float>(12, 32, 0, false), status::invalid_argument,
                "block size g must be positive");
  REQUIRE_ERROR(sfx::make_layout<float>(0, 32, 4, false), status::invalid_shape, "d_model must be positive");
  REQUIRE_ERROR(sfx::make_layout<float>(12, -32, 4, false), status::invalid_shape, "d_ff must be positive");
  REQUIRE_ERROR(sfx::make_layout<float>(12, sfx::index_t{1} << 31, 1, false), status::size_overflow, "d_ff");
  REQUIRE_ERROR(sfx::make_layout<float>(sfx::index_t{1} << 30, sfx::index_t{1} << 30, 1, true),
                status::size_overflow, "overflows");

  auto v = f.dense.view();
  v.w1 = nullptr;
  REQUIRE_ERROR(sfx::pack<float>(v, {4}), status::null_pointer, "W1");
  v = f.dense.view();
  v.b3 = v.b1;
  REQUIRE_ERROR(sfx::pack<float>(v, {4}), status::invalid_argument, "b3");
  std::vector<std::int32_t> perm(fixture::F);
  for (int i = 0; i < fixture::F; ++i) perm[static_cast<std::size_t>(i)] = i;
  perm[3] = fixture::F;
  sfx::pack_options po{4};
  po.permutation = perm.data();
  REQUIRE_ERROR(sfx::pack<float>(f.dense.view(), po), status::out_of_range, "permutation[3]");
  perm[3] = 0;
  REQUIRE_ERROR(sfx::pack<float>(f.dense.view(), po), status::invalid_argument, "not a bijection");
  std::vector<float> gb(fixture::B);
  sfx::pack_options pg{4};
  pg.gate_b = gb.data();
  REQUIRE_ERROR(sfx::pack<float>(f.dense.view(), pg), status::invalid_argument, "gate_b");
  REQUIRE_ERROR(sfx::pack<float>(f.dense.view(), {5}), status::invalid_shape, "not divisible");
  std::vector<char> raw(f.dense.w1.size() * 4 + 8);
  v = f.dense.view();
  v.w1 = reinterpret_cast<const float*>(raw.data() + 1);
  REQUIRE_ERROR(sfx::pack<float>(v, {4}), status::misaligned_pointer, "aligned");
}

TEST_CASE("blocked view validation", "[errors]") {
  fixture f;
  auto w = f.model.view();
  w.weights = nullptr;
  REQUIRE_ERROR(sfx::validate(w), status::null_pointer, "blocked weights");
  w = f.model.view();
  w.weights = reinterpret_cast<const float*>(reinterpret_cast<const char*>(w.weights) + 16);
  REQUIRE_ERROR(sfx::validate(w), status::misaligned_pointer, "64 bytes");
  w = f.model.view();
  w.layout.ld = 13;
  REQUIRE_ERROR(sfx::validate(w), status::invalid_shape, "layout.ld");
  w = f.model.view();
  w.layout.num_blocks = 5;
  REQUIRE_ERROR(sfx::validate(w), status::invalid_shape, "num_blocks");
  // A hand-made view with a huge row stride: every product is checked before it is formed (this was
  // signed overflow, i.e. UB, in block_stride() and ld * sizeof(T)).
  w = f.model.view();
  w.layout.ld = sfx::index_t{1} << 61;
  REQUIRE_ERROR(sfx::validate(w), status::size_overflow, "layout.ld");
  w.layout.ld = sfx::index_t{1} << 58;
  REQUIRE_ERROR(sfx::validate(w), status::size_overflow, "overflows");
  w.layout.ld = (sfx::index_t{1} << 62) - 16;
  REQUIRE_ERROR(sfx::validate(w), status::size_overflow, "overflows");
  w = f.model.view();
  w.b3 = w.b1;
  REQUIRE_ERROR(sfx::validate(w), status::invalid_argument, "b3");
}

TEST_CASE("forward argument errors", "[errors]") {
  fixture f;
  const auto w = f.model.view();
  const sfx::index_t n = fixture::n;
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, f.x.data(), f.y.data(), {0}), status::invalid_argument, "k (0)");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, f.x.data(), f.y.data(), {7}), status::invalid_argument, "k (7)");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, -1, f.x.data(), f.y.data(), {2}), status::invalid_shape,
                "n must be >= 0");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, static_cast<const float*>(nullptr), f.y.data(), {2}),
                status::null_pointer, "X");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, f.x.data(), static_cast<float*>(nullptr), {2}),
                status::null_pointer, "Y");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, sfx::index_t{1} << 62, f.x.data(), f.y.data(), {2}),
                status::size_overflow, "2^31");
  // Token indices are 32-bit in the routing/grouping tables: n = 2^31 is refused before any work.
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, sfx::index_t{1} << 31, f.x.data(), f.y.data(), {2}),
                status::size_overflow, "must be < 2^31");
  REQUIRE_ERROR(sfx::cpu::route<P>(w, sfx::index_t{1} << 31, f.x.data(), {2}, sfx::routing_view{}),
                status::size_overflow, "must be < 2^31");
  std::vector<float> big(fixture::n * fixture::d + 1);
  REQUIRE_ERROR(sfx::cpu::forward<P>(
                    w, n, reinterpret_cast<const float*>(reinterpret_cast<const char*>(big.data()) + 2),
                    f.y.data(), {2}),
                status::misaligned_pointer, "X must be aligned");
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, big.data(), big.data() + 1, {2}), status::invalid_argument,
                "overlap");
  using P8 = sfx::policy<8, sfx::select::avg_k, float, sfx::act::relu>;
  REQUIRE_ERROR(sfx::cpu::forward<P8>(w, n, f.x.data(), f.y.data(), {2}), status::invalid_argument,
                "block size G=8");
  using PG = sfx::policy<4, sfx::select::avg_k, float, sfx::act::swiglu>;
  REQUIRE_ERROR(sfx::cpu::forward<PG>(w, n, f.x.data(), f.y.data(), {2}), status::invalid_argument, "gated");
  // Nothing was written by the rejected calls.
  for (float v : f.y) REQUIRE(v == 0.0f);
  // n = 0 is valid and touches nothing (null pointers allowed).
  sfx::cpu::forward<P>(w, 0, static_cast<const float*>(nullptr), static_cast<float*>(nullptr), {2});
}

TEST_CASE("selector-specific errors", "[errors]") {
  fixture f;
  const sfx::index_t n = fixture::n;
  using H = sfx::policy<4, sfx::select::hash, float, sfx::act::relu>;
  using L = sfx::policy<4, sfx::select::learned_gate, float, sfx::act::relu>;
  const auto w = f.model.view();
  sfx::route_args a{2};
  REQUIRE_ERROR(sfx::cpu::forward<H>(w, n, f.x.data(), f.y.data(), a), status::invalid_argument,
                "vocab_size");
  a.vocab_size = 100;
  REQUIRE_ERROR(sfx::cpu::forward<H>(w, n, f.x.data(), f.y.data(), a), status::null_pointer, "token_ids");
  std::vector<sfx::token_id_t> ids = {1, 100, 2};
  a.token_ids = ids.data();
  REQUIRE_ERROR(sfx::cpu::forward<H>(w, n, f.x.data(), f.y.data(), a), status::out_of_range,
                "token id 100 of token 1");
  ids[1] = -1;
  REQUIRE_ERROR(sfx::cpu::forward<H>(w, n, f.x.data(), f.y.data(), a), status::out_of_range, "token id -1");
  REQUIRE_ERROR(sfx::cpu::forward<L>(w, n, f.x.data(), f.y.data(), {2}), status::invalid_argument,
                "gate weights");
  sfx::pack_options po{4};
  po.centroids = false;
  const auto no_centroids = sfx::pack<float>(f.dense.view(), po);
  REQUIRE_ERROR(sfx::cpu::forward<P>(no_centroids.view(), n, f.x.data(), f.y.data(), {2}),
                status::invalid_argument, "centroids");
}

TEST_CASE("routing table and cache errors", "[errors]") {
  fixture f;
  const sfx::index_t n = fixture::n;
  const auto w = f.model.view();
  std::vector<sfx::block_index_t> blocks = {0, 1, 2, 3, 4, 5};
  REQUIRE_ERROR(sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {2, 2, blocks.data(), nullptr}),
                status::invalid_shape, "2 rows but there are 3 tokens");
  REQUIRE_ERROR(sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {n, 2, nullptr, nullptr}),
                status::null_pointer, "routing blocks");
  blocks[3] = 6;
  REQUIRE_ERROR(sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {n, 2, blocks.data(), nullptr}),
                status::out_of_range, "routing block 6 (token 1, slot 1)");
  blocks[3] = -1;
  REQUIRE_ERROR(sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {n, 2, blocks.data(), nullptr}),
                status::out_of_range, "routing block -1");
  blocks[3] = 2;
  REQUIRE_ERROR(sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {n, 2, blocks.data(), nullptr}),
                status::invalid_argument, "lists block 2 twice");
  blocks[3] = 3;
  std::vector<float> up(100);
  sfx::forward_cache c;
  c.up = up.data();
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, n, f.x.data(), f.y.data(), {2}, &c), status::invalid_argument,
                "gated");
  sfx::routing_table rt(2, 2);
  REQUIRE_ERROR(sfx::cpu::route<P>(w, n, f.x.data(), {2}, rt.view()), status::invalid_shape,
                "routing output");
  for (float v : f.y) REQUIRE(v == 0.0f);
  // A valid table works.
  sfx::cpu::forward_routed<P>(w, n, f.x.data(), f.y.data(), {n, 2, blocks.data(), nullptr});
}

TEST_CASE("NaN/Inf inputs: routing stays valid, non-finite values stay in their token", "[errors][nan]") {
  fixture f;
  const sfx::index_t n = fixture::n, d = fixture::d, k = 3;
  const auto w = f.model.view();
  auto run = [&](auto policy_tag, float bad) {
    using Q = typename decltype(policy_tag)::type;
    std::vector<float> x(f.x);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
    std::vector<float> clean(static_cast<std::size_t>(n * d)), dirty(static_cast<std::size_t>(n * d));
    std::vector<sfx::token_id_t> ids = {1, 2, 3};
    sfx::route_args a{k};
    a.token_ids = ids.data();
    a.vocab_size = 10;
    sfx::cpu::forward<Q>(w, n, x.data(), clean.data(), a);
    x[static_cast<std::size_t>(d + 5)] = bad;  // token 1 only
    sfx::routing_table rt(n, k);
    sfx::forward_cache c{rt.blocks.data(), rt.weights.data(), nullptr, nullptr};
    sfx::cpu::forward<Q>(w, n, x.data(), dirty.data(), a, &c);
    for (sfx::index_t t = 0; t < n; ++t) {
      std::vector<char> seen(fixture::B, 0);
      for (sfx::index_t j = 0; j < k; ++j) {
        const auto b = rt.blocks[static_cast<std::size_t>(t * k + j)];
        REQUIRE(b >= 0);
        REQUIRE(b < fixture::B);
        REQUIRE_FALSE(seen[static_cast<std::size_t>(b)]);
        seen[static_cast<std::size_t>(b)] = 1;
      }
    }
    for (sfx::index_t c2 = 0; c2 < d; ++c2) {
      REQUIRE(dirty[static_cast<std::size_t>(c2)] == clean[static_cast<std::size_t>(c2)]);  // token 0
      REQUIRE(dirty[static_cast<std::size_t>(2 * d + c2)] ==
              clean[static_cast<std::size_t>(2 * d + c2)]);  // token 2
    }
    bool nonfinite = false;
    for (sfx::index_t c2 = 0; c2 < d; ++c2)
      nonfinite |= !std::isfinite(dirty[static_cast<std::size_t>(d + c2)]);
    return nonfinite;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // NaN in x: avg_k scores are all NaN -> blocks 0..k-1 (NaN ties go to the lower index); the
  // token's output is NaN.
  REQUIRE(run(sfx::type_tag<P>{}, nan));
  REQUIRE(run(sfx::type_tag<P>{}, inf));
  REQUIRE(run(sfx::type_tag<sfx::policy<4, sfx::select::oracle, float, sfx::act::relu>>{}, nan));
  REQUIRE(run(sfx::type_tag<sfx::policy<4, sfx::select::hash, float, sfx::act::relu>>{}, nan));
  sfx::routing_table rt(1, 3);
  std::vector<float> xn(fixture::d, nan);
  sfx::cpu::route<P>(w, 1, xn.data(), {3}, rt.view());
  REQUIRE(rt.blocks == std::vector<sfx::block_index_t>{0, 1, 2});
}

TEST_CASE("dispatch rejects values outside the supported set", "[errors][dispatch]") {
  auto noop = [](auto) {};
  REQUIRE_ERROR(sfx::dispatch_block_size(48, noop), status::unsupported, "g=48");
  REQUIRE_ERROR(sfx::dispatch_dtype(static_cast<sfx::dtype>(9), noop), status::unsupported, "dtype 9");
  REQUIRE_ERROR(sfx::dispatch_dtype(sfx::dtype::q4, noop), status::unsupported, "dtype 4 (q4)");
  REQUIRE_ERROR(sfx::dispatch_selector(static_cast<sfx::selector_kind>(9), noop), status::unsupported,
                "selector 9");
  REQUIRE_ERROR(sfx::dispatch_activation(static_cast<sfx::activation_kind>(9), noop), status::unsupported,
                "activation 9");
  REQUIRE_ERROR(sfx::parse_selector("topk"), status::unsupported, "unknown selector 'topk'");
  REQUIRE_ERROR(sfx::parse_dtype("f64"), status::unsupported, "unknown dtype 'f64'");
  REQUIRE_ERROR(sfx::parse_activation("tanh"), status::unsupported, "unknown activation 'tanh'");
}

TEST_CASE("pinned blocks: k must count them; pinned outside [0, B] refused", "[errors][pinned]") {
  fixture f;
  sfx::pack_options po{fixture::g};
  po.pinned = 3;
  const auto model = sfx::pack<float>(f.dense.view(), po);
  const auto w = model.view();
  REQUIRE_ERROR(sfx::cpu::forward<P>(w, fixture::n, f.x.data(), f.y.data(), {2}), status::invalid_argument,
                "k (2) must be >= the model's pinned blocks (3)");
  using H = sfx::policy<4, sfx::select::hash, float, sfx::act::relu>;
  const std::vector<sfx::token_id_t> ids(fixture::n, 1);
  sfx::route_args a{2, ids.data(), 10};
  REQUIRE_ERROR(sfx::cpu::forward<H>(w, fixture::n, f.x.data(), f.y.data(), a), status::invalid_argument,
                "pinned blocks (3)");
  // k == pinned: only the pinned blocks, every token the same three.
  std::vector<sfx::block_index_t> blocks(fixture::n * 3);
  sfx::forward_cache cache{blocks.data(), nullptr, nullptr, nullptr};
  sfx::cpu::forward<P>(w, fixture::n, f.x.data(), f.y.data(), {3}, &cache);
  for (sfx::index_t t = 0; t < fixture::n; ++t)
    for (sfx::index_t j = 0; j < 3; ++j) REQUIRE(blocks[static_cast<std::size_t>(t * 3 + j)] == j);
  // A caller's own routing table need not list them (forward_routed computes the blocks it is given).
  const std::vector<sfx::block_index_t> mine(fixture::n, 5);
  sfx::cpu::forward_routed<P>(w, fixture::n, f.x.data(), f.y.data(), {fixture::n, 1, mine.data(), nullptr});
  po.pinned = fixture::B + 1;
  REQUIRE_ERROR(sfx::pack<float>(f.dense.view(), po), status::invalid_argument, "pinned blocks (7)");
  auto bad = w;
  bad.layout.pinned = -1;
  REQUIRE_ERROR(sfx::validate(bad), status::invalid_shape, "layout.pinned (-1)");
}
