// Backward pass: the gradient formulas against finite differences (float64), the matrix for the linear
// selectors (avg_k, learned_gate) against the float64 reference, and bad arguments.
#include "support/backward_matrix.hpp"

namespace {

/// A random double model (g neurons per block, B blocks, P pinned) and a routing table in the
/// learned gate's form (pinned blocks first, then distinct routed ones).
test::dmodel random_dmodel(std::mt19937_64& r, sfx::index_t d, sfx::index_t g, sfx::index_t B, sfx::index_t P,
                           bool gated, bool gate) {
  std::normal_distribution<double> nd(0.0, 1.0);
  test::dmodel m;
  m.d = d;
  m.g = g;
  m.B = B;
  m.F = B * g;
  m.P = P;
  m.gated = gated;
  m.gate = gate;
  auto fill = [&](std::vector<double>& v, std::size_t size, double s) {
    v.resize(size);
    for (auto& e : v) e = s * nd(r);
  };
  const auto Fd = static_cast<std::size_t>(m.F * d);
  fill(m.K, Fd, 1.0 / std::sqrt(double(d)));
  fill(m.U, Fd, gated ? 1.0 / std::sqrt(double(d)) : 0.0);
  fill(m.V, Fd, 0.5);
  fill(m.b1, static_cast<std::size_t>(m.F), 0.3);
  fill(m.b3, static_cast<std::size_t>(m.F), gated ? 0.3 : 0.0);
  fill(m.b2, static_cast<std::size_t>(d), 0.3);
  if (gate) {
    fill(m.Wg, static_cast<std::size_t>(B * d), 1.0 / std::sqrt(double(d)));
    fill(m.bg, static_cast<std::size_t>(B), 0.5);
  }
  return m;
}

}  // namespace

TEST_CASE("backward reference: chain rule against central finite differences", "[backward][reference]") {
  auto r = test::rng(0xbacc);
  using K = sfx::activation_kind;
  for (K act : {K::relu, K::gelu_erf, K::gelu_tanh, K::silu, K::swiglu, K::geglu})
    for (int variant = 0; variant < 4; ++variant) {
      const bool gate = variant >= 1, renorm = variant == 3;
      const sfx::index_t d = 7, g = 3, B = 5, n = 3, P = variant == 2 ? 1 : 0, k = 3;
      test::dmodel m = random_dmodel(r, d, g, B, P, sfx::activation_is_gated(act), gate);
      std::vector<sfx::block_index_t> blocks(static_cast<std::size_t>(n * k));
      for (sfx::index_t t = 0; t < n; ++t) {
        std::vector<sfx::block_index_t> routed;
        for (sfx::index_t b = P; b < B; ++b) routed.push_back(static_cast<sfx::block_index_t>(b));
        std::shuffle(routed.begin(), routed.end(), r);
        for (sfx::index_t j = 0; j < k; ++j)
          blocks[static_cast<std::size_t>(t * k + j)] =
              j < P ? static_cast<sfx::block_index_t>(j) : routed[static_cast<std::size_t>(j - P)];
      }
      std::vector<double> x(static_cast<std::size_t>(n * d)), dy(x.size());
      std::normal_distribution<double> nd(0.0, 1.0);
      for (auto& v : x) v = nd(r);
      for (auto& v : dy) v = nd(r);
      const test::dgrads an = test::backward_ref(m, act, x, dy, blocks.data(), n, k, renorm);
      INFO("act " << sfx::activation_name(act) << " gate " << gate << " renormalize " << renorm << " pinned "
                  << P);
      auto fd = [&](std::vector<double>& param, const std::vector<double>& grad, const char* what) {
        REQUIRE(param.size() == grad.size());
        for (std::size_t i = 0; i < param.size(); ++i) {
          const double keep = param[i], eps = 1e-6 * std::max(1.0, std::fabs(keep));
          param[i] = keep + eps;
          const double lp = test::loss_ref(m, act, x, dy, blocks.data(), n, k, renorm);
          param[i] = keep - eps;
          const double lm = test::loss_ref(m, act, x, dy, blocks.data(), n, k, renorm);
          param[i] = keep;
          const double num = (lp - lm) / (2 * eps);
          INFO(what << "[" << i << "]: finite difference " << num << ", chain rule " << grad[i]);
          REQUIRE(std::fabs(num - grad[i]) <= 1e-5 * (std::fabs(grad[i]) + 1.0));
        }
      };
      fd(x, an.dx, "dx");
      fd(m.K, an.K, "dW1");
      fd(m.V, an.V, "dW2");
      fd(m.b1, an.b1, "db1");
      fd(m.b2, an.b2, "db2");
      if (m.gated) {
        fd(m.U, an.U, "dW3");
        fd(m.b3, an.b3, "db3");
      }
      if (gate) {
        fd(m.Wg, an.Wg, "dWg");
        fd(m.bg, an.bg, "dbg");
      }
      // A nonzero gradient reached every part that has one (the check above would pass on all zeros).
      double sK = 0, sx = 0, sg = 0;
      for (double v : an.K) sK += std::fabs(v);
      for (double v : an.dx) sx += std::fabs(v);
      for (double v : an.Wg) sg += std::fabs(v);
      REQUIRE(sK > 0);
      REQUIRE(sx > 0);
      if (gate) REQUIRE(sg > 0);
    }
}

