// libFuzzer target for moefy's command line: the input, split at NUL bytes, is argv[1..]. Parsing must
// accept it or throw CLI::ParseError — never crash or hang; an accepted command line satisfies every
// documented constraint (the checks the parser promises are re-checked here).
#include "../../examples/moefy_cli.hpp"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args{"moefy"};
  std::string cur;
  for (std::size_t i = 0; i < size && args.size() < 64; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  if (!cur.empty()) args.push_back(cur);
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  CLI::App app{"moefy"};
  moefy::options o;
  try {
    moefy::parse(static_cast<int>(argv.size()), argv.data(), app, o);
  } catch (const CLI::ParseError&) {
    return 0;
  }
  const bool g_ok = o.g == 1 || o.g == 16 || o.g == 32 || o.g == 64 || o.g == 128;
  bool ok = g_ok && o.max_tokens >= 2 && o.iterations >= 1 && o.restarts >= 1 && o.epochs >= 1 &&
            !o.densities.empty() && !o.report_splits.empty() && (o.b3.empty() || !o.w3.empty()) &&
            !o.in.empty() && !o.w1.empty() && !o.w2.empty() && !o.hidden.empty() && !o.hidden_name.empty() &&
            !o.out.empty();
  for (double d : o.densities) ok = ok && std::isfinite(d) && d > 0 && d <= 1;
  ok = ok && std::isfinite(o.held_out) && o.held_out > 0 && o.held_out < 1 &&
       !(o.no_report && !o.report.empty());
  // --budget: unset (0) or a density, never without the report; --layers: a valid list, and {i} only with it.
  ok = ok && std::isfinite(o.budget) && o.budget >= 0 && o.budget <= 1 && !(o.no_report && o.budget > 0);
  ok = ok && std::isfinite(o.target_error) && o.target_error >= 0 && !(o.no_report && o.target_error > 0) &&
       !(o.budget > 0 && o.target_error > 0);
  if (!o.layers.empty()) {
    try {
      ok = ok && !sparse_ffn::convert::parse_layers(o.layers).empty() &&
           sparse_ffn::convert::has_layer_slot(o.w1) && sparse_ffn::convert::has_layer_slot(o.out);
    } catch (const std::exception&) {
      ok = false;
    }
  } else {
    ok = ok && !sparse_ffn::convert::has_layer_slot(o.w1) && !sparse_ffn::convert::has_layer_slot(o.out) &&
         !sparse_ffn::convert::has_layer_slot(o.hidden_name);
  }
  ok = ok && !sparse_ffn::convert::has_layer_slot(o.in) && !sparse_ffn::convert::has_layer_slot(o.report);
  if (!ok) std::abort();
  return 0;
}
