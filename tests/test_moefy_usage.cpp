// moefy as a user runs it: every bad command line is refused with the flag's name before any work, an
// output never replaces an input, failures leave existing files whole, and the report is valid JSON.
// Runs the real binary (MOEFY_BIN) on small checkpoints written here.
#include "support/test_support.hpp"

#include <sparse_ffn/convert/synthetic.hpp>
#include <sparse_ffn/io/model_io.hpp>

#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#ifndef MOEFY_BIN
#error "MOEFY_BIN must name the moefy executable"
#endif

namespace io = sparse_ffn::io;

namespace {

struct result {
  int status = -1;  ///< exit code, or 128 + signal
  std::string output;
};

result run(const std::string& args, const std::string& prefix = "") {
  const std::string cmd = prefix + "'" + std::string(MOEFY_BIN) + "' " + args + " 2>&1";
  result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, got);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return r;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

/// A scratch directory with a dense checkpoint (d=16, d_ff=64, ReLU, biases) and hidden states.
struct workdir {
  std::string dir, ckpt, hidden;
  workdir() {
    char tmpl[] = "moefy_cli_XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    ckpt = dir + "/dense.safetensors";
    hidden = dir + "/hidden.safetensors";
    const auto p = sparse_ffn::convert::make_planted_ffn(16, 4, 16, 200, 1, 5);
    write_dense(p.dense, ckpt);
    io::safetensors_writer h;
    h.add_float("x", {200, 16}, p.x);
    h.write(hidden);
  }
  ~workdir() { std::system(("rm -rf '" + dir + "'").c_str()); }
  static void write_dense(const sfx::dense_ffn<float>& d, const std::string& path) {
    io::safetensors_writer w;
    w.add_float("w1", {d.d_ff, d.d_model}, d.w1);
    w.add_float("w2", {d.d_model, d.d_ff}, d.w2);
    w.add_float("b1", {d.d_ff}, d.b1);
    w.add_float("b2", {d.d_model}, d.b2);
    w.write(path);
  }
  /// A complete, valid command line; `extra` is appended (CLI11 refuses a repeated flag, so tests that
  /// change a required flag build their own line with `base(false)`).
  std::string base(bool with_out = true) const {
    return "--in " + ckpt + " --w1 w1 --w2 w2 --b1 b1 --b2 b2 --hidden " + hidden +
           " --hidden-name x --activation relu --g 16 --epochs 2 --restarts 1 --iterations 3" +
           (with_out ? " --out " + dir + "/out.safetensors" : "");
  }
};

}  // namespace

TEST_CASE("moefy --dtype q8|q4 writes a quantised model that loads as itself and as float",
          "[moefy][quant]") {
  workdir w;
  for (const std::string dt : {"q8", "q4"}) {
    const auto r = run(w.base() + " --no-report --dtype " + dt);
    INFO(r.output);
    REQUIRE(r.status == 0);
    io::blocked_file_info info;
    const std::string out = w.dir + "/out.safetensors";
    const auto as_float = io::load_blocked<float>(out, &info);
    REQUIRE(info.metadata.at("dtype") == dt);
    REQUIRE(info.metadata.at("format_version") == "2");
    REQUIRE(as_float.has_centroids());
    if (dt == "q8") {
      const auto m = io::load_blocked<sfx::q8_t>(out);
      REQUIRE(sfx::unpack(m.view()).w1 == sfx::unpack(as_float.view()).w1);
    } else {
      const auto m = io::load_blocked<sfx::q4_t>(out);
      REQUIRE(sfx::unpack(m.view()).w1 == sfx::unpack(as_float.view()).w1);
    }
  }
  REQUIRE(run(w.base() + " --no-report --dtype q5").status != 0);
}