TEST_CASE("cpu backward matrix: avg_k", "[backward][avg_k]") {
  test::check_backward_matrix<sfx::select::avg_k>(0xa1);
}

TEST_CASE("cpu backward matrix: learned_gate", "[backward][learned_gate]") {
  test::check_backward_matrix<sfx::select::learned_gate>(0xa2);
}

TEST_CASE("cpu backward: d a multiple of 1024 (per-token rows one cache line longer)", "[backward][stride]") {
  // The backward's per-token rows (x, dY, the dX accumulator) sit an odd number of cache lines apart
  // (row_stride); the random matrix above draws d <= 150, so this case covers the lengths of real
  // models, where len is a multiple of 1024 floats and the padding is one line.
  auto r = test::rng(0xa3);
  for (sfx::index_t n : {3, 37}) {
    test::run_backward_case<sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>>(r, n, 1024);
    test::run_backward_case<sfx::policy<16, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::swiglu>>(
        r, n, 2048);
  }
}

TEST_CASE("cpu backward: dX over several widened key panels", "[backward][panels]") {
  // Half/bf16 keys (and up rows) are widened to float k_bwd_cols (512) columns at a time for dX; a d
  // that is not a multiple of it leaves a short last panel on each thread's column range (one thread:
  // 512 + 512 + 80 columns; two: 512 + 40 each).
  auto r = test::rng(0xa4);
  for (sfx::index_t n : {1, 37}) {
    test::run_backward_case<sfx::policy<16, sfx::select::avg_k, sfx::half_t, sfx::act::silu>>(r, n, 1100);
    test::run_backward_case<sfx::policy<16, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::swiglu>>(
        r, n, 1100);
  }
}

namespace {
/// Users' activations (not one of the six built-in tags): the backward's chain rule runs their scalar
/// functions instead of kernels::chain_rows. SiLU's and SwiGLU's functions under other types, so the
/// float64 reference of those kinds checks them.
struct user_silu : sfx::act::silu {
  static constexpr const char* name = "user_silu";
};
struct user_swiglu : sfx::act::glu<sfx::act::silu> {
  static constexpr sfx::activation_kind kind = sfx::activation_kind::swiglu;
  static constexpr const char* name = "user_swiglu";
};
static_assert(!sfx::is_builtin_activation<user_silu> && !sfx::is_builtin_activation<user_swiglu>,
              "the user activations must take the scalar path");
}  // namespace

TEST_CASE("cpu backward: a user's activation (the scalar chain rule)", "[backward][user_act]") {
  auto r = test::rng(0xa4);
  for (sfx::index_t n : {1, 3, 37}) {
    test::run_backward_case<sfx::policy<16, sfx::select::avg_k, float, user_silu>>(r, n);
    test::run_backward_case<sfx::policy<1, sfx::select::learned_gate, sfx::bfloat16_t, user_swiglu>>(r, n);
  }
}

