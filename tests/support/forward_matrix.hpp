// The forward test matrix: one policy × one I/O dtype on fresh random shapes (odd d, random k, random
// permutation, with/without biases) for n in {1, 3, 64}, compared with the float64 reference.
// Each test_forward_<selector>.cpp instantiates it for every dtype × g × activation.
//
// Compile time: only `run_case` depends on the policy; building the inputs and all checks depend on
// (T, Tio) alone and take the selector and activation as runtime values.
#pragma once

#include "test_support.hpp"

namespace test {

struct case_shape {
  sfx::index_t n, d, num_blocks, k;
  bool biases;
  sfx::index_t pinned;  ///< blocks every token computes (layout.hpp), <= k
};

inline case_shape random_shape(std::mt19937_64& r, sfx::index_t n, int G) {
  std::uniform_int_distribution<sfx::index_t> dd(1, 150);
  std::uniform_int_distribution<sfx::index_t> bb(G == 1 ? 8 : 2, G == 1 ? 96 : (G >= 64 ? 6 : 12));
  case_shape s{};
  s.n = n;
  s.d = dd(r);
  s.num_blocks = bb(r);
  s.k = std::uniform_int_distribution<sfx::index_t>(1, s.num_blocks)(r);
  s.biases = (r() & 1) != 0;
  // Half the cases pin 1..k blocks (k == pinned included: nothing left to route).
  s.pinned = (r() & 1) != 0 ? std::uniform_int_distribution<sfx::index_t>(1, s.k)(r) : 0;
  return s;
}

/// Inputs and (poisoned) outputs of one random case.
template <class T, class Tio>
struct case_data {
  sfx::index_t g;
  case_shape s;
  sfx::activation_kind act;
  sfx::selector_kind sel;
  sfx::blocked_ffn<T> model;
  std::vector<Tio> x;
  std::vector<sfx::token_id_t> ids;
  sfx::route_args args;
  guarded_output<Tio> y, y_routed;
  std::vector<sfx::block_index_t> cblocks, rblocks;
  std::vector<float> cweights, rweights, cpre, cup;
  sfx::forward_cache cache;
  /// What the kernels under test round (tolerances in verify): by default the active CPU kernels'
  /// choice for T; the GPU tests set their own (x rounded to bf16 beforehand on the tensor-core path,
  /// value coefficients rounded there).
  bool x_to_bf16 = sfx::cpu::rounds_inputs_to_bf16<T>();
  bool x_to_int8 = sfx::cpu::quantizes_inputs_to_int8<T>();
  bool h_to_bf16 = sfx::cpu::rounds_inputs_to_bf16<T>();
  std::int32_t h_levels = sfx::cpu::value_coefficient_levels<T>();  ///< integer value coefficients (0: float)
  /// Some blocks' value weights and coefficients rounded to bf16 (amx: q8/q4 value tiles on the AMX
  /// value kernel for blocks of enough tokens), the others per h_levels.
  bool v_to_bf16 = false;

  case_data(std::mt19937_64& r, const case_shape& s_, sfx::index_t g_, sfx::selector_kind sel_,
            sfx::activation_kind act_)
      : g(g_),
        s(s_),
        act(act_),
        sel(sel_),
        y(static_cast<std::size_t>(s_.n * s_.d)),
        y_routed(static_cast<std::size_t>(s_.n * s_.d)) {
    const sfx::index_t n = s.n, d = s.d, B = s.num_blocks, F = B * g, k = s.k;
    const bool gated = sfx::activation_is_gated(act);
    const auto dense = random_dense<T>(r, d, F, gated, s.biases);
    const auto perm = random_perm(r, F);
    std::vector<float> gate_w(static_cast<std::size_t>(B * d)), gate_b(static_cast<std::size_t>(B));
    fill_normal(gate_w, r, 1.0 / std::sqrt(double(d)));
    fill_normal(gate_b, r, 0.5);
    sfx::pack_options po;
    po.g = g;
    po.permutation = perm.data();
    po.gate_w = gate_w.data();
    po.gate_b = gate_b.data();
    po.pinned = s.pinned;
    model = sfx::pack<T>(dense.view(), po);
    REQUIRE(model.layout().pinned == s.pinned);

    x.resize(static_cast<std::size_t>(n * d));
    fill_normal(x, r, 1.0);
    const sfx::index_t vocab = 1000;
    ids.resize(static_cast<std::size_t>(n));
    for (auto& id : ids) id = static_cast<sfx::token_id_t>(r() % vocab);
    args.k = k;
    args.token_ids = ids.data();
    args.vocab_size = vocab;
    args.seed = r();
    args.renormalize = (r() & 1) != 0;

    const auto nk = static_cast<std::size_t>(n * k);
    cblocks.resize(nk);
    rblocks.resize(nk);
    cweights.resize(nk);
    rweights.resize(nk);
    cpre.resize(nk * static_cast<std::size_t>(g));
    cup.resize(nk * static_cast<std::size_t>(g));
    poison(cblocks);
    poison(rblocks);
    poison(cweights);
    poison(rweights);
    poison(cpre);
    poison(cup);
    cache = {cblocks.data(), cweights.data(), cpre.data(), gated ? cup.data() : nullptr};
  }

