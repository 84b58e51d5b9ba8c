// Downstream consumer: packs a small random FFN and checks the sparse forward with k = B against the
// dense forward. Exit code 0 on success.
#include <sparse_ffn/sparse_ffn.hpp>

#include <cmath>
#include <cstdio>
#include <random>

int main() {
  namespace sf = sparse_ffn;
  const sf::index_t d = 48, f = 256, g = 32, n = 2;
  sf::dense_ffn<float> dense(d, f, /*gated=*/true, /*biases=*/false);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.2f);
  for (auto* v : {&dense.w1, &dense.w2, &dense.w3})
    for (float& e : *v) e = nd(rng);
  const auto model = sf::pack<sf::bfloat16_t>(dense.view(), {g});

  std::vector<float> x(n * d), y(n * d), yd(n * d);
  for (float& e : x) e = nd(rng);
  using P = sf::policy<32, sf::select::avg_k, sf::bfloat16_t, sf::act::swiglu>;
  sf::cpu::forward<P>(model.view(), n, x.data(), y.data(), {f / g});
  const auto dense_bf16 = sf::unpack(model.view());
  sf::cpu::dense_forward<sf::act::swiglu>(dense_bf16.view(), n, x.data(), yd.data());
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    err += (y[i] - yd[i]) * (y[i] - yd[i]);
    norm += yd[i] * yd[i];
  }
  const double rel = std::sqrt(err / norm);
  std::printf("sparse_ffn %d.%d.%d consumer: k = B relative error vs dense %.3g\n", SPARSE_FFN_VERSION_MAJOR,
              SPARSE_FFN_VERSION_MINOR, SPARSE_FFN_VERSION_PATCH, rel);
  // Float inputs: float accumulation only. On a CPU with AVX512_BF16 the bf16 kernels round x to bf16
  // (docs/design.md): a relative error of about 2e-3.
  const bool rounded = sf::cpu::rounds_inputs_to_bf16<sf::bfloat16_t>();
  std::printf("kernels: %s%s\n", sf::cpu::isa_description().c_str(), rounded ? ", bf16 inputs" : "");
  return rel < (rounded ? 1e-2 : 1e-5) ? 0 : 1;
}
