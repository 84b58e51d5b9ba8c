// Selectors on constructed inputs (the expected blocks are known by hand, ties included), hash
// uniformity (chi-square) and distinctness, learned-gate weights, oracle vs Avg-K.
#include "support/test_support.hpp"

namespace {

/// A float model whose block b has every key equal to key_of(b, i) (identity permutation).
template <class KeyFn>
sfx::blocked_ffn<float> constructed(sfx::index_t d, sfx::index_t g, sfx::index_t B, KeyFn key_of,
                                    const std::vector<float>& b1 = {}) {
  sfx::dense_ffn<float> dense(d, B * g, false, !b1.empty());
  for (sfx::index_t j = 0; j < B * g; ++j) {
    const auto row = key_of(j / g, j % g);
    for (sfx::index_t c = 0; c < d; ++c)
      dense.w1[static_cast<std::size_t>(j * d + c)] = row[static_cast<std::size_t>(c)];
    for (sfx::index_t c = 0; c < d; ++c) dense.w2[static_cast<std::size_t>(c * B * g + j)] = 1.0f;
  }
  if (!b1.empty()) dense.b1 = b1;
  return sfx::pack<float>(dense.view(), {g});
}

std::vector<float> unit(sfx::index_t d, sfx::index_t at, float scale = 1.0f) {
  std::vector<float> v(static_cast<std::size_t>(d), 0.0f);
  v[static_cast<std::size_t>(at)] = scale;
  return v;
}

template <class P>
std::vector<sfx::block_index_t> route1(const sfx::blocked_ffn<float>& m, const std::vector<float>& x,
                                       sfx::route_args a, std::vector<float>* weights = nullptr) {
  std::vector<sfx::block_index_t> blocks(static_cast<std::size_t>(a.k));
  std::vector<float> w(static_cast<std::size_t>(a.k));
  sfx::cpu::route<P>(m.view(), 1, x.data(), a, {1, a.k, blocks.data(), w.data()});
  if (weights) *weights = w;
  return blocks;
}

using block_list = std::vector<sfx::block_index_t>;

}  // namespace

TEST_CASE("avg_k picks the blocks with the largest mean key · x, ties to the lower index",
          "[selector][avg_k]") {
  // Block b's keys are all e_b, so score_b = x[b].
  const auto m = constructed(8, 4, 6, [](sfx::index_t b, sfx::index_t) { return unit(8, b); });
  using P = sfx::policy<4, sfx::select::avg_k, float, sfx::act::relu>;
  const std::vector<float> x = {3, 1, 4, 1, 5, 9, 0, 0};
  REQUIRE(route1<P>(m, x, {3}) == block_list{5, 4, 2});
  REQUIRE(route1<P>(m, x, {5}) == block_list{5, 4, 2, 0, 1});  // blocks 1 and 3 tie: 1 first
  REQUIRE(route1<P>(m, x, {6}) == block_list{5, 4, 2, 0, 1, 3});
  const std::vector<float> zero(8, 0.0f);
  REQUIRE(route1<P>(m, zero, {4}) == block_list{0, 1, 2, 3});  // all tie
}

TEST_CASE("avg_k scores are the mean pre-activation: keys averaged, biases averaged", "[selector][avg_k]") {
  // Block b: keys e_b and -e_b alternate except block 2 whose keys are all e_2, so centroids are 0
  // except block 2; the bias mean then decides the rest.
  std::vector<float> b1(4 * 2);
  for (sfx::index_t j = 0; j < 8; ++j)
    b1[static_cast<std::size_t>(j)] = static_cast<float>(j / 2);  // block b: bias b
  const auto m = constructed(
      4, 2, 4,
      [](sfx::index_t b, sfx::index_t i) { return unit(4, b, b == 2 ? 1.0f : (i % 2 ? -1.0f : 1.0f)); }, b1);
  using P = sfx::policy<2, sfx::select::avg_k, float, sfx::act::relu>;
  // scores: block0 0+0, block1 0+1, block2 x[2]+2, block3 0+3
  REQUIRE(route1<P>(m, {5, 5, 0.5f, 5}, {4}) == block_list{3, 2, 1, 0});
  REQUIRE(route1<P>(m, {5, 5, 1.5f, 5}, {1}) == block_list{2});
}

