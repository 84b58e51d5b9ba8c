// The CPU fast path's guarantees beyond correctness (which the forward matrix checks): identical bits
// for any thread count and across runs, a token's output independent of the rest of the batch, no
// allocation with a reused workspace, and agreement with the reference path.
#include "support/forward_matrix.hpp"

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif

namespace {

template <class P>
struct setup {
  using T = typename P::dtype;
  sfx::index_t d, B, n, k;
  sfx::blocked_ffn<T> model;
  std::vector<float> x;
  std::vector<sfx::token_id_t> ids;
  sfx::route_args args;

  /// tiles (q8/q4, g a multiple of 32): keys and values as key / value tiles (the layout the benchmarks
  /// and the converter's users run, with the tile kernels).
  setup(std::uint64_t salt, sfx::index_t d_, sfx::index_t B_, sfx::index_t n_, sfx::index_t k_,
        bool tiles = false)
      : d(d_), B(B_), n(n_), k(k_) {
    auto r = test::rng(salt);
    const auto dense = test::random_dense<T>(r, d, B * P::block_size, P::gated, true);
    std::vector<float> gw(static_cast<std::size_t>(B * d));
    test::fill_normal(gw, r, 1.0 / std::sqrt(double(d)));
    sfx::pack_options po{P::block_size};
    po.gate_w = gw.data();
    model = sfx::pack<T>(dense.view(), po);
    if constexpr (sfx::is_quantized<T>::value && P::block_size % 32 == 0)
      if (tiles) {
        model.tile_keys();
        model.tile_values();
      }
    x.resize(static_cast<std::size_t>(n * d));
    test::fill_normal(x, r, 1.0);
    ids.resize(static_cast<std::size_t>(n));
    for (auto& id : ids) id = static_cast<sfx::token_id_t>(r() % 5000);
    args.k = k;
    args.token_ids = ids.data();
    args.vocab_size = 5000;
  }
  std::vector<float> run(sfx::index_t first, sfx::index_t count, sfx::cpu::workspace* ws = nullptr) const {
    std::vector<float> y(static_cast<std::size_t>(count * d));
    sfx::route_args a = args;
    a.token_ids = ids.data() + first;
    sfx::cpu::forward<P>(model.view(), count, x.data() + first * d, y.data(), a, nullptr, ws);
    return y;
  }
};

/// tiles: key and value tiles, and a batch whose blocks have 8-40 tokens each (amx: the AMX q8/q4 value
/// kernel, over column ranges of both partials; kernels.hpp make_amx_ops).
template <class P>
void check_thread_invariance(std::uint64_t salt, sfx::index_t d = 200, bool tiles = false) {
  setup<P> s(salt, d, tiles ? 8 : 24, tiles ? 48 : 37, tiles ? 4 : 6, tiles);
#if SPARSE_FFN_HAS_OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto y1 = s.run(0, s.n);
  omp_set_num_threads(2);
  const auto y2 = s.run(0, s.n);
  omp_set_num_threads(3);
  const auto y3 = s.run(0, s.n);
  // 4 and 6 threads: the value pass's items are (partial, column range), threads / 2 ranges each.
  omp_set_num_threads(4);
  const auto y4 = s.run(0, s.n);
  omp_set_num_threads(6);
  const auto y6 = s.run(0, s.n);
  omp_set_num_threads(saved);
  REQUIRE(std::memcmp(y1.data(), y2.data(), y1.size() * 4) == 0);
  REQUIRE(std::memcmp(y1.data(), y3.data(), y1.size() * 4) == 0);
  REQUIRE(std::memcmp(y1.data(), y4.data(), y1.size() * 4) == 0);
  REQUIRE(std::memcmp(y1.data(), y6.data(), y1.size() * 4) == 0);
#endif
  const auto ya = s.run(0, s.n), yb = s.run(0, s.n);
  REQUIRE(std::memcmp(ya.data(), yb.data(), ya.size() * 4) == 0);
}

template <class P>
void check_batch_invariance(std::uint64_t salt, bool tiles = false) {
  setup<P> s(salt, 130, tiles ? 8 : 16, tiles ? 48 : 40, tiles ? 4 : 5, tiles);
  const auto all = s.run(0, s.n);
  // The amx level runs the AMX passes for groups of >= amx_min_tokens tokens (q8/q4 value tiles:
  // amx_value_min_tokens) and the AVX-512 ones for smaller groups (kernels.hpp make_amx_ops): there a
  // token's bits depend on how many tokens share its blocks, so its output alone must only agree to the
  // bf16 rounding of the AMX coefficients (and values) (a dropped or doubled block is far outside 2^-6 of
  // the token's largest output).
  const auto& ops = sfx::cpu::kernels::ops_for<typename P::dtype>(sfx::cpu::active_isa());
  const bool amx = ops.apply_amx != nullptr || (tiles && ops.apply_tiles_amx != nullptr);
  const auto same = [&](const std::vector<float>& got, sfx::index_t t0, sfx::index_t count) {
    for (sfx::index_t t = t0; t < t0 + count; ++t) {
      double peak = 0;
      for (sfx::index_t c = 0; c < s.d; ++c)
        peak = std::max(peak, std::fabs(double(all[std::size_t(t * s.d + c)])));
      for (sfx::index_t c = 0; c < s.d; ++c) {
        const float a = got[std::size_t((t - t0) * s.d + c)], b = all[std::size_t(t * s.d + c)];
        INFO("token " << t << " column " << c << " alone or in part " << a << " in the batch " << b);
        if (amx)
          REQUIRE(std::fabs(double(a) - double(b)) <= std::ldexp(peak, -6));
        else
          REQUIRE(a == b);
      }
    }
  };
  for (sfx::index_t t : {sfx::index_t{0}, sfx::index_t{17}, s.n - 1}) same(s.run(t, 1), t, 1);
  same(s.run(5, 11), 5, 11);
}

}  // namespace

