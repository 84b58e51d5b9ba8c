// MoEfication conversion: balanced assignment, splits (exact balance, bijection, determinism, planted
// group recovery), routers and the quality report on a synthetic FFN with planted structure.
#include "support/test_support.hpp"

#include <sparse_ffn/convert/budget.hpp>
#include <sparse_ffn/convert/coactivation.hpp>
#include <sparse_ffn/convert/model.hpp>
#include <sparse_ffn/convert/pipeline.hpp>
#include <sparse_ffn/convert/report.hpp>
#include <sparse_ffn/convert/split.hpp>
#include <sparse_ffn/convert/synthetic.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <set>

namespace cv = sparse_ffn::convert;

namespace {

void require_bijection(const std::vector<std::int32_t>& p, sfx::index_t n) {
  REQUIRE(static_cast<sfx::index_t>(p.size()) == n);
  std::vector<std::int32_t> s(p);
  std::sort(s.begin(), s.end());
  for (sfx::index_t i = 0; i < n; ++i) REQUIRE(s[static_cast<std::size_t>(i)] == i);
}

/// Best total value over all balanced assignments (brute force, tiny instances).
double brute_best(const std::vector<float>& v, sfx::index_t N, sfx::index_t B, sfx::index_t g) {
  std::vector<std::int32_t> lab(static_cast<std::size_t>(N));
  for (sfx::index_t i = 0; i < N; ++i) lab[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i / g);
  double best = -1e300;
  do {
    double s = 0;
    for (sfx::index_t i = 0; i < N; ++i)
      s += v[static_cast<std::size_t>(i * B + lab[static_cast<std::size_t>(i)])];
    best = std::max(best, s);
  } while (std::next_permutation(lab.begin(), lab.end()));
  return best;
}

/// Σ over blocks of Σ |x_i − mean|² on the L2-normalised keys (float64, written independently).
double within_block_distance(const std::vector<std::int32_t>& perm, const std::vector<float>& w1,
                             sfx::index_t d, sfx::index_t g) {
  double total = 0;
  for (std::size_t b0 = 0; b0 < perm.size(); b0 += static_cast<std::size_t>(g)) {
    std::vector<std::vector<double>> rows;
    std::vector<double> mean(static_cast<std::size_t>(d), 0.0);
    for (sfx::index_t i = 0; i < g; ++i) {
      const float* k = w1.data() + perm[b0 + static_cast<std::size_t>(i)] * d;
      double nn = 0;
      for (sfx::index_t c = 0; c < d; ++c) nn += double(k[c]) * k[c];
      std::vector<double> x(static_cast<std::size_t>(d));
      for (sfx::index_t c = 0; c < d; ++c)
        x[static_cast<std::size_t>(c)] = nn > 0 ? k[c] / std::sqrt(nn) : 0.0;
      for (sfx::index_t c = 0; c < d; ++c)
        mean[static_cast<std::size_t>(c)] += x[static_cast<std::size_t>(c)] / g;
      rows.push_back(std::move(x));
    }
    for (const auto& x : rows)
      for (sfx::index_t c = 0; c < d; ++c)
        total += std::pow(x[static_cast<std::size_t>(c)] - mean[static_cast<std::size_t>(c)], 2);
  }
  return total;
}

}  // namespace

TEST_CASE("balanced assignment: exactly g per bin and (near-)optimal", "[convert]") {
  auto r = test::rng(1);
  for (int trial = 0; trial < 30; ++trial) {
    const sfx::index_t B = 2 + static_cast<sfx::index_t>(r() % 3), g = 1 + static_cast<sfx::index_t>(r() % 3),
                       N = B * g;
    std::vector<float> v(static_cast<std::size_t>(N * B));
    test::fill_normal(v, r, 1.0);
    const auto lab = cv::detail::balanced_assign(v.data(), N, B, g, 1e-6);
    std::vector<sfx::index_t> count(static_cast<std::size_t>(B), 0);
    double total = 0;
    for (sfx::index_t i = 0; i < N; ++i) {
      REQUIRE(lab[static_cast<std::size_t>(i)] >= 0);
      REQUIRE(lab[static_cast<std::size_t>(i)] < B);
      ++count[static_cast<std::size_t>(lab[static_cast<std::size_t>(i)])];
      total += v[static_cast<std::size_t>(i * B + lab[static_cast<std::size_t>(i)])];
    }
    for (auto c : count) REQUIRE(c == g);
    INFO("B=" << B << " g=" << g);
    REQUIRE(total >= brute_best(v, N, B, g) - 1e-3);
  }
  // Larger: balance holds and the result is deterministic.
  std::vector<float> v(512 * 32);
  test::fill_normal(v, r, 1.0);
  const auto a = cv::detail::balanced_assign(v.data(), 512, 32, 16),
             b = cv::detail::balanced_assign(v.data(), 512, 32, 16);
  REQUIRE(a == b);
  std::vector<int> count(32, 0);
  for (auto l : a) ++count[static_cast<std::size_t>(l)];
  for (int c : count) REQUIRE(c == 16);
}

TEST_CASE("splits are bijections into equal blocks, deterministic per seed", "[convert]") {
  const auto p = cv::make_planted_ffn(64, 16, 16, 600, 3, 5);
  const sfx::index_t F = 256, g = 16;
  const auto r1 = cv::split_random(F, g, 9), r2 = cv::split_random(F, g, 9), r3 = cv::split_random(F, g, 10);
  require_bijection(r1, F);
  REQUIRE(r1 == r2);
  REQUIRE(r1 != r3);
  cv::kmeans_options ko;
  ko.g = g;
  ko.seed = 4;
  const auto k1 = cv::split_kmeans(p.dense.w1.data(), F, 64, ko),
             k2 = cv::split_kmeans(p.dense.w1.data(), F, 64, ko);
  require_bijection(k1, F);
  REQUIRE(k1 == k2);
  // bf16 keys work too.
  std::vector<sfx::bfloat16_t> wb(p.dense.w1.size());
  for (std::size_t i = 0; i < wb.size(); ++i) wb[i] = sfx::bfloat16_t(p.dense.w1[i]);
  require_bijection(cv::split_kmeans(wb.data(), F, 64, ko), F);
  REQUIRE_THROWS_AS(cv::split_random(100, 16, 0), sfx::error);
  REQUIRE_THROWS_AS(cv::split_kmeans(p.dense.w1.data(), F, 64, cv::kmeans_options{}), sfx::error);
  for (int bad : {0, -1}) {
    cv::kmeans_options b1 = ko, b2 = ko;
    b1.iterations = bad;
    b2.restarts = bad;
    REQUIRE_THROWS_WITH(cv::split_kmeans(p.dense.w1.data(), F, 64, b1),
                        Catch::Contains("iterations must be >= 1"));
    REQUIRE_THROWS_WITH(cv::split_kmeans(p.dense.w1.data(), F, 64, b2),
                        Catch::Contains("restarts must be >= 1"));
  }
  // One restart is the first restart of many: more restarts can only lower the within-block distance.
  cv::kmeans_options one = ko;
  one.restarts = 1;
  REQUIRE(within_block_distance(cv::split_kmeans(p.dense.w1.data(), F, 64, one), p.dense.w1, 64, ko.g) >=
          within_block_distance(k1, p.dense.w1, 64, ko.g) * (1 - 1e-6));
}

