// sparse_ffn — the MoEfication quality report: how well each split × selector keeps the dense FFN.
//
// For hidden states X [n × d_model] the tokens are split into a training part (routers are fitted on
// it) and a held-out part (everything is measured on it). For every split (a neuron permutation) and
// selector, and every density in `densities` (fraction of blocks kept, k = round(density · B) ≥ 1,
// and ≥ P when the first P blocks are pinned: they count in k and every selector keeps them):
//   coverage   mean over tokens of the share of the dense activation mass in the selected blocks
//   rel_error  ‖Y_sparse − Y_dense‖_F / ‖Y_dense‖_F over the held-out tokens
// Selectors: oracle (MoEfication ground truth), avg_k (mean key · x + mean bias), similarity
// (mean normalised key · x), linear (fitted linear router), mlp (fitted MoEfication MLP router).
// The errors come from each block's output contribution, computed with the library's own kernels
// (forward_routed on the float model), for every k of every selector in one pass (evaluate_split).
#pragma once

#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../cpu/forward.hpp"
#include "../detail/finite.hpp"
#include "../dispatch.hpp"
#include "../pack.hpp"
#include "router_fit.hpp"

namespace sparse_ffn {
namespace convert {

struct quality_row {
  std::string split, selector;
  double density = 0;
  index_t k = 0;
  double coverage = 0, rel_error = 0;
  index_t pinned = 0;  ///< pinned blocks among the k
};

struct quality_options {
  std::vector<double> densities{0.10, 0.20, 0.25, 0.30, 0.50};
  double held_out = 0.25;      ///< fraction of tokens measured (the rest train the routers)
  bool fit_routers = true;     ///< also report the linear and MLP routers
  router_train_options train;  ///< router training
  progress_fn progress;        ///< optional
};

/// Tokens measured by the report: the last round(n · held_out) of the n tokens (at least 1); the ones
/// before them are the fit share, where routers are trained.
inline index_t held_out_tokens(index_t n, double held_out) {
  return std::max<index_t>(1, static_cast<index_t>(std::llround(double(n) * held_out)));
}

/// Densities in (0, 1] (finite), at least one; held_out in (0, 1).
inline void check_quality_options(const quality_options& o) {
  sparse_ffn::detail::require(!o.densities.empty(), status::invalid_argument,
                              "the report needs at least one density");
  for (double p : o.densities)
    sparse_ffn::detail::require(std::isfinite(p) && p > 0 && p <= 1, status::invalid_argument, "density ", p,
                                " is outside (0, 1]");
  sparse_ffn::detail::require(std::isfinite(o.held_out) && o.held_out > 0 && o.held_out < 1,
                              status::invalid_argument, "held_out (", o.held_out, ") must be in (0, 1)");
  sparse_ffn::detail::require(o.train.target == "mass" || o.train.target == "output",
                              status::invalid_argument, "router target '", o.train.target,
                              "' is neither mass nor output");
}

/// Runs a and b, on two threads where OpenMP has them. An exception in either is rethrown here (the
/// first one's, if both throw) after both have finished.
template <class A, class Bf>
void run_both(A&& a, Bf&& b) {
  std::exception_ptr err[2];
  auto guarded = [&](int i, auto& f) {
    try {
      f();
    } catch (...) {
      err[i] = std::current_exception();
    }
  };
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel sections num_threads(2)
  {
#pragma omp section
    guarded(0, a);
#pragma omp section
    guarded(1, b);
  }
#else
  guarded(0, a);
  guarded(1, b);
#endif
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
}

/// The routers evaluate_split fitted (on the fit share), for a caller that installs one of them.
struct fitted_routers {
  bool fitted = false;
  linear_router linear;
  mlp_router mlp;
};

/// Evaluates one split (permutation) of a dense float FFN with activation Act on tokens x [n × d].
/// `mass` [n × B] and `y_dense` [n × d], when given, are the split's block masses and the dense
/// output (dense_reference computes them for several splits in one pass); otherwise they are
/// computed here. Their rows of the fit share (the tokens before the held-out ones) are read only to
/// fit the routers (o.fit_routers); without, only the held-out tokens' dense pass runs.
template <class Act>
std::vector<quality_row> evaluate_split(const dense_ffn_view<float>& dense,
                                        const std::vector<std::int32_t>& perm, index_t g, const float* x,
                                        index_t n, const std::string& split_name, const quality_options& o,
                                        index_t pinned = 0, const float* mass_in = nullptr,
                                        const float* y_dense_in = nullptr, fitted_routers* fitted = nullptr) {
  sparse_ffn::detail::require(n >= 2, status::invalid_shape, "the quality report needs at least 2 tokens");
  check_quality_options(o);
  pack_options po{g};
  po.permutation = perm.data();
  po.pinned = pinned;
  const blocked_ffn<float> model = pack<float>(dense, po);
  const block_layout& l = model.layout();
  const index_t B = l.num_blocks, d = l.d_model;
  const index_t n_eval = held_out_tokens(n, o.held_out);
  const index_t n_train = n - n_eval;
  const float* x_eval = x + n_train * d;
  sparse_ffn::detail::require((mass_in == nullptr) == (y_dense_in == nullptr), status::invalid_argument,
                              "evaluate_split: give both the block masses and the dense output, or neither");
  const bool fit = o.fit_routers && n_train > 0;
  std::vector<float> y_dense_own, mass_own;
  if (!mass_in) {
    if (o.progress) o.progress("quality " + split_name + " (dense pass)", 0.0);
    const index_t from = fit ? 0 : n_train;  // rows [0, from) stay zero: not read
    y_dense_own.assign(static_cast<std::size_t>(n * d), 0.0f);
    mass_own.assign(static_cast<std::size_t>(n * B), 0.0f);
    const auto m = block_mass<Act>(model, x + from * d, n - from, y_dense_own.data() + from * d);
    std::copy(m.begin(), m.end(), mass_own.begin() + from * B);
  }
  const float* y_dense = mass_in ? y_dense_in : y_dense_own.data();
  const float* mass = mass_in ? mass_in : mass_own.data();
  // Finite weights and inputs can still overflow float; the report's ratios would then be NaN.
  sparse_ffn::detail::require_finite(y_dense, n * d, "the dense FFN's output (overflow)", {n, d});
  sparse_ffn::detail::require_finite(mass, n * B, "the block activation mass (overflow)", {n, B});
  const float* mass_eval = mass + n_train * B;

  // Scores of every selector on the held-out tokens.
  std::vector<std::pair<std::string, std::vector<float>>> scores;
  scores.push_back({"oracle", std::vector<float>(mass_eval, mass_eval + n_eval * B)});
  // With output targets, the routers learn the output norms (fit share) and the report shows the
  // oracle of those (held-out share): one pass over all the tokens, or the held-out ones without routers.
  const bool output_target = o.train.target == "output";
  const std::vector<float> out_norms = !output_target ? std::vector<float>()
                                       : fit          ? block_output_norms<Act>(model, x, n)
                                                      : block_output_norms<Act>(model, x_eval, n_eval);
  if (output_target)
    scores.push_back({"oracle_output", std::vector<float>(out_norms.end() - n_eval * B, out_norms.end())});
  {
    std::vector<float> s(static_cast<std::size_t>(n_eval * B));
    linear_router avg;
    avg.d_model = d;
    avg.num_blocks = B;
    avg.w = model.centroids_float();
    avg.b = model.centroid_bias().empty() ? std::vector<float>(static_cast<std::size_t>(B), 0.0f)
                                          : model.centroid_bias();
    avg.scores(x_eval, n_eval, s.data());
    scores.push_back({"avg_k", s});
  }
  const std::vector<float> sim = similarity_rows(model.view());
  {
    linear_router r;
    r.d_model = d;
    r.num_blocks = B;
    r.w = sim;
    r.b.assign(static_cast<std::size_t>(B), 0.0f);
    std::vector<float> s(static_cast<std::size_t>(n_eval * B));
    r.scores(x_eval, n_eval, s.data());
    scores.push_back({"similarity", s});
  }
  if (fit) {
    // The two routers train side by side, one thread each (each fit is single-threaded), so the
    // result does not depend on the thread count.
    linear_router lin;
    mlp_router mlp;
    const float* targets = output_target ? out_norms.data() : mass;
    run_both([&] { lin = fit_linear_router(x, targets, n_train, d, B, o.train, sim.data()); },
             [&] { mlp = fit_mlp_router(x, targets, n_train, d, B, o.train, sim.data()); });
    std::vector<float> s(static_cast<std::size_t>(n_eval * B));
    lin.scores(x_eval, n_eval, s.data());
    scores.push_back({"linear", s});
    mlp.scores(x_eval, n_eval, s.data());
    scores.push_back({"mlp", s});
    if (fitted) *fitted = {true, lin, mlp};
  }

  // Pinned blocks rank first under every selector (selector/selector.hpp).
  for (auto& sc : scores)
    for (index_t t = 0; t < n_eval; ++t)
      for (index_t b = 0; b < pinned; ++b)
        sc.second[static_cast<std::size_t>(t * B + b)] = ranking_score(0.0f, b, pinned);
  // The error at every k in one pass per split, not one sparse forward per selector and density: the
  // sparse output with the first k blocks of a ranking r is the dense output minus the contributions
  // c_b = W2_b · act(W1_b x + b1_b) of the others, so err_t(k) = ‖Σ_{j ≥ k} c_{r_j}‖², R_B = 0,
  // R_k = R_{k+1} + c_{r_k}. The contributions come from the converter's dense pass of the model
  // (detail::dense_float_pass: every activation once) and the value rows of each block apart
  // (detail::block_contributions), in chunks of tokens.
  const std::size_t S = scores.size(), Bs = static_cast<std::size_t>(B);
  std::vector<double> tok_err(S * static_cast<std::size_t>(n_eval) * (Bs + 1), 0.0);  // [selector][t][k]
  {
    const index_t len = sparse_ffn::detail::round_up(d, 16), F = l.d_ff;
    // Chunks of at least 64 tokens (the dense pass's outer-product kernel needs 32 or more; with the 2
    // tokens that 8 MiB of contributions hold on a 4096 × 11008 layer, the dense pass and the first
    // split's rows took 404 s instead of 117 s) while the contributions stay within 256 MiB; 8 MiB where
    // that already holds more tokens (MiniLM: 227, unchanged).
    const index_t per_token = B * len;
    const index_t chunk = std::max<index_t>(
        1, std::min<index_t>(n_eval, std::max(std::min<index_t>(64, (index_t{1} << 26) / per_token),
                                              (index_t{1} << 21) / per_token)));
    std::vector<float> hq(static_cast<std::size_t>(chunk * F)), c(static_cast<std::size_t>(chunk * B * len));
    // Per-thread scratch (ranking, top-k scratch, tail sum), allocated once, not once per token.
    const auto threads = static_cast<std::size_t>(cpu::detail::max_threads());
    std::vector<block_index_t> orders(threads * Bs), scratches(threads * Bs);
    std::vector<float> tails(threads * static_cast<std::size_t>(d));
    const auto& ops = detail::level1();
    for (index_t t0 = 0; t0 < n_eval; t0 += chunk) {
      const index_t m = std::min(chunk, n_eval - t0);
      detail::dense_float_pass<Act>(model.view(), x_eval + t0 * d, m, hq.data(), nullptr);
      detail::block_contributions(model.view(), hq.data(), m, c.data());
#if SPARSE_FFN_HAS_OPENMP
#pragma omp parallel for schedule(static)
#endif
      for (index_t t = 0; t < m; ++t) {
        const auto me = static_cast<std::size_t>(cpu::detail::thread_id());
        block_index_t* order = orders.data() + me * Bs;
        block_index_t* scratch = scratches.data() + me * Bs;
        float* R = tails.data() + me * static_cast<std::size_t>(d);
        const float* ct = c.data() + t * B * len;
        for (std::size_t si = 0; si < S; ++si) {
          topk(scores[si].second.data() + (t0 + t) * B, B, B, order, scratch);
          double* e = tok_err.data() +
                      (si * static_cast<std::size_t>(n_eval) + static_cast<std::size_t>(t0 + t)) * (Bs + 1);
          std::fill(R, R + d, 0.0f);
          for (index_t k = B - 1; k >= 1; --k) {
            // R += c_b (vaxpy with 1: each sum rounded once, as R[j] += c[j]), then ‖R‖² on the ISA's
            // vectorised dot product (a fixed order: the same bits on any thread count).
            ops.vaxpy(1.0f, ct + order[static_cast<std::size_t>(k)] * len, R, d);
            e[k] = double(ops.vdot(R, R, d));
          }
        }
      }
    }
  }
  std::vector<quality_row> rows;
  double dense_norm = 0;
  for (index_t i = 0; i < n_eval * d; ++i)
    dense_norm += double(y_dense[static_cast<std::size_t>(n_train * d + i)]) *
                  y_dense[static_cast<std::size_t>(n_train * d + i)];
  for (std::size_t si = 0; si < S; ++si) {
    const std::string& name = scores[si].first;
    const std::vector<float>& sc = scores[si].second;
    for (double p : o.densities) {
      const index_t k = std::min<index_t>(
          B,
          std::max<index_t>(std::max<index_t>(1, pinned), static_cast<index_t>(std::llround(p * double(B)))));
      double err = 0;  // summed in token order: the same bits on any thread count
      for (index_t t = 0; t < n_eval; ++t)
        err += tok_err[(si * static_cast<std::size_t>(n_eval) + static_cast<std::size_t>(t)) * (Bs + 1) +
                       static_cast<std::size_t>(k)];
      quality_row row;
      row.split = split_name;
      row.selector = name;
      row.density = p;
      row.k = k;
      row.pinned = pinned;
      row.coverage = topk_coverage(sc.data(), mass_eval, n_eval, B, k);
      // A zero dense output: any error is infinitely large relative to it, none is 0.
      row.rel_error = dense_norm > 0 ? std::sqrt(err / dense_norm)
                                     : (err > 0 ? std::numeric_limits<double>::infinity() : 0.0);
      rows.push_back(row);
    }
    if (o.progress) o.progress("quality " + split_name + " " + name, double(si + 1) / double(S));
  }
  return rows;
}

/// The rows as a table.
inline std::string format_report(const std::vector<quality_row>& rows) {
  std::ostringstream os;
  char line[160];
  std::snprintf(line, sizeof line, "%-14s %-13s %8s %5s %10s %10s\n", "split", "selector", "density", "k",
                "coverage", "rel.error");
  os << line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%-14s %-13s %7.0f%% %5lld %10.4f %10.4f\n", r.split.c_str(),
                  r.selector.c_str(), 100 * r.density, static_cast<long long>(r.k), r.coverage, r.rel_error);
    os << line;
  }
  return os.str();
}

