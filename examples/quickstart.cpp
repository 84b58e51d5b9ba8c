// Quickstart: pack a random FFN into blocks, run the sparse forward with every selector at 25%
// density, and print each selector's output error against the dense FFN and the blocks it chose.
//
//   quickstart [d_model=512] [d_ff=2048] [g=64] [n=16]
#include <sparse_ffn/sparse_ffn.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace sf = sparse_ffn;

int main(int argc, char** argv) {
  const sf::index_t d = argc > 1 ? std::atoll(argv[1]) : 512;
  const sf::index_t f = argc > 2 ? std::atoll(argv[2]) : 2048;
  const sf::index_t g = argc > 3 ? std::atoll(argv[3]) : 64;
  const sf::index_t n = argc > 4 ? std::atoll(argv[4]) : 16;
  try {
    // A dense ReLU FFN in PyTorch layout: W1 [f × d], b1 [f], W2 [d × f], b2 [d].
    sf::dense_ffn<float> dense(d, f, /*gated=*/false, /*biases=*/true);
    std::mt19937_64 rng(2024);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : dense.w1) v = nd(rng) / std::sqrt(float(d));
    for (float& v : dense.w2) v = nd(rng) / std::sqrt(float(f));
    for (float& v : dense.b1) v = -0.5f + 0.1f * nd(rng);  // most neurons inactive, like trained FFNs
    for (float& v : dense.b2) v = 0.1f * nd(rng);

    // Pack into B = f / g blocks (bf16 weights), with a random learned gate for the learned_gate selector.
    const sf::index_t B = f / g, k = std::max<sf::index_t>(1, B / 4);
    std::vector<float> gate(B * d);
    for (float& v : gate) v = nd(rng) / std::sqrt(float(d));
    sf::pack_options opt;
    opt.g = g;
    opt.gate_w = gate.data();
    const sf::blocked_ffn<sf::bfloat16_t> model = sf::pack<sf::bfloat16_t>(dense.view(), opt);

    std::vector<float> x(n * d), y_dense(n * d), y(n * d);
    for (float& v : x) v = nd(rng);
    std::vector<sf::token_id_t> ids(n);
    for (sf::index_t t = 0; t < n; ++t) ids[t] = t * 7919 % 32000;
    sf::cpu::dense_forward<sf::act::relu>(sf::unpack(model.view()).view(), n, x.data(), y_dense.data());

    std::printf(
        "sparse_ffn quickstart: d_model=%lld d_ff=%lld g=%lld B=%lld k=%lld (%.0f%% of blocks), n=%lld, bf16 "
        "weights\n",
        (long long)d, (long long)f, (long long)g, (long long)B, (long long)k, 100.0 * k / B, (long long)n);
    std::printf("%-13s %-22s %s\n", "selector", "rel. L2 error vs dense", "blocks of token 0");
    sf::route_args args;
    args.k = k;
    args.token_ids = ids.data();
    args.vocab_size = 32000;
    for (sf::selector_kind s : {sf::selector_kind::oracle, sf::selector_kind::avg_k,
                                sf::selector_kind::learned_gate, sf::selector_kind::hash}) {
      sf::routing_table table(n, k);
      sf::forward_cache cache{table.blocks.data(), table.weights.data(), nullptr, nullptr};
      sf::dispatch_block_size(g, [&](auto G) {
        sf::dispatch_selector(s, [&](auto sel) {
          using P =
              sf::policy<decltype(G)::value, typename decltype(sel)::type, sf::bfloat16_t, sf::act::relu>;
          sf::cpu::forward<P>(model.view(), n, x.data(), y.data(), args, &cache);
        });
      });
      double err = 0, norm = 0;
      for (sf::index_t i = 0; i < n * d; ++i) {
        err += double(y[i] - y_dense[i]) * double(y[i] - y_dense[i]);
        norm += double(y_dense[i]) * double(y_dense[i]);
      }
      std::printf("%-13s %-22.4f", sf::selector_name(s), std::sqrt(err / norm));
      for (sf::index_t j = 0; j < k && j < 12; ++j) std::printf(" %d", table.blocks[j]);
      std::printf("%s\n", k > 12 ? " ..." : "");
    }
  } catch (const sf::error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