TEST_CASE("planted structure: kmeans and co-activation recover the groups; Avg-K tracks the oracle",
          "[convert][slow]") {
  const sfx::index_t d = 64, groups = 16, g = 16, F = groups * g, n = 1600;
  const auto p = cv::make_planted_ffn(d, groups, g, n, 3, test::rng(6)() % 1000);
  const auto random = cv::split_random(F, g, 1);
  cv::kmeans_options ko;
  ko.g = g;
  const auto km = cv::split_kmeans(p.dense.w1.data(), F, d, ko);
  CHECK(cv::split_purity(random, p.group, g) < 0.5);
  CHECK(cv::split_purity(km, p.group, g) >= 0.9);
  std::vector<std::pair<std::string, std::vector<std::int32_t>>> splits = {{"random", random},
                                                                           {"kmeans", km}};
#if defined(SPARSE_FFN_WITH_METIS)
  const auto ident = sfx::pack<float>(p.dense.view(), {g});
  const auto act = cv::neuron_activations<sfx::act::relu>(ident, p.x.data(), n);
  cv::coactivation_options co;
  co.g = g;
  const auto ca = cv::split_coactivation(act.data(), n, F, co);
  require_bijection(ca, F);
  REQUIRE(cv::split_coactivation(act.data(), n, F, co) == ca);
  CHECK(cv::split_purity(ca, p.group, g) >= 0.9);
  splits.push_back({"coactivation", ca});
#else
  WARN("built without METIS: split_coactivation not tested");
#endif
  cv::quality_options qo;
  qo.densities = {0.25};
  qo.train.epochs = 5;
  std::map<std::string, std::map<std::string, double>> err, cov;
  for (const auto& [name, perm] : splits)
    for (const auto& row :
         cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, g, p.x.data(), n, name, qo)) {
      err[name][row.selector] = row.rel_error;
      cov[name][row.selector] = row.coverage;
      REQUIRE(row.k == 4);
      REQUIRE(row.coverage >= 0.0);
      REQUIRE(row.coverage <= 1.0 + 1e-9);
    }
  for (const auto& [name, e] : err) {
    INFO("split " << name << ": oracle " << e.at("oracle") << " avg_k " << e.at("avg_k") << " linear "
                  << e.at("linear") << " mlp " << e.at("mlp"));
    REQUIRE(e.at("oracle") <= e.at("avg_k") + 1e-9);  // the oracle is the upper bound on coverage…
    REQUIRE(cov.at(name).at("oracle") >= cov.at(name).at("avg_k") - 1e-9);
    if (name != "random") {
      REQUIRE(e.at("avg_k") <= 1.2 * e.at("oracle"));                // …and Avg-K is within 1.2× of it
      REQUIRE(e.at("avg_k") < 0.25 * err.at("random").at("avg_k"));  // far below the random split
      REQUIRE(e.at("linear") <= 1.5 * e.at("oracle"));
      REQUIRE(e.at("mlp") <= 1.5 * e.at("oracle"));
    }
  }
}

TEST_CASE("router target output: the report's output oracle drops the least output, the routers fit it",
          "[convert]") {
  const sfx::index_t d = 32, groups = 8, g = 16, F = groups * g, n = 800, B = F / g;
  auto p = cv::make_planted_ffn(d, groups, g, n, 2, 12);
  // Value rows of very different norms, so that activation mass and output norm rank differently.
  for (sfx::index_t c = 0; c < d; ++c)
    for (sfx::index_t i = 0; i < F; ++i)
      p.dense.w2[static_cast<std::size_t>(c * F + i)] *= i % 3 ? 0.25f : 4.0f;
  const auto perm = cv::split_random(F, g, 3);
  cv::quality_options qo;
  qo.densities = {0.25, double(B - 1) / double(B)};
  qo.train.epochs = 3;
  qo.train.target = "output";
  const auto rows = cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, g, p.x.data(), n, "random", qo);
  std::map<sfx::index_t, std::map<std::string, double>> e;
  for (const auto& r : rows) e[r.k][r.selector] = r.rel_error;
  REQUIRE(e.size() == 2);
  for (const auto& [k, by] : e) {
    REQUIRE(by.size() == 6);  // oracle, oracle_output, avg_k, similarity, linear, mlp
    for (const auto& [sel, err] : by) {
      INFO("k " << k << " " << sel << " " << err << ", output oracle " << by.at("oracle_output"));
      REQUIRE(std::isfinite(err));
      // Dropping one block, the output oracle drops each token's smallest contribution: the least
      // error any selection can have.
      if (k == B - 1) REQUIRE(by.at("oracle_output") <= err * (1 + 1e-5) + 1e-9);
    }
  }
  cv::quality_options bad = qo;
  bad.train.target = "energy";
  REQUIRE_THROWS_WITH(
      cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, g, p.x.data(), n, "random", bad),
      Catch::Contains("router target 'energy'"));
}

TEST_CASE("router fitting: the fitted linear router learns the block masses", "[convert]") {
  const sfx::index_t d = 32, groups = 8, g = 16, F = groups * g, n = 800;
  const auto p = cv::make_planted_ffn(d, groups, g, n, 2, 11);
  cv::kmeans_options ko;
  ko.g = g;
  const auto km = cv::split_kmeans(p.dense.w1.data(), F, d, ko);
  sfx::pack_options po{g};
  po.permutation = km.data();
  const auto model = sfx::pack<float>(p.dense.view(), po);
  const auto mass = cv::block_mass<sfx::act::relu>(model, p.x.data(), n);
  cv::router_train_options to;
  to.epochs = 15;
  // Start from zero weights: the router must learn from the targets alone.
  const auto lin = cv::fit_linear_router(p.x.data(), mass.data(), n / 2, d, groups, to);
  std::vector<float> s(static_cast<std::size_t>((n / 2) * groups));
  lin.scores(p.x.data() + (n / 2) * d, n / 2, s.data());
  const double fitted = cv::topk_coverage(s.data(), mass.data() + (n / 2) * groups, n / 2, groups, 2);
  std::vector<float> zero(s.size(), 0.0f);
  const double untrained = cv::topk_coverage(zero.data(), mass.data() + (n / 2) * groups, n / 2, groups, 2);
  const double oracle =
      cv::topk_coverage(mass.data() + (n / 2) * groups, mass.data() + (n / 2) * groups, n / 2, groups, 2);
  INFO("coverage: untrained " << untrained << " fitted " << fitted << " oracle " << oracle);
  REQUIRE(fitted > untrained + 0.3);
  REQUIRE(fitted >= 0.9 * oracle);
  // Deterministic for a seed.
  const auto lin2 = cv::fit_linear_router(p.x.data(), mass.data(), n / 2, d, groups, to);
  REQUIRE(lin2.w == lin.w);
}

