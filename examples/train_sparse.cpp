// Training a sparse FFN with the backward pass: a student (Avg-K, g = 32, 25% of the blocks, ReLU) is
// fitted to a teacher dense FFN's outputs on random inputs with Adam written here, in float.
//
//   train_sparse [loss.csv]
//
// Every step: a fresh batch x, the teacher's y* = W2ᵀ relu(W1 x + b1) + b2, the student's forward with
// a forward_cache, the loss L = mean over tokens of |y − y*|² / d, dY = 2 (y − y*) / (n·d), then
// cpu::backward and an Adam step on every weight and bias. The student's Avg-K centroids are a function
// of its keys, so they are recomputed after each step (the selection itself gets no gradient:
// cpu/backward.hpp). Prints the training loss and the held-out relative error every 25 steps (and
// writes them to loss.csv if given); exits 1 unless the held-out error fell by at least 30%.
#include <sparse_ffn/sparse_ffn.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace sf = sparse_ffn;

namespace {

constexpr sf::index_t d = 64, d_ff = 512, g = 32, n = 64;
using P = sf::policy<32, sf::select::avg_k, float, sf::act::relu>;

sf::dense_ffn<float> random_ffn(std::mt19937& r, float scale2) {
  sf::dense_ffn<float> f(d, d_ff, false, true);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : f.w1) v = nd(r) / std::sqrt(float(d));
  for (auto& v : f.w2) v = scale2 * nd(r) / std::sqrt(float(d_ff));
  for (auto& v : f.b1) v = -0.5f + 0.1f * nd(r);  // most neurons off for a given input: a sparse teacher
  for (auto& v : f.b2) v = 0.1f * nd(r);
  return f;
}

/// The teacher's outputs for n tokens (plain loops: 64 × 512, small).
std::vector<float> teacher(const sf::dense_ffn<float>& f, const std::vector<float>& x) {
  std::vector<float> y(x.size());
  std::vector<float> h(static_cast<std::size_t>(d_ff));
  for (sf::index_t t = 0; t < n; ++t) {
    for (sf::index_t i = 0; i < d_ff; ++i) {
      float a = f.b1[static_cast<std::size_t>(i)];
      for (sf::index_t c = 0; c < d; ++c)
        a += f.w1[static_cast<std::size_t>(i * d + c)] * x[static_cast<std::size_t>(t * d + c)];
      h[static_cast<std::size_t>(i)] = a > 0 ? a : 0;
    }
    for (sf::index_t c = 0; c < d; ++c) {
      float s = f.b2[static_cast<std::size_t>(c)];
      for (sf::index_t i = 0; i < d_ff; ++i)
        s += f.w2[static_cast<std::size_t>(c * d_ff + i)] * h[static_cast<std::size_t>(i)];
      y[static_cast<std::size_t>(t * d + c)] = s;
    }
  }
  return y;
}

/// Adam (β1 0.9, β2 0.999, ε 1e-8) over one parameter array.
struct adam {
  std::vector<float> m, v;
  explicit adam(std::size_t size) : m(size), v(size) {}
  void step(float* p, const float* grad, std::size_t size, float lr, int t) {
    const float c1 = 1.0f - std::pow(0.9f, float(t)), c2 = 1.0f - std::pow(0.999f, float(t));
    for (std::size_t i = 0; i < size; ++i) {
      m[i] = 0.9f * m[i] + 0.1f * grad[i];
      v[i] = 0.999f * v[i] + 0.001f * grad[i] * grad[i];
      p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + 1e-8f);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 r(42);
  const sf::dense_ffn<float> teach = random_ffn(r, 1.0f);
  sf::pack_options po;
  po.g = g;
  sf::blocked_ffn<float> student = sf::pack<float>(random_ffn(r, 0.3f).view(), po);
  const sf::index_t B = student.layout().num_blocks, k = B / 4;
  sf::ffn_grads grads(student.layout(), false);
  const sf::ffn_grads_view gv = grads.view();
  // The model's float rows and the gradients' rows have the same stride, so element i of one is element
  // i of the other.
  if (gv.layout.ld != student.layout().ld) return 2;
  const auto wsize = static_cast<std::size_t>(student.layout().total_elements());
  adam opt_w(wsize), opt_b1(static_cast<std::size_t>(d_ff)), opt_b2(static_cast<std::size_t>(d));

  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto batch = [&] {
    std::vector<float> x(static_cast<std::size_t>(n * d));
    for (auto& v : x) v = nd(r);
    return x;
  };
  const std::vector<float> x_eval = batch(), y_eval = teacher(teach, x_eval);
  std::vector<float> y(static_cast<std::size_t>(n * d)), dy(y.size());
  std::vector<sf::block_index_t> blocks(static_cast<std::size_t>(n * k));
  std::vector<float> pre(static_cast<std::size_t>(n * k * g));
  const sf::forward_cache cache{blocks.data(), nullptr, pre.data(), nullptr};
  sf::cpu::backward_args ba;
  ba.k = k;

  auto eval_error = [&] {
    sf::cpu::forward<P>(student.view(), n, x_eval.data(), y.data(), sf::route_args{k});
    double num = 0, den = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      num += double(y[i] - y_eval[i]) * (y[i] - y_eval[i]);
      den += double(y_eval[i]) * y_eval[i];
    }
    return std::sqrt(num / den);
  };
  std::FILE* csv = argc > 1 ? std::fopen(argv[1], "w") : nullptr;
  if (csv) std::fprintf(csv, "step,train_loss,heldout_rel_error\n");
  std::printf(
      "student: d=%lld d_ff=%lld g=%lld B=%lld k=%lld (Avg-K, %.0f%% of the blocks), batch %lld, Adam\n",
      static_cast<long long>(d), static_cast<long long>(d_ff), static_cast<long long>(g),
      static_cast<long long>(B), static_cast<long long>(k), 100.0 * double(k) / double(B),
      static_cast<long long>(n));
  const double err0 = eval_error();
  double err = err0;
  const int steps = 500;
  for (int step = 1; step <= steps; ++step) {
    const std::vector<float> x = batch(), ys = teacher(teach, x);
    sf::cpu::forward<P>(student.view(), n, x.data(), y.data(), sf::route_args{k}, &cache);
    double loss = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      loss += double(y[i] - ys[i]) * (y[i] - ys[i]) / double(n * d);
      dy[i] = 2.0f * (y[i] - ys[i]) / float(n * d);
    }
    sf::cpu::backward<P>(student.view(), n, x.data(), dy.data(), cache, static_cast<float*>(nullptr), gv, ba);
    const float lr = 3e-3f;
    opt_w.step(student.weights(), gv.weights, wsize, lr, step);
    opt_b1.step(student.b1().data(), gv.b1, static_cast<std::size_t>(d_ff), lr, step);
    opt_b2.step(student.b2().data(), gv.b2, static_cast<std::size_t>(d), lr, step);
    student.compute_centroids();
    if (step == 1 || step % 25 == 0) {
      err = eval_error();
      std::printf("step %4d  train loss %.5f  held-out relative error %.4f\n", step, loss, err);
      if (csv) std::fprintf(csv, "%d,%.6f,%.6f\n", step, loss, err);
    }
  }
  if (csv) std::fclose(csv);
  std::printf("held-out relative error %.4f -> %.4f\n", err0, err);
  return err < 0.7 * err0 ? 0 : 1;
}
