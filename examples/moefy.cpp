// moefy — convert a trained dense FFN into a blocked sparse FFN (MoEfication), fit its router, report
// quality. `moefy --help` lists the options (examples/moefy_cli.hpp defines them):
//
//   moefy --in ckpt.safetensors --w1 NAME --w2 NAME [--w3 NAME] [--b1 NAME] [--b2 NAME] [--b3 NAME]
//         --hidden states.safetensors --hidden-name NAME [--max-tokens N]
//         --activation relu|gelu_erf|gelu_tanh|silu|swiglu|geglu  --g 1|16|32|64|128
//         [--split kmeans|coactivation|random] [--router avg_k|similarity|linear|mlp]
//         [--dtype f32|bf16|f16|q8|q4] [--seed N] [--iterations N] [--restarts N] [--epochs N]
//         [--router-target mass|output]
//         [--report-splits random,kmeans,coactivation] [--densities 0.1,0.2,0.25,0.3,0.5]
//         [--held-out 0.25 | --no-report] [--pin-ratio 64] [--max-pinned N]
//         --out blocked.safetensors [--report report.json] [--layers 0-5] [--budget 0.25 | --target-error
//         0.1]
//
// With --layers, every {i} in the tensor names, --hidden, --hidden-name and --out is the layer's index:
// all layers are checked first, then converted, then (with --budget) k is chosen per layer from their
// reports (convert/budget.hpp) and written into each file's metadata, and one report covers the model.
//
// Everything is checked before the conversion starts: every option's value (strictly), the output
// paths (their directory writable, none of them an input or each other, none a non-regular file),
// the input files and tensor names, their shapes and dtypes, the block size against d_ff, the
// activation against --w3, and every weight and hidden state finite. Outputs are written atomically:
// a crash or a full disk leaves the previous file intact. Exit status: 0 done, 1 error, 2 bad usage.
#include "moefy_cli.hpp"

#include <sparse_ffn/convert/pipeline.hpp>
#include <sparse_ffn/io/file.hpp>
#include <sparse_ffn/io/model_io.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace sf = sparse_ffn;

namespace {

/// Checks that need the files but not the work: outputs, tensors, shapes, g, gating, METIS.
void check_before_work(const moefy::options& o, const sf::io::safetensors_file& ckpt,
                       const sf::io::safetensors_file& hfile) {
  using sf::detail::fail;
  using sf::detail::require;
  const std::vector<std::string> inputs{o.in, o.hidden};
  sf::io::check_output_path(o.out, inputs);
  if (!o.report.empty()) {
    sf::io::check_output_path(o.report, inputs);
    require(!sf::io::same_file(o.out, o.report), sf::status::invalid_argument,
            "--out and --report are the same file (", o.out, ")");
  }
#if !defined(SPARSE_FFN_WITH_METIS)
  bool coact = o.split == "coactivation";
  for (const auto& s : o.report_splits) coact = coact || s == "coactivation";
  require(!coact, sf::status::unsupported,
          "the coactivation split needs METIS, and this moefy was built without it");
#endif
  const sf::io::tensor_info& t1 = ckpt.info(o.w1);
  require(t1.shape.size() == 2, sf::status::invalid_shape, o.in, ": W1 '", o.w1,
          "' must be 2-D [d_ff, d_model]");
  const std::int64_t F = t1.shape[0], d = t1.shape[1];
  require(F > 0 && d > 0 && F % o.g == 0, sf::status::invalid_shape, o.in, ": d_ff = ", F,
          " (rows of W1) must be a positive multiple of --g ", o.g);
  const bool gated = sf::activation_is_gated(sf::parse_activation(o.activation));
  require(gated == !o.w3.empty(), sf::status::invalid_argument, "--activation ", o.activation, " is ",
          gated ? "gated and needs --w3" : "not gated; --w3 is only for swiglu/geglu");
  const sf::io::tensor_info& th = hfile.info(o.hidden_name);
  require(!th.shape.empty() && th.shape.back() == d, sf::status::invalid_shape, o.hidden, ": hidden states '",
          o.hidden_name, "' must have last dimension d_model = ", d);
  require(th.dtype == "F32" || th.dtype == "F16" || th.dtype == "BF16", sf::status::unsupported, o.hidden,
          ": hidden states '", o.hidden_name, "' have dtype ", th.dtype, "; expected F32, F16 or BF16");
  require(th.numel() / d >= 2, sf::status::invalid_shape, o.hidden,
          ": need at least 2 tokens of hidden states");
}

}  // namespace