TEST_CASE("non-finite weights or hidden states are rejected up front, naming the tensor and index",
          "[convert][errors]") {
  using sfx::status;
  // balanced_assign used to bid forever on a NaN value (the converter hung).
  std::vector<float> v(4 * 2, 1.0f);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_ERROR(cv::detail::balanced_assign(v.data(), 4, 2, 2), status::invalid_argument, "value[2][1]");
  v[5] = std::numeric_limits<float>::infinity();
  REQUIRE_ERROR(cv::detail::balanced_assign(v.data(), 4, 2, 2), status::invalid_argument, "not finite");

  const auto p = cv::make_planted_ffn(16, 4, 16, 64, 1, 7);
  auto bad = p.dense;
  bad.w1[0] = std::numeric_limits<float>::quiet_NaN();
  cv::kmeans_options ko;
  ko.g = 16;
  REQUIRE_ERROR(cv::split_kmeans(bad.w1.data(), bad.d_ff, bad.d_model, ko), status::invalid_argument,
                "W1[0, 0]");

  cv::moefy_options o;
  o.g = 16;
  o.report_splits = {};
  REQUIRE_ERROR(cv::moefy(bad, p.x.data(), 64, o), status::invalid_argument, "W1 has a non-finite value");
  bad = p.dense;
  bad.w2[65] = -std::numeric_limits<float>::infinity();  // W2 is [d × d_ff] = [16 × 64]: [1, 1]
  REQUIRE_ERROR(cv::moefy(bad, p.x.data(), 64, o), status::invalid_argument,
                "W2 has a non-finite value (-inf) at index [1, 1]");
  bad = p.dense;
  bad.b2[3] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_ERROR(cv::moefy(bad, p.x.data(), 64, o), status::invalid_argument, "b2");
  std::vector<float> x = p.x;
  x[16 * 5 + 2] = std::numeric_limits<float>::infinity();
  REQUIRE_ERROR(cv::moefy(p.dense, x.data(), 64, o), status::invalid_argument,
                "hidden states has a non-finite value (inf) at index [5, 2]");
  // Finite inputs whose dense output overflows float: an error, not a "perfect" report of NaNs.
  bad = p.dense;
  for (auto& w : bad.w2) w = 3e38f;
  REQUIRE_ERROR(cv::evaluate_split<sfx::act::relu>(bad.view(), cv::split_random(64, 16, 0), 16, p.x.data(),
                                                   64, "r", {}),
                status::invalid_argument, "overflow");
}

TEST_CASE("report options: densities and held-out share are validated; non-finite values are JSON null",
          "[convert][errors]") {
  using sfx::status;
  const auto p = cv::make_planted_ffn(16, 4, 16, 64, 1, 7);
  const auto perm = cv::split_random(64, 16, 0);
  for (double bad : {0.0, -0.5, 2.0, std::nan(""), HUGE_VAL}) {
    cv::quality_options q;
    q.densities = {0.25, bad};
    REQUIRE_ERROR(cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, 16, p.x.data(), 64, "r", q),
                  status::invalid_argument, "outside (0, 1]");
    cv::moefy_options o;
    o.g = 16;
    o.quality = q;
    REQUIRE_ERROR(cv::moefy(p.dense, p.x.data(), 64, o), status::invalid_argument, "outside (0, 1]");
  }
  cv::quality_options q;
  q.densities = {};
  REQUIRE_ERROR(cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, 16, p.x.data(), 64, "r", q),
                status::invalid_argument, "at least one density");
  q.densities = {0.5};
  q.held_out = std::nan("");
  REQUIRE_ERROR(cv::evaluate_split<sfx::act::relu>(p.dense.view(), perm, 16, p.x.data(), 64, "r", q),
                status::invalid_argument, "held_out");

  // A dense FFN whose output is exactly zero: the relative error of a sparse output that is not zero
  // is infinite (not 0, the "perfect" value it used to report); the JSON stays valid (null).
  auto zero = p.dense;
  std::fill(zero.w2.begin(), zero.w2.end(), 0.0f);
  std::fill(zero.b2.begin(), zero.b2.end(), 0.0f);
  cv::quality_options q2;
  q2.densities = {0.25};
  q2.fit_routers = false;
  auto rows = cv::evaluate_split<sfx::act::relu>(zero.view(), perm, 16, p.x.data(), 64, "r", q2);
  for (const auto& r : rows) REQUIRE(r.rel_error == 0.0);  // zero output, zero error
  rows[0].rel_error = std::numeric_limits<double>::infinity();
  rows[0].split = "a\"b\\c\n";
  const std::string js = cv::report_json(rows);
  INFO(js);
  REQUIRE(js.find("\"rel_error\": null") != std::string::npos);
  REQUIRE(js.find("inf") == std::string::npos);
  REQUIRE(js.find("\"a\\\"b\\\\c\\u000a\"") != std::string::npos);
}

TEST_CASE("moefy: the saved router is fitted on the fit share only, the report's context says so",
          "[convert]") {
  const auto p = cv::make_planted_ffn(16, 4, 16, 200, 1, 9);
  cv::moefy_options o;
  o.g = 16;
  o.router = "linear";
  o.report_splits = {};
  o.quality.densities = {0.5};
  o.quality.held_out = 0.3;
  o.quality.train.epochs = 2;
  const auto r = cv::moefy(p.dense, p.x.data(), 200, o);
  REQUIRE(r.context.g == 16);
  REQUIRE(r.context.tokens == 200);
  REQUIRE(r.context.held_out_tokens == 60);
  REQUIRE(r.context.fit_tokens == 140);
  REQUIRE_FALSE(r.report.empty());
  // The same fit, made independently on the first 140 tokens, gives the same bits: the held-out
  // tokens the report scores were never seen by the saved router.
  sfx::pack_options po{16};
  po.permutation = r.permutation.data();
  const auto model = sfx::pack<float>(p.dense.view(), po);
  const auto mass = cv::block_mass<sfx::act::relu>(model, p.x.data(), 140);
  const auto sim = cv::similarity_rows(model.view());
  const auto lin = cv::fit_linear_router(p.x.data(), mass.data(), 140, 16, 4, o.quality.train, sim.data());
  REQUIRE(r.router_rows == lin.w);
  REQUIRE(r.router_bias == lin.b);
  const std::string js = cv::report_json(r.report, &r.context);
  REQUIRE(js.find("\"fit_tokens\": 140") != std::string::npos);
  REQUIRE(js.find("\"held_out\": 0.3") != std::string::npos);
  // Without the report, nothing is held out: the router sees every token.
  o.report = false;
  const auto all = cv::moefy(p.dense, p.x.data(), 200, o);
  REQUIRE(all.report.empty());
  REQUIRE(all.context.fit_tokens == 200);
  const auto mass_all = cv::block_mass<sfx::act::relu>(model, p.x.data(), 200);
  const auto lin_all =
      cv::fit_linear_router(p.x.data(), mass_all.data(), 200, 16, 4, o.quality.train, sim.data());
  REQUIRE(all.router_rows == lin_all.w);
}

