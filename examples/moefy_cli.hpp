// moefy's command line: the options, their parser (CLI11) and the checks made before any work.
//
// Shared by examples/moefy.cpp and the argument fuzzer (tests/fuzz/fuzz_moefy_args.cpp). Every value is
// parsed strictly: integers are decimal, whole and in range (no "16abc", "1e1", "0x10" or "-1" for an
// unsigned value), reals finite, names from a closed set; an unknown flag, a flag given twice or a
// missing value is an error that names the flag. `--help` is generated from the same definitions.
#pragma once

#include <CLI/CLI.hpp>

#include <sparse_ffn/activation.hpp>
#include <sparse_ffn/convert/model.hpp>
#include <sparse_ffn/dispatch.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace moefy {

struct options {
  std::string in, w1, w2, w3, b1, b2, b3;
  std::string hidden, hidden_name;
  std::int64_t max_tokens = 100000;
  std::string activation;
  std::int64_t g = 0;
  std::string split = "kmeans", router = "avg_k", dtype = "f32";
  std::uint64_t seed = 0;
  int iterations = 10, restarts = 3, epochs = 20;
  std::string router_target = "mass";
  std::vector<std::string> report_splits{"random"};
  std::vector<double> densities{0.10, 0.20, 0.25, 0.30, 0.50};
  double held_out = 0.25;
  double pin_ratio = 64;
  std::int64_t max_pinned = -1;
  bool no_report = false;
  bool no_report_routers = false;
  std::string out, report;
  std::string layers;       ///< "0-5": convert these layers; names hold {i} (empty: one layer, no {i})
  double budget = 0;        ///< share of the block bytes the layers may compute together (0: none)
  double target_error = 0;  ///< the layers' RMS relative error to reach with the fewest bytes (0: none)
};

namespace detail {

/// A list "a,b,c" (empty items are an error: "0.1,,0.2" is a typo, not two densities).
inline bool split_list(const std::string& s, std::vector<std::string>& out) {
  out.clear();
  std::string item;
  for (char c : s + ",") {
    if (c != ',') {
      item += c;
      continue;
    }
    if (item.empty()) return false;
    out.push_back(item);
    item.clear();
  }
  return true;
}

/// Strict decimal integer in [lo, hi]: optional '-', then digits only, no overflow.
inline bool parse_int(const std::string& s, long double lo, long double hi, std::int64_t& v) {
  if (s.empty() || s.size() > 20) return false;
  std::size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (std::size_t j = i; j < s.size(); ++j)
    if (s[j] < '0' || s[j] > '9') return false;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || end != s.c_str() + s.size()) return false;
  if (static_cast<long double>(x) < lo || static_cast<long double>(x) > hi) return false;
  v = x;
  return true;
}

/// A CLI11 validator: strict decimal integer in [lo, hi].
inline CLI::Validator integer(long double lo, long double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        std::int64_t v = 0;
        if (!parse_int(s, lo, hi, v))
          return "'" + s + "' is not a whole decimal number in [" +
                 std::to_string(static_cast<long long>(lo)) + ", " +
                 std::to_string(static_cast<long long>(hi)) + "]";
        return {};
      },
      "INT", "integer");
}

/// Unsigned 64-bit decimal (the seed): digits only, no sign, no overflow.
inline CLI::Validator unsigned64() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        bool ok = !s.empty() && s.size() <= 20;
        for (char c : s) ok = ok && c >= '0' && c <= '9';
        if (ok) {
          errno = 0;
          char* end = nullptr;
          (void)std::strtoull(s.c_str(), &end, 10);
          ok = errno != ERANGE && end == s.c_str() + s.size();
        }
        return ok ? std::string{} : "'" + s + "' is not a whole decimal number in [0, 2^64)";
      },
      "UINT64", "unsigned64");
}

/// A CLI11 validator: a non-empty value (file and tensor names).
inline CLI::Validator non_empty() {
  return CLI::Validator([](std::string& s) -> std::string { return s.empty() ? "the value is empty" : ""; },
                        "", "non_empty");
}