namespace {
template <class T>
void check_cached_logits(std::mt19937_64& r) {
  using PG = sfx::policy<16, sfx::select::learned_gate, T, sfx::act::silu>;
  const sfx::index_t d = 72, B = 7, P = 1, n = 37, k = 3, g = 16;
  const auto dense = test::random_dense<T>(r, d, B * g, false, true);
  std::vector<float> gw(static_cast<std::size_t>(B * d)), gb(static_cast<std::size_t>(B));
  test::fill_normal(gw, r, 1.0 / std::sqrt(double(d)));
  test::fill_normal(gb, r, 0.5);
  sfx::pack_options po{g};
  po.gate_w = gw.data();
  po.gate_b = gb.data();
  po.pinned = P;
  const auto model = sfx::pack<T>(dense.view(), po);
  const auto w = model.view();
  std::vector<float> x(static_cast<std::size_t>(n * d)), dy(x.size()), y(x.size());
  test::fill_normal(x, r, 1.0);
  test::fill_normal(dy, r, 1.0);
  std::vector<sfx::block_index_t> cb(static_cast<std::size_t>(n * k));
  std::vector<float> cw(cb.size()), pre(cb.size() * g), lg(static_cast<std::size_t>(n * B), NAN), lr(lg);
  sfx::forward_cache cache{cb.data(), cw.data(), pre.data(), nullptr, lg.data()};
  sfx::cpu::forward<PG>(w, n, x.data(), y.data(), sfx::route_args{k}, &cache);
  // Columns [P, B) hold Wg·x + bg (float64 of the stored rows; x as the key kernels read it), the pinned
  // ones are not written; the reference forward writes the same.
  std::vector<sfx::block_index_t> rb(cb.size());
  std::vector<float> rw(cw.size()), rpre(pre.size());
  const sfx::forward_cache rcache{rb.data(), rw.data(), rpre.data(), nullptr, lr.data()};
  sfx::cpu::reference_forward<PG>(w, n, x.data(), y.data(), sfx::route_args{k}, &rcache);
  const double tol = sfx::cpu::rounds_inputs_to_bf16<T>() ? 1e-2 : 1e-5;
  for (sfx::index_t t = 0; t < n; ++t)
    for (sfx::index_t c = 0; c < B; ++c) {
      const float got = lg[static_cast<std::size_t>(t * B + c)];
      if (c < P) {
        REQUIRE(std::isnan(got));
        REQUIRE(std::isnan(lr[static_cast<std::size_t>(t * B + c)]));
        continue;
      }
      double want = w.gate_b[c], mag = std::fabs(want);
      for (sfx::index_t i = 0; i < d; ++i) {
        const double p =
            double(sfx::to_float(w.gate_w[c * w.layout.ld + i])) * x[static_cast<std::size_t>(t * d + i)];
        want += p;
        mag += std::fabs(p);
      }
      REQUIRE(std::fabs(got - want) <= tol * mag);
      REQUIRE(std::fabs(lr[static_cast<std::size_t>(t * B + c)] - want) <= 1e-5 * mag);
    }
  // The backward with the kept logits gives exactly what it gives recomputing them.
  sfx::cpu::backward_args ba;
  ba.k = k;
  sfx::ffn_grads kept(w.layout, true), again(w.layout, true);
  std::vector<float> dx1(x.size()), dx2(x.size());
  sfx::forward_cache no_lg = cache;
  no_lg.logits = nullptr;
  sfx::cpu::backward<PG>(w, n, x.data(), dy.data(), cache, dx1.data(), kept.view(), ba);
  sfx::cpu::backward<PG>(w, n, x.data(), dy.data(), no_lg, dx2.data(), again.view(), ba);
  auto same = [](const float* a, const float* b, sfx::index_t count) {
    return std::memcmp(a, b, static_cast<std::size_t>(count) * sizeof(float)) == 0;
  };
  const auto gk = kept.view(), ga = again.view();
  REQUIRE(same(dx1.data(), dx2.data(), n * d));
  REQUIRE(same(gk.weights, ga.weights, gk.layout.total_elements()));
  REQUIRE(same(gk.b1, ga.b1, gk.layout.d_ff));
  REQUIRE(same(gk.b2, ga.b2, gk.layout.d_model));
  REQUIRE(same(gk.gate_w, ga.gate_w, B * gk.layout.ld));
  REQUIRE(same(gk.gate_b, ga.gate_b, B));
  // Only the learned gate's fused forward writes them, and only its backward reads them.
  using PA = sfx::policy<16, sfx::select::avg_k, T, sfx::act::silu>;
  REQUIRE_ERROR(sfx::cpu::forward<PA>(w, n, x.data(), y.data(), sfx::route_args{k}, &cache),
                sfx::status::invalid_argument, "only for the learned gate");
  REQUIRE_ERROR(sfx::cpu::backward<PA>(w, n, x.data(), dy.data(), cache, dx1.data(), kept.view(), ba),
                sfx::status::invalid_argument, "only for the learned gate");
  const sfx::const_routing_view rt{n, k, cb.data(), cw.data()};
  REQUIRE_ERROR(sfx::cpu::forward_routed<PG>(w, n, x.data(), y.data(), rt, &cache),
                sfx::status::invalid_argument, "does not score");
  REQUIRE_ERROR(sfx::cpu::reference_forward_routed<PG>(w, n, x.data(), y.data(), rt, &cache),
                sfx::status::invalid_argument, "does not score");
}
}  // namespace

TEST_CASE("cpu backward: the learned gate's logits kept by the forward", "[backward][logits]") {
  auto r = test::rng(0xa6);
  check_cached_logits<float>(r);
  check_cached_logits<sfx::bfloat16_t>(r);
  check_cached_logits<sfx::half_t>(r);
}