TEST_CASE("pinned neurons: a massive always-on neuron is found, pinned, and rescues Avg-K",
          "[convert][pinned]") {
  // The planted FFN plus one neuron like layer 0 of all-MiniLM-L6-v2's: active on every token (bias 1,
  // a near-zero key) with a value 30× the others', ~93% of the output energy.
  const sfx::index_t d = 64, groups = 16, g = 16, F = groups * g, n = 1600, hot = 37;
  auto p = cv::make_planted_ffn(d, groups, g, n, 3, test::rng(21)() % 1000);
  for (sfx::index_t c = 0; c < d; ++c) {
    p.dense.w1[static_cast<std::size_t>(hot * d + c)] *= 0.01f;
    p.dense.w2[static_cast<std::size_t>(c * F + hot)] *= 30.0f;
  }
  p.dense.b1[static_cast<std::size_t>(hot)] = 1.0f;
  // moefy measures the energies on the fit share (the tokens before the report's held-out quarter).
  const sfx::index_t n_fit = n - cv::held_out_tokens(n, 0.25);
  const auto energy = cv::neuron_energy<sfx::act::relu>(p.dense, p.x.data(), n_fit, g);
  const cv::pin_result pin = cv::choose_pinned(energy, g, {});
  INFO("largest energy / mean " << pin.max_ratio << ", pinned share " << pin.pinned_share);
  REQUIRE(pin.hot == 1);
  REQUIRE(pin.blocks == 1);
  REQUIRE(pin.neurons.size() == static_cast<std::size_t>(g));
  REQUIRE(pin.neurons[0] == hot);
  REQUIRE(pin.share[0] > 0.8);
  REQUIRE(pin.max_ratio >= 64);
  REQUIRE(cv::choose_pinned(energy, g, {0.0, -1}).blocks == 0);  // ratio 0: never
  REQUIRE(cv::choose_pinned(energy, g, {1e-9, 2}).blocks == 2);  // every neuron hot: capped
  REQUIRE_ERROR(cv::choose_pinned(energy, g, {64, groups + 1}), sfx::status::invalid_argument,
                "max pinned blocks (17) exceeds B = 16");

  cv::moefy_options o;
  o.g = g;
  o.report_splits = {};
  o.quality.densities = {0.25};
  o.quality.fit_routers = false;
  auto errors = [&](const cv::moefy_result& r) {
    std::map<std::string, double> e;
    for (const auto& row : r.report) e[row.selector] = row.rel_error;
    return e;
  };
  o.pin.ratio = 0;
  const auto r0 = cv::moefy(p.dense, p.x.data(), n, o);
  o.pin.ratio = 64;
  const auto r1 = cv::moefy(p.dense, p.x.data(), n, o);
  REQUIRE(r0.pinned.blocks == 0);
  REQUIRE(r1.pinned.blocks == 1);
  REQUIRE(std::vector<std::int32_t>(r1.permutation.begin(), r1.permutation.begin() + g) == pin.neurons);
  require_bijection(r1.permutation, F);
  const auto e0 = errors(r0), e1 = errors(r1);
  INFO("no pinning: oracle " << e0.at("oracle") << " avg_k " << e0.at("avg_k") << "; pinned: oracle "
                             << e1.at("oracle") << " avg_k " << e1.at("avg_k"));
  REQUIRE(e0.at("avg_k") > 0.5);  // collapses, as on the real model
  REQUIRE(e1.at("avg_k") < 0.3 * e0.at("avg_k"));
  REQUIRE(e1.at("avg_k") <= 1.3 * e1.at("oracle"));
  for (const auto& row : r1.report) REQUIRE(row.pinned == 1);
  REQUIRE(cv::report_json(r1.report, &r1.context).find("\"pinned_blocks\": 1") != std::string::npos);

  // The packed model routes the pinned block for every token, and its forward is the report's.
  const auto model = cv::moefy_pack<float>(p.dense, r1);
  REQUIRE(model.layout().pinned == 1);
  const sfx::index_t n_eval = r1.context.held_out_tokens, k = 4;
  const float* xe = p.x.data() + (n - n_eval) * d;
  std::vector<float> y(static_cast<std::size_t>(n_eval * d)), yd(y.size());
  std::vector<sfx::block_index_t> blocks(static_cast<std::size_t>(n_eval * k));
  sfx::forward_cache cache{blocks.data(), nullptr, nullptr, nullptr};
  sfx::cpu::forward<sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>>(model.view(), n_eval, xe,
                                                                                y.data(), {k}, &cache);
  sfx::cpu::forward<sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>>(model.view(), n_eval, xe,
                                                                                yd.data(), {groups});
  double err = 0, nrm = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    err += (y[i] - yd[i]) * double(y[i] - yd[i]);
    nrm += double(yd[i]) * yd[i];
  }
  for (sfx::index_t t = 0; t < n_eval; ++t) REQUIRE(blocks[static_cast<std::size_t>(t * k)] == 0);
  REQUIRE(std::sqrt(err / nrm) == Approx(e1.at("avg_k")).epsilon(1e-3));
}

/// 1–4 random layer curves (1–5 measured k each, errors falling, random min_k, block bytes and weight);
/// `most`: the bytes of every layer at its largest k; `weights`: the sum of the weights.
template <class Rng>
std::vector<cv::layer_curve> random_curves(Rng& r, std::int64_t& most, double& weights) {
  std::vector<cv::layer_curve> layers(1 + static_cast<std::size_t>(r() % 4));
  most = 0;
  weights = 0;
  for (auto& c : layers) {
    const int m = 1 + static_cast<int>(r() % 5);
    sfx::index_t k = 0;
    double e = 1.0;
    for (int i = 0; i < m; ++i) {
      k += 1 + static_cast<sfx::index_t>(r() % 4);
      e *= std::uniform_real_distribution<double>(0.3, 1.0)(r);
      c.k.push_back(k);
      c.error.push_back(e);
    }
    c.min_k = 1 + static_cast<sfx::index_t>(r() % static_cast<std::uint64_t>(c.k.back()));
    c.block_bytes = 64 * (1 + static_cast<std::int64_t>(r() % 3));
    c.weight = std::uniform_real_distribution<double>(0.5, 2.0)(r);
    most += c.k.back() * c.block_bytes;
    weights += c.weight;
  }
  return layers;
}