/// A finite decimal real: digits, '.', an exponent and signs only (no "nan", "inf", hex or spaces).
inline bool parse_real(const std::string& s, double& v) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+')) return false;
  errno = 0;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return errno != ERANGE && end == s.c_str() + s.size() && std::isfinite(v);
}

/// A density: a real in (0, 1].
inline bool parse_density(const std::string& s, double& v) {
  return parse_real(s, v) && v > 0 && v <= 1;
}

/// A share: a real strictly inside (0, 1).
inline bool parse_fraction(const std::string& s, double& v) {
  return parse_real(s, v) && v > 0 && v < 1;
}

}  // namespace detail

/// Defines every option on `app`, bound to `o`. Parsing throws CLI::ParseError (CLI::CallForHelp for
/// --help): print it with `app.exit(e)`. Nothing here touches the file system; moefy.cpp checks the
/// paths and the tensors before any work.
inline void define(CLI::App& app, options& o) {
  app.description(
      "moefy: convert a trained dense FFN into a blocked sparse FFN (MoEfication), fit its router and\n"
      "report the quality on held-out tokens. Tensor names are the checkpoint's own (e.g.\n"
      "model.layers.3.mlp.gate_proj.weight for a LLaMA W1). Outputs are written atomically and never\n"
      "over an input. Progress goes to stderr, the report table to stdout.");
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::Throw);
  app.allow_extras(false);
  app.positionals_at_end(false);
  // clang-format off
  app.add_option("--in", o.in, "checkpoint with the dense FFN (safetensors)")->required()->type_name("FILE")->check(detail::non_empty());
  app.add_option("--w1", o.w1, "W1 [d_ff, d_model] (keys; gate_proj of a gated FFN)")->required()->type_name("NAME")->check(detail::non_empty());
  app.add_option("--w2", o.w2, "W2 [d_model, d_ff] (values; down_proj)")->required()->type_name("NAME")->check(detail::non_empty());
  auto* w3 = app.add_option("--w3", o.w3, "W3 [d_ff, d_model] (up_proj; gated FFNs only)")->type_name("NAME")->check(detail::non_empty());
  app.add_option("--b1", o.b1, "b1 [d_ff]")->type_name("NAME")->check(detail::non_empty());
  app.add_option("--b2", o.b2, "b2 [d_model]")->type_name("NAME")->check(detail::non_empty());
  app.add_option("--b3", o.b3, "b3 [d_ff] (needs --w3)")->type_name("NAME")->needs(w3)->check(detail::non_empty());
  app.add_option("--hidden", o.hidden, "hidden states (safetensors)")->required()->type_name("FILE")->check(detail::non_empty());
  app.add_option("--hidden-name", o.hidden_name, "tensor of hidden states [tokens, d_model] (any shape whose last dimension is d_model)")->required()->type_name("NAME")->check(detail::non_empty());
  app.add_option("--max-tokens", o.max_tokens, "use at most this many tokens (the first ones)")->capture_default_str()
      ->check(detail::integer(2, std::numeric_limits<std::int32_t>::max()));
  app.add_option("--activation", o.activation, "activation of the FFN")->required()
      ->check(CLI::IsMember({"relu", "gelu_erf", "gelu_tanh", "silu", "swiglu", "geglu"}));
  app.add_option("--g", o.g, "neurons per block: 1, 16, 32, 64 or 128")->required()
      ->check(CLI::IsMember({"1", "16", "32", "64", "128"}));
  app.add_option("--split", o.split, "how neurons are grouped into blocks")->capture_default_str()
      ->check(CLI::IsMember({"kmeans", "coactivation", "random"}));
  app.add_option("--router", o.router, "router installed in the model")->capture_default_str()
      ->check(CLI::IsMember({"avg_k", "similarity", "linear", "mlp"}));
  app.add_option("--dtype", o.dtype, "weight dtype of the converted model")->capture_default_str()->check(CLI::IsMember({"f32", "bf16", "f16", "q8", "q4"}));
  app.add_option("--seed", o.seed, "seed of the split and the router training")->capture_default_str()->check(detail::unsigned64());
  app.add_option("--iterations", o.iterations, "k-means iterations")->capture_default_str()->check(detail::integer(1, 1000000));
  app.add_option("--restarts", o.restarts, "k-means restarts (the best is kept)")->capture_default_str()->check(detail::integer(1, 1000));
  app.add_option("--epochs", o.epochs, "router training epochs")->capture_default_str()->check(detail::integer(1, 1000000));
  app.add_option("--router-target", o.router_target,
                 "what fitted routers (linear, mlp) learn to rank by: mass (each block's activation mass, what the oracle ranks by) or output (each block's output norm; the report adds an oracle_output row)")
      ->capture_default_str()
      ->check(CLI::IsMember({"mass", "output"}));
  app.add_option_function<std::string>("--report-splits", [&o](const std::string& s) { detail::split_list(s, o.report_splits); },
                  "splits reported besides --split, comma-separated (random,kmeans,coactivation); default: random")
      ->type_name("LIST")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        std::vector<std::string> items;
        if (!detail::split_list(s, items)) return "'" + s + "' has an empty item";
        for (const auto& it : items)
          if (it != "random" && it != "kmeans" && it != "coactivation") return "unknown split '" + it + "'";
        return {};
      }, "LIST", "splits"));
  app.add_option_function<std::string>("--densities", [&o](const std::string& s) {
        std::vector<std::string> items;
        detail::split_list(s, items);
        o.densities.clear();
        for (const auto& it : items) {
          double v = 0;
          detail::parse_density(it, v);
          o.densities.push_back(v);
        }
      }, "fractions of blocks kept in the report, comma-separated, each in (0, 1]; default: 0.1,0.2,0.25,0.3,0.5")
      ->type_name("LIST")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        std::vector<std::string> items;
        if (!detail::split_list(s, items)) return "'" + s + "' has an empty item";
        double v = 0;
        for (const auto& it : items)
          if (!detail::parse_density(it, v)) return "density '" + it + "' is not a number in (0, 1]";
        return {};
      }, "LIST", "densities"));
  auto* held = app.add_option_function<std::string>("--held-out", [&o](const std::string& s) { detail::parse_fraction(s, o.held_out); },
                  "share of the tokens (the last ones) the report measures on; routers are fitted on the others, the saved one included; default: 0.25")
      ->type_name("FRACTION")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        double v = 0;
        return detail::parse_fraction(s, v) ? std::string{} : "'" + s + "' is not a number in (0, 1)";
      }, "FRACTION", "fraction"));
  app.add_option_function<std::string>("--pin-ratio", [&o](const std::string& s) { detail::parse_real(s, o.pin_ratio); },
                  "pin a neuron (every token computes its block) when its output energy is >= this times the mean (convert/pin.hpp); 0 = never; default: 64")
      ->type_name("RATIO")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        double v = 0;
        return detail::parse_real(s, v) && v >= 0 ? std::string{} : "'" + s + "' is not a number >= 0";
      }, "RATIO", "ratio"));
  app.add_option("--max-pinned", o.max_pinned, "at most this many pinned blocks; default: B/8 (at least 1)")
      ->type_name("N")->check(detail::integer(0, std::numeric_limits<std::int32_t>::max()));
  app.add_flag("--no-report", o.no_report, "skip the quality report (the router is then fitted on all tokens)")
      ->excludes(held)->excludes("--densities")->excludes("--report-splits");
  app.add_flag("--no-report-routers", o.no_report_routers,
               "the report leaves out the fitted routers (linear, mlp): none is trained for it, and unless --router is "
               "linear or mlp its dense pass covers the held-out tokens only (much faster on wide layers)")
      ->excludes("--no-report");
  app.add_option("--out", o.out, "the blocked model to write (safetensors); with --layers a pattern with {i}")->required()->type_name("FILE")->check(detail::non_empty());
  app.add_option("--report", o.report, "also write the report as JSON (with --layers: one report for the model)")->type_name("FILE")->excludes("--no-report")->check(detail::non_empty());
  app.add_option("--layers", o.layers, "convert these layers in one run, e.g. 0-5 or 0,2,4: every {i} in a tensor name, --hidden and --out becomes the layer's index")
      ->type_name("LIST")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        try {
          (void)sparse_ffn::convert::parse_layers(s);
        } catch (const std::exception& e) {
          return e.what();
        }
        return {};
      }, "LIST", "layers"));
  app.add_option_function<std::string>("--budget", [&o](const std::string& s) { detail::parse_density(s, o.budget); },
                  "choose k per layer: the layers together compute at most this share of their block bytes, with the least summed squared error of the report's --split/--router curves (convert/budget.hpp); k is written into each file's metadata")
      ->type_name("DENSITY")->excludes("--no-report")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        double v = 0;
        return detail::parse_density(s, v) ? std::string{} : "'" + s + "' is not a number in (0, 1]";
      }, "DENSITY", "density"));
  app.add_option_function<std::string>("--target-error", [&o](const std::string& s) { detail::parse_real(s, o.target_error); },
                  "choose k per layer: the fewest block bytes whose root-mean-square (over the layers) of the report's --split/--router relative error is at most this; k is written into each file's metadata")
      ->type_name("ERROR")->excludes("--no-report")->excludes("--budget")
      ->check(CLI::Validator([](std::string& s) -> std::string {
        double v = 0;
        return detail::parse_real(s, v) && v > 0 ? std::string{} : "'" + s + "' is not a number > 0";
      }, "ERROR", "error"));
  // clang-format on
}