  sfx::routing_view route_out() { return {s.n, s.k, rblocks.data(), rweights.data()}; }
  sfx::const_routing_view cached_routing() const { return {s.n, s.k, cblocks.data(), cweights.data()}; }

  /// Everything the kernels produced, checked against the float64 reference.
  void verify() {
    const sfx::index_t n = s.n, d = s.d, k = s.k;
    const auto w = model.view();
    INFO("g=" << g << " selector=" << sfx::selector_name(sel) << " dtype=" << sfx::dtype_traits<T>::name
              << " act=" << sfx::activation_name(act) << " io=" << sfx::dtype_traits<Tio>::name
              << " | n=" << n << " d=" << d << " B=" << s.num_blocks << " k=" << k << " biases=" << s.biases
              << " pinned=" << s.pinned);
    REQUIRE(y.all_written());
    REQUIRE(y.guard_intact());
    const bool gated = sfx::activation_is_gated(act);
    // Rounding of x in the key pass (bf16 or int8; tolerances below, x_rounding): xr bounds it per
    // element; rounding of the value coefficients w·h to bf16: h_round, relative.
    const bool rounds_x = x_to_bf16 || x_to_int8;
    const double act_round = rounds_x || h_to_bf16 || h_levels > 0 || v_to_bf16 ? 1.0 : 0.0;
    // bf16's 2^-9, with margin; twice where the values are rounded too.
    const double h_round = v_to_bf16 ? std::ldexp(1.0, -7) : h_to_bf16 ? std::ldexp(1.0, -8) : 0.0;
    INFO("kernels " << sfx::cpu::isa_name(sfx::cpu::active_isa()) << ", x rounded to bf16 " << x_to_bf16
                    << ", to int8 " << x_to_int8 << ", coefficients to bf16 " << h_to_bf16
                    << ", value coefficients to integers of " << h_levels
                    << ", values and coefficients to bf16 " << v_to_bf16);
    for (sfx::index_t t = 0; t < n; ++t) {
      INFO("token " << t);
      const Tio* xt = x.data() + t * d;
      const std::vector<double> xr = x_rounding<T>(xt, d, x_to_bf16, x_to_int8);
      const sfx::block_index_t* bt = cblocks.data() + t * k;
      const float* wt = cweights.data() + t * k;
      // Routing: distinct, in range, top-k of the reference scores (hash: its permutation property is
      // checked in test_selectors.cpp; here distinctness and range).
      auto sc = scores_ref(w, sel, act, xt);
      double scale = 1.0;
      for (double v : sc) scale = std::max(scale, std::fabs(v));
      if (sel == sfx::selector_kind::hash) std::fill(sc.begin(), sc.end(), 0.0);
      // Pinned blocks come first, in index order; the others are the top-(k - P) of blocks [P, B).
      const sfx::index_t P = s.pinned;
      for (sfx::index_t j = 0; j < k; ++j) REQUIRE((j < P ? bt[j] == j : bt[j] >= P));
      std::vector<double> routed_sc = sc;
      for (sfx::index_t b = 0; b < P; ++b) sc[static_cast<std::size_t>(b)] = 1e300;
      // Rounding x to bf16 moves a score by a random walk of its terms' roundings (4 deviations of
      // margin over the largest per-block root-sum-square).
      const double score_round = rounds_x ? 4 * max_score_mag2(w, sel, act, xt, xr.data()) : 0.0;
      const std::string bad = check_topk(sc, bt, k, 1e-4 * scale + score_round);
      REQUIRE(bad == "");
      if (sel == sfx::selector_kind::learned_gate) {
        // Pinned blocks weigh 1; the softmax runs over blocks [P, B).
        for (sfx::index_t j = 0; j < P; ++j) REQUIRE(wt[j] == 1.0f);
        const auto& lg = routed_sc;
        double mx = -1e300, all = 0, top = 0;
        for (sfx::index_t b = P; b < s.num_blocks; ++b) mx = std::max(mx, lg[static_cast<std::size_t>(b)]);
        for (sfx::index_t b = P; b < s.num_blocks; ++b) all += std::exp(lg[static_cast<std::size_t>(b)] - mx);
        for (sfx::index_t j = P; j < k; ++j) top += std::exp(lg[static_cast<std::size_t>(bt[j])] - mx);
        for (sfx::index_t j = P; j < k; ++j) {
          const double p =
              std::exp(lg[static_cast<std::size_t>(bt[j])] - mx) / (args.renormalize ? top : all);
          // Rounding x to bf16 moves every score by <= score_round: p_j by <= 2 p_j score_round.
          REQUIRE(std::fabs(wt[j] - p) <= 1e-5 * (1 + p) + 2 * p * score_round);
        }
      } else {
        for (sfx::index_t j = 0; j < k; ++j) REQUIRE(wt[j] == 1.0f);
      }
      // Saved pre-activations.
      for (sfx::index_t j = 0; j < k; ++j)
        for (sfx::index_t i = 0; i < g; ++i) {
          double a, u;
          neuron_ref(w, xt, bt[j], i, a, u);
          const auto at = static_cast<std::size_t>((t * k + j) * g + i);
          double a2 = 0, u2 = 0;
          neuron_mag2(w, xr.data(), bt[j], i, a2, u2);
          REQUIRE(std::fabs(cpre[at] - a) <=
                  1e-5 * (1 + std::fabs(a)) * std::sqrt(double(d)) + 5 * act_round * a2);
          if (gated)
            REQUIRE(std::fabs(cup[at] - u) <=
                    1e-5 * (1 + std::fabs(u)) * std::sqrt(double(d)) + 5 * act_round * u2);
        }
      // Output.
      const auto ref = forward_ref(w, act, xt, bt, wt, k, xr.data(), h_round, h_levels);
      double err = 0;
      const bool ok = close_to(y.data() + t * d, ref, &err, act_round);
      INFO("||y - ref|| / ||mag|| = " << err << ", rel L2 " << rel_l2(y.data() + t * d, ref.y));
      REQUIRE(ok);
    }
    // route() gave the same table; forward_routed() with it gave the same bits.
    REQUIRE(rblocks == cblocks);
    REQUIRE(std::memcmp(rweights.data(), cweights.data(), rweights.size() * sizeof(float)) == 0);
    REQUIRE(y_routed.guard_intact());
    REQUIRE(std::memcmp(y_routed.data(), y.data(), static_cast<std::size_t>(n * d) * sizeof(Tio)) == 0);
  }
};

/// q8/q4: the three CPU entry points on a copy of the model with its keys as key tiles
/// (blocked_ffn::tile_keys) and/or its values as value tiles (tile_values) give the bits they gave on
/// the rows (run_case's outputs in c): outputs, routing, cache. At the levels with kernel_ops::dots_tiles
/// and apply_tiles those are the tile kernels; at the others the forward's unpacking of the tiles.
/// Except the outputs of value tiles on amx (kernel_ops::apply_tiles_amx: blocks of enough tokens
/// dequantised to bf16, not apply_tiles's bits): those are checked against the float64 reference with
/// that rounding (verify, v_to_bf16), and forward_routed against forward bit for bit.
template <class P, class Tio>
void check_tiles(case_data<typename P::dtype, Tio>& c, bool keys, bool values) {
  auto tiled = c.model;
  if (keys) tiled.tile_keys();
  if (values) tiled.tile_values();
  REQUIRE(tiled.layout().key_tiles == keys);
  REQUIRE(tiled.layout().value_tiles == values);
  const auto w = tiled.view();
  const sfx::index_t n = c.s.n, d = c.s.d, k = c.s.k, g = c.g;
  const auto nk = static_cast<std::size_t>(n * k), nd = static_cast<std::size_t>(n * d);
  std::vector<Tio> y(nd), y_routed(nd);
  std::vector<sfx::block_index_t> cblocks(nk), rblocks(nk);
  std::vector<float> cweights(nk), rweights(nk), cpre(nk * static_cast<std::size_t>(g)), cup(cpre.size());
  poison(y);
  poison(y_routed);
  poison(cblocks);
  poison(rblocks);
  poison(cweights);
  poison(rweights);
  poison(cpre);
  poison(cup);
  const bool gated = c.cache.up != nullptr;
  const sfx::forward_cache cache{cblocks.data(), cweights.data(), cpre.data(), gated ? cup.data() : nullptr};
  sfx::cpu::forward<P>(w, n, c.x.data(), y.data(), c.args, &cache);
  sfx::cpu::route<P>(w, n, c.x.data(), c.args, sfx::routing_view{n, k, rblocks.data(), rweights.data()});
  sfx::cpu::forward_routed<P>(w, n, c.x.data(), y_routed.data(), c.cached_routing());
  INFO("key tiles " << keys << ", value tiles " << values << ", isa "
                    << sfx::cpu::isa_name(sfx::cpu::active_isa()) << ", key tile kernel "
                    << sfx::cpu::key_tile_kernel<typename P::dtype>() << ", value tile kernel "
                    << sfx::cpu::value_tile_kernel<typename P::dtype>());
  const bool amx_values =
      values && sfx::cpu::kernels::ops_for<typename P::dtype>(sfx::cpu::active_isa()).apply_tiles_amx;
  if (amx_values) {
    REQUIRE(std::memcmp(y_routed.data(), y.data(), nd * sizeof(Tio)) == 0);
    const std::vector<Tio> rows_y(c.y.data(), c.y.data() + nd),
        rows_routed(c.y_routed.data(), c.y_routed.data() + nd);
    std::copy(y.begin(), y.end(), c.y.data());
    std::copy(y_routed.begin(), y_routed.end(), c.y_routed.data());
    c.v_to_bf16 = true;
    c.verify();
    c.v_to_bf16 = false;
    std::copy(rows_y.begin(), rows_y.end(), c.y.data());
    std::copy(rows_routed.begin(), rows_routed.end(), c.y_routed.data());
  } else {
    REQUIRE(std::memcmp(y.data(), c.y.data(), nd * sizeof(Tio)) == 0);
    REQUIRE(std::memcmp(y_routed.data(), c.y_routed.data(), nd * sizeof(Tio)) == 0);
  }
  REQUIRE(cblocks == c.cblocks);
  REQUIRE(rblocks == c.rblocks);
  REQUIRE(std::memcmp(cweights.data(), c.cweights.data(), nk * sizeof(float)) == 0);
  REQUIRE(std::memcmp(rweights.data(), c.rweights.data(), nk * sizeof(float)) == 0);
  REQUIRE(std::memcmp(cpre.data(), c.cpre.data(), cpre.size() * sizeof(float)) == 0);
  if (gated) REQUIRE(std::memcmp(cup.data(), c.cup.data(), cup.size() * sizeof(float)) == 0);
}

/// The policy-dependent part: run the three CPU entry points (q8/q4: also on key tiles, value tiles and
/// both, where g allows them).
template <class P, class Tio>
void run_case(case_data<typename P::dtype, Tio>& c) {
  const auto w = c.model.view();
  sfx::cpu::forward<P>(w, c.s.n, c.x.data(), c.y.data(), c.args, &c.cache);
  sfx::cpu::route<P>(w, c.s.n, c.x.data(), c.args, c.route_out());
  sfx::cpu::forward_routed<P>(w, c.s.n, c.x.data(), c.y_routed.data(), c.cached_routing());
  if constexpr (sfx::is_quantized<typename P::dtype>::value && P::block_size % 16 == 0) {
    check_tiles<P>(c, true, false);
    if constexpr (P::block_size % 32 == 0) {
      check_tiles<P>(c, false, true);
      check_tiles<P>(c, true, true);
    }
  }
}

template <class P, class Tio>
void check_policy_cpu(std::uint64_t salt) {
  auto r = rng(salt);
  for (sfx::index_t n : {1, 3, 64}) {
    case_data<typename P::dtype, Tio> c(r, random_shape(r, n, P::block_size), P::block_size,
                                        P::selector::kind, P::activation::kind);
    run_case<P, Tio>(c);
    c.verify();
  }
}

/// I/O in float and in T (for q8/q4 weights: bfloat16, the I/O of a quantised model in practice).
template <class Selector, int G, class T, class... Acts>
void check_acts(std::uint64_t& salt) {
  using Tio = std::conditional_t<sfx::is_quantized<T>::value, sfx::bfloat16_t, T>;
  ((check_policy_cpu<sfx::policy<G, Selector, T, Acts>, float>(++salt),
    check_policy_cpu<sfx::policy<G, Selector, T, Acts>, Tio>(++salt)),
   ...);
}

// Under AddressSanitizer (SPARSE_FFN_TEST_MEMORY_MATRIX, set by the sanitizer build) the matrix keeps
// one activation per memory-access pattern of the kernels: relu (value rows of inactive neurons are
// skipped), silu (every row streamed) and swiglu (gated: a third matrix per block). gelu_erf,
// gelu_tanh and geglu differ from silu / swiglu only in the pure scalar function applied to a value
// already in a register, which the Release build checks against the float64 reference. This halves
// the sanitizer build's compile and run time without dropping a memory-access path.
template <class Selector, int G, class... Ts>
void check_dtypes(std::uint64_t& salt) {
#if defined(SPARSE_FFN_TEST_MEMORY_MATRIX)
  (check_acts<Selector, G, Ts, sfx::act::relu, sfx::act::silu, sfx::act::swiglu>(salt), ...);
#else
  (check_acts<Selector, G, Ts, sfx::act::relu, sfx::act::gelu_erf, sfx::act::gelu_tanh, sfx::act::silu,
              sfx::act::swiglu, sfx::act::geglu>(salt),
   ...);
#endif
}

/// The quantised weight dtypes: Selector × {q8,q4} × {16,64} × relu (inactive rows skipped), silu,
/// gelu_tanh and swiglu (the memory-access patterns and a second scalar function). The kernels are the
/// float ones after an exact dequantisation (quant.hpp), compared with the float64 reference of the
/// dequantised weights at the float tolerance; test_quant checks the quantisation itself.
template <class Selector>
void check_selector_matrix_quant() {
  std::uint64_t salt = 1000;
#if defined(SPARSE_FFN_TEST_MEMORY_MATRIX)  // see check_dtypes
  check_acts<Selector, 16, sfx::q8_t, sfx::act::relu, sfx::act::swiglu>(salt);
  check_acts<Selector, 64, sfx::q4_t, sfx::act::relu, sfx::act::silu, sfx::act::swiglu>(salt);
#else
  check_acts<Selector, 16, sfx::q8_t, sfx::act::relu, sfx::act::silu, sfx::act::gelu_tanh, sfx::act::swiglu>(
      salt);
  check_acts<Selector, 16, sfx::q4_t, sfx::act::relu, sfx::act::silu, sfx::act::gelu_tanh, sfx::act::swiglu>(
      salt);
  check_acts<Selector, 64, sfx::q8_t, sfx::act::relu, sfx::act::silu, sfx::act::swiglu>(salt);
  check_acts<Selector, 64, sfx::q4_t, sfx::act::relu, sfx::act::silu, sfx::act::swiglu>(salt);
#endif
}

/// Calls check_policy_cpu for Selector × {f32,f16,bf16} × {1,16,64,128} × all activations, with I/O
/// in float and in the weight dtype.
template <class Selector>
void check_selector_matrix() {
  std::uint64_t salt = 0;
  check_dtypes<Selector, 1, float, sfx::half_t, sfx::bfloat16_t>(salt);
  check_dtypes<Selector, 16, float, sfx::half_t, sfx::bfloat16_t>(salt);
  check_dtypes<Selector, 64, float, sfx::half_t, sfx::bfloat16_t>(salt);
  check_dtypes<Selector, 128, float, sfx::half_t, sfx::bfloat16_t>(salt);
}

}  // namespace test