/// Brute force: f(bytes, Σ w·e²) for every choice of one measured k >= min_k per layer.
template <class F>
void for_each_choice(const std::vector<cv::layer_curve>& layers, F&& f) {
  const std::size_t L = layers.size();
  std::vector<std::size_t> idx(L, 0);
  for (;;) {
    std::int64_t bytes = 0;
    double obj = 0;
    bool ok = true;
    for (std::size_t l = 0; l < L; ++l) {
      const auto& c = layers[l];
      const auto i = idx[l];
      ok = ok && c.k[i] >= c.min_k;
      bytes += c.k[i] * c.block_bytes;
      obj += c.weight * c.error[i] * c.error[i];
    }
    if (ok) f(bytes, obj);
    std::size_t l = 0;
    while (l < L && ++idx[l] == layers[l].k.size()) idx[l++] = 0;
    if (l == L) break;
  }
}

TEST_CASE("per-layer budgets: allocate_blocks is the exact optimum; bad curves are refused",
          "[convert][budget]") {
  auto r = test::rng(31);
  for (int rep = 0; rep < 200; ++rep) {
    std::int64_t most = 0;
    double worst = 0;
    const auto layers = random_curves(r, most, worst);
    const int L = static_cast<int>(layers.size());
    const std::int64_t budget = static_cast<std::int64_t>(r() % static_cast<std::uint64_t>(most + 1));
    // Brute force over every combination.
    double best = std::numeric_limits<double>::infinity();
    for_each_choice(layers, [&](std::int64_t bytes, double obj) {
      if (bytes <= budget) best = std::min(best, obj);
    });
    INFO("rep " << rep << " layers " << L << " budget " << budget);
    if (best == std::numeric_limits<double>::infinity()) {
      REQUIRE_ERROR(cv::allocate_blocks(layers, budget), sfx::status::invalid_argument, "below the smallest");
      continue;
    }
    const auto a = cv::allocate_blocks(layers, budget);
    REQUIRE(a.objective == Approx(best).epsilon(1e-12));
    REQUIRE(a.bytes <= budget);
    double obj = 0;
    std::int64_t bytes = 0;
    for (int l = 0; l < L; ++l) {
      const auto& c = layers[static_cast<std::size_t>(l)];
      REQUIRE(a.k[static_cast<std::size_t>(l)] >= c.min_k);
      bytes += a.k[static_cast<std::size_t>(l)] * c.block_bytes;
      obj += c.weight * a.error[static_cast<std::size_t>(l)] * a.error[static_cast<std::size_t>(l)];
    }
    REQUIRE(bytes == a.bytes);
    REQUIRE(obj == Approx(a.objective).epsilon(1e-12));
  }
  // Two layers, one four times as lossy at every k: it gets the bytes a uniform split would not.
  cv::layer_curve easy{{2, 4, 6, 8}, {0.10, 0.05, 0.03, 0.02}, 1, 64, 1.0};
  cv::layer_curve hard{{2, 4, 6, 8}, {0.40, 0.20, 0.12, 0.08}, 1, 64, 1.0};
  const auto a = cv::allocate_blocks({easy, hard}, 10 * 64);
  REQUIRE(a.k == std::vector<sfx::index_t>{2, 8});
  REQUIRE(a.bytes == 10 * 64);
  REQUIRE(a.objective < 0.05 * 0.05 + 0.20 * 0.20);  // the uniform 4 + 4 blocks
  REQUIRE_ERROR(cv::allocate_blocks({}, 100), sfx::status::invalid_argument, "at least one layer");
  REQUIRE_ERROR(cv::allocate_blocks({{{2, 1}, {0.1, 0.2}, 1, 64, 1.0}}, 1000), sfx::status::invalid_argument,
                "ascending");
  REQUIRE_ERROR(cv::allocate_blocks({{{1, 2}, {0.1, NAN}, 1, 64, 1.0}}, 1000), sfx::status::invalid_argument,
                "not a finite number");
  REQUIRE_ERROR(cv::allocate_blocks({{{1, 2}, {0.2, 0.1}, 3, 64, 1.0}}, 1000), sfx::status::invalid_argument,
                "no measured k >= min_k (3)");
  REQUIRE_ERROR(cv::allocate_blocks({{{4}, {0.2}, 1, 64, 1.0}}, 100), sfx::status::invalid_argument,
                "below the smallest allowed model (256 bytes)");
}

TEST_CASE("per-layer budgets for a target error: allocate_blocks_for_error is the fewest bytes that reach it",
          "[convert][budget]") {
  auto r = test::rng(37);
  for (int rep = 0; rep < 200; ++rep) {
    std::int64_t most = 0;
    double worst = 0;
    const auto layers = random_curves(r, most, worst);
    const int L = static_cast<int>(layers.size());
    const double target = std::uniform_real_distribution<double>(0.0, 0.6)(r) * worst;
    // Brute force: the fewest bytes whose objective reaches the target, then the least objective there.
    std::int64_t best_bytes = std::numeric_limits<std::int64_t>::max();
    double best_obj = std::numeric_limits<double>::infinity();
    for_each_choice(layers, [&](std::int64_t bytes, double obj) {
      if (obj <= target && (bytes < best_bytes || (bytes == best_bytes && obj < best_obj))) {
        best_bytes = bytes;
        best_obj = obj;
      }
    });
    INFO("rep " << rep << " layers " << L << " target " << target);
    if (best_bytes == std::numeric_limits<std::int64_t>::max()) {
      REQUIRE_ERROR(cv::allocate_blocks_for_error(layers, target, most), sfx::status::invalid_argument,
                    "reaches the target");
      continue;
    }
    const auto a = cv::allocate_blocks_for_error(layers, target, most);
    REQUIRE(a.bytes == best_bytes);
    REQUIRE(a.objective == Approx(best_obj).epsilon(1e-12));
    REQUIRE(a.objective <= target);
  }
  REQUIRE_ERROR(cv::allocate_blocks_for_error({{{1, 2}, {0.2, 0.1}, 1, 64, 1.0}}, -1.0, 1000),
                sfx::status::invalid_argument, "must be finite and >= 0");
}