TEST_CASE("fast path: identical bits for any thread count and across runs", "[fast]") {
  check_thread_invariance<sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>>(1);
  check_thread_invariance<sfx::policy<64, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::swiglu>>(2);
  check_thread_invariance<sfx::policy<16, sfx::select::oracle, sfx::half_t, sfx::act::gelu_erf>>(3);
  check_thread_invariance<sfx::policy<1, sfx::select::hash, float, sfx::act::silu>>(4);
  check_thread_invariance<sfx::policy<32, sfx::select::avg_k, sfx::q8_t, sfx::act::relu>>(8);
  check_thread_invariance<sfx::policy<16, sfx::select::learned_gate, sfx::q4_t, sfx::act::swiglu>>(9);
  // g = 64: two chunks of 32 rows per block in the integer value pass, eight-row passes in the pair pass.
  check_thread_invariance<sfx::policy<64, sfx::select::avg_k, sfx::q4_t, sfx::act::relu>>(15);
  // Longer rows, so that 4 and 6 threads split the value pass at several column boundaries (q4 on the
  // VNNI levels, 1024 columns in steps of 128: [0, 512) [512, 1024) and [0, 256) [256, 640) [640, 1024)).
  check_thread_invariance<sfx::policy<64, sfx::select::avg_k, sfx::q4_t, sfx::act::relu>>(16, 1000);
  check_thread_invariance<sfx::policy<32, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::silu>>(17, 1000);
  check_thread_invariance<sfx::policy<16, sfx::select::avg_k, sfx::q8_t, sfx::act::relu>>(18, 1000);
  // Key and value tiles, 8-40 tokens per block: on amx the AMX value kernel (items of both partials).
  check_thread_invariance<sfx::policy<64, sfx::select::avg_k, sfx::q8_t, sfx::act::relu>>(19, 1000, true);
  check_thread_invariance<sfx::policy<32, sfx::select::avg_k, sfx::q4_t, sfx::act::silu>>(20, 200, true);
}

TEST_CASE("fast path: a token's output does not depend on the rest of the batch", "[fast]") {
  check_batch_invariance<sfx::policy<16, sfx::select::avg_k, float, sfx::act::gelu_tanh>>(5);
  check_batch_invariance<sfx::policy<32, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::geglu>>(6);
  check_batch_invariance<sfx::policy<16, sfx::select::oracle, float, sfx::act::relu>>(7);
  // Quantised weights: x's int8 copy (avx2, VNNI levels) is per token, the value coefficients per (token,
  // row) (avx2: their integer steps per token, chunk of 32 rows and group of 32 columns).
  check_batch_invariance<sfx::policy<16, sfx::select::avg_k, sfx::q8_t, sfx::act::relu>>(10);
  check_batch_invariance<sfx::policy<32, sfx::select::hash, sfx::q4_t, sfx::act::silu>>(11);
  // g = 64 (the benchmarks' block): a token alone and in a group walk different lists of active rows
  // (ReLU), so the pair pass (avx512_bf16) pairs different rows and the integer pass (VNNI levels, avx2
  // q4) sums different rows per chunk of 32 — the bits must not change.
  check_batch_invariance<sfx::policy<64, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::relu>>(12);
  check_batch_invariance<sfx::policy<64, sfx::select::avg_k, sfx::q4_t, sfx::act::relu>>(13);
  check_batch_invariance<sfx::policy<64, sfx::select::learned_gate, sfx::q8_t, sfx::act::swiglu>>(14);
  check_batch_invariance<sfx::policy<64, sfx::select::avg_k, sfx::q8_t, sfx::act::relu>>(22, true);
  check_batch_invariance<sfx::policy<32, sfx::select::avg_k, sfx::q4_t, sfx::act::silu>>(23, true);
}

