// sparse_ffn — converting a whole model: which layers, their tensor names, the per-layer budget from
// the layers' reports, and one report for the model.
//
// A checkpoint names the FFN of layer i by a pattern (`encoder.layer.{i}.intermediate.dense.weight`):
// `layer_name` replaces every `{i}` with the layer's decimal index; `parse_layers` reads a layer list
// ("0-5", "0,2,4", "0-3,7"). `report_curve` turns a layer's quality report into the error curve of
// the installed split and router, which `allocate_blocks` (budget.hpp) takes; `block_bytes<T>` is
// what one block of a layer weighs in T. `model_report_json` writes the model's report: every layer's
// context and rows, and the budget's choice.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../quant.hpp"
#include "budget.hpp"
#include "report.hpp"

namespace sparse_ffn {
namespace convert {

/// Most layers a list may name (far above any model's; a typo like "0-99999999" is refused).
inline constexpr index_t k_max_layers = 65536;

/// True when `pattern` holds the layer slot `{i}`.
inline bool has_layer_slot(const std::string& pattern) {
  return pattern.find("{i}") != std::string::npos;
}

/// `pattern` with every `{i}` replaced by the decimal `layer`.
inline std::string layer_name(const std::string& pattern, index_t layer) {
  std::string out;
  const std::string idx = std::to_string(layer);
  for (std::size_t i = 0; i < pattern.size();) {
    if (pattern.compare(i, 3, "{i}") == 0) {
      out += idx;
      i += 3;
    } else {
      out += pattern[i++];
    }
  }
  return out;
}

/// A layer list: comma-separated items, each a decimal index or an ascending range "a-b" (both ends
/// included); the layers in the order given, every one distinct and below k_max_layers. Throws
/// invalid_argument naming the bad item.
inline std::vector<index_t> parse_layers(const std::string& s) {
  using sparse_ffn::detail::require;
  auto number = [&](const std::string& t, const std::string& item) {
    require(!t.empty() && t.size() <= 6 && t.find_first_not_of("0123456789") == std::string::npos,
            status::invalid_argument, "layer list '", s, "': '", item,
            "' is not a layer index or a range a-b");
    const long v = std::stol(t);
    require(v < k_max_layers, status::invalid_argument, "layer list '", s, "': layer ", v, " is not below ",
            k_max_layers);
    return static_cast<index_t>(v);
  };
  std::vector<index_t> out;
  std::vector<bool> seen;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const std::size_t dash = item.find('-');
    const index_t a = number(item.substr(0, dash), item);
    const index_t b = dash == std::string::npos ? a : number(item.substr(dash + 1), item);
    require(a <= b, status::invalid_argument, "layer list '", s, "': range '", item, "' is descending");
    for (index_t l = a; l <= b; ++l) {
      if (seen.size() <= static_cast<std::size_t>(l)) seen.resize(static_cast<std::size_t>(l) + 1, false);
      require(!seen[static_cast<std::size_t>(l)], status::invalid_argument, "layer list '", s, "': layer ", l,
              " is named twice");
      seen[static_cast<std::size_t>(l)] = true;
      out.push_back(l);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

/// Bytes of one block of a layer in weight dtype T: g key rows (and g up rows when gated) and g value
/// rows of d_model values each, as a file stores them (quantised rows: quants and scales).
template <class T>
std::int64_t block_bytes(index_t d_model, index_t g, bool gated) {
  const std::int64_t row =
      static_cast<std::int64_t>(row_format<T>::payload_bytes(d_model)) * static_cast<std::int64_t>(sizeof(T));
  return (gated ? 3 : 2) * static_cast<std::int64_t>(g) * row;
}

/// The error curve of one split and selector in a layer's report rows (the installed ones), for
/// allocate_blocks: every measured k once (two densities that round to the same k give one point),
/// ascending. Throws invalid_argument when the report has no such rows or an error is not finite (an
/// all-zero dense output has no relative error).
inline layer_curve report_curve(const std::vector<quality_row>& rows, const std::string& split,
                                const std::string& selector, index_t min_k, std::int64_t bytes_per_block) {
  layer_curve c;
  c.min_k = std::max<index_t>(1, min_k);
  c.block_bytes = bytes_per_block;
  std::vector<std::pair<index_t, double>> pts;
  for (const auto& r : rows) {
    if (r.split != split || r.selector != selector) continue;
    sparse_ffn::detail::require(std::isfinite(r.rel_error), status::invalid_argument,
                                "the report's error of ", split, "/", selector, " at k = ", r.k,
                                " is not finite (the dense output is all zero on the held-out tokens)");
    bool dup = false;
    for (const auto& p : pts) dup = dup || p.first == r.k;
    if (!dup) pts.push_back({r.k, r.rel_error});
  }
  sparse_ffn::detail::require(!pts.empty(), status::invalid_argument, "the report has no rows for split '",
                              split, "' and selector '", selector, "'");
  std::sort(pts.begin(), pts.end());
  for (const auto& p : pts) {
    c.k.push_back(p.first);
    c.error.push_back(p.second);
  }
  return c;
}

/// One converted layer, as the model report shows it.
struct layer_report {
  index_t layer = 0;
  std::string out;                ///< the file written for it
  index_t num_blocks = 0;         ///< B
  std::int64_t block_bytes = 0;   ///< bytes of one block (block_bytes<T>)
  std::vector<quality_row> rows;  ///< its quality report
  report_context context;
};

/// The budget's outcome, as the model report shows it.
struct budget_report {
  double density = 0;           ///< the requested share of the model's block bytes (0: target_error)
  double target_error = 0;      ///< the requested RMS error over the layers (0: a byte budget)
  std::int64_t budget = 0;      ///< bytes allowed: density (or 1) × Σ_l B_l · block_bytes_l, rounded down
  std::string split, selector;  ///< whose curves were used
  budget_result result;
};

/// The model report: {"layers": [{"layer":…, "out":…, "num_blocks":…, "block_bytes":…, <report_json's
/// fields>}, …], "budget": {"density":…, "target_error":…, "budget_bytes":…, "bytes":…, "split":…,
/// "selector":…, "objective":…, "layers": [{"layer":…, "k":…, "density":…, "rel_error":…}, …]}} ("budget"
/// only when `budget` is given).
inline std::string model_report_json(const std::vector<layer_report>& layers, const budget_report* budget) {
  std::ostringstream os;
  os << "{\"layers\": [";
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    std::string body = report_json(l.rows, &l.context);  // "{...}\n"
    while (!body.empty() && body.back() == '\n') body.pop_back();
    os << (i ? ",\n" : "\n") << "{\"layer\": " << l.layer << ", \"out\": " << detail::json_string(l.out)
       << ", \"num_blocks\": " << l.num_blocks << ", \"block_bytes\": " << l.block_bytes << ", "
       << body.substr(1);
  }
  os << "\n]";
  if (budget) {
    const auto& b = *budget;
    os << ",\n\"budget\": {\"density\": " << detail::json_number(b.density)
       << ", \"target_error\": " << detail::json_number(b.target_error) << ", \"budget_bytes\": " << b.budget
       << ", \"bytes\": " << b.result.bytes << ", \"split\": " << detail::json_string(b.split)
       << ", \"selector\": " << detail::json_string(b.selector)
       << ", \"objective\": " << detail::json_number(b.result.objective) << ", \"layers\": [";
    for (std::size_t i = 0; i < layers.size() && i < b.result.k.size(); ++i)
      os << (i ? ",\n  " : "\n  ") << "{\"layer\": " << layers[i].layer << ", \"k\": " << b.result.k[i]
         << ", \"density\": "
         << detail::json_number(double(b.result.k[i]) / double(std::max<index_t>(1, layers[i].num_blocks)))
         << ", \"rel_error\": " << detail::json_number(b.result.error[i]) << "}";
    os << "\n]}";
  }
  os << "}\n";
  return os.str();
}

/// The budget as a table: layer, k of B, density, error; then the totals.
inline std::string format_budget(const std::vector<layer_report>& layers, const budget_report& b) {
  std::ostringstream os;
  char line[200];
  if (b.target_error > 0)
    std::snprintf(line, sizeof line,
                  "budget: RMS error <= %.4f with %.1f%% of the block bytes (%lld of %lld), %s/%s curves\n",
                  b.target_error,
                  100.0 * double(b.result.bytes) / double(std::max<std::int64_t>(1, b.budget)),
                  static_cast<long long>(b.result.bytes), static_cast<long long>(b.budget), b.split.c_str(),
                  b.selector.c_str());
  else
    std::snprintf(line, sizeof line, "budget: %.1f%% of the block bytes (%lld of %lld), %s/%s curves\n",
                  100 * b.density, static_cast<long long>(b.result.bytes), static_cast<long long>(b.budget),
                  b.split.c_str(), b.selector.c_str());
  os << line;
  std::snprintf(line, sizeof line, "%6s %6s %6s %8s %10s\n", "layer", "k", "B", "density", "rel.error");
  os << line;
  for (std::size_t i = 0; i < layers.size() && i < b.result.k.size(); ++i) {
    std::snprintf(line, sizeof line, "%6lld %6lld %6lld %7.1f%% %10.4f\n",
                  static_cast<long long>(layers[i].layer), static_cast<long long>(b.result.k[i]),
                  static_cast<long long>(layers[i].num_blocks),
                  100.0 * double(b.result.k[i]) / double(std::max<index_t>(1, layers[i].num_blocks)),
                  b.result.error[i]);
    os << line;
  }
  return os.str();
}

}  // namespace convert
}  // namespace sparse_ffn
