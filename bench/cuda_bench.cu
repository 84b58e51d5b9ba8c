// sparse_ffn_cuda_bench — GPU benchmarks (Google Benchmark, manual time from CUDA events).
//
//   BM_cuda_copy                                           device-to-device copy: achievable bandwidth
//   BM_cuda_dense_cublas_<dtype>/d:D/dff:F/batch:N         dense FFN: cublasGemmEx ×2 + activation
//   BM_cuda_sparse_<selector>_<dtype>/d:D/dff:F/g:G/density:P/batch:N
// Counters: bytes_per_second on bytes touched (sparse: the selector's rows, the keys of every block
// the batch selected and the value rows with a nonzero activation for some token of the block —
// the kernel skips the others — from the CPU forward's routing and pre-activations on the same
// model and input; dense: both weight matrices), `density`, `touched_mb`. Weights rotate over enough
// copies to exceed 4× the L2.
// Without a GPU the binary prints a message and exits 0.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>

#include <sparse_ffn/cuda.cuh>
#include <sparse_ffn/sparse_ffn.hpp>

#include "bytes_touched.hpp"

#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace sf = sparse_ffn;

namespace {

#define CK(x)                                                                         \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

double g_l2_bytes = 50.0 * 1024 * 1024;

struct event_timer {
  cudaEvent_t a, b;
  event_timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~event_timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  void start() { CK(cudaEventRecord(a)); }
  double stop_s() {
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms / 1e3;
  }
};

void BM_cuda_copy(benchmark::State& state) {
  const std::size_t bytes = std::size_t{1} << 30;
  void *src, *dst;
  CK(cudaMalloc(&src, bytes));
  CK(cudaMalloc(&dst, bytes));
  event_timer t;
  for (auto _ : state) {
    t.start();
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
    state.SetIterationTime(t.stop_s());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 *
                          static_cast<std::int64_t>(bytes));
  cudaFree(src);
  cudaFree(dst);
}

template <class T>
cudaDataType_t cuda_type() {
  return std::is_same<T, float>::value        ? CUDA_R_32F
         : std::is_same<T, sf::half_t>::value ? CUDA_R_16F
                                              : CUDA_R_16BF;
}

template <class T>
__global__ void relu_inplace(T* h, std::int64_t count) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) h[i] = sf::from_float<T>(sf::act::relu::apply(sf::to_float(h[i])));
}

template <class T>
void BM_cuda_dense(benchmark::State& state, sf::index_t d, sf::index_t f, sf::index_t n) {
  const double bytes = 2.0 * double(d) * double(f) * sizeof(T);
  const int copies = std::max(1, static_cast<int>(std::ceil(4 * g_l2_bytes / bytes)));
  std::vector<T*> w1(copies), w2(copies);
  for (int c = 0; c < copies; ++c) {
    CK(cudaMalloc(&w1[c], static_cast<std::size_t>(d * f) * sizeof(T)));
    CK(cudaMalloc(&w2[c], static_cast<std::size_t>(d * f) * sizeof(T)));
    CK(cudaMemset(w1[c], 0, static_cast<std::size_t>(d * f) * sizeof(T)));
    CK(cudaMemset(w2[c], 0, static_cast<std::size_t>(d * f) * sizeof(T)));
  }
  T *x, *h, *y;
  CK(cudaMalloc(&x, static_cast<std::size_t>(n * d) * sizeof(T)));
  CK(cudaMalloc(&h, static_cast<std::size_t>(n * f) * sizeof(T)));
  CK(cudaMalloc(&y, static_cast<std::size_t>(n * d) * sizeof(T)));
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float one = 1.0f, zero = 0.0f;
  event_timer t;
  int next = 0;
  for (auto _ : state) {
    const int c = next++ % copies;
    t.start();
    // Row-major H [n × f] = X [n × d] · W1ᵀ  ==  column-major Hᵀ [f × n] = W1 [f × d] (col-major view: d × f)
    // ...
    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(f), int(n), int(d), &one, w1[c], cuda_type<T>(),
                 int(d), x, cuda_type<T>(), int(d), &zero, h, cuda_type<T>(), int(f), CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
    relu_inplace<<<unsigned((n * f + 255) / 256), 256>>>(h, n * f);
    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(d), int(n), int(f), &one, w2[c], cuda_type<T>(),
                 int(f), h, cuda_type<T>(), int(f), &zero, y, cuda_type<T>(), int(d), CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
    state.SetIterationTime(t.stop_s());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * bytes));
  cublasDestroy(handle);
  for (int c = 0; c < copies; ++c) cudaFree(w1[c]), cudaFree(w2[c]);
  cudaFree(x), cudaFree(h), cudaFree(y);
}