TEST_CASE("per-layer budgets by local search: refine_allocation on a measured loss", "[convert][budget]") {
  using V = std::vector<sfx::index_t>;
  auto r = test::rng(41);
  // Separable convex losses with equal block bytes: single-block moves reach the global optimum, which
  // brute force finds.
  for (int rep = 0; rep < 100; ++rep) {
    const int L = 2 + static_cast<int>(r() % 3);
    std::vector<cv::layer_range> range(static_cast<std::size_t>(L));
    std::vector<double> a(static_cast<std::size_t>(L)), p(static_cast<std::size_t>(L));
    for (int l = 0; l < L; ++l) {
      auto& c = range[static_cast<std::size_t>(l)];
      c.min_k = 1 + static_cast<sfx::index_t>(r() % 3);
      c.max_k = c.min_k + static_cast<sfx::index_t>(r() % 8);
      c.block_bytes = 96;
      a[static_cast<std::size_t>(l)] = std::uniform_real_distribution<double>(0.1, 2.0)(r);
      p[static_cast<std::size_t>(l)] = std::uniform_real_distribution<double>(0.5, 2.0)(r);
    }
    auto loss = [&](const V& k) {
      double s = 0;
      for (int l = 0; l < L; ++l)
        s += a[static_cast<std::size_t>(l)] /
             std::pow(double(k[static_cast<std::size_t>(l)]), p[static_cast<std::size_t>(l)]);
      return s;
    };
    V start(static_cast<std::size_t>(L));
    std::int64_t least = 0, most = 0;
    for (int l = 0; l < L; ++l) {
      const auto& c = range[static_cast<std::size_t>(l)];
      start[static_cast<std::size_t>(l)] =
          c.min_k + static_cast<sfx::index_t>(r() % static_cast<std::uint64_t>(c.max_k - c.min_k + 1));
      least += c.min_k * 96;
      most += c.max_k * 96;
    }
    std::int64_t start_bytes = 0;
    for (int l = 0; l < L; ++l) start_bytes += start[static_cast<std::size_t>(l)] * 96;
    const std::int64_t budget =
        start_bytes + static_cast<std::int64_t>(r() % static_cast<std::uint64_t>(most - start_bytes + 1)) / 2;
    double best = std::numeric_limits<double>::infinity();
    V k(static_cast<std::size_t>(L));
    std::function<void(int, std::int64_t)> walk = [&](int l, std::int64_t bytes) {
      if (l == L) {
        best = std::min(best, loss(k));
        return;
      }
      const auto& c = range[static_cast<std::size_t>(l)];
      for (sfx::index_t x = c.min_k; x <= c.max_k && bytes + x * 96 <= budget; ++x) {
        k[static_cast<std::size_t>(l)] = x;
        walk(l + 1, bytes + x * 96);
      }
    };
    walk(0, 0);
    cv::refine_options o;
    o.step = 1 + static_cast<sfx::index_t>(r() % 4);
    o.max_evaluations = 100000;
    std::set<V> called;
    bool repeated = false;
    const auto res = cv::refine_allocation(
        range, start, budget,
        [&](const V& kk) {
          repeated = repeated || !called.insert(kk).second;
          return loss(kk);
        },
        o);
    INFO("rep " << rep << " layers " << L << " budget " << budget << " least " << least);
    REQUIRE_FALSE(repeated);
    REQUIRE(res.evaluations == static_cast<std::int64_t>(called.size()));
    REQUIRE(res.loss == Approx(best).epsilon(1e-12));
    REQUIRE(res.loss == loss(res.k));
    REQUIRE(res.start_loss == loss(start));
    REQUIRE(res.bytes <= budget);
  }
  // A loss with interactions between layers and unequal block sizes: within bounds and budget, never
  // worse than the start, deterministic, and it stops at max_evaluations.
  const std::vector<cv::layer_range> range{{1, 12, 64}, {2, 10, 128}, {1, 16, 64}};
  auto coupled = [](const V& k) {
    const double x = double(k[0]), y = double(k[1]), z = double(k[2]);
    return 1.0 / x + 2.0 / y + 1.5 / z + 0.3 * std::abs(x - z) / (x + z) + 0.05 * x * y / 100.0;
  };
  const V start{4, 4, 4};
  const auto a = cv::refine_allocation(range, start, 4 * 64 + 4 * 128 + 4 * 64 + 64, coupled);
  const auto b = cv::refine_allocation(range, start, 4 * 64 + 4 * 128 + 4 * 64 + 64, coupled);
  REQUIRE(a.k == b.k);
  REQUIRE(a.loss < a.start_loss);
  REQUIRE(a.moves > 0);
  REQUIRE(a.bytes <= 4 * 64 + 4 * 128 + 4 * 64 + 64);
  REQUIRE(a.bytes == a.k[0] * 64 + a.k[1] * 128 + a.k[2] * 64);
  for (std::size_t l = 0; l < 3; ++l) REQUIRE((a.k[l] >= range[l].min_k && a.k[l] <= range[l].max_k));
  cv::refine_options few;
  few.max_evaluations = 3;
  REQUIRE(cv::refine_allocation(range, start, 10000, coupled, few).evaluations == 3);
  // Bad arguments.
  REQUIRE_ERROR(cv::refine_allocation(range, V{4, 4}, 10000, coupled), sfx::status::invalid_argument,
                "start has 2 layers, the bounds 3");
  REQUIRE_ERROR(cv::refine_allocation(range, V{4, 1, 4}, 10000, coupled), sfx::status::invalid_argument,
                "layer 1: start k 1 is outside [2, 10]");
  REQUIRE_ERROR(cv::refine_allocation(range, start, 100, coupled), sfx::status::invalid_argument,
                "over the budget");
  REQUIRE_ERROR(cv::refine_allocation({{3, 2, 64}}, V{3}, 10000, coupled), sfx::status::invalid_argument,
                "min_k <= max_k");
  REQUIRE_ERROR(cv::refine_allocation(range, start, 10000, [](const V&) { return NAN; }),
                sfx::status::invalid_argument, "not finite");
  cv::refine_options zero;
  zero.step = 0;
  REQUIRE_ERROR(cv::refine_allocation(range, start, 10000, coupled, zero), sfx::status::invalid_argument,
                "step and max_evaluations");
}

