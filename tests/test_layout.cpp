// Blocked layout and packing: every packed row is the right neuron's row, padding is zero, alignment
// holds, centroids are block means, pack/unpack round-trips exactly, copies are deep.
#include "support/test_support.hpp"

namespace {

template <class T>
void check_pack(bool gated, bool biases, sfx::index_t d, sfx::index_t B, sfx::index_t g, std::uint64_t salt) {
  auto r = test::rng(salt);
  const sfx::index_t F = B * g;
  INFO("dtype=" << sfx::dtype_traits<T>::name << " gated=" << gated << " biases=" << biases << " d=" << d
                << " B=" << B << " g=" << g);
  const auto dense = test::random_dense<T>(r, d, F, gated, biases);
  const auto perm = test::random_perm(r, F);
  sfx::pack_options po;
  po.g = g;
  po.permutation = perm.data();
  const auto model = sfx::pack<T>(dense.view(), po);
  const auto w = model.view();
  const auto& l = w.layout;

  REQUIRE(l.num_blocks == B);
  REQUIRE(l.ld >= d);
  REQUIRE((l.ld * sizeof(T)) % 64 == 0);
  REQUIRE(l.ld - d < static_cast<sfx::index_t>(2 * 64 / sizeof(T)));
  REQUIRE((l.ld * sizeof(T) / 64) % 2 == 1);
  REQUIRE(reinterpret_cast<std::uintptr_t>(w.weights) % 64 == 0);
  REQUIRE(reinterpret_cast<std::uintptr_t>(w.centroids) % 64 == 0);
  REQUIRE(l.block_stride() == (gated ? 3 : 2) * g * l.ld);
  REQUIRE(w.values(0) - w.keys(0) == (gated ? 2 : 1) * g * l.ld);
  REQUIRE(w.keys(1) - w.keys(0) == l.block_stride());

  for (sfx::index_t b = 0; b < B; ++b)
    for (sfx::index_t i = 0; i < g; ++i) {
      const sfx::index_t src = perm[static_cast<std::size_t>(b * g + i)];
      REQUIRE(w.perm[b * g + i] == src);
      for (sfx::index_t c = 0; c < l.ld; ++c) {
        const float key = sfx::to_float(w.keys(b)[i * l.ld + c]);
        const float val = sfx::to_float(w.values(b)[i * l.ld + c]);
        if (c < d) {
          REQUIRE(key == dense.w1[static_cast<std::size_t>(src * d + c)]);
          REQUIRE(val == dense.w2[static_cast<std::size_t>(c * F + src)]);
          if (gated)
            REQUIRE(sfx::to_float(w.up(b)[i * l.ld + c]) == dense.w3[static_cast<std::size_t>(src * d + c)]);
        } else {  // padding
          REQUIRE(key == 0.0f);
          REQUIRE(val == 0.0f);
          if (gated) REQUIRE(sfx::to_float(w.up(b)[i * l.ld + c]) == 0.0f);
        }
      }
      if (biases) {
        REQUIRE(w.b1[b * g + i] == dense.b1[static_cast<std::size_t>(src)]);
        if (gated) REQUIRE(w.b3[b * g + i] == dense.b3[static_cast<std::size_t>(src)]);
      }
    }
  // Centroids: mean of the block's keys in double, rounded once to T; bias: mean b1.
  for (sfx::index_t b = 0; b < B; ++b) {
    for (sfx::index_t c = 0; c < d; ++c) {
      double m = 0;
      for (sfx::index_t i = 0; i < g; ++i) m += sfx::to_float(w.keys(b)[i * l.ld + c]);
      m /= double(g);
      REQUIRE(sfx::to_float(w.centroid(b)[c]) == sfx::to_float(sfx::from_float<T>(static_cast<float>(m))));
    }
    if (biases) {
      double m = 0;
      for (sfx::index_t i = 0; i < g; ++i) m += w.b1[b * g + i];
      REQUIRE(w.centroid_bias[b] == Approx(m / double(g)).margin(1e-7));
    } else {
      REQUIRE(w.centroid_bias == nullptr);
    }
  }
  // Round trip.
  const auto back = sfx::unpack(w);
  REQUIRE(back.w1 == dense.w1);
  REQUIRE(back.w2 == dense.w2);
  REQUIRE(back.w3 == dense.w3);
  if (biases) {
    REQUIRE(back.b1 == dense.b1);
    REQUIRE(back.b2 == dense.b2);
    REQUIRE(back.b3 == dense.b3);
  }
  // Deep copy.
  sfx::blocked_ffn<T> copy = model;
  REQUIRE(copy.view().weights != w.weights);
  REQUIRE(std::memcmp(copy.view().weights, w.weights,
                      static_cast<std::size_t>(l.total_elements()) * sizeof(T)) == 0);
  copy.weights()[0] = sfx::from_float<T>(123.0f);
  REQUIRE(sfx::to_float(w.weights[0]) != 123.0f);
}

}  // namespace

TEST_CASE("pack: rows, padding, alignment, centroids, round trip", "[layout]") {
  std::uint64_t salt = 0;
  for (bool gated : {false, true})
    for (bool biases : {false, true})
      for (sfx::index_t d : {1, 7, 16, 33, 100}) {
        check_pack<float>(gated, biases, d, 5, 16, ++salt);
        check_pack<sfx::half_t>(gated, biases, d, 3, 8, ++salt);
        check_pack<sfx::bfloat16_t>(gated, biases, d, 9, 1, ++salt);
      }
}