TEST_CASE("group_by_block: pairs by block, tokens ascending, each block's partial 0 first", "[fast]") {
  auto r = test::rng(21);
  for (int trial = 0; trial < 50; ++trial) {
    const sfx::index_t n = 1 + static_cast<sfx::index_t>(r() % 9), k = 1 + static_cast<sfx::index_t>(r() % 7),
                       B = 1 + static_cast<sfx::index_t>(r() % 12);
    std::vector<sfx::block_index_t> blocks(static_cast<std::size_t>(n * k));
    std::vector<std::uint8_t> part(blocks.size());
    for (std::size_t e = 0; e < blocks.size(); ++e) {
      blocks[e] = static_cast<sfx::block_index_t>(r() % static_cast<std::uint64_t>(B));
      part[e] = static_cast<std::uint8_t>(r() % 2);
    }
    for (const bool with_part : {false, true}) {
      std::vector<sfx::index_t> offsets(static_cast<std::size_t>(B + 1), -1),
          cursor(static_cast<std::size_t>(B), -1);
      std::vector<std::int32_t> entries(2 * blocks.size(), -1);
      sfx::cpu::detail::group_by_block(blocks.data(), n, k, B, offsets.data(), cursor.data(), entries.data(),
                                       with_part ? part.data() : nullptr);
      // The expected order: for each block, (part 0 pairs, then part 1 pairs if with_part), (t, j) ascending.
      std::size_t pos = 0;
      for (sfx::index_t b = 0; b < B; ++b) {
        REQUIRE(offsets[static_cast<std::size_t>(b)] == static_cast<sfx::index_t>(pos));
        for (int p = 0; p < (with_part ? 2 : 1); ++p) {
          if (with_part && p == 1)
            REQUIRE(cursor[static_cast<std::size_t>(b)] == static_cast<sfx::index_t>(pos));
          for (sfx::index_t e = 0; e < n * k; ++e)
            if (blocks[static_cast<std::size_t>(e)] == b &&
                (!with_part || part[static_cast<std::size_t>(e)] == p)) {
              REQUIRE(entries[2 * pos] == e / k);
              REQUIRE(entries[2 * pos + 1] == e % k);
              ++pos;
            }
        }
      }
      REQUIRE(offsets[static_cast<std::size_t>(B)] == n * k);
      REQUIRE(pos == static_cast<std::size_t>(n * k));
    }
  }
}

TEST_CASE("fast path: a reused workspace stops growing", "[fast]") {
  using P = sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>;
  setup<P> s(8, 64, 8, 20, 3);
  sfx::cpu::workspace ws;
  const auto y1 = s.run(0, s.n, &ws);
  const std::size_t cap = ws.capacity();
  REQUIRE(cap > 0);
  const unsigned char* base = ws.data();
  const auto y2 = s.run(0, s.n, &ws);
  const auto y3 = s.run(0, 7, &ws);
  REQUIRE(ws.capacity() == cap);
  REQUIRE(ws.data() == base);
  REQUIRE(y1 == y2);
}

// The reference path (reference.hpp) stays under test: a reduced matrix through its entry points.
template <class P, class Tio>
void check_reference(std::uint64_t salt) {
  auto r = test::rng(salt);
  for (sfx::index_t n : {1, 5}) {
    test::case_data<typename P::dtype, Tio> c(r, test::random_shape(r, n, P::block_size), P::block_size,
                                              P::selector::kind, P::activation::kind);
    const auto w = c.model.view();
    sfx::cpu::reference_forward<P>(w, c.s.n, c.x.data(), c.y.data(), c.args, &c.cache);
    sfx::cpu::reference_route<P>(w, c.s.n, c.x.data(), c.args, c.route_out());
    sfx::cpu::reference_forward_routed<P>(w, c.s.n, c.x.data(), c.y_routed.data(), c.cached_routing());
    c.verify();
  }
}

TEST_CASE("reference path: every selector and activation against float64", "[reference]") {
  std::uint64_t salt = 100;
  check_reference<sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>, float>(++salt);
  check_reference<sfx::policy<16, sfx::select::hash, sfx::half_t, sfx::act::gelu_erf>, sfx::half_t>(++salt);
  check_reference<sfx::policy<16, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::swiglu>, float>(
      ++salt);
  check_reference<sfx::policy<1, sfx::select::oracle, float, sfx::act::geglu>, float>(++salt);
  check_reference<sfx::policy<64, sfx::select::oracle, sfx::bfloat16_t, sfx::act::silu>, sfx::bfloat16_t>(
      ++salt);
  check_reference<sfx::policy<128, sfx::select::avg_k, sfx::half_t, sfx::act::gelu_tanh>, float>(++salt);
}