namespace detail {
/// A JSON number, or null for NaN/Inf (which JSON cannot represent).
inline std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}
/// A JSON string literal (quotes, backslashes and control characters escaped).
inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}
}  // namespace detail

/// What the rows were measured on (written into the JSON report beside them).
struct report_context {
  index_t g = 0;                       ///< neurons per block
  index_t tokens = 0;                  ///< tokens given to the conversion
  index_t fit_tokens = 0;              ///< the first ones: routers are fitted on these
  index_t held_out_tokens = 0;         ///< the last ones: every row is measured on these
  double held_out = 0;                 ///< the requested held-out share
  index_t pinned_blocks = 0;           ///< blocks every token computes (convert/pin.hpp)
  index_t hot_neurons = 0;             ///< neurons over the pinning threshold
  double pinned_share = 0;             ///< the pinned neurons' share of the output energy (fit tokens)
  double max_energy_ratio = 0;         ///< the largest neuron energy / the mean (fit tokens; 0: not measured)
  std::string router_target = "mass";  ///< what the fitted routers learned (router_train_options::target)
};

/// The rows as JSON: {"g":…, "tokens":…, "fit_tokens":…, "held_out_tokens":…, "held_out":…,
/// "pinned_blocks":…, "hot_neurons":…, "pinned_share":…, "max_energy_ratio":…, "router_target":…,
/// "rows": [{"split":…, "selector":…, "density":…, "k":…, "coverage":…, "rel_error":…, "pinned":…}, …]} (the
/// context fields only when `ctx` is given). A value that is not finite (rel_error of an all-zero
/// dense output) is written as null.
inline std::string report_json(const std::vector<quality_row>& rows, const report_context* ctx = nullptr) {
  std::ostringstream os;
  os << "{";
  if (ctx)
    os << "\"g\": " << ctx->g << ", \"tokens\": " << ctx->tokens << ", \"fit_tokens\": " << ctx->fit_tokens
       << ", \"held_out_tokens\": " << ctx->held_out_tokens
       << ", \"held_out\": " << detail::json_number(ctx->held_out)
       << ", \"pinned_blocks\": " << ctx->pinned_blocks << ", \"hot_neurons\": " << ctx->hot_neurons
       << ", \"pinned_share\": " << detail::json_number(ctx->pinned_share)
       << ", \"max_energy_ratio\": " << detail::json_number(ctx->max_energy_ratio)
       << ", \"router_target\": " << detail::json_string(ctx->router_target) << ",\n ";
  os << "\"rows\": [";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    os << (i ? ",\n  " : "\n  ") << "{\"split\": " << detail::json_string(r.split)
       << ", \"selector\": " << detail::json_string(r.selector)
       << ", \"density\": " << detail::json_number(r.density) << ", \"k\": " << r.k
       << ", \"coverage\": " << detail::json_number(r.coverage)
       << ", \"rel_error\": " << detail::json_number(r.rel_error) << ", \"pinned\": " << r.pinned << "}";
  }
  os << "\n]}\n";
  return os.str();
}

}  // namespace convert
}  // namespace sparse_ffn