TEST_CASE("oracle ranks by activation mass, unlike avg_k", "[selector][oracle]") {
  // x = e_0. Block 0 keys (1, 1): relu sum 2, centroid 1. Block 1 keys (3, -5): relu sum 3, centroid -1.
  // Block 2 keys (2, 0.5): relu sum 2.5, centroid 1.25.
  const float k0[3][2] = {{1, 1}, {3, -5}, {2, 0.5f}};
  const auto m = constructed(2, 2, 3, [&](sfx::index_t b, sfx::index_t i) { return unit(2, 0, k0[b][i]); });
  const std::vector<float> x = {1, 0};
  using O = sfx::policy<2, sfx::select::oracle, float, sfx::act::relu>;
  using A = sfx::policy<2, sfx::select::avg_k, float, sfx::act::relu>;
  REQUIRE(route1<O>(m, x, {3}) == block_list{1, 2, 0});
  REQUIRE(route1<A>(m, x, {3}) == block_list{2, 0, 1});
}

TEST_CASE("learned gate: softmax weights, Switch and renormalised top-k", "[selector][learned_gate]") {
  auto m = constructed(4, 2, 4, [](sfx::index_t b, sfx::index_t) { return unit(4, b); });
  std::vector<float> gw(16, 0.0f);
  for (int b = 0; b < 4; ++b) gw[static_cast<std::size_t>(b * 4 + b)] = 1.0f;  // logit_b = x[b]
  m.set_gate(gw.data());
  using P = sfx::policy<2, sfx::select::learned_gate, float, sfx::act::relu>;
  const std::vector<float> x = {1, 2, 3, 0};
  std::vector<float> w;
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(0.0);
  REQUIRE(route1<P>(m, x, {2}, &w) == block_list{2, 1});
  REQUIRE(w[0] == Approx(std::exp(3.0) / z).epsilon(1e-6));
  REQUIRE(w[1] == Approx(std::exp(2.0) / z).epsilon(1e-6));
  sfx::route_args a{2};
  a.renormalize = true;
  REQUIRE(route1<P>(m, x, a, &w) == block_list{2, 1});
  REQUIRE(w[0] == Approx(std::exp(3.0) / (std::exp(3.0) + std::exp(2.0))).epsilon(1e-6));
  REQUIRE(w[0] + w[1] == Approx(1.0).epsilon(1e-6));
}

TEST_CASE("learned gate weights: renormalised sum to 1, Switch sum to the top-k mass, k = B sums to 1",
          "[selector][learned_gate]") {
  auto r = test::rng(3);
  const sfx::index_t d = 24, g = 4, B = 12;
  const auto dense = test::random_dense<float>(r, d, B * g, false, false);
  std::vector<float> gw(static_cast<std::size_t>(B * d)), gb(static_cast<std::size_t>(B));
  test::fill_normal(gw, r, 1.0);
  test::fill_normal(gb, r, 1.0);
  sfx::pack_options po{g};
  po.gate_w = gw.data();
  po.gate_b = gb.data();
  const auto m = sfx::pack<float>(dense.view(), po);
  using P = sfx::policy<4, sfx::select::learned_gate, float, sfx::act::relu>;
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> x(static_cast<std::size_t>(d));
    test::fill_normal(x, r, 1.0);
    for (sfx::index_t k : {sfx::index_t{1}, sfx::index_t{3}, B}) {
      for (bool renorm : {false, true}) {
        sfx::route_args a{k};
        a.renormalize = renorm;
        std::vector<float> w;
        route1<P>(m, x, a, &w);
        double s = 0;
        for (float v : w) {
          REQUIRE(v > 0.0f);
          REQUIRE(v <= 1.0f);
          s += v;
        }
        if (renorm || k == B) {
          REQUIRE(s == Approx(1.0).epsilon(1e-5));
        } else {
          REQUIRE(s < 1.0 + 1e-6);
        }
        for (std::size_t j = 1; j < w.size(); ++j) REQUIRE(w[j] <= w[j - 1]);  // best first
      }
    }
  }
}

