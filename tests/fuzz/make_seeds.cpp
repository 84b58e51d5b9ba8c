// Writes seed inputs for the fuzz targets into DIR/files (small valid blocked models and dense
// checkpoints, so the fuzzer starts from inputs that get deep into load_blocked / load_dense) and
// DIR/args (moefy command lines, NUL-separated). Used by scripts/fuzz.sh; nothing here is committed
// output.
#include <sparse_ffn/convert/router_fit.hpp>
#include <sparse_ffn/convert/synthetic.hpp>
#include <sparse_ffn/io/model_io.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace sf = sparse_ffn;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR (DIR/files and DIR/args must exist)\n");
    return 2;
  }
  const std::string dir = argv[1];
  const auto p = sf::convert::make_planted_ffn(8, 2, 2, 4, 1, 1);  // d=8, d_ff=4
  // Dense checkpoints with the names fuzz_load_dense asks for.
  {
    sf::io::safetensors_writer w;
    w.add_float("w1", {4, 8}, p.dense.w1);
    w.add_float("w2", {8, 4}, p.dense.w2);
    w.add_float("b1", {4}, p.dense.b1);
    w.add_float("b2", {8}, p.dense.b2);
    w.write(dir + "/files/dense_relu");
    w.add_float("w3", {4, 8}, p.dense.w1);
    w.add_float("b3", {4}, p.dense.b1);
    w.write(dir + "/files/dense_gated");
  }
  // Blocked models: f32 and bf16, with centroids, a learned gate and an MLP router.
  std::vector<float> gw(2 * 8, 0.5f), gb(2, 0.1f);
  sf::pack_options po{2};
  po.gate_w = gw.data();
  po.gate_b = gb.data();
  const auto m32 = sf::pack<float>(p.dense.view(), po);
  sf::convert::mlp_router r;
  r.d_model = 8;
  r.num_blocks = 2;
  r.w1.assign(16, 0.25f);
  r.b1.assign(2, 0.0f);
  r.w2 = {1, 0, 0, 1};
  r.b2.assign(2, 0.0f);
  sf::io::save_blocked(dir + "/files/blocked_f32", m32, {{"activation", "relu"}}, &r);
  sf::io::save_blocked(dir + "/files/blocked_bf16", sf::pack<sf::bfloat16_t>(p.dense.view(), {1}));
  auto gated = p.dense;
  gated.w3 = gated.w1;
  gated.b3 = gated.b1;
  sf::io::save_blocked(dir + "/files/blocked_gated", sf::pack<sf::half_t>(gated.view(), {4}));
  // Command lines.
  const std::vector<std::vector<std::string>> lines = {
      {"--in", "a", "--w1", "w1", "--w2", "w2", "--hidden", "h", "--hidden-name", "x", "--activation", "relu",
       "--g", "64", "--out", "o"},
      {"--in",
       "a",
       "--w1",
       "w1",
       "--w2",
       "w2",
       "--w3",
       "w3",
       "--b3",
       "b3",
       "--hidden",
       "h",
       "--hidden-name",
       "x",
       "--activation",
       "swiglu",
       "--g",
       "16",
       "--densities",
       "0.1,0.5",
       "--report-splits",
       "random,kmeans",
       "--seed",
       "18446744073709551615",
       "--max-tokens",
       "1000",
       "--out",
       "o",
       "--report",
       "r"},
      {"--in",          "c",     "--w1",         "l.{i}.w1", "--w2",     "l.{i}.w2", "--hidden", "h",
       "--hidden-name", "x.{i}", "--activation", "gelu_erf", "--g",      "64",       "--layers", "0-3,5",
       "--budget",      "0.25",  "--out",        "o{i}",     "--report", "r"},
      {"--in",           "c",   "--w1",         "w.{i}", "--w2", "v.{i}", "--hidden", "h{i}",
       "--hidden-name",  "x",   "--activation", "relu",  "--g",  "32",    "--layers", "1,3",
       "--target-error", "0.1", "--out",        "o{i}"},
      {"--help"},
  };
  int i = 0;
  for (const auto& l : lines) {
    std::ofstream f(dir + "/args/line" + std::to_string(i++), std::ios::binary);
    for (std::size_t j = 0; j < l.size(); ++j) {
      if (j) f.put('\0');
      f << l[j];
    }
  }
  return 0;
}