TEST_CASE("moefy: a valid conversion writes the model and a valid JSON report", "[moefy]") {
  workdir w;
  const auto r = run(w.base() + " --report " + w.dir + "/report.json --densities 0.25,0.5 --dtype bf16");
  INFO(r.output);
  REQUIRE(r.status == 0);
  io::blocked_file_info info;
  const auto m = io::load_blocked<sfx::bfloat16_t>(w.dir + "/out.safetensors", &info);
  REQUIRE(m.layout().d_ff == 64);
  REQUIRE(info.metadata.at("dtype") == "bf16");
  const auto j = nlohmann::json::parse(slurp(w.dir + "/report.json"));
  REQUIRE(j["rows"].size() > 0);
  REQUIRE(j["g"] == 16);
  REQUIRE(j["tokens"] == 200);
  REQUIRE(j["held_out_tokens"] == 50);
  REQUIRE(j["fit_tokens"] == 150);
  REQUIRE(j.contains("pinned_blocks"));
  REQUIRE(j["rows"][0]["pinned"] == j["pinned_blocks"]);
  REQUIRE(r.output.find("pinned block(s)") != std::string::npos);
  // More pinned blocks than B: refused before the conversion writes anything.
  const auto r3 = run(w.base() + " --pin-ratio 0.5 --max-pinned 5 --no-report");  // B = 4
  INFO(r3.output);
  REQUIRE(r3.status == 1);
  REQUIRE(r3.output.find("max pinned blocks (5) exceeds B = 4") != std::string::npos);
  // Another held-out share, and no report at all.
  auto r2 = run(w.base() + " --report " + w.dir + "/report.json --held-out 0.5");
  REQUIRE(r2.status == 0);
  REQUIRE(nlohmann::json::parse(slurp(w.dir + "/report.json"))["held_out_tokens"] == 100);
  r2 = run(w.base() + " --no-report");
  INFO(r2.output);
  REQUIRE(r2.status == 0);
  REQUIRE(r2.output.find("rel.error") == std::string::npos);
  // Routers fitted to the blocks' output norms: recorded in the report, with the oracle of those norms.
  r2 = run(w.base() + " --router linear --router-target output --report " + w.dir + "/report.json");
  INFO(r2.output);
  REQUIRE(r2.status == 0);
  {
    const auto rep = nlohmann::json::parse(slurp(w.dir + "/report.json"));
    REQUIRE(rep["router_target"] == "output");
    int output_oracle_rows = 0;
    for (const auto& row : rep["rows"]) output_oracle_rows += row["selector"] == "oracle_output";
    REQUIRE(output_oracle_rows > 0);
  }
  // The report without fitted routers: no linear/mlp rows, the others as in the full report (its dense
  // pass then covers the held-out tokens only, which the progress says); an installed linear router is
  // still fitted.
  for (const auto& [router, target] : std::vector<std::pair<std::string, std::string>>{
           {"avg_k", "output"}, {"linear", "mass"}, {"linear", "output"}}) {
    const std::string common = w.base(false) + " --router " + router + " --router-target " + target +
                               " --densities 0.25,0.5 --report-splits random --report ";
    auto full = run(common + w.dir + "/full.json --out " + w.dir + "/full.safetensors");
    INFO(full.output);
    REQUIRE(full.status == 0);
    auto lean = run(common + w.dir + "/lean.json --no-report-routers --out " + w.dir + "/lean.safetensors");
    INFO(lean.output);
    REQUIRE(lean.status == 0);
    REQUIRE((lean.output.find("dense pass (held-out tokens)") != std::string::npos) ==
            (router == "avg_k" || target == "output"));
    const auto a = nlohmann::json::parse(slurp(w.dir + "/full.json"));
    const auto b = nlohmann::json::parse(slurp(w.dir + "/lean.json"));
    std::size_t matched = 0, fitted_rows = 0;
    for (const auto& row : a["rows"]) fitted_rows += row["selector"] == "linear" || row["selector"] == "mlp";
    REQUIRE(fitted_rows > 0);
    for (const auto& row : b["rows"]) {
      REQUIRE(row["selector"] != "linear");
      REQUIRE(row["selector"] != "mlp");
      for (const auto& ref : a["rows"])
        if (ref["split"] == row["split"] && ref["selector"] == row["selector"] && ref["k"] == row["k"]) {
          REQUIRE(row["rel_error"].get<double>() == Approx(ref["rel_error"].get<double>()).epsilon(1e-6));
          ++matched;
        }
    }
    REQUIRE(matched == b["rows"].size());
    REQUIRE(matched + fitted_rows == a["rows"].size());
    // The installed router (the mean keys, or the linear router fitted on the fit share) is the same.
    REQUIRE(io::load_blocked<float>(w.dir + "/lean.safetensors").centroids_float() ==
            io::load_blocked<float>(w.dir + "/full.safetensors").centroids_float());
  }
  REQUIRE(run(w.base() + " --no-report --no-report-routers").status != 0);
  const auto help = run("--help");
  REQUIRE(help.status == 0);
  for (const char* flag : {"--in", "--densities", "--report-splits", "--max-tokens", "--out", "--b3",
                           "--router-target", "--no-report-routers"})
    REQUIRE(help.output.find(flag) != std::string::npos);
}