/// Bytes a sparse forward reads from device memory (bench::bytes_touched), from the CPU forward's
/// routing and pre-activations on the host model and the same input (the GPU's routing up to float
/// rounding of the scores).
template <class P, class Tio>
double touched_bytes(const sf::blocked_ffn_view<typename P::dtype>& w, sf::index_t n,
                     const std::vector<Tio>& x, const std::vector<sf::token_id_t>& ids, sf::route_args a) {
  const sf::index_t k = a.k, G = w.layout.g;
  std::vector<float> xf(x.size()), yf(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xf[i] = sf::to_float(x[i]);
  std::vector<sf::block_index_t> blocks(static_cast<std::size_t>(n * k));
  std::vector<float> pre(static_cast<std::size_t>(n * k * G)), up(P::activation::gated ? pre.size() : 0);
  a.token_ids = ids.data();
  sf::forward_cache cache{blocks.data(), nullptr, pre.data(), up.empty() ? nullptr : up.data()};
  sf::cpu::forward<P>(w, n, xf.data(), yf.data(), a, &cache);
  double frac = 0;
  return bench::bytes_touched<P>(w, n, k, blocks, pre, up, &frac);
}

template <class P>
void BM_cuda_sparse(benchmark::State& state, sf::index_t d, sf::index_t f, int density, sf::index_t n) {
  using T = typename P::dtype;
  using Tio = std::conditional_t<sf::is_quantized<T>::value, sf::bfloat16_t, T>;  // q8/q4: bf16 x and y
  constexpr int G = P::block_size;
  const sf::index_t B = f / G, k = std::max<sf::index_t>(1, (B * density + 50) / 100);
  // Keys and values as stored: padded rows (q8/q4: quants and scales).
  const double model_bytes = 2.0 * double(f) * double(sf::padded_ld<T>(d)) * sizeof(T);
  const int copies = std::max(1, static_cast<int>(std::ceil(4 * g_l2_bytes / model_bytes)));
  std::vector<std::unique_ptr<sf::cuda::device_model<T>>> models;
  sf::blocked_ffn<T> host;
  {
    sf::dense_ffn<float> dense(d, f, false, true);
    std::mt19937 r(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& v : dense.w1) v = nd(r) / std::sqrt(float(d));
    for (auto& v : dense.w2) v = nd(r) / std::sqrt(float(f));
    sf::pack_options po{G};
    std::vector<float> gate(static_cast<std::size_t>(B * d));
    for (auto& v : gate) v = nd(r) / std::sqrt(float(d));
    po.gate_w = gate.data();
    host = sf::pack<T>(dense.view(), po);
    for (int c = 0; c < copies; ++c) {
      models.emplace_back(new sf::cuda::device_model<T>());
      if (!models.back()->upload(host)) {
        state.SkipWithError("upload failed");
        return;
      }
    }
  }
  std::vector<Tio> xh(static_cast<std::size_t>(n * d));
  std::mt19937 r(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : xh) v = sf::from_float<Tio>(nd(r));
  std::vector<sf::token_id_t> idh(static_cast<std::size_t>(n));
  for (sf::index_t t = 0; t < n; ++t) idh[static_cast<std::size_t>(t)] = (t * 7919) % 50000;
  Tio *x, *y;
  sf::token_id_t* ids;
  CK(cudaMalloc(&x, xh.size() * sizeof(Tio)));
  CK(cudaMalloc(&y, xh.size() * sizeof(Tio)));
  CK(cudaMalloc(&ids, idh.size() * sizeof(sf::token_id_t)));
  CK(cudaMemcpy(x, xh.data(), xh.size() * sizeof(Tio), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(ids, idh.data(), idh.size() * sizeof(sf::token_id_t), cudaMemcpyHostToDevice));
  sf::route_args a{k};
  a.vocab_size = 50000;
  const double bytes_read = touched_bytes<P>(host.view(), n, xh, idh, a);
  a.token_ids = ids;
  std::size_t bytes = 0;
  auto res = sf::cuda::forward<P>(nullptr, bytes, models[0]->view(), n, x, y, a);
  if (!res) {
    state.SkipWithError(res.message);
    return;
  }
  void* ws;
  CK(cudaMalloc(&ws, bytes));
  event_timer t;
  int next = 0;
  for (auto _ : state) {
    const auto& m = *models[static_cast<std::size_t>(next++ % copies)];
    t.start();
    res = sf::cuda::forward<P>(ws, bytes, m.view(), n, x, y, a);
    state.SetIterationTime(t.stop_s());
    if (!res) {
      state.SkipWithError(res.message);
      break;
    }
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(double(state.iterations()) * bytes_read));
  state.counters["density"] = double(k) / double(B);
  state.counters["touched_mb"] = bytes_read / 1e6;
  cudaFree(ws), cudaFree(x), cudaFree(y), cudaFree(ids);
}

template <class S, class T>
void register_sparse(const char* sel, const char* dt) {
  for (int n : {1, 8, 64})
    for (int p : {12, 25, 50}) {
      const std::string name = std::string("BM_cuda_sparse_") + sel + "_" + dt +
                               "/d:4096/dff:14336/g:64/density:" + std::to_string(p) +
                               "/batch:" + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), BM_cuda_sparse<sf::policy<64, S, T, sf::act::relu>>,
                                   sf::index_t{4096}, sf::index_t{14336}, p, sf::index_t{n})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("sparse_ffn_cuda_bench: no CUDA device; nothing to measure.\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  g_l2_bytes = prop.l2CacheSize;
  benchmark::AddCustomContext("gpu", prop.name);
  benchmark::RegisterBenchmark("BM_cuda_copy", BM_cuda_copy)->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (int n : {1, 8, 64})
    benchmark::RegisterBenchmark(
        ("BM_cuda_dense_cublas_bf16/d:4096/dff:14336/batch:" + std::to_string(n)).c_str(),
        BM_cuda_dense<sf::bfloat16_t>, sf::index_t{4096}, sf::index_t{14336}, sf::index_t{n})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  register_sparse<sf::select::avg_k, sf::bfloat16_t>("avg_k", "bf16");
  register_sparse<sf::select::hash, sf::bfloat16_t>("hash", "bf16");
  register_sparse<sf::select::learned_gate, sf::bfloat16_t>("learned_gate", "bf16");
  register_sparse<sf::select::avg_k, float>("avg_k", "f32");
  register_sparse<sf::select::avg_k, sf::q8_t>("avg_k", "q8");
  register_sparse<sf::select::avg_k, sf::q4_t>("avg_k", "q4");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
