// GPU backward against the float64 reference (skipped without a GPU): the CPU backward matrix's random
// cases (tests/support/backward_matrix.hpp) with the GPU forward writing the cache and the GPU backward
// the gradients, then the same checks; run-to-run determinism, accumulate = true adding exactly, and
// bad routing entries reported on the device.
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

#include "../support/backward_matrix.hpp"

namespace {

/// Device gradient buffers for a model layout (every gradient, the gate's when `gate`).
struct device_grads {
  gpu::dbuf<float> weights, b1, b3, b2, gate_w, gate_b, route;
  sfx::ffn_grads_view view;
  device_grads(const sfx::block_layout& model, bool gate, sfx::index_t nk)
      : weights(sfx::grad_layout(model).total_elements()),
        b1(model.d_ff),
        b3(model.gated ? model.d_ff : 1),
        b2(model.d_model),
        gate_w(gate ? model.num_blocks * sfx::grad_layout(model).ld : 1),
        gate_b(gate ? model.num_blocks : 1),
        route(nk) {
    view.layout = sfx::grad_layout(model);
    view.weights = weights.p;
    view.b1 = b1.p;
    view.b3 = model.gated ? b3.p : nullptr;
    view.b2 = b2.p;
    view.gate_w = gate ? gate_w.p : nullptr;
    view.gate_b = gate ? gate_b.p : nullptr;
    view.route_weights = route.p;
  }
  /// Host copies into `h` (an ffn_grads of the same layout) and `route_h`.
  void to_host(const sfx::ffn_grads_view& h, std::vector<float>& route_h) const {
    weights.to_host(h.weights);
    b1.to_host(h.b1);
    if (h.b3) b3.to_host(h.b3);
    b2.to_host(h.b2);
    if (h.gate_w) gate_w.to_host(h.gate_w);
    if (h.gate_b) gate_b.to_host(h.gate_b);
    route.to_host(route_h.data());
  }
  void poison() const {
    for (const gpu::dbuf<float>* b : {&weights, &b1, &b3, &b2, &gate_w, &gate_b, &route})
      GPU_REQUIRE(cudaMemset(b->p, 0xff, b->n * sizeof(float)));  // NaN
  }
};

template <class P>
void run_gpu_backward_case(std::mt19937_64& r, sfx::index_t n) {
  using T = typename P::dtype;
  test::backward_case<P> c(r, n);
  // The tensor-core forward rounds X to T: make X exact in T so that the reference's X (which dW1 and
  // dW3 read) is the one the cached pre-activations came from.
  if (sfx::cuda::detail::use_wmma<P>(n))
    for (auto& v : c.x) v = sfx::to_float(sfx::from_float<T>(v));
  INFO(c.describe("cuda"));
  sfx::cuda::device_model<T> m;
  REQUIRE(m.upload(c.model));
  const auto w = m.view();
  const sfx::index_t d = c.d, k = c.k, G = P::block_size, nk = n * k;
  gpu::dbuf<float> x(c.x), dy(c.dy), y(n * d), dx(n * d), dx2(n * d);
  gpu::dbuf<sfx::token_id_t> ids(c.ids);
  gpu::dbuf<sfx::block_index_t> cb(nk);
  gpu::dbuf<float> cw(nk), cpre(nk * G), cup(nk * G);
  sfx::route_args a = c.ra;
  a.token_ids = ids.p;
  const sfx::forward_cache cache{cb.p, cw.p, cpre.p, P::activation::gated ? cup.p : nullptr};
  std::size_t fbytes = 0;
  REQUIRE(sfx::cuda::forward<P>(nullptr, fbytes, w, n, x.p, y.p, a, &cache));
  gpu::dbuf<unsigned char> fws(fbytes);
  REQUIRE(sfx::cuda::forward<P>(fws.p, fbytes, w, n, x.p, y.p, a, &cache));
  cb.to_host(c.cb.data());
  cw.to_host(c.cw.data());
  cpre.to_host(c.cpre.data());
  if (P::activation::gated) cup.to_host(c.cup.data());

  device_grads dg(c.model.layout(), c.gate, nk);
  dg.poison();
  GPU_REQUIRE(cudaMemset(dx.p, 0xff, dx.n * sizeof(float)));
  sfx::backward_args ba = c.args();
  std::size_t bytes = 0;
  REQUIRE(sfx::cuda::backward<P>(nullptr, bytes, w, n, x.p, dy.p, cache, dx.p, dg.view, ba));
  gpu::dbuf<unsigned char> ws(bytes);
  gpu::require_clean(sfx::cuda::backward<P>(ws.p, bytes, w, n, x.p, dy.p, cache, dx.p, dg.view, ba), ws.p);

  sfx::ffn_grads host(c.model.layout(), c.gate);
  const sfx::ffn_grads_view hv = host.view();
  std::vector<float> route(static_cast<std::size_t>(nk)), dxh(c.x.size());
  dg.to_host(hv, route);
  dx.to_host(dxh.data());
  test::check_backward_grads(c, hv, dxh.data(), route.data(), nullptr, 2e-4);

  // Determinism: a second run (poisoned outputs) gives the same bits.
  const std::vector<float> w1(hv.weights, hv.weights + hv.layout.total_elements());
  dg.poison();
  REQUIRE(sfx::cuda::backward<P>(ws.p, bytes, w, n, x.p, dy.p, cache, dx2.p, dg.view, ba));
  sfx::ffn_grads host2(c.model.layout(), c.gate);
  std::vector<float> route2(route.size()), dxh2(dxh.size());
  dg.to_host(host2.view(), route2);
  dx2.to_host(dxh2.data());
  REQUIRE(std::memcmp(w1.data(), host2.view().weights, w1.size() * sizeof(float)) == 0);
  REQUIRE(std::memcmp(dxh.data(), dxh2.data(), dxh.size() * sizeof(float)) == 0);
  REQUIRE(std::memcmp(route.data(), route2.data(), route.size() * sizeof(float)) == 0);

  // accumulate = true adds exactly what an overwrite computes, and leaves unchosen blocks alone.
  std::vector<float> base(w1.size());
  test::fill_normal(base, r, 1.0);
  GPU_REQUIRE(cudaMemcpy(dg.weights.p, base.data(), base.size() * 4, cudaMemcpyHostToDevice));
  GPU_REQUIRE(cudaMemcpy(dg.b1.p, hv.b1, static_cast<std::size_t>(c.F) * 4, cudaMemcpyHostToDevice));
  ba.accumulate = true;
  REQUIRE(
      sfx::cuda::backward<P>(ws.p, bytes, w, n, x.p, dy.p, cache, static_cast<float*>(nullptr), dg.view, ba));
  std::vector<float> acc(base.size()), b1acc(static_cast<std::size_t>(c.F));
  dg.weights.to_host(acc.data());
  dg.b1.to_host(b1acc.data());
  std::size_t bad_acc = base.size();
  for (std::size_t e = 0; e < base.size() && bad_acc == base.size(); ++e)
    if (!(acc[e] == base[e] + w1[e])) bad_acc = e;
  INFO("first accumulated weight gradient element that is not old + overwrite: " << bad_acc);
  REQUIRE(bad_acc == base.size());
  for (sfx::index_t e = 0; e < c.F; ++e) REQUIRE(b1acc[static_cast<std::size_t>(e)] == hv.b1[e] * 2.0f);
}

template <class Sel, class T, int G>
void gpu_backward_acts(std::mt19937_64& r, sfx::index_t n) {
  run_gpu_backward_case<sfx::policy<G, Sel, T, sfx::act::relu>>(r, n);
  run_gpu_backward_case<sfx::policy<G, Sel, T, sfx::act::gelu_erf>>(r, n);
  run_gpu_backward_case<sfx::policy<G, Sel, T, sfx::act::silu>>(r, n);
  run_gpu_backward_case<sfx::policy<G, Sel, T, sfx::act::swiglu>>(r, n);
  run_gpu_backward_case<sfx::policy<G, Sel, T, sfx::act::geglu>>(r, n);
}

template <class Sel>
void check_gpu_backward_matrix(std::uint64_t salt) {
  auto r = test::rng(salt);
  for (sfx::index_t n : {1, 3, 37, 100}) {
    gpu_backward_acts<Sel, float, 1>(r, n);
    gpu_backward_acts<Sel, float, 16>(r, n);
    gpu_backward_acts<Sel, sfx::bfloat16_t, 64>(r, n);
    gpu_backward_acts<Sel, sfx::half_t, 16>(r, n);
  }
}

}  // namespace