TEST_CASE("moefy --layers converts every layer in one run; --budget picks k per layer", "[moefy][layers]") {
  workdir w;
  // Three layers in one checkpoint (layer.{i}.w1 …) and their inputs in one file (x.{i}); layer 1 is
  // planted with more active groups, so its error curve is the steepest and the budget favours it.
  const std::string ckpt = w.dir + "/model.safetensors", hidden = w.dir + "/states.safetensors";
  io::safetensors_writer cw, hw;
  const sfx::index_t active[] = {1, 3, 1};
  for (int l = 0; l < 3; ++l) {
    const auto p = sparse_ffn::convert::make_planted_ffn(16, 4, 32, 200, active[l], 11 + l);
    const std::string pre = "layer." + std::to_string(l) + ".";
    cw.add_float(pre + "w1", {p.dense.d_ff, p.dense.d_model}, p.dense.w1);
    cw.add_float(pre + "w2", {p.dense.d_model, p.dense.d_ff}, p.dense.w2);
    cw.add_float(pre + "b1", {p.dense.d_ff}, p.dense.b1);
    hw.add_float("x." + std::to_string(l), {200, 16}, p.x);
  }
  cw.write(ckpt);
  hw.write(hidden);
  const std::string common = "--in " + ckpt +
                             " --w1 layer.{i}.w1 --w2 layer.{i}.w2 --b1 layer.{i}.b1 --hidden " + hidden +
                             " --hidden-name x.{i} --activation relu --g 16 --epochs 2 --restarts 1 " +
                             "--iterations 3 --pin-ratio 0 --dtype bf16";
  const std::string dens = " --densities 0.25,0.5,0.75,1";
  const std::string out = " --out " + w.dir + "/l{i}.safetensors";
  const auto r = run(common + dens + out + " --layers 0-2 --budget 0.5 --report " + w.dir + "/model.json");
  INFO(r.output);
  REQUIRE(r.status == 0);
  const auto j = nlohmann::json::parse(slurp(w.dir + "/model.json"));
  REQUIRE(j["layers"].size() == 3);
  const auto& b = j["budget"];
  REQUIRE(b["layers"].size() == 3);
  std::int64_t bytes = 0;
  const std::int64_t block = 2 * 16 * 16 * 2;  // keys and values, g = 16 rows of 16 bf16
  for (int l = 0; l < 3; ++l) {
    const auto& L = j["layers"][l];
    REQUIRE(L["layer"] == l);
    REQUIRE(L["num_blocks"] == 8);
    REQUIRE(L["block_bytes"] == block);
    REQUIRE(L["rows"].size() > 0);
    const std::int64_t k = b["layers"][l]["k"];
    bytes += k * block;
    // The file of layer l: loads, and carries its layer and its budgeted k.
    io::blocked_file_info info;
    const auto m = io::load_blocked<float>(w.dir + "/l" + std::to_string(l) + ".safetensors", &info);
    REQUIRE(m.layout().num_blocks == 8);
    REQUIRE(info.metadata.at("layer") == std::to_string(l));
    REQUIRE(info.metadata.at("k") == std::to_string(k));
    // The budget's error is the report's error of the installed split and router at that k.
    bool found = false;
    for (const auto& row : L["rows"])
      if (row["split"] == "kmeans" && row["selector"] == "avg_k" && row["k"] == k) {
        REQUIRE(row["rel_error"] == b["layers"][l]["rel_error"]);
        found = true;
      }
    REQUIRE(found);
  }
  REQUIRE(b["bytes"] == bytes);
  REQUIRE(bytes <= b["budget_bytes"].get<std::int64_t>());
  REQUIRE(b["budget_bytes"] == 3 * 8 * block / 2);
  REQUIRE(r.output.find("layer 1") != std::string::npos);
  REQUIRE(r.output.find("budget: 50.0%") != std::string::npos);

  // --target-error: the fewest block bytes whose RMS error over the layers (the same report curves,
  // kmeans/avg_k) is at most E; checked against every combination of the measured k.
  {
    const double E = 0.05;
    const auto t =
        run(common + dens + out + " --layers 0-2 --target-error 0.05 --report " + w.dir + "/t.json");
    INFO(t.output);
    REQUIRE(t.status == 0);
    const auto jt = nlohmann::json::parse(slurp(w.dir + "/t.json"));
    std::vector<std::vector<std::pair<std::int64_t, double>>> curves(3);
    for (int l = 0; l < 3; ++l)
      for (const auto& row : jt["layers"][l]["rows"])
        if (row["split"] == "kmeans" && row["selector"] == "avg_k")
          curves[static_cast<std::size_t>(l)].push_back(
              {row["k"].get<std::int64_t>(), row["rel_error"].get<double>()});
    std::int64_t fewest = std::numeric_limits<std::int64_t>::max();
    for (const auto& a : curves[0])
      for (const auto& b2 : curves[1])
        for (const auto& c : curves[2])
          if (a.second * a.second + b2.second * b2.second + c.second * c.second <= 3 * E * E)
            fewest = std::min(fewest, (a.first + b2.first + c.first) * block);
    REQUIRE(fewest < std::numeric_limits<std::int64_t>::max());
    REQUIRE(jt["budget"]["bytes"] == fewest);
    REQUIRE(jt["budget"]["target_error"] == E);
    double sq = 0;
    for (int l = 0; l < 3; ++l) sq += std::pow(jt["budget"]["layers"][l]["rel_error"].get<double>(), 2);
    REQUIRE(std::sqrt(sq / 3) <= E);
    REQUIRE(t.output.find("budget: RMS error <= 0.0500") != std::string::npos);
    // Out of reach (below the error at the largest measured k): a clear error.
    const auto u = run(common + " --densities 0.25,0.5" + out + " --layers 0-2 --target-error 0.000000001");
    INFO(u.output);
    REQUIRE(u.status == 1);
    REQUIRE(u.output.find("reaches the target") != std::string::npos);
  }

  // The slot {i}: needed where layers differ, refused where there is one file, and only with --layers.
  auto bad = [&](const std::string& args, const std::string& says) {
    const auto e = run(args);
    INFO(args << "\n" << e.output);
    REQUIRE(e.status == 2);
    REQUIRE(e.output.find(says) != std::string::npos);
  };
  bad(common + out, "--layers is not given");
  bad(common + " --out " + w.dir + "/same.safetensors --layers 0-2", "--out");
  bad(common + out + " --layers 0-2 --report " + w.dir + "/r{i}.json", "--report");
  for (const char* list : {"2-0", "0,0", "0-1,1", "a", "", "0,", "1-", "99999999"})
    bad(common + out + " --layers '" + list + "'", "--layers");
  bad(common + out + " --layers 0-2 --budget 0", "--budget");
  bad(common + out + " --layers 0-2 --budget 1.5", "--budget");
  bad(common + out + " --layers 0-2 --budget 0.5 --no-report", "--budget");
  bad(common + out + " --layers 0-2 --budget 0.5 --target-error 0.1", "--target-error");
  bad(common + out + " --layers 0-2 --target-error 0", "--target-error");
  bad(common + out + " --layers 0-2 --target-error nan", "--target-error");
  // A layer whose tensors are missing: refused before any conversion, nothing written.
  const auto e = run(common + " --out " + w.dir + "/m{i}.safetensors --layers 0-3");
  INFO(e.output);
  REQUIRE(e.status == 1);
  REQUIRE(e.output.find("layer.3.w1") != std::string::npos);
  REQUIRE(!exists(w.dir + "/m0.safetensors"));
  // A budget below the smallest model (one block per layer): refused before any conversion.
  const auto tiny = run(common + out + " --layers 0-2 --budget 0.01");
  INFO(tiny.output);
  REQUIRE(tiny.status == 1);
  REQUIRE(tiny.output.find("below the smallest allowed model") != std::string::npos);
  REQUIRE(tiny.output.find("loaded dense FFN") == std::string::npos);  // before any work
  // One layer (no --layers) with a budget: the largest measured k within it, in the metadata and report.
  const auto one = run(w.base() + " --budget 0.6 --densities 0.25,0.5,0.75 --report " + w.dir + "/one.json");
  INFO(one.output);
  REQUIRE(one.status == 0);
  io::blocked_file_info info;
  (void)io::load_blocked<float>(w.dir + "/out.safetensors", &info);
  REQUIRE(info.metadata.at("k") == "2");  // B = 4: 25% and 50% fit in 60%, 75% does not
  REQUIRE(nlohmann::json::parse(slurp(w.dir + "/one.json"))["budget"]["k"] == 2);
}

