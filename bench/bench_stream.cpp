// BM_stream_read/<reader>: the best plain read bandwidth we can write for this machine, so that
// "% of stream" means "% of what these cores can read". Several readers over the same 1 GiB buffer
// (split between the OpenMP threads); report.py takes the fastest as the reference:
//   f32_4streams_prefetch  four sequential streams per thread, software prefetch 1 KiB ahead into L1
//                          once per cache line, FMA sum
//   f32_8streams_prefetch_l2  eight streams per thread (the key pass's shape), prefetch 1 KiB ahead
//                          into L2 (prefetcht1) once per cache line, FMA sum
//   f32_1stream            one stream per thread, four accumulators, hardware prefetch only
//   bf16_dot               ggml's vec_dot_bf16 shape: bf16 rows · a bf16 vector (vdpbf16ps; needs
//                          AVX512_BF16, else not registered)
// Each runs with the widest vectors the CPU has (run-time dispatch, like the kernels).
#include "bench_common.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace bench {

namespace {

constexpr std::size_t k_stream_bytes = std::size_t{1} << 30;

// The library's own storage (huge pages where the system grants them, as the models get).
struct stream_buffer {
  std::size_t n = k_stream_bytes / sizeof(float);
  sf::detail::aligned_buffer<float> buf{static_cast<sf::index_t>(n)};
  stream_buffer() {
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) buf[static_cast<sf::index_t>(i)] = 1.0f;  // bf16 view: (0, 1.0)
  }
};
stream_buffer& the_buffer() {
  static stream_buffer b;
  return b;
}

// The float readers, defined once per instruction set inside its target region (a template
// defined outside the region would not be compiled for it). read_streams<N, L2>: N sequential streams
// of len floats, each prefetched 1 KiB ahead once per cache line (into L2 with L2, else L1).
#define SFFN_STREAM_READERS(NS, ISA)                                         \
  namespace NS {                                                             \
  using V = sf::cpu::simd<ISA>;                                              \
  template <int N, bool L2>                                                  \
  float read_streams(const float* base, std::size_t len) {                   \
    const V::reg one = V::set1(1.0f);                                        \
    V::reg a[N];                                                             \
    _Pragma("GCC unroll 8") for (int k = 0; k < N; ++k) a[k] = V::zero();    \
    for (std::size_t i = 0; i < len; i += V::width) {                        \
      if (i % 16 == 0) _Pragma("GCC unroll 8") for (int k = 0; k < N; ++k) { \
          const float* p = base + k * len + i + 256;                         \
          if constexpr (L2)                                                  \
            V::prefetch_l2(p);                                               \
          else                                                               \
            V::prefetch(p);                                                  \
        }                                                                    \
      _Pragma("GCC unroll 8") for (int k = 0; k < N; ++k) a[k] =             \
          V::fma(one, V::load(base + k * len + i), a[k]);                    \
    }                                                                        \
    float t = 0;                                                             \
    for (int k = 0; k < N; ++k) t += V::hsum(a[k]);                          \
    return t;                                                                \
  }                                                                          \
  float read_1stream(const float* base, std::size_t len) {                   \
    const V::reg one = V::set1(1.0f);                                        \
    V::reg a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();   \
    for (std::size_t i = 0; i < len; i += 4 * V::width) {                    \
      a0 = V::fma(one, V::load(base + i), a0);                               \
      a1 = V::fma(one, V::load(base + i + V::width), a1);                    \
      a2 = V::fma(one, V::load(base + i + 2 * V::width), a2);                \
      a3 = V::fma(one, V::load(base + i + 3 * V::width), a3);                \
    }                                                                        \
    return V::hsum(a0) + V::hsum(a1) + V::hsum(a2) + V::hsum(a3);            \
  }                                                                          \
  }

SFFN_STREAM_READERS(scalar_readers, sf::cpu::isa::scalar)
#if SPARSE_FFN_X86_DISPATCH
SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX2)
SFFN_STREAM_READERS(avx2_readers, sf::cpu::isa::avx2)
SPARSE_FFN_TARGET_END
SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512)
SFFN_STREAM_READERS(avx512_readers, sf::cpu::isa::avx512)
SPARSE_FFN_TARGET_END
SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_BF16)
/// rows of 4096 bf16 · one bf16 vector, four accumulators (ggml_vec_dot_bf16 on AVX512_BF16).
float read_bf16_dot(const float* base, std::size_t len_floats, const sf::bfloat16_t* x) {
  using V = sf::cpu::simd<sf::cpu::isa::avx512_bf16>;
  const auto* p = reinterpret_cast<const sf::bfloat16_t*>(base);
  const std::size_t len = len_floats * 2, row = 4096;
  V::reg a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  for (std::size_t r = 0; r + row <= len; r += row)
    for (std::size_t i = 0; i < row; i += 128) {
      a0 = V::dot(a0, V::load_pairs(p + r + i), V::load_pairs(x + i));
      a1 = V::dot(a1, V::load_pairs(p + r + i + 32), V::load_pairs(x + i + 32));
      a2 = V::dot(a2, V::load_pairs(p + r + i + 64), V::load_pairs(x + i + 64));
      a3 = V::dot(a3, V::load_pairs(p + r + i + 96), V::load_pairs(x + i + 96));
    }
  return V::hsum(a0) + V::hsum(a1) + V::hsum(a2) + V::hsum(a3);
}
SPARSE_FFN_TARGET_END
#endif