TEST_CASE("hash: k distinct in-range blocks, k = B is a permutation, deterministic", "[selector][hash]") {
  auto r = test::rng(11);
  for (sfx::index_t B : {1, 2, 3, 5, 7, 16, 64, 96, 100, 256, 1000, 16384}) {
    for (int trial = 0; trial < 20; ++trial) {
      const auto key = sfx::select::hash::token_key(static_cast<sfx::token_id_t>(r() % 100000), r());
      const sfx::index_t k = B <= 1000 ? B : 300;
      std::vector<char> seen(static_cast<std::size_t>(B), 0);
      for (sfx::index_t j = 0; j < k; ++j) {
        const sfx::index_t b = sfx::select::hash::block(key, j, B);
        REQUIRE(b >= 0);
        REQUIRE(b < B);
        REQUIRE_FALSE(seen[static_cast<std::size_t>(b)]);
        seen[static_cast<std::size_t>(b)] = 1;
        REQUIRE(sfx::select::hash::block(key, j, B) == b);
      }
    }
  }
}

TEST_CASE("hash spreads token ids evenly over blocks (chi-square)", "[selector][hash]") {
  auto r = test::rng(12);
  for (sfx::index_t B : {7, 64, 96, 256}) {
    for (sfx::index_t k : {1, 4}) {
      const std::uint64_t seed = r();
      // >= 2800 expected hits per block: a 1% load imbalance between blocks is then well above the noise.
      const sfx::index_t N = std::max<sfx::index_t>(20000, 400 * B / k + 1000);
      std::vector<double> all(static_cast<std::size_t>(B)), first(static_cast<std::size_t>(B)),
          last(static_cast<std::size_t>(B));
      for (sfx::index_t t = 0; t < N; ++t) {
        const auto key = sfx::select::hash::token_key(t, seed);
        for (sfx::index_t j = 0; j < k; ++j) {
          const auto b = static_cast<std::size_t>(sfx::select::hash::block(key, j, B));
          all[b] += 1;
          if (j == 0) first[b] += 1;
          if (j == k - 1) last[b] += 1;
        }
      }
      auto chi2 = [&](const std::vector<double>& c, double total) {
        const double e = total / double(B);
        double s = 0;
        for (double o : c) s += (o - e) * (o - e) / e;
        return s;
      };
      const double df = double(B - 1), bound = df + 7.0 * std::sqrt(2.0 * df) + 10.0;  // ~1e-7 tail
      INFO("B=" << B << " k=" << k << " seed=" << seed);
      REQUIRE(chi2(all, double(N * k)) < bound);
      REQUIRE(chi2(first, double(N)) < bound);
      REQUIRE(chi2(last, double(N)) < bound);
    }
  }
}

TEST_CASE("hash routing depends on the token id and seed, not on x", "[selector][hash]") {
  auto r = test::rng(13);
  const sfx::index_t d = 16, g = 16, B = 32, n = 200, k = 3;
  const auto dense = test::random_dense<float>(r, d, B * g, false, false);
  const auto m = sfx::pack<float>(dense.view(), {g});
  using P = sfx::policy<16, sfx::select::hash, float, sfx::act::relu>;
  std::vector<float> x1(static_cast<std::size_t>(n * d)), x2(x1.size());
  test::fill_normal(x1, r, 1.0);
  test::fill_normal(x2, r, 1.0);
  std::vector<sfx::token_id_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = static_cast<sfx::token_id_t>(r() % 50000);
  sfx::route_args a{k};
  a.token_ids = ids.data();
  a.vocab_size = 50000;
  a.seed = 42;
  sfx::routing_table t1(n, k), t2(n, k), t3(n, k);
  sfx::cpu::route<P>(m.view(), n, x1.data(), a, t1.view());
  sfx::cpu::route<P>(m.view(), n, x2.data(), a, t2.view());
  REQUIRE(t1.blocks == t2.blocks);
  a.seed = 43;
  sfx::cpu::route<P>(m.view(), n, x1.data(), a, t3.view());
  int same = 0;
  for (sfx::index_t t = 0; t < n; ++t)
    same += t1.blocks[static_cast<std::size_t>(t * k)] == t3.blocks[static_cast<std::size_t>(t * k)];
  REQUIRE(same < n / 4);  // expected n / B
  // The same token id always gets the same blocks.
  for (sfx::index_t t = 0; t < n; ++t)
    for (sfx::index_t u = 0; u < n; ++u)
      if (ids[static_cast<std::size_t>(t)] == ids[static_cast<std::size_t>(u)])
        for (sfx::index_t j = 0; j < k; ++j)
          REQUIRE(t1.blocks[static_cast<std::size_t>(t * k + j)] ==
                  t1.blocks[static_cast<std::size_t>(u * k + j)]);
}
