// End-to-end MoEfication on a synthetic FFN: generate a ReLU FFN whose neurons hide co-activating
// groups, write it and its hidden states as safetensors (dense.safetensors: w1, b1, w2, b2;
// hidden.safetensors: x), convert it with each split, print the quality report, save the blocked
// model, reload it and run the sparse kernel on it. The written files are what `moefy` reads:
//   moefy --in dense.safetensors --w1 w1 --b1 b1 --w2 w2 --b2 b2 --hidden hidden.safetensors
//         --hidden-name x --activation relu --g 32 --out blocked.safetensors
//
//   moefy_synthetic [out_dir=.] [groups=32]
#include <sparse_ffn/convert/pipeline.hpp>
#include <sparse_ffn/convert/synthetic.hpp>
#include <sparse_ffn/io/model_io.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace sf = sparse_ffn;
namespace cv = sparse_ffn::convert;

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&](const std::string& what, double f) {
    if (f >= 1.0 || f == 0.0)
      std::fprintf(stderr, "[%6.1fs] %s %s\n",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), what.c_str(),
                   f >= 1.0 ? "done" : "…");
  };
  try {
    // 8 hidden dimensions per group, 32 neurons per group, 3 groups active per token.
    const sf::index_t groups = argc > 2 ? std::atoll(argv[2]) : 32, d = 8 * groups, g = 32, n = 125 * groups;
    const cv::planted_ffn p = cv::make_planted_ffn(d, groups, g, n, 3, 2024);
    {
      sf::io::safetensors_writer w;
      w.add_float("w1", {groups * g, d}, p.dense.w1);
      w.add_float("b1", {groups * g}, p.dense.b1);
      w.add_float("w2", {d, groups * g}, p.dense.w2);
      w.add_float("b2", {d}, p.dense.b2);
      w.write(dir + "/dense.safetensors");
      sf::io::safetensors_writer h;
      h.add_float("x", {n, d}, p.x);
      h.write(dir + "/hidden.safetensors");
    }

    cv::moefy_options o;
    o.g = g;
    o.split = "kmeans";
    o.router = "avg_k";
#if defined(SPARSE_FFN_WITH_METIS)
    o.report_splits = {"random", "coactivation"};
#else
    o.report_splits = {"random"};
#endif
    o.quality.train.epochs = 10;
    o.progress = progress;
    const cv::moefy_result r = cv::moefy(p.dense, p.x.data(), n, o);
    const auto model = cv::moefy_pack<sf::bfloat16_t>(p.dense, r);
    std::printf("planted-group purity of the k-means split: %.3f (random split: %.3f)\n\n",
                cv::split_purity(r.permutation, p.group, g),
                cv::split_purity(cv::split_random(groups * g, g, 0), p.group, g));
    std::printf("%s\n", cv::format_report(r.report).c_str());

    const std::string path = dir + "/moefy_synthetic.safetensors";
    sf::io::save_blocked(path, model, {{"activation", "relu"}, {"split", "kmeans"}, {"selector", "avg_k"}});
    const auto back = sf::io::load_blocked<sf::bfloat16_t>(path);
    using P = sf::policy<32, sf::select::avg_k, sf::bfloat16_t, sf::act::relu>;
    std::vector<float> y1(static_cast<std::size_t>(8 * d)), y2(y1.size());
    sf::cpu::forward<P>(model.view(), 8, p.x.data(), y1.data(), {8});
    sf::cpu::forward<P>(back.view(), 8, p.x.data(), y2.data(), {8});
    std::printf("saved %s; reloaded model gives %s outputs\n", path.c_str(),
                y1 == y2 ? "identical" : "DIFFERENT");
    return y1 == y2 ? 0 : 1;
  } catch (const sf::error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