TEST_CASE("moefy: bad command lines are refused with the flag's name, before any work", "[moefy]") {
  workdir w;
  const std::string out = w.dir + "/out.safetensors";
  struct bad {
    std::string args, expect;
  };
  const std::vector<bad> cases = {
      {w.base() + " --dtyp bf16", "--dtyp"},
      {w.base() + " --bogus 1", "--bogus"},
      {w.base() + " --g 32", "--g"},  // given twice
      {w.base(false) + " --out " + out + " --out " + out, "--out"},
      {w.base() + " --seed -1", "--seed"},
      {w.base() + " --seed 18446744073709551616", "--seed"},
      {w.base() + " --seed abc", "--seed"},
      {w.base() + " --max-tokens -5", "--max-tokens"},
      {w.base() + " --max-tokens 10x", "--max-tokens"},
      {w.base() + " --iterations 0", "--iterations"},
      {w.base() + " --epochs 1e1", "--epochs"},
      {w.base() + " --router-target energy", "--router-target"},
      {w.base() + " --restarts 0x10", "--restarts"},
      {w.base() + " --densities 0", "--densities"},
      {w.base() + " --densities -0.5", "--densities"},
      {w.base() + " --densities 2", "--densities"},
      {w.base() + " --densities nan", "--densities"},
      {w.base() + " --densities inf", "--densities"},
      {w.base() + " --densities 0.1,,0.2", "--densities"},
      {w.base() + " --report-splits random,bogus", "--report-splits"},
      {w.base() + " --held-out 1", "--held-out"},
      {w.base() + " --held-out 0", "--held-out"},
      {w.base() + " --held-out nan", "--held-out"},
      {w.base() + " --pin-ratio -1", "--pin-ratio"},
      {w.base() + " --pin-ratio inf", "--pin-ratio"},
      {w.base() + " --max-pinned -2", "--max-pinned"},
      {w.base() + " --no-report --report " + w.dir + "/r.json", "--no-report"},
      {w.base() + " --no-report --densities 0.5", "--no-report"},
      {w.base() + " --split spectral", "--split"},
      {w.base() + " --router gate", "--router"},
      {w.base() + " --b3 b1", "--w3"},
      {w.base() + " --w1 ''", "--w1"},
      {w.base() + " stray", "stray"},
      {"--in " + w.ckpt, "--w1"},  // required flags missing
  };
  for (const auto& c : cases) {
    const auto r = run(c.args);
    INFO(c.args << "\n" << r.output);
    REQUIRE(r.status == 2);
    REQUIRE(r.output.find(c.expect) != std::string::npos);
    REQUIRE_FALSE(exists(out));
  }
  // --g with a value outside the supported set, or not a number at all.
  for (const std::string g : {"16abc", "1e1", "0", "48", "-16", "016", "0x10"}) {
    const std::string args = "--in " + w.ckpt + " --w1 w1 --w2 w2 --hidden " + w.hidden +
                             " --hidden-name x --activation relu --out " + out + " --g " + g;
    const auto r = run(args);
    INFO(args << "\n" << r.output);
    REQUIRE(r.status == 2);
    REQUIRE(r.output.find("--g") != std::string::npos);
  }
}