TEST_CASE("model conversion: layer lists, name patterns, report curves, block bytes", "[convert][layers]") {
  namespace cv = sparse_ffn::convert;
  using V = std::vector<sfx::index_t>;
  REQUIRE(cv::parse_layers("0-5") == V{0, 1, 2, 3, 4, 5});
  REQUIRE(cv::parse_layers("3,0-1,7") == V{3, 0, 1, 7});
  REQUIRE(cv::parse_layers("12") == V{12});
  for (const char* bad :
       {"", ",", "1,", ",1", "2-1", "1-1-2", "1,1", "0-3,2", "-1", "a", "1 ", "+1", "65536", "1234567"})
    REQUIRE_THROWS_MATCHES(cv::parse_layers(bad), sfx::error,
                           Catch::Matchers::Predicate<sfx::error>([](const sfx::error& e) {
                             return e.code() == sfx::status::invalid_argument;
                           }));
  REQUIRE(cv::layer_name("encoder.layer.{i}.intermediate.dense.weight", 11) ==
          "encoder.layer.11.intermediate.dense.weight");
  REQUIRE(cv::layer_name("h{i}/x{i}", 3) == "h3/x3");
  REQUIRE(cv::layer_name("{i", 3) == "{i");
  REQUIRE(cv::has_layer_slot("a{i}"));
  REQUIRE(!cv::has_layer_slot("a{j}"));
  REQUIRE(!cv::has_layer_slot("{ i}"));

  // Bytes of a block: rows × what a file stores per row.
  REQUIRE(cv::block_bytes<float>(100, 16, false) == 2 * 16 * 100 * 4);
  REQUIRE(cv::block_bytes<sfx::bfloat16_t>(100, 16, true) == 3 * 16 * 100 * 2);
  REQUIRE(cv::block_bytes<sfx::q8_t>(100, 16, false) ==
          2 * 16 * sfx::row_format<sfx::q8_t>::payload_bytes(100));
  REQUIRE(cv::block_bytes<sfx::q4_t>(4096, 64, false) == 2 * 64 * (2048 + 128 * 2));

  // The curve of one split and selector: its rows only, each k once, ascending; min_k at least 1.
  std::vector<cv::quality_row> rows;
  auto row = [&](const char* split, const char* sel, sfx::index_t k, double e) {
    cv::quality_row r;
    r.split = split;
    r.selector = sel;
    r.k = k;
    r.rel_error = e;
    rows.push_back(r);
  };
  row("kmeans", "avg_k", 4, 0.2);
  row("kmeans", "avg_k", 2, 0.5);
  row("kmeans", "avg_k", 2, 0.5);  // two densities rounding to the same k
  row("kmeans", "oracle", 3, 0.1);
  row("random", "avg_k", 1, 0.9);
  const cv::layer_curve c = cv::report_curve(rows, "kmeans", "avg_k", 0, 96);
  REQUIRE(c.k == V{2, 4});
  REQUIRE(c.error == std::vector<double>{0.5, 0.2});
  REQUIRE(c.min_k == 1);
  REQUIRE(c.block_bytes == 96);
  REQUIRE(cv::report_curve(rows, "kmeans", "avg_k", 3, 96).min_k == 3);
  REQUIRE_THROWS_AS(cv::report_curve(rows, "kmeans", "linear", 0, 96), sfx::error);
  row("kmeans", "linear", 2, std::numeric_limits<double>::infinity());
  REQUIRE_THROWS_WITH(cv::report_curve(rows, "kmeans", "linear", 0, 96), Catch::Contains("not finite"));
}

TEST_CASE("quality report: the error at every k equals the routed forward's, pinned or not, plain or gated",
          "[convert][report]") {
  // evaluate_split gets every k of every selector from one pass over the blocks' output contributions;
  // here each (selector, k) is recomputed the direct way: the reference forward of the packed model with
  // that selector and k, its output against the dense FFN's, in float64.
  auto run = [](auto act_tag, bool gated, sfx::index_t pinned, std::uint64_t seed) {
    using Act = typename decltype(act_tag)::type;
    constexpr int g = 16;
    const sfx::index_t d = 48, F = 8 * g, n = 400;
    auto rng = test::rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    sfx::dense_ffn<float> dense(d, F, gated, true);
    for (auto* v : {&dense.w1, &dense.w2, &dense.w3, &dense.b1, &dense.b2, &dense.b3})
      for (auto& e : *v) e = nd(rng) * 0.2f;
    std::vector<float> x(static_cast<std::size_t>(n * d));
    for (auto& e : x) e = nd(rng);
    std::vector<std::int32_t> perm(static_cast<std::size_t>(F));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    cv::quality_options qo;
    qo.densities = {0.125, 0.25, 0.5, 0.75, 0.875, 1.0};
    qo.fit_routers = false;
    const auto rows = cv::evaluate_split<Act>(dense.view(), perm, g, x.data(), n, "random", qo, pinned);
    sfx::pack_options po{g};
    po.permutation = perm.data();
    po.pinned = pinned;
    const auto model = sfx::pack<float>(dense.view(), po);
    const sfx::index_t n_eval = cv::held_out_tokens(n, qo.held_out);
    const float* xe = x.data() + (n - n_eval) * d;
    std::vector<float> y_dense(static_cast<std::size_t>(n_eval * d)), y(y_dense.size());
    sfx::cpu::dense_forward<Act>(dense.view(), n_eval, xe, y_dense.data());
    double norm = 0;
    for (float v : y_dense) norm += double(v) * v;
    REQUIRE(rows.size() == 3 * qo.densities.size());  // oracle, avg_k, similarity
    int checked = 0;
    for (const auto& r : rows) {
      if (r.selector == "similarity") continue;
      sfx::route_args a;
      a.k = r.k;
      if (r.selector == "oracle")
        sfx::cpu::reference_forward<sfx::policy<g, sfx::select::oracle, float, Act>>(model.view(), n_eval, xe,
                                                                                     y.data(), a);
      else
        sfx::cpu::reference_forward<sfx::policy<g, sfx::select::avg_k, float, Act>>(model.view(), n_eval, xe,
                                                                                    y.data(), a);
      double err = 0;
      for (std::size_t i = 0; i < y.size(); ++i)
        err += (double(y[i]) - y_dense[i]) * (double(y[i]) - y_dense[i]);
      const double want = std::sqrt(err / norm);
      INFO(r.selector << " k=" << r.k << " pinned=" << pinned << ": report " << r.rel_error << ", direct "
                      << want);
      REQUIRE(r.pinned == pinned);
      REQUIRE(std::abs(r.rel_error - want) <= 1e-4 * want + 1e-5);
      if (r.k == model.layout().num_blocks) REQUIRE(r.rel_error < 1e-5);
      ++checked;
    }
    REQUIRE(checked == 2 * static_cast<int>(qo.densities.size()));
  };
  run(sfx::type_tag<sfx::act::relu>{}, false, 0, 31);
  run(sfx::type_tag<sfx::act::gelu_erf>{}, false, 1, 32);
  run(sfx::type_tag<sfx::act::swiglu>{}, true, 2, 33);
}