TEST_CASE("cpu backward: n = 0 zeroes the gradients, bad arguments get clear errors", "[backward][errors]") {
  using P = sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>;
  using PG = sfx::policy<16, sfx::select::learned_gate, float, sfx::act::swiglu>;
  auto r = test::rng(0xe1);
  const sfx::index_t d = 40, B = 6, n = 3, k = 2, g = 16;
  const auto dense = test::random_dense<float>(r, d, B * g, false, true);
  const auto model = sfx::pack<float>(dense.view(), sfx::pack_options{g});
  const auto w = model.view();
  std::vector<float> x(static_cast<std::size_t>(n * d)), dy(x.size()), y(x.size()), dx(x.size());
  test::fill_normal(x, r, 1.0);
  test::fill_normal(dy, r, 1.0);
  std::vector<sfx::block_index_t> cb(static_cast<std::size_t>(n * k));
  std::vector<float> cw(cb.size()), pre(cb.size() * g);
  const sfx::forward_cache cache{cb.data(), cw.data(), pre.data(), nullptr};
  sfx::cpu::forward<P>(w, n, x.data(), y.data(), sfx::route_args{k}, &cache);
  sfx::ffn_grads storage(w.layout, false);
  const sfx::ffn_grads_view gv = storage.view();
  sfx::cpu::backward_args ba;
  ba.k = k;

  // n = 0: nothing to do, but an overwrite still sets every gradient to zero.
  std::fill(gv.weights, gv.weights + gv.layout.total_elements(), 1.0f);
  sfx::cpu::backward<P>(w, 0, x.data(), dy.data(), sfx::forward_cache{}, dx.data(), gv, ba);
  for (sfx::index_t e = 0; e < gv.layout.total_elements(); ++e) REQUIRE(gv.weights[e] == 0.0f);

  sfx::forward_cache no_pre = cache;
  no_pre.pre = nullptr;
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), no_pre, dx.data(), gv, ba),
                sfx::status::invalid_argument, "pre-activations");
  REQUIRE_ERROR(
      sfx::cpu::backward<P>(w, n, x.data(), static_cast<const float*>(nullptr), cache, dx.data(), gv, ba),
      sfx::status::null_pointer, "dY");
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, x.data(), gv, ba),
                sfx::status::invalid_argument, "must not overlap");
  sfx::cpu::backward_args bad_k = ba;
  bad_k.k = B + 1;
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, dx.data(), gv, bad_k),
                sfx::status::invalid_argument, "k (");
  sfx::ffn_grads_view bad_layout = gv;
  bad_layout.layout.ld += 16;
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, dx.data(), bad_layout, ba),
                sfx::status::invalid_shape, "grad_layout");
  sfx::ffn_grads_view gate_for_avgk = gv;
  gate_for_avgk.gate_b = dx.data();
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, static_cast<float*>(nullptr),
                                      gate_for_avgk, ba),
                sfx::status::invalid_argument, "no router parameters");
  const sfx::block_index_t keep = cb[1];
  cb[1] = cb[0];
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, dx.data(), gv, ba),
                sfx::status::invalid_argument, "twice");
  cb[1] = static_cast<sfx::block_index_t>(B);
  REQUIRE_ERROR(sfx::cpu::backward<P>(w, n, x.data(), dy.data(), cache, dx.data(), gv, ba),
                sfx::status::out_of_range, "outside");
  cb[1] = keep;

  // Gated and learned gate: the up projections and the block weights are required; a routing row that
  // does not list the pinned blocks first is not the learned gate's.
  const auto dense_g = test::random_dense<float>(r, d, B * g, true, true);
  std::vector<float> gw(static_cast<std::size_t>(B * d), 0.1f);
  sfx::pack_options po{g};
  po.gate_w = gw.data();
  po.pinned = 1;
  const auto model_g = sfx::pack<float>(dense_g.view(), po);
  std::vector<float> up(pre.size());
  const sfx::forward_cache cache_g{cb.data(), cw.data(), pre.data(), up.data()};
  sfx::cpu::forward<PG>(model_g.view(), n, x.data(), y.data(), sfx::route_args{k}, &cache_g);
  sfx::ffn_grads storage_g(model_g.layout(), true);
  sfx::forward_cache no_up = cache_g;
  no_up.up = nullptr;
  REQUIRE_ERROR(
      sfx::cpu::backward<PG>(model_g.view(), n, x.data(), dy.data(), no_up, dx.data(), storage_g.view(), ba),
      sfx::status::invalid_argument, "up projections");
  sfx::forward_cache no_w = cache_g;
  no_w.weights = nullptr;
  REQUIRE_ERROR(
      sfx::cpu::backward<PG>(model_g.view(), n, x.data(), dy.data(), no_w, dx.data(), storage_g.view(), ba),
      sfx::status::invalid_argument, "block weights");
  std::swap(cb[0], cb[1]);
  REQUIRE_ERROR(sfx::cpu::backward<PG>(model_g.view(), n, x.data(), dy.data(), cache_g, dx.data(),
                                       storage_g.view(), ba),
                sfx::status::invalid_argument, "not a learned-gate routing");
}