TEST_CASE("moefy: outputs never replace an input and are checked before the conversion", "[moefy]") {
  workdir w;
  const std::string ckpt_bytes = slurp(w.ckpt), hidden_bytes = slurp(w.hidden);
  const std::string link = w.dir + "/link.safetensors";
  REQUIRE(::symlink("dense.safetensors", link.c_str()) == 0);
  for (const std::string& out : {w.ckpt, w.hidden, link, w.dir + "/./dense.safetensors"}) {
    const auto r = run(w.base(false) + " --out " + out);
    INFO(out << "\n" << r.output);
    REQUIRE(r.status == 1);
    REQUIRE(r.output.find("same file as the input") != std::string::npos);
  }
  // --report naming an input, or --out.
  for (const std::string& rep : {w.hidden, w.dir + "/out.safetensors"}) {
    const auto r = run(w.base() + " --report " + rep);
    INFO(rep << "\n" << r.output);
    REQUIRE(r.status == 1);
  }
  REQUIRE(slurp(w.ckpt) == ckpt_bytes);
  REQUIRE(slurp(w.hidden) == hidden_bytes);
  // Unwritable report paths fail up front: no model is written, no conversion runs.
  for (const std::string rep : {"/nonexistent/dir/r.json", "/dev/full", "/"}) {
    const auto r = run(w.base() + " --report " + rep);
    INFO(rep << "\n" << r.output);
    REQUIRE(r.status == 1);
    REQUIRE(r.output.find(rep) != std::string::npos);
    REQUIRE(r.output.find("k-means") == std::string::npos);  // failed before the work
    REQUIRE_FALSE(exists(w.dir + "/out.safetensors"));
  }
  // A directory as input.
  const auto r2 = run("--in " + w.dir + " --w1 w1 --w2 w2 --hidden " + w.hidden +
                      " --hidden-name x --activation relu --g 16 --out " + w.dir + "/o.safetensors");
  INFO(r2.output);
  REQUIRE(r2.status == 1);
  REQUIRE(r2.output.find("not a regular file") != std::string::npos);
}