TEST_CASE("pack converts between dtypes (float -> bf16 rounds once)", "[layout]") {
  auto r = test::rng(99);
  const auto dense = test::random_dense<float>(r, 20, 64, false, true);
  const auto model = sfx::pack<sfx::bfloat16_t>(dense.view(), {16});
  const auto w = model.view();
  for (sfx::index_t j = 0; j < 64; ++j)
    for (sfx::index_t c = 0; c < 20; ++c)
      REQUIRE(w.keys(j / 16)[(j % 16) * w.layout.ld + c].bits ==
              sfx::bfloat16_t(dense.w1[static_cast<std::size_t>(j * 20 + c)]).bits);
}

TEST_CASE("identity permutation, gate and centroid setters", "[layout]") {
  auto r = test::rng(5);
  const auto dense = test::random_dense<float>(r, 10, 32, false, false);
  std::vector<float> gw(4 * 10), gb(4);
  test::fill_normal(gw, r, 1.0);
  test::fill_normal(gb, r, 1.0);
  sfx::pack_options po;
  po.g = 8;
  po.gate_w = gw.data();
  po.gate_b = gb.data();
  po.centroids = false;
  auto model = sfx::pack<float>(dense.view(), po);
  REQUIRE_FALSE(model.has_centroids());
  REQUIRE(model.has_gate());
  REQUIRE(model.gate_float() == gw);
  REQUIRE(model.gate_bias() == gb);
  for (sfx::index_t j = 0; j < 32; ++j) REQUIRE(model.view().perm[j] == j);
  model.set_centroids(gw.data(), gb.data());
  REQUIRE(model.centroids_float() == gw);
  REQUIRE(model.centroid_bias() == gb);
  REQUIRE(model.view().centroid_bias == model.centroid_bias().data());
}

TEST_CASE("make_layout pads rows to an odd number of 64-byte lines", "[layout]") {
  REQUIRE(sfx::padded_ld<float>(1) == 16);
  REQUIRE(sfx::padded_ld<float>(16) == 16);
  REQUIRE(sfx::padded_ld<float>(17) == 48);
  REQUIRE(sfx::padded_ld<float>(48) == 48);
  REQUIRE(sfx::padded_ld<sfx::half_t>(17) == 32);
  REQUIRE(sfx::padded_ld<sfx::bfloat16_t>(33) == 96);
  REQUIRE(sfx::padded_ld<float>(4096) == 4112);
  REQUIRE(sfx::padded_ld<sfx::bfloat16_t>(4096) == 4128);
  const auto l = sfx::make_layout<float>(4096, 16384, 64, true);
  REQUIRE(l.num_blocks == 256);
  REQUIRE(l.ld == 4112);
  REQUIRE(l.block_stride() == 3 * 64 * 4112);
  REQUIRE(l.total_elements() == 3ll * 16384 * 4112);
  REQUIRE(l.block_bytes<sfx::bfloat16_t>() == 3 * 64 * 4112 * 2);
}

// detail::aligned_buffer (every packed model's storage): zeroed, 64-byte aligned; from 2 MiB up, 2 MiB
// aligned and (Linux) advised as transparent huge pages — checked in /proc/self/smaps, whose VmFlags line
// of the buffer's mapping says "hg" once madvise(MADV_HUGEPAGE) was called on it. Copies keep both.
namespace {
#if defined(__linux__)
bool advised_huge(const void* p) {
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return false;
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  char line[4096];
  bool inside = false, hg = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      inside = a >= lo && a < hi;
    } else if (inside && std::strncmp(line, "VmFlags:", 8) == 0) {
      hg = std::strstr(line, " hg") != nullptr;
      break;
    }
  }
  std::fclose(f);
  return hg;
}
#endif
}  // namespace

TEST_CASE("aligned_buffer: zeroed and 64-byte aligned; 2 MiB and up: 2 MiB aligned, huge pages advised",
          "[layout]") {
  using sparse_ffn::detail::aligned_buffer;
  using sparse_ffn::detail::k_huge_page_bytes;
  for (const sparse_ffn::index_t n :
       {sparse_ffn::index_t{1}, sparse_ffn::index_t{1000}, sparse_ffn::index_t(k_huge_page_bytes / 4 - 1),
        sparse_ffn::index_t(k_huge_page_bytes / 4), sparse_ffn::index_t(3 * k_huge_page_bytes / 4 + 5)}) {
    aligned_buffer<float> a(n);
    const bool large = static_cast<std::size_t>(n) * 4 >= k_huge_page_bytes;
    const std::size_t want = large && sparse_ffn::detail::huge_pages_wanted() ? k_huge_page_bytes : 64;
    INFO("n " << n);
    CHECK(a.alignment() == want);
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % want == 0);
    CHECK(std::all_of(a.data(), a.data() + n, [](float v) { return v == 0.0f; }));
    a[n - 1] = 3.0f;
    const aligned_buffer<float> b(a);
    CHECK(b.alignment() == want);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % want == 0);
    CHECK(b[n - 1] == 3.0f);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (want == k_huge_page_bytes) {
      CHECK(advised_huge(a.data()));
      CHECK(advised_huge(b.data()));
    }
#endif
  }
}
