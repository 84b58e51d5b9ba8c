// Top-k: the documented total order (higher score first, ties to the lower index, NaN last) against a
// brute-force sort, for small-k (insertion) and large-k (selection) paths.
#include <sstream>
#include <string>
#include <utility>

#include "support/test_support.hpp"

namespace {

std::vector<sfx::block_index_t> brute_topk(const std::vector<float>& s, sfx::index_t k) {
  std::vector<sfx::block_index_t> idx(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) idx[i] = static_cast<sfx::block_index_t>(i);
  std::stable_sort(idx.begin(), idx.end(), [&](sfx::block_index_t a, sfx::block_index_t b) {
    const bool na = std::isnan(s[static_cast<std::size_t>(a)]),
               nb = std::isnan(s[static_cast<std::size_t>(b)]);
    if (na || nb) return !na && nb;  // numbers before NaN; stable keeps index order
    return s[static_cast<std::size_t>(a)] > s[static_cast<std::size_t>(b)];
  });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

}  // namespace

TEST_CASE("top-k matches a stable brute-force sort, ties and NaN included", "[topk]") {
  auto r = test::rng(1);
  std::vector<sfx::block_index_t> scratch;
  for (int trial = 0; trial < 400; ++trial) {
    // Every tenth B past topk's key array (k_topk_key_blocks): the indirect selection there.
    const sfx::index_t B = trial % 10 == 0 ? std::uniform_int_distribution<sfx::index_t>(1000, 2100)(r)
                                           : std::uniform_int_distribution<sfx::index_t>(1, 300)(r);
    const sfx::index_t k = std::uniform_int_distribution<sfx::index_t>(1, B)(r);
    std::vector<float> s(static_cast<std::size_t>(B));
    const int levels = 1 + static_cast<int>(r() % 8);  // few distinct values: many ties
    for (auto& v : s) {
      const auto u = r() % 100;
      v = u < 5    ? std::numeric_limits<float>::quiet_NaN()
          : u < 8  ? -std::numeric_limits<float>::infinity()
          : u < 10 ? std::numeric_limits<float>::infinity()
          : u < 14 ? (u % 2 ? -0.0f : 0.0f)  // equal scores with different bits
                   : static_cast<float>(r() % levels);
    }
    INFO("B=" << B << " k=" << k);
    std::vector<sfx::block_index_t> got(static_cast<std::size_t>(k));
    sfx::topk(s.data(), B, k, got.data(), scratch);
    REQUIRE(got == brute_topk(s, k));
    if (k <= 64) {
      std::vector<float> bs(static_cast<std::size_t>(k));
      std::vector<sfx::block_index_t> bi(static_cast<std::size_t>(k));
      sfx::topk_small(s.data(), B, k, bs.data(), bi.data());
      REQUIRE(bi == got);
    }
  }
}

TEST_CASE("ranks_before is a strict total order", "[topk]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(sfx::ranks_before(2.0f, 5, 1.0f, 0));
  REQUIRE(sfx::ranks_before(1.0f, 0, 1.0f, 1));
  REQUIRE_FALSE(sfx::ranks_before(1.0f, 1, 1.0f, 1));
  REQUIRE(sfx::ranks_before(-std::numeric_limits<float>::infinity(), 9, nan, 0));
  REQUIRE(sfx::ranks_before(nan, 0, nan, 1));
  REQUIRE_FALSE(sfx::ranks_before(nan, 0, 0.0f, 1));
}

TEST_CASE("topk_sort_key orders pairs exactly as ranks_before (GPU radix-sort top-k)", "[topk]") {
  auto r = test::rng(3);
  const float specials[] = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::max(),
                            -std::numeric_limits<float>::max()};
  std::vector<float> vals(std::begin(specials), std::end(specials));
  for (int i = 0; i < 200; ++i)
    vals.push_back(static_cast<float>(std::normal_distribution<double>(0, 10)(r)));
  // Every pair of values with the lower, the same and the higher index (-0 at index 0 against +0 at 1
  // found a disagreement).
  std::size_t checked = 0, wrong = 0;
  std::string first;
  for (std::size_t a = 0; a < vals.size(); ++a)
    for (std::size_t b = 0; b < vals.size(); ++b)
      for (const auto& ix : {std::pair<sfx::index_t, sfx::index_t>{0, 1}, {1, 0}, {2, 2}, {7, 300}}) {
        const sfx::index_t ia = ix.first, ib = ix.second;
        if (ia == ib && (vals[a] == vals[b] || (std::isnan(vals[a]) && std::isnan(vals[b]))))
          continue;  // the same pair: neither ranks before the other, and the keys may be equal
        const bool before = sfx::ranks_before(vals[a], ia, vals[b], ib);
        const bool key_before = sfx::topk_sort_key(vals[a], ia) < sfx::topk_sort_key(vals[b], ib);
        ++checked;
        if (before != key_before && wrong++ == 0) {
          std::ostringstream o;
          o << vals[a] << (std::signbit(vals[a]) ? " (sign)" : "") << "#" << ia << " vs " << vals[b]
            << (std::signbit(vals[b]) ? " (sign)" : "") << "#" << ib << ": ranks_before " << before;
          first = o.str();
        }
      }
  INFO("first disagreement: " << first);
  REQUIRE(checked > 4 * 200 * 200);
  REQUIRE(wrong == 0);
  // Sorting keys reproduces topk().
  std::vector<sfx::block_index_t> scratch;
  for (int trial = 0; trial < 50; ++trial) {
    const sfx::index_t B = 1 + static_cast<sfx::index_t>(r() % 300),
                       k = 1 + static_cast<sfx::index_t>(r() % static_cast<std::uint64_t>(B));
    std::vector<float> s(static_cast<std::size_t>(B));
    for (auto& v : s)
      v = static_cast<float>(r() % 5) - (r() % 20 == 0 ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
    std::vector<std::uint64_t> keys(static_cast<std::size_t>(B));
    for (sfx::index_t b = 0; b < B; ++b)
      keys[static_cast<std::size_t>(b)] = sfx::topk_sort_key(s[static_cast<std::size_t>(b)], b);
    std::sort(keys.begin(), keys.end());
    std::vector<sfx::block_index_t> want(static_cast<std::size_t>(k));
    sfx::topk(s.data(), B, k, want.data(), scratch);
    for (sfx::index_t j = 0; j < k; ++j)
      REQUIRE(static_cast<sfx::block_index_t>(keys[static_cast<std::size_t>(j)] & 0xffffffffu) ==
              want[static_cast<std::size_t>(j)]);
  }
}

TEST_CASE("bitonic_step's network (the GPU's one-kernel top-k) sorts like std::sort and gives topk's blocks",
          "[topk]") {
  auto r = test::rng(17);
  for (sfx::index_t B : {1, 2, 3, 5, 17, 64, 100, 256, 1000, 4096}) {
    const sfx::index_t width = sfx::bitonic_width(B);
    REQUIRE(width >= B);
    REQUIRE(width < 2 * B + 1);
    REQUIRE((width & (width - 1)) == 0);
    for (sfx::index_t pinned : {sfx::index_t{0}, std::min<sfx::index_t>(3, B)}) {
      INFO("B " << B << " pinned " << pinned);
      // Ties, NaN and ±Inf among the scores; padding keys (all ones) sort last, as in the kernel.
      std::vector<float> s(static_cast<std::size_t>(B)), ranked(s.size());
      for (auto& v : s) {
        const auto u = r() % 40;
        v = u == 0   ? std::numeric_limits<float>::quiet_NaN()
            : u == 1 ? std::numeric_limits<float>::infinity()
            : u == 2 ? -std::numeric_limits<float>::infinity()
                     : static_cast<float>(r() % 7);
      }
      std::vector<std::uint64_t> keys(static_cast<std::size_t>(width), ~std::uint64_t{0});
      for (sfx::index_t b = 0; b < B; ++b) {
        ranked[static_cast<std::size_t>(b)] = sfx::ranking_score(s[static_cast<std::size_t>(b)], b, pinned);
        keys[static_cast<std::size_t>(b)] = sfx::topk_sort_key(ranked[static_cast<std::size_t>(b)], b);
      }
      std::vector<std::uint64_t> sorted(keys);
      std::sort(sorted.begin(), sorted.end());
      sfx::bitonic_sort(keys.data(), width);
      REQUIRE(keys == sorted);
      std::vector<sfx::block_index_t> want(static_cast<std::size_t>(B)), scratch(static_cast<std::size_t>(B));
      for (sfx::index_t k : {sfx::index_t{1}, (B + 1) / 2, B}) {
        sfx::topk(ranked.data(), B, k, want.data(), scratch.data());
        for (sfx::index_t j = 0; j < k; ++j)
          REQUIRE(static_cast<sfx::block_index_t>(keys[static_cast<std::size_t>(j)] & 0xffffffffu) ==
                  want[static_cast<std::size_t>(j)]);
      }
    }
  }
}
