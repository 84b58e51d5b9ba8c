// moefy — convert a trained dense FFN into a blocked sparse FFN (MoEfication), fit its router, report
// quality. `moefy --help` lists the options (examples/moefy_cli.hpp defines them):
//
//   moefy --in ckpt.safetensors --w1 NAME --w2 NAME [--w3 NAME] [--b1 NAME] [--b2 NAME] [--b3 NAME]
//         --hidden states.safetensors --hidden-name NAME [--max-tokens N]
//         --activation relu|gelu_erf|gelu_tanh|silu|swiglu|geglu  --g 1|16|32|64|128
//         [--split kmeans|coactivation|random] [--router avg_k|similarity|linear|mlp]
//         [--dtype f32|bf16|f16|q8|q4] [--seed N] [--iterations N] [--restarts N] [--epochs N]
//         [--report-splits random,kmeans,coactivation] [--densities 0.1,0.2,0.25,0.3,0.5]
//         [--held-out 0.25 | --no-report] [--pin-ratio 64] [--max-pinned N]
//         --out blocked.safetensors [--report report.json]
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
  auto progress = [&](const std::string& what, double f) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "[%7.1fs] %-22s %5.1f%%\n", s, what.c_str(), 100 * f);
  };
  try {
    const auto ckpt = sf::io::safetensors_file::open(o.in);
    const auto hfile = sf::io::safetensors_file::open(o.hidden);
    check_before_work(o, ckpt, hfile);

    const sf::io::dense_names names{o.w1, o.b1, o.w2, o.b2, o.w3, o.b3};
    const sf::dense_ffn<float> dense = sf::io::load_dense(ckpt, names);
    progress("loaded dense FFN", 1.0);
    std::vector<float> x = hfile.read_finite(o.hidden_name);
    sf::index_t n = static_cast<sf::index_t>(x.size()) / dense.d_model;
    if (n > o.max_tokens) {
      std::fprintf(stderr, "moefy: using the first %lld of %lld tokens (--max-tokens)\n",
                   static_cast<long long>(o.max_tokens), static_cast<long long>(n));
      n = o.max_tokens;
      x.resize(static_cast<std::size_t>(n * dense.d_model));
    }
    progress("loaded hidden states", 1.0);

    sf::convert::moefy_options mo;
    mo.g = o.g;
    mo.activation = sf::parse_activation(o.activation);
    mo.split = o.split;
    mo.router = o.router;
    mo.seed = o.seed;
    mo.kmeans_iterations = o.iterations;
    mo.kmeans_restarts = o.restarts;
    mo.quality.train.epochs = o.epochs;
    mo.quality.train.seed = o.seed;
    mo.quality.densities = o.densities;
    mo.quality.held_out = o.held_out;
    mo.quality.progress = progress;
    mo.quality.train.progress = progress;
    mo.report = !o.no_report;
    mo.report_splits = o.report_splits;
    mo.progress = progress;
    mo.pin.ratio = o.pin_ratio;
    mo.pin.max_blocks = o.max_pinned;
    const std::map<std::string, std::string> meta = {{"activation", o.activation},
                                                     {"split", o.split},
                                                     {"router", o.router},
                                                     {"selector", o.router == "mlp" ? "routed" : "avg_k"},
                                                     {"source", o.in}};
    const sf::convert::moefy_result r = sf::convert::moefy(dense, x.data(), n, mo);
    const sf::convert::mlp_router* mlp = r.has_mlp ? &r.mlp : nullptr;
    std::fprintf(stderr,
                 "moefy: %lld pinned block(s) for %lld hot neuron(s) (energy >= %g x mean; largest %.1f x), "
                 "%.1f%% of the output energy\n",
                 static_cast<long long>(r.pinned.blocks), static_cast<long long>(r.pinned.hot), o.pin_ratio,
                 r.pinned.max_ratio, 100 * r.pinned.pinned_share);
    if (o.dtype == "q8") {  // quantised weights (docs/design.md): not in the run-time dtype dispatch
      sf::io::save_blocked(o.out, sf::convert::moefy_pack<sf::q8_t>(dense, r), meta, mlp);
    } else if (o.dtype == "q4") {
      sf::io::save_blocked(o.out, sf::convert::moefy_pack<sf::q4_t>(dense, r), meta, mlp);
    } else {
      sf::dispatch_dtype(sf::parse_dtype(o.dtype), [&](auto t) {
        using T = typename decltype(t)::type;
        sf::io::save_blocked(o.out, sf::convert::moefy_pack<T>(dense, r), meta, mlp);
      });
    }
    progress("wrote " + o.out, 1.0);
    if (mo.report) std::printf("%s", sf::convert::format_report(r.report).c_str());
    if (!o.report.empty()) {
      sf::io::atomic_write(o.report, sf::convert::report_json(r.report, &r.context));
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