namespace {

/// The conversion options moefy passes to the pipeline.
sf::convert::moefy_options pipeline_options(const moefy::options& o,
                                            const sf::convert::progress_fn& progress) {
  sf::convert::moefy_options mo;
  mo.g = o.g;
  mo.activation = sf::parse_activation(o.activation);
  mo.split = o.split;
  mo.router = o.router;
  mo.seed = o.seed;
  mo.kmeans_iterations = o.iterations;
  mo.kmeans_restarts = o.restarts;
  mo.quality.train.epochs = o.epochs;
  mo.quality.train.target = o.router_target;
  mo.quality.train.seed = o.seed;
  mo.quality.densities = o.densities;
  mo.quality.held_out = o.held_out;
  mo.quality.progress = progress;
  mo.quality.train.progress = progress;
  mo.report = !o.no_report;
  mo.quality.fit_routers = !o.no_report_routers;
  mo.report_splits = o.report_splits;
  mo.progress = progress;
  mo.pin.ratio = o.pin_ratio;
  mo.pin.max_blocks = o.max_pinned;
  return mo;
}

/// Calls f(T{}) with the weight type of --dtype (q8/q4 are not in the run-time dtype dispatch).
template <class F>
void with_dtype(const std::string& dtype, F&& f) {
  if (dtype == "q8") {
    f(sf::q8_t{});
  } else if (dtype == "q4") {
    f(sf::q4_t{});
  } else {
    sf::dispatch_dtype(sf::parse_dtype(dtype), [&](auto t) { f(typename decltype(t)::type{}); });
  }
}

/// One layer's conversion, kept until its file is written (the dense weights are re-read then).
struct converted {
  moefy::options names;  ///< the options with this layer's names
  sf::convert::moefy_result result;
  sf::convert::layer_report report;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moefy"};
  moefy::options o;
  try {
    moefy::parse(argc, argv, app, o);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::string stage;  // "layer 3: " in a multi-layer run
  auto progress = [&](const std::string& what, double f) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "[%7.1fs] %-22s %5.1f%%\n", s, (stage + what).c_str(), 100 * f);
  };
  try {
    const bool multi = !o.layers.empty();
    const std::vector<sf::index_t> layers =
        multi ? sf::convert::parse_layers(o.layers) : std::vector<sf::index_t>{0};
    const auto ckpt = sf::io::safetensors_file::open(o.in);
    std::map<std::string, sf::io::safetensors_file> hidden_files;
    std::vector<converted> jobs(layers.size());
    // Every layer's names, tensors and output paths are checked before any conversion starts.
    std::vector<std::string> outs;
    std::int64_t all_bytes = 0, least_bytes = 0;  // every block of every layer; one block per layer
    for (std::size_t li = 0; li < layers.size(); ++li) {
      jobs[li].names = multi ? moefy::for_layer(o, layers[li]) : o;
      const moefy::options& lo = jobs[li].names;
      if (!hidden_files.count(lo.hidden))
        hidden_files.emplace(lo.hidden, sf::io::safetensors_file::open(lo.hidden));
      check_before_work(lo, ckpt, hidden_files.at(lo.hidden));
      for (const auto& prev : outs)
        sf::detail::require(!sf::io::same_file(prev, lo.out), sf::status::invalid_argument, "--out of layer ",
                            layers[li], " (", lo.out, ") is the same file as another layer's (", prev, ")");
      outs.push_back(lo.out);
      const auto& w1 = ckpt.info(lo.w1).shape;  // [d_ff, d_model], checked above
      with_dtype(o.dtype, [&](auto t) {
        jobs[li].report.block_bytes = sf::convert::block_bytes<decltype(t)>(
            static_cast<sf::index_t>(w1[1]), static_cast<sf::index_t>(o.g), !lo.w3.empty());
      });
      jobs[li].report.num_blocks = static_cast<sf::index_t>(w1[0] / o.g);
      all_bytes += jobs[li].report.num_blocks * jobs[li].report.block_bytes;
      least_bytes += jobs[li].report.block_bytes;
    }
    // The budget: known before the work, so one too small for a block per layer is refused now.
    sf::convert::budget_report budget;
    const bool budgeted = o.budget > 0 || o.target_error > 0;
    if (o.target_error > 0) {
      budget.target_error = o.target_error;
      budget.budget = all_bytes;
      budget.split = o.split;
      budget.selector = o.router;
    }
    if (o.budget > 0) {
      budget.density = o.budget;
      budget.budget = static_cast<std::int64_t>(std::floor(o.budget * static_cast<double>(all_bytes)));
      budget.split = o.split;
      budget.selector = o.router;
      sf::detail::require(budget.budget >= least_bytes, sf::status::invalid_argument, "--budget ", o.budget,
                          " allows ", budget.budget,
                          " bytes, below the smallest allowed model (one block per layer: ", least_bytes,
                          " bytes)");
    }
    for (const auto& out : outs)
      for (const auto& [path, file] : hidden_files) {
        (void)file;
        sf::io::check_output_path(out, {o.in, path});
      }

    for (std::size_t li = 0; li < layers.size(); ++li) {
      converted& job = jobs[li];
      const moefy::options& lo = job.names;
      if (multi) stage = "layer " + std::to_string(layers[li]) + ": ";
      const sf::io::dense_names names{lo.w1, lo.b1, lo.w2, lo.b2, lo.w3, lo.b3};
      const sf::dense_ffn<float> dense = sf::io::load_dense(ckpt, names);
      progress("loaded dense FFN", 1.0);
      std::vector<float> x = hidden_files.at(lo.hidden).read_finite(lo.hidden_name);
      sf::index_t n = static_cast<sf::index_t>(x.size()) / dense.d_model;
      if (n > o.max_tokens) {
        std::fprintf(stderr, "moefy: %susing the first %lld of %lld tokens (--max-tokens)\n", stage.c_str(),
                     static_cast<long long>(o.max_tokens), static_cast<long long>(n));
        n = o.max_tokens;
        x.resize(static_cast<std::size_t>(n * dense.d_model));
      }
      progress("loaded hidden states", 1.0);
      const sf::convert::moefy_options mo = pipeline_options(lo, progress);
      job.result = sf::convert::moefy(dense, x.data(), n, mo);
      const sf::convert::moefy_result& r = job.result;
      std::fprintf(
          stderr,
          "moefy: %s%lld pinned block(s) for %lld hot neuron(s) (energy >= %g x mean; largest %.1f x), "
          "%.1f%% of the output energy\n",
          stage.c_str(), static_cast<long long>(r.pinned.blocks), static_cast<long long>(r.pinned.hot),
          o.pin_ratio, r.pinned.max_ratio, 100 * r.pinned.pinned_share);
      job.report.layer = layers[li];
      job.report.out = lo.out;
      job.report.rows = r.report;
      job.report.context = r.context;
      if (mo.report) {
        if (multi) std::printf("layer %lld\n", static_cast<long long>(layers[li]));
        std::printf("%s", sf::convert::format_report(r.report).c_str());
        std::fflush(stdout);  // before the next layer's progress on stderr
      }
    }
    stage.clear();

    // The budget: k per layer from the report curves of the installed split and router.
    if (budgeted) {
      std::vector<sf::convert::layer_curve> curves;
      for (const auto& job : jobs)
        curves.push_back(sf::convert::report_curve(job.result.report, o.split, o.router,
                                                   job.result.pinned.blocks, job.report.block_bytes));
      // --target-error E: the layers' RMS error <= E, i.e. Σ e_l² <= L·E² (unit weights).
      budget.result = o.target_error > 0
                          ? sf::convert::allocate_blocks_for_error(
                                curves, static_cast<double>(curves.size()) * o.target_error * o.target_error,
                                budget.budget)
                          : sf::convert::allocate_blocks(curves, budget.budget);
      std::vector<sf::convert::layer_report> reps;
      for (const auto& job : jobs) reps.push_back(job.report);
      std::printf("%s", sf::convert::format_budget(reps, budget).c_str());
      std::fflush(stdout);
    }

    for (std::size_t li = 0; li < jobs.size(); ++li) {
      const converted& job = jobs[li];
      const moefy::options& lo = job.names;
      const sf::io::dense_names names{lo.w1, lo.b1, lo.w2, lo.b2, lo.w3, lo.b3};
      const sf::dense_ffn<float> dense = sf::io::load_dense(ckpt, names);
      std::map<std::string, std::string> meta = {{"activation", o.activation},
                                                 {"split", o.split},
                                                 {"router", o.router},
                                                 {"selector", o.router == "mlp" ? "routed" : "avg_k"},
                                                 {"source", o.in}};
      if (multi) meta["layer"] = std::to_string(layers[li]);
      if (budgeted) meta["k"] = std::to_string(budget.result.k[li]);
      const sf::convert::mlp_router* mlp = job.result.has_mlp ? &job.result.mlp : nullptr;
      with_dtype(o.dtype, [&](auto t) {
        using T = decltype(t);
        sf::io::save_blocked(lo.out, sf::convert::moefy_pack<T>(dense, job.result), meta, mlp);
      });
      progress("wrote " + lo.out, 1.0);
    }
    if (!o.report.empty()) {
      if (multi) {
        std::vector<sf::convert::layer_report> reps;
        for (const auto& job : jobs) reps.push_back(job.report);
        sf::io::atomic_write(o.report, sf::convert::model_report_json(reps, budgeted ? &budget : nullptr));
      } else {
        std::string json = sf::convert::report_json(jobs[0].result.report, &jobs[0].result.context);
        if (budgeted) {  // the single-layer report keeps its format; the budget's k is added
          json.erase(json.find_last_of('}'));
          json += ", \"budget\": {\"density\": " + sf::convert::detail::json_number(o.budget) +
                  ", \"target_error\": " + sf::convert::detail::json_number(o.target_error) +
                  ", \"k\": " + std::to_string(budget.result.k[0]) + "}}\n";
        }
        sf::io::atomic_write(o.report, json);
      }
      progress("wrote " + o.report, 1.0);
    }
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moefy: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moefy: %s\n", e.what());
    return 1;
  }
  return 0;
}