TEST_CASE("moefy: bad data is refused up front; a failed or killed run leaves the old output whole",
          "[moefy]") {
  workdir w;
  const std::string out = w.dir + "/out.safetensors";
  {
    std::ofstream f(out, std::ios::binary);
    f << "previous model";
  }
  // NaN in W1 (k-means used to hang on it), Inf in W2: refused with the tensor and the index.
  auto p = sparse_ffn::convert::make_planted_ffn(16, 4, 16, 200, 1, 5);
  const std::string bad = w.dir + "/bad.safetensors";
  p.dense.w1[16 * 3 + 7] = std::numeric_limits<float>::quiet_NaN();
  workdir::write_dense(p.dense, bad);
  const std::string bad_args = "--in " + bad + " --w1 w1 --w2 w2 --hidden " + w.hidden +
                               " --hidden-name x --activation relu --g 16 --out " + out;
  auto r = run(bad_args);
  INFO(r.output);
  REQUIRE(r.status == 1);
  REQUIRE(r.output.find("tensor 'w1' has a non-finite value (nan) at index [3, 7]") != std::string::npos);
  REQUIRE(slurp(out) == "previous model");
  // The wrong activation for the checkpoint, a g that does not divide d_ff, a wrong hidden name.
  for (const std::string& args : {w.base(false) + " --out " + out + " --w3 w1 --activation swiglu",
                                  "--in " + w.ckpt + " --w1 w1 --w2 w2 --hidden " + w.hidden +
                                      " --hidden-name x --activation relu --g 128 --out " + out,
                                  "--in " + w.ckpt + " --w1 w1 --w2 w2 --hidden " + w.hidden +
                                      " --hidden-name y --activation relu --g 16 --out " + out}) {
    r = run(args);
    INFO(args << "\n" << r.output);
    REQUIRE(r.status != 0);
    REQUIRE(slurp(out) == "previous model");
  }
  // Killed while writing (SIGXFSZ from a 1-block file size limit, like a crash or a full disk):
  // the previous file at --out is still whole.
  r = run(w.base(), "ulimit -f 1; exec ");
  INFO(r.output);
  REQUIRE(r.status != 0);
  REQUIRE(slurp(out) == "previous model");
  // And a run that succeeds replaces it.
  r = run(w.base());
  REQUIRE(r.status == 0);
  REQUIRE(slurp(out) != "previous model");
  // --max-tokens cuts the hidden states and says so.
  r = run(w.base() + " --max-tokens 100");
  REQUIRE(r.status == 0);
  REQUIRE(r.output.find("using the first 100 of 200 tokens") != std::string::npos);
}