/// The layer slot {i}: with --layers, the names that differ per layer must hold it (W1, W2, the output,
/// and the hidden states' file or name; any bias or W3 given), and --in / --report must not (one
/// checkpoint, one report); without --layers nothing may hold it. Throws CLI::ValidationError.
inline void check_layer_slots(const options& o) {
  using sparse_ffn::convert::has_layer_slot;
  const std::pair<const char*, const std::string*> per_layer[] = {
      {"--w1", &o.w1},  {"--w2", &o.w2}, {"--w3", &o.w3},         {"--b1", &o.b1},
      {"--b2", &o.b2},  {"--b3", &o.b3}, {"--hidden", &o.hidden}, {"--hidden-name", &o.hidden_name},
      {"--out", &o.out}};
  if (o.layers.empty()) {
    for (const auto& [flag, v] : per_layer)
      if (has_layer_slot(*v))
        throw CLI::ValidationError(flag, "'" + *v + "' holds the layer slot {i} but --layers is not given");
  } else {
    for (const auto& [flag, v] : per_layer) {
      const std::string f = flag;
      if (f == "--hidden" || f == "--hidden-name" || v->empty()) continue;
      if (!has_layer_slot(*v))
        throw CLI::ValidationError(
            flag, "'" + *v + "' has no layer slot {i}: with --layers every layer would use the same one");
    }
    if (!has_layer_slot(o.hidden) && !has_layer_slot(o.hidden_name))
      throw CLI::ValidationError(
          "--hidden-name",
          "neither --hidden nor --hidden-name has the layer slot {i}: every layer's FFN has its own inputs");
  }
  if (has_layer_slot(o.in))
    throw CLI::ValidationError("--in", "the checkpoint is one file; {i} is not allowed here");
  if (has_layer_slot(o.report))
    throw CLI::ValidationError("--report", "the report is one file for all layers; {i} is not allowed here");
}

/// Parses a whole command line (argv[0] is the program name) into `o`, which `app` keeps references
/// to: both must outlive the parse.
inline void parse(int argc, const char* const* argv, CLI::App& app, options& o) {
  define(app, o);
  app.parse(argc, argv);
  check_layer_slots(o);
}

/// `o` for one layer: every {i} replaced by `layer` (see check_layer_slots).
inline options for_layer(const options& o, std::int64_t layer) {
  options l = o;
  for (std::string* v : {&l.w1, &l.w2, &l.w3, &l.b1, &l.b2, &l.b3, &l.hidden, &l.hidden_name, &l.out})
    *v = sparse_ffn::convert::layer_name(*v, layer);
  return l;
}

}  // namespace moefy