TEST_CASE("cuda backward: avg_k", "[cuda][backward][avg_k]") {
  check_gpu_backward_matrix<sfx::select::avg_k>(0xc1);
}

TEST_CASE("cuda backward: learned_gate", "[cuda][backward][learned_gate]") {
  check_gpu_backward_matrix<sfx::select::learned_gate>(0xc2);
}

TEST_CASE("cuda backward: hash and oracle", "[cuda][backward]") {
  auto r = test::rng(0xc3);
  for (sfx::index_t n : {3, 37}) {
    run_gpu_backward_case<sfx::policy<16, sfx::select::hash, float, sfx::act::swiglu>>(r, n);
    run_gpu_backward_case<sfx::policy<16, sfx::select::oracle, sfx::bfloat16_t, sfx::act::relu>>(r, n);
  }
}

TEST_CASE("cuda backward: n = 0, bad routing entries reported on the device", "[cuda][backward][errors]") {
  using P = sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>;
  using PG = sfx::policy<16, sfx::select::learned_gate, float, sfx::act::relu>;
  auto r = test::rng(0xc4);
  const sfx::index_t d = 32, B = 4, n = 2, k = 2, g = 16;
  const auto dense = test::random_dense<float>(r, d, B * g, false, true);
  std::vector<float> gw(static_cast<std::size_t>(B * d), 0.1f);
  sfx::pack_options po{g};
  po.gate_w = gw.data();
  po.pinned = 1;
  const auto model = sfx::pack<float>(dense.view(), po);
  sfx::cuda::device_model<float> m;
  REQUIRE(m.upload(model));
  std::vector<float> xh(static_cast<std::size_t>(n * d), 0.5f);
  gpu::dbuf<float> x(xh), dy(xh), dx(n * d), pre(n * k * g), cw(std::vector<float>(n * k, 1.0f));
  device_grads dg(model.layout(), true, n * k);
  sfx::backward_args ba;
  ba.k = k;
  // n = 0: an overwrite zeroes every gradient.
  dg.poison();
  std::size_t bytes = 0;
  const sfx::forward_cache none{};
  REQUIRE(sfx::cuda::backward<PG>(nullptr, bytes, m.view(), 0, x.p, dy.p, none, dx.p, dg.view, ba));
  gpu::dbuf<unsigned char> ws0(bytes);
  REQUIRE(sfx::cuda::backward<PG>(ws0.p, bytes, m.view(), 0, x.p, dy.p, none, dx.p, dg.view, ba));
  sfx::ffn_grads host(model.layout(), true);
  std::vector<float> route(static_cast<std::size_t>(n * k));
  dg.to_host(host.view(), route);
  const auto hv = host.view();
  bool zero = true;
  for (sfx::index_t e = 0; e < hv.layout.total_elements(); ++e) zero &= hv.weights[e] == 0.0f;
  for (sfx::index_t e = 0; e < B * hv.layout.ld; ++e) zero &= hv.gate_w[e] == 0.0f;
  for (sfx::index_t e = 0; e < B * g; ++e) zero &= hv.b1[e] == 0.0f;
  REQUIRE(zero);
  // An out-of-range block is left out and reported; a learned-gate row without its pinned block first
  // is reported.
  auto run = [&](auto policy, std::vector<sfx::block_index_t> table) {
    using Q = decltype(policy);
    gpu::dbuf<sfx::block_index_t> cb(table);
    const sfx::forward_cache cache{cb.p, cw.p, pre.p, nullptr};
    std::size_t b = 0;
    REQUIRE(sfx::cuda::backward<Q>(nullptr, b, m.view(), n, x.p, dy.p, cache, dx.p, dg.view, ba));
    gpu::dbuf<unsigned char> ws(b);
    REQUIRE(sfx::cuda::backward<Q>(ws.p, b, m.view(), n, x.p, dy.p, cache, dx.p, dg.view, ba));
    int errors = -1;
    REQUIRE(sfx::cuda::device_errors(ws.p, errors));
    return errors;
  };
  REQUIRE(run(P{}, {0, 1, 2, 3}) == 0);
  REQUIRE(run(P{}, {0, 9, -1, 3}) == sfx::cuda::kernels::bad_block_index);
  REQUIRE(run(PG{}, {0, 1, 0, 2}) == 0);
  REQUIRE(run(PG{}, {1, 0, 0, 2}) == sfx::cuda::kernels::bad_routing_order);
}

int main(int argc, char** argv) {
  return gpu_test_main(argc, argv, "test_cuda_backward");
}
