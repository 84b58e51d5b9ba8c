// moefy — convert a trained dense FFN into a blocked sparse FFN (MoEfication), fit its router, report
// quality.
//
//   moefy --in ckpt.safetensors --w1 NAME --w2 NAME [--w3 NAME] [--b1 NAME] [--b2 NAME] [--b3 NAME]
//         --hidden states.safetensors --hidden-name NAME [--max-tokens N]
//         --activation relu|gelu_erf|gelu_tanh|silu|swiglu|geglu  --g 64
//         [--split kmeans|coactivation|random] [--router avg_k|similarity|linear|mlp]
//         [--dtype f32|bf16|f16] [--seed N] [--iterations N] [--restarts N] [--epochs N]
//         [--report-splits random,kmeans,coactivation] [--densities 0.1,0.2,0.25,0.3,0.5]
//         --out blocked.safetensors [--report report.json]
//
// Tensor names are the checkpoint's own (e.g. model.layers.3.mlp.gate_proj.weight for a LLaMA W1).
// Hidden states: a 2-D tensor [tokens, d_model] (or any shape whose last dimension is d_model).
// Progress goes to stderr; the report table to stdout.
#include <sparse_ffn/convert/pipeline.hpp>
#include <sparse_ffn/io/model_io.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace sf = sparse_ffn;

namespace {

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "moefy: %s\nsee the comment at the top of examples/moefy.cpp for the options\n", msg);
  std::exit(2);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) usage(("bad argument: " + k).c_str());
    a[k.substr(2)] = argv[++i];
  }
  auto need = [&](const char* k) {
    if (!a.count(k)) usage((std::string("missing --") + k).c_str());
    return a[k];
  };
  auto opt = [&](const char* k, const std::string& def) { return a.count(k) ? a[k] : def; };
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&](const std::string& what, double f) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "[%7.1fs] %-22s %5.1f%%\n", s, what.c_str(), 100 * f);
  };
  try {
    const auto ckpt = sf::io::safetensors_file::open(need("in"));
    sf::io::dense_names names{need("w1"),    opt("b1", ""), need("w2"),
                              opt("b2", ""), opt("w3", ""), opt("b3", "")};
    const sf::dense_ffn<float> dense = sf::io::load_dense(ckpt, names);
    progress("loaded dense FFN", 1.0);
    const auto hfile = sf::io::safetensors_file::open(need("hidden"));
    const std::string hname = need("hidden-name");
    const auto& hinfo = hfile.info(hname);
    if (hinfo.shape.empty() || hinfo.shape.back() != dense.d_model)
      usage("the hidden states' last dimension must equal d_model");
    std::vector<float> x = hfile.read_float(hname);
    sf::index_t n = static_cast<sf::index_t>(x.size()) / dense.d_model;
    const sf::index_t max_tokens = std::stoll(opt("max-tokens", "100000"));
    if (n > max_tokens) {
      n = max_tokens;
      x.resize(static_cast<std::size_t>(n * dense.d_model));
    }
    progress("loaded hidden states", 1.0);

    sf::convert::moefy_options o;
    o.g = std::stoll(need("g"));
    o.activation = sf::parse_activation(need("activation"));
    o.split = opt("split", "kmeans");
    o.router = opt("router", "avg_k");
    o.seed = std::stoull(opt("seed", "0"));
    o.kmeans_iterations = std::stoi(opt("iterations", "10"));
    o.kmeans_restarts = std::stoi(opt("restarts", "3"));
    o.quality.train.epochs = std::stoi(opt("epochs", "20"));
    o.quality.train.seed = o.seed;
    o.report_splits = split_list(opt("report-splits", "random"));
    if (a.count("densities")) {
      o.quality.densities.clear();
      for (const auto& s : split_list(a["densities"])) o.quality.densities.push_back(std::stod(s));
    }
    o.progress = progress;
    const std::string out = need("out");
    const std::map<std::string, std::string> meta = {{"activation", sf::activation_name(o.activation)},
                                                     {"split", o.split},
                                                     {"router", o.router},
                                                     {"selector", o.router == "mlp" ? "routed" : "avg_k"},
                                                     {"source", need("in")}};
    const sf::convert::moefy_result r = sf::convert::moefy(dense, x.data(), n, o);
    sf::dispatch_dtype(sf::parse_dtype(opt("dtype", "f32")), [&](auto t) {
      using T = typename decltype(t)::type;
      sf::io::save_blocked(out, sf::convert::moefy_pack<T>(dense, r), meta, r.has_mlp ? &r.mlp : nullptr);
    });
    progress("wrote " + out, 1.0);
    std::printf("%s", sf::convert::format_report(r.report).c_str());
    if (a.count("report")) {
      std::ofstream(a["report"]) << sf::convert::report_json(r.report);
      progress("wrote " + a["report"], 1.0);
    }
  } catch (const sf::error& e) {
    std::fprintf(stderr, "moefy: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moefy: %s\n", e.what());
    return 1;
  }
  return 0;
}