TEST_CASE("fast path equals the reference up to float rounding on larger shapes", "[fast]") {
  using P = sfx::policy<64, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::swiglu>;
  setup<P> s(9, 512, 32, 9, 8);
  const auto nk = static_cast<std::size_t>(s.n * s.k);
  std::vector<sfx::block_index_t> blocks(nk), rblocks(nk);
  std::vector<float> weights(nk), rweights(nk);
  sfx::forward_cache cache;
  cache.blocks = blocks.data();
  cache.weights = weights.data();
  std::vector<float> y(static_cast<std::size_t>(s.n * s.d));
  sfx::cpu::forward<P>(s.model.view(), s.n, s.x.data(), y.data(), s.args, &cache);
  // The arithmetic, on the blocks the fast path chose: on avx512_bf16 it rounds x to bf16 (the
  // reference does not), a relative error of about 2^-9 (the forward matrix checks it element-wise).
  std::vector<float> yr(y.size());
  sfx::cpu::reference_forward_routed<P>(s.model.view(), s.n, s.x.data(), yr.data(),
                                        sfx::const_routing_view{s.n, s.k, blocks.data(), weights.data()});
  double e = 0, nrm = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    e += (y[i] - yr[i]) * double(y[i] - yr[i]);
    nrm += double(yr[i]) * yr[i];
  }
  REQUIRE(std::sqrt(e / nrm) < 1e-5 + 2 * test::activation_rounding<sfx::bfloat16_t>());
  // The choice: the reference's own top-k. With x kept in f32 it is the same; with x rounded to bf16
  // a near-tie may flip (the forward matrix bounds each flip by the rounding's score margin), so
  // here most choices must still agree. (CI once saw a single flip give a 0.125 output error.)
  sfx::cpu::reference_route<P>(s.model.view(), s.n, s.x.data(), s.args,
                               sfx::routing_view{s.n, s.k, rblocks.data(), rweights.data()});
  std::size_t same = 0;
  for (sfx::index_t t = 0; t < s.n; ++t)
    for (sfx::index_t j = 0; j < s.k; ++j)
      for (sfx::index_t i = 0; i < s.k; ++i)
        same +=
            blocks[static_cast<std::size_t>(t * s.k + j)] == rblocks[static_cast<std::size_t>(t * s.k + i)];
  INFO("kernels " << sfx::cpu::isa_name(sfx::cpu::active_isa()) << ", same choices " << same << " of " << nk);
  if (sfx::cpu::rounds_inputs_to_bf16<P::dtype>())
    REQUIRE(same * 10 >= nk * 9);
  else
    REQUIRE(same == nk);
}

namespace {

/// Rows longer than the kernels' column spans (the forward matrix's d is at most 150): d = 8200, so the
/// value passes' coefficient spans (q8/q4 on VNNI: 4096 columns for one token, 2048 for more; the float
/// q8/q4 path 1024; q4 on AVX2 512) run two or more times per row and end on a partial span, and the key
/// passes walk long rows; at batch 1 (each thread streams whole rows) and batch 5 (the columns split
/// between threads). Checked against the float64 reference like the forward matrix.
template <class T, class Act>
void check_wide_rows(std::uint64_t salt) {
  auto r = test::rng(salt);
  for (sfx::index_t n : {1, 5}) {
    test::case_shape s{};
    s.n = n;
    s.d = 8200;
    s.num_blocks = 3;
    s.k = 2;
    s.biases = true;
    s.pinned = 0;
    test::case_data<T, float> c(r, s, 64, sfx::selector_kind::avg_k, Act::kind);
    test::run_case<sfx::policy<64, sfx::select::avg_k, T, Act>, float>(c);
    c.verify();
  }
}

}  // namespace

TEST_CASE("fast path on rows longer than the kernels' column spans", "[fast]") {
  check_wide_rows<float, sfx::act::silu>(71);
  check_wide_rows<sfx::bfloat16_t, sfx::act::silu>(72);
  check_wide_rows<sfx::q8_t, sfx::act::relu>(73);
  check_wide_rows<sfx::q8_t, sfx::act::silu>(74);
  check_wide_rows<sfx::q4_t, sfx::act::relu>(75);
  check_wide_rows<sfx::q4_t, sfx::act::silu>(76);
}