enum class reader { f32_4streams_prefetch, f32_8streams_l2, f32_1stream, bf16_dot };

/// One thread's part: `per` floats from base (a multiple of 2048: whole 4096-bf16 rows, whole vectors
/// per stream) with the reader, at the widest vectors the CPU has.
float read_part(reader which, const float* base, std::size_t per, const sf::bfloat16_t* x) {
#if SPARSE_FFN_X86_DISPATCH
  const auto level = sf::cpu::best_isa();
  const bool avx512 = level >= sf::cpu::isa_level::avx512, avx2 = level >= sf::cpu::isa_level::avx2;
  if (which == reader::bf16_dot) return read_bf16_dot(base, per, x);
  if (which == reader::f32_4streams_prefetch)
    return avx512 ? avx512_readers::read_streams<4, false>(base, per / 4)
           : avx2 ? avx2_readers::read_streams<4, false>(base, per / 4)
                  : scalar_readers::read_streams<4, false>(base, per / 4);
  if (which == reader::f32_8streams_l2)
    return avx512 ? avx512_readers::read_streams<8, true>(base, per / 8)
           : avx2 ? avx2_readers::read_streams<8, true>(base, per / 8)
                  : scalar_readers::read_streams<8, true>(base, per / 8);
  return avx512 ? avx512_readers::read_1stream(base, per)
         : avx2 ? avx2_readers::read_1stream(base, per)
                : scalar_readers::read_1stream(base, per);
#else
  (void)x;
  return which == reader::f32_4streams_prefetch ? scalar_readers::read_streams<4, false>(base, per / 4)
         : which == reader::f32_8streams_l2     ? scalar_readers::read_streams<8, true>(base, per / 8)
                                                : scalar_readers::read_1stream(base, per);
#endif
}

/// Reads `per` floats per OpenMP thread, thread tid from buf + per · tid, with the reader.
float read_all(reader which, const float* buf, std::size_t per, const sf::bfloat16_t* x) {
  float total = 0;
#pragma omp parallel reduction(+ : total)
  {
#if SPARSE_FFN_HAS_OPENMP
    const std::size_t tid = static_cast<std::size_t>(omp_get_thread_num());
#else
    const std::size_t tid = 0;
#endif
    total += read_part(which, buf + per * tid, per, x);
  }
  return total;
}

const std::vector<sf::bfloat16_t>& ones() {
  static const std::vector<sf::bfloat16_t> x(4096, sf::bfloat16_t(1.0f));
  return x;
}

std::size_t threads() {
  return static_cast<std::size_t>(sf::cpu::detail::max_threads());
}

void BM_stream(benchmark::State& state, reader which) {
  stream_buffer& sb = the_buffer();
  const std::size_t nth = threads(), per = sb.n / nth / 2048 * 2048;  // floats per thread
  for (auto _ : state) benchmark::DoNotOptimize(read_all(which, sb.buf.data(), per, ones().data()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(per * nth * sizeof(float)));
}

/// The readers this CPU runs (bf16_dot needs AVX512_BF16).
const std::vector<std::pair<const char*, reader>>& readers() {
  static const std::vector<std::pair<const char*, reader>> r = [] {
    std::vector<std::pair<const char*, reader>> v = {{"f32_4streams_prefetch", reader::f32_4streams_prefetch},
                                                     {"f32_8streams_prefetch_l2", reader::f32_8streams_l2},
                                                     {"f32_1stream", reader::f32_1stream}};
    if (sf::cpu::isa_supported(sf::cpu::isa_level::avx512_bf16)) v.push_back({"bf16_dot", reader::bf16_dot});
    return v;
  }();
  return r;
}

}  // namespace

int stream_readers() {
  return static_cast<int>(readers().size());
}

double paired_read(int r, double bytes, double* seconds) {
  stream_buffer& sb = the_buffer();
  static std::size_t cursor = 0;  // floats: each read starts where the last one stopped (cold lines)
  const std::size_t nth = threads(), row = 2048;
  const std::size_t per =
      std::max<std::size_t>(row, static_cast<std::size_t>(bytes / 4.0 / double(nth)) / row * row);
  if (per * nth > sb.n) return 0;  // more than the buffer: no paired figure
  if (cursor + per * nth > sb.n) cursor = 0;
  const auto t0 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(
      read_all(readers()[static_cast<std::size_t>(r)].second, sb.buf.data() + cursor, per, ones().data()));
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cursor += per * nth;
  return double(per * nth * sizeof(float));
}

void register_stream() {
  for (const auto& r : readers())
    benchmark::RegisterBenchmark((std::string("BM_stream_read/") + r.first).c_str(), BM_stream, r.second)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
}

}  // namespace bench