namespace {

/// The converter's dense passes (neuron_activations, block_mass with its dense output, block
/// contributions) against the library's forward on the identity routing table, in double where the
/// reference is computed here: odd d (not a multiple of the kernels' 16-float lines), gated and not.
template <class Act>
void check_dense_passes(sfx::index_t d, sfx::index_t g, sfx::index_t B, sfx::index_t n, std::uint64_t seed) {
  auto r = test::rng(seed);
  const sfx::index_t F = B * g;
  const auto dense = test::random_dense<float>(r, d, F, Act::gated, true);
  const auto perm = test::random_perm(r, F);
  sfx::pack_options po{g};
  po.permutation = perm.data();
  const auto model = sfx::pack<float>(dense.view(), po);
  const auto w = model.view();
  std::vector<float> x(static_cast<std::size_t>(n * d));
  test::fill_normal(x, r, 1.0);
  INFO("act " << Act::name << " d " << d << " g " << g << " B " << B << " n " << n);
  // Reference activations in double from the packed rows; the forward's y for the dense output.
  const auto h = cv::neuron_activations<Act>(model, x.data(), n);
  std::vector<float> y_ref(x.size()), y(x.size());
  std::vector<sfx::block_index_t> table(static_cast<std::size_t>(n * B));
  for (sfx::index_t t = 0; t < n; ++t)
    for (sfx::index_t b = 0; b < B; ++b)
      table[static_cast<std::size_t>(t * B + b)] = static_cast<sfx::block_index_t>(b);
  sfx::dispatch_block_size(g, [&](auto G) {
    using P = sfx::policy<decltype(G)::value, sfx::select::oracle, float, Act>;
    sfx::cpu::forward_routed<P>(w, n, x.data(), y_ref.data(),
                                sfx::const_routing_view{n, B, table.data(), nullptr});
  });
  const auto mass = cv::block_mass<Act>(model, x.data(), n, y.data());
  double worst_h = 0, worst_y = 0, worst_m = 0;
  for (sfx::index_t t = 0; t < n; ++t) {
    for (sfx::index_t b = 0; b < B; ++b) {
      double m = 0;
      for (sfx::index_t i = 0; i < g; ++i) {
        const sfx::index_t nr = b * g + i;
        double a = w.b1[nr], u = Act::gated ? w.b3[nr] : 0.0, mag = 1;
        for (sfx::index_t c = 0; c < d; ++c) {
          a += double(w.keys(b)[i * w.layout.ld + c]) * x[static_cast<std::size_t>(t * d + c)];
          if (Act::gated) u += double(w.up(b)[i * w.layout.ld + c]) * x[static_cast<std::size_t>(t * d + c)];
          mag += std::fabs(double(w.keys(b)[i * w.layout.ld + c]) * x[static_cast<std::size_t>(t * d + c)]);
        }
        const double want = sfx::activate<Act>(static_cast<float>(a), static_cast<float>(u));
        const double got = h[static_cast<std::size_t>(t * F + nr)];
        worst_h = std::max(worst_h, std::fabs(got - want) / (mag * (Act::gated ? 1 + std::fabs(u) : 1.0)));
        m += std::fabs(got);
      }
      worst_m = std::max(worst_m, std::fabs(m - mass[static_cast<std::size_t>(t * B + b)]) / (1 + m));
    }
    for (sfx::index_t c = 0; c < d; ++c) {
      const auto at = static_cast<std::size_t>(t * d + c);
      worst_y = std::max(worst_y, std::fabs(double(y[at]) - y_ref[at]) / (1 + std::fabs(double(y_ref[at]))));
    }
  }
  INFO("worst: h " << worst_h << ", mass " << worst_m << ", y " << worst_y);
  REQUIRE(worst_h < 1e-5);
  REQUIRE(worst_m < 1e-5);
  REQUIRE(worst_y < 1e-4);
  // Each block's contribution, summed over the blocks, is the output without b2.
  const sfx::index_t len = sfx::detail::round_up(d, 16);
  std::vector<float> c(static_cast<std::size_t>(n * B * len), NAN);
  cv::detail::block_contributions(w, h.data(), n, c.data());
  double worst_c = 0;
  for (sfx::index_t t = 0; t < n; ++t)
    for (sfx::index_t col = 0; col < len; ++col) {
      double s = 0;
      for (sfx::index_t b = 0; b < B; ++b) s += c[static_cast<std::size_t>((t * B + b) * len + col)];
      const double want = col < d ? double(y_ref[static_cast<std::size_t>(t * d + col)]) - w.b2[col] : 0.0;
      worst_c = std::max(worst_c, std::fabs(s - want) / (1 + std::fabs(want)));
    }
  INFO("worst contribution sum " << worst_c);
  REQUIRE(worst_c < 1e-4);
  // Each block's output norm ‖Σ_{i∈b} h_i v_i‖ (the "output" router target), against float64 from the
  // same activations; the Gram form's rounding scales with (Σ_i |h_i|·‖v_i‖)².
  std::vector<float> norms = cv::block_output_norms<Act>(model, x.data(), n);
  REQUIRE(static_cast<sfx::index_t>(norms.size()) == n * B);
  double worst_n = 0;
  for (sfx::index_t t = 0; t < n; ++t)
    for (sfx::index_t b = 0; b < B; ++b) {
      double ss = 0, scale = 0;
      std::vector<double> cb(static_cast<std::size_t>(d), 0.0);
      for (sfx::index_t i = 0; i < g; ++i) {
        const double hv = h[static_cast<std::size_t>(t * F + b * g + i)];
        double vn = 0;
        for (sfx::index_t col = 0; col < d; ++col) {
          const double v = w.values(b)[i * w.layout.ld + col];
          cb[static_cast<std::size_t>(col)] += hv * v;
          vn += v * v;
        }
        scale += std::fabs(hv) * std::sqrt(vn);
      }
      for (double e : cb) ss += e * e;
      const double got = norms[static_cast<std::size_t>(t * B + b)];
      worst_n = std::max(worst_n, std::fabs(got * got - ss) / (1e-30 + scale * scale));
    }
  INFO("worst output norm (squared, relative to the scale) " << worst_n);
  REQUIRE(worst_n < 1e-5);
}

}  // namespace

TEST_CASE("converter dense passes: activations, masses, dense output, block contributions, output norms",
          "[convert]") {
  check_dense_passes<sfx::act::gelu_erf>(37, 16, 5, 300, 0xd1);
  check_dense_passes<sfx::act::relu>(64, 64, 3, 7, 0xd2);
  check_dense_passes<sfx::act::swiglu>(21, 16, 4, 259, 0xd3);
  check_dense_passes<sfx::act::relu>(130, 1, 40, 20, 0xd4);
  // Wider than a key-panel segment (1024 inputs: two segments) and more value rows than a slab group
  // (512: two groups).
  check_dense_passes<sfx::act::gelu_erf>(1100, 16, 36, 40, 0xd5);
}
