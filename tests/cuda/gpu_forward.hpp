// The GPU forward matrix: the same random cases and float64 checks as the CPU matrix
// (tests/support/forward_matrix.hpp), with every buffer copied to the device and the outputs copied
// back into the case before verify(). Also checks run-to-run determinism.
#pragma once

#include <sparse_ffn/cuda.cuh>

#include "../support/forward_matrix.hpp"

namespace gpu {

#define GPU_REQUIRE(call) REQUIRE((call) == cudaSuccess)

template <class T>
struct dbuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit dbuf(std::size_t count) : n(count) {
    GPU_REQUIRE(cudaMalloc(&p, std::max<std::size_t>(count, 1) * sizeof(T)));
  }
  dbuf(const std::vector<T>& h) : dbuf(h.size()) {
    GPU_REQUIRE(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~dbuf() { cudaFree(p); }
  void to_host(T* h) const { GPU_REQUIRE(cudaMemcpy(h, p, n * sizeof(T), cudaMemcpyDeviceToHost)); }
};

/// A call succeeded, the GPU finished it, and the workspace's device error word is 0.
inline void require_clean(const sfx::cuda::result& res, const void* ws) {
  INFO(res.message);
  REQUIRE(res);
  GPU_REQUIRE(cudaDeviceSynchronize());
  int errors = -1;
  REQUIRE(sfx::cuda::device_errors(ws, errors));
  REQUIRE(errors == 0);
}

/// num_blocks > 0 overrides the random shape's B (k ≤ 9): above kernels::k_topk_block_max it takes the
/// radix-sort top-k instead of the one-kernel one.
template <class P, class Tio>
void check_policy_gpu(std::uint64_t salt, sfx::index_t num_blocks = 0) {
  using T = typename P::dtype;
  auto r = test::rng(salt);
  for (sfx::index_t n : {1, 3, 64, 1000}) {
    auto shape = test::random_shape(r, n, P::block_size);
    if (num_blocks > 0) {
      shape.num_blocks = num_blocks;
      shape.k = std::min<sfx::index_t>(shape.k, 9);
      shape.pinned = std::min(shape.pinned, shape.k);
    }
    test::case_data<T, Tio> c(r, shape, P::block_size, P::selector::kind, P::activation::kind);
    // The batched (tensor-core) key pass rounds X to T: make X exactly representable so the float64
    // reference sees the same inputs.
    if constexpr (!sfx::is_quantized<T>::value)
      if (sfx::cuda::detail::use_wmma<P>(c.s.n))
        for (auto& v : c.x) v = sfx::from_float<Tio>(sfx::to_float(sfx::from_float<T>(sfx::to_float(v))));
    // What the GPU kernels round: nothing on the decode path (X stays float); on the tensor-core path X
    // (made exact above) and the value coefficients w·h (to T, bf16 or half: 2^-8 bounds both).
    c.x_to_bf16 = c.x_to_int8 = false;
    c.h_levels = 0;
    c.h_to_bf16 = sfx::cuda::detail::path_for<P>(c.s.n, true) == sfx::cuda::detail::compute_path::wmma;
    sfx::cuda::device_model<T> m;
    REQUIRE(m.upload(c.model));
    const auto w = m.view();
    const sfx::index_t nn = c.s.n, d = c.s.d, k = c.s.k, G = P::block_size;
    dbuf<Tio> x(c.x), y(nn * d), y2(nn * d), yr(nn * d);
    dbuf<sfx::token_id_t> ids(c.ids);
    dbuf<sfx::block_index_t> cb(nn * k), rb(nn * k);
    dbuf<float> cw(nn * k), rw(nn * k), cpre(nn * k * G), cup(nn * k * G);
    sfx::route_args a = c.args;
    a.token_ids = ids.p;
    sfx::forward_cache cache{cb.p, cw.p, cpre.p, P::activation::gated ? cup.p : nullptr};
    std::size_t bytes = 0;
    REQUIRE(sfx::cuda::forward<P>(nullptr, bytes, w, nn, x.p, y.p, a, &cache));
    dbuf<unsigned char> ws(bytes);
    require_clean(sfx::cuda::forward<P>(ws.p, bytes, w, nn, x.p, y.p, a, &cache), ws.p);
    // Determinism: a second run gives the same bits.
    REQUIRE(sfx::cuda::forward<P>(ws.p, bytes, w, nn, x.p, y2.p, a, nullptr));
    std::vector<Tio> h1(static_cast<std::size_t>(nn * d)), h2(h1.size());
    y.to_host(h1.data());
    y2.to_host(h2.data());
    REQUIRE(std::memcmp(h1.data(), h2.data(), h1.size() * sizeof(Tio)) == 0);
    // route() and forward_routed() through the device.
    std::size_t rbytes = 0;
    REQUIRE(sfx::cuda::route<P>(nullptr, rbytes, w, nn, x.p, a, sfx::routing_view{nn, k, rb.p, rw.p}));
    dbuf<unsigned char> rws(rbytes);
    REQUIRE(sfx::cuda::route<P>(rws.p, rbytes, w, nn, x.p, a, sfx::routing_view{nn, k, rb.p, rw.p}));
    std::size_t fbytes = 0;
    const sfx::const_routing_view given{nn, k, cb.p, cw.p};
    REQUIRE(sfx::cuda::forward_routed<P>(nullptr, fbytes, w, nn, x.p, yr.p, given));
    dbuf<unsigned char> fws(fbytes);
    REQUIRE(sfx::cuda::forward_routed<P>(fws.p, fbytes, w, nn, x.p, yr.p, given));
    GPU_REQUIRE(cudaDeviceSynchronize());
    // Bring everything back into the case and run the CPU checks.
    std::copy(h1.begin(), h1.end(), c.y.data());
    yr.to_host(c.y_routed.data());
    cb.to_host(c.cblocks.data());
    cw.to_host(c.cweights.data());
    cpre.to_host(c.cpre.data());
    if (P::activation::gated) cup.to_host(c.cup.data());
    rb.to_host(c.rblocks.data());
    rw.to_host(c.rweights.data());
    c.verify();
  }
}

/// A forward captured in a CUDA graph and replayed gives the bits of a direct call on the same stream
/// (no allocation, host synchronisation or host-side decision depends on device data inside a call).
template <class P, class Tio>
void check_graph_capture(std::uint64_t salt, sfx::index_t n) {
  using T = typename P::dtype;
  auto r = test::rng(salt);
  auto shape = test::random_shape(r, n, P::block_size);
  test::case_data<T, Tio> c(r, shape, P::block_size, P::selector::kind, P::activation::kind);
  sfx::cuda::device_model<T> m;
  REQUIRE(m.upload(c.model));
  const sfx::index_t d = c.s.d;
  dbuf<Tio> x(c.x), y(n * d), yg(n * d);
  dbuf<sfx::token_id_t> ids(c.ids);
  sfx::route_args a = c.args;
  a.token_ids = ids.p;
  cudaStream_t s = nullptr;
  GPU_REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::size_t bytes = 0;
  REQUIRE(sfx::cuda::forward<P>(nullptr, bytes, m.view(), n, x.p, y.p, a));
  dbuf<unsigned char> ws(bytes);
  REQUIRE(sfx::cuda::forward<P>(ws.p, bytes, m.view(), n, x.p, y.p, a, nullptr, s));
  GPU_REQUIRE(cudaStreamSynchronize(s));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  GPU_REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const auto res = sfx::cuda::forward<P>(ws.p, bytes, m.view(), n, x.p, yg.p, a, nullptr, s);
  GPU_REQUIRE(cudaStreamEndCapture(s, &graph));
  INFO(res.message);
  REQUIRE(res);
  std::size_t nodes = 0;
  GPU_REQUIRE(cudaGraphGetNodes(graph, nullptr, &nodes));
  INFO("graph nodes: " << nodes);
  GPU_REQUIRE(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 2; ++rep) {
    GPU_REQUIRE(cudaMemset(yg.p, 0xff, yg.n * sizeof(Tio)));  // poisoned before each replay
    GPU_REQUIRE(cudaGraphLaunch(exec, s));
    GPU_REQUIRE(cudaStreamSynchronize(s));
    std::vector<Tio> h1(yg.n), h2(yg.n);
    y.to_host(h1.data());
    yg.to_host(h2.data());
    REQUIRE(std::memcmp(h1.data(), h2.data(), h1.size() * sizeof(Tio)) == 0);
  }
  int errors = -1;
  REQUIRE(sfx::cuda::device_errors(ws.p, errors, s));
  REQUIRE(errors == 0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

template <class Sel>
void check_selector_gpu() {
  std::uint64_t salt = 1000;
  check_policy_gpu<sfx::policy<16, Sel, float, sfx::act::relu>, float>(++salt);
  check_policy_gpu<sfx::policy<64, Sel, sfx::bfloat16_t, sfx::act::swiglu>, sfx::bfloat16_t>(++salt);
  check_policy_gpu<sfx::policy<64, Sel, sfx::half_t, sfx::act::gelu_erf>, float>(++salt);
  check_policy_gpu<sfx::policy<128, Sel, sfx::bfloat16_t, sfx::act::relu>, float>(++salt);
  check_policy_gpu<sfx::policy<1, Sel, float, sfx::act::geglu>, float>(++salt);
  // q8/q4 weights (decode kernels at every n, dequantised in registers; X stays float).
  check_policy_gpu<sfx::policy<64, Sel, sfx::q8_t, sfx::act::silu>, float>(++salt);
  check_policy_gpu<sfx::policy<32, Sel, sfx::q4_t, sfx::act::swiglu>, sfx::bfloat16_t>(++salt);
  // More blocks than the one-kernel top-k takes: the radix-sort path.
  check_policy_gpu<sfx::policy<1, Sel, float, sfx::act::relu>, float>(
      ++salt, sfx::cuda::kernels::k_topk_block_max + 903);
}

}  // namespace gpu
