// GPU entry points: host-side validation (runs without a GPU: nothing is launched when a check
// fails) and device-side range checks of token ids and routing tables (needs a GPU).
#include "cuda_test_main.hpp"
#include "gpu_forward.hpp"

using P = sfx::policy<16, sfx::select::avg_k, float, sfx::act::relu>;
using H = sfx::policy<16, sfx::select::hash, float, sfx::act::relu>;

TEST_CASE("cuda: device-side range checks never read out of bounds and are reported", "[cuda]") {
  auto r = test::rng(5);
  const auto dense = test::random_dense<float>(r, 32, 64, false, true);
  const auto model = sfx::pack<float>(dense.view(), {16});
  sfx::cuda::device_model<float> m;
  REQUIRE(m.upload(model));
  std::vector<float> xh(2 * 32, 0.5f);
  gpu::dbuf<float> x(xh), y(2 * 32);
  std::vector<sfx::token_id_t> idh = {3, 99};
  gpu::dbuf<sfx::token_id_t> ids(idh);
  sfx::route_args a{2};
  a.token_ids = ids.p;
  a.vocab_size = 10;
  std::size_t bytes = 0;
  REQUIRE(sfx::cuda::forward<H>(nullptr, bytes, m.view(), 2, x.p, y.p, a));
  gpu::dbuf<unsigned char> ws(bytes);
  REQUIRE(sfx::cuda::forward<H>(ws.p, bytes, m.view(), 2, x.p, y.p, a));
  int errors = 0;
  REQUIRE(sfx::cuda::device_errors(ws.p, errors));
  REQUIRE((errors & sfx::cuda::kernels::bad_token_id) != 0);
  std::vector<sfx::block_index_t> bh = {0, 7, 1, 2};  // 7 is out of range (B = 4)
  gpu::dbuf<sfx::block_index_t> blocks(bh);
  REQUIRE(sfx::cuda::forward_routed<P>(nullptr, bytes, m.view(), 2, x.p, y.p,
                                       sfx::const_routing_view{2, 2, blocks.p, nullptr}));
  gpu::dbuf<unsigned char> ws2(bytes);
  REQUIRE(sfx::cuda::forward_routed<P>(ws2.p, bytes, m.view(), 2, x.p, y.p,
                                       sfx::const_routing_view{2, 2, blocks.p, nullptr}));
  REQUIRE(sfx::cuda::device_errors(ws2.p, errors));
  REQUIRE((errors & sfx::cuda::kernels::bad_block_index) != 0);
}

int main(int argc, char** argv) {
  // Host-side validation needs no device: check it first, always (before the Catch session exists,
  // so a fixed generator instead of the session's seed).
  std::mt19937_64 r(1);
  const auto dense = test::random_dense<float>(r, 32, 64, false, true);
  const auto model = sfx::pack<float>(dense.view(), {16});
  const auto w = model.view();  // host pointers are fine: a failing check launches nothing
  float* x = reinterpret_cast<float*>(0x1000);
  float* y = reinterpret_cast<float*>(0x2000);
  std::size_t bytes = 0;
  int failures = 0;
  auto expect = [&](sfx::cuda::result res, sfx::status code, const char* what) {
    const bool ok = res.code == code && std::string(res.message).rfind("sparse_ffn: ", 0) == 0;
    std::printf("%s %s: %s\n", ok ? "ok  " : "FAIL", what, res.message);
    failures += !ok;
  };
  expect(sfx::cuda::forward<P>(nullptr, bytes, w, 2, x, y, {0}), sfx::status::invalid_argument, "k = 0");
  expect(sfx::cuda::forward<P>(nullptr, bytes, w, 2, x, y, {5}), sfx::status::invalid_argument, "k > B");
  expect(sfx::cuda::forward<P>(nullptr, bytes, w, 2, static_cast<float*>(nullptr), y, {2}),
         sfx::status::null_pointer, "null X");
  expect(sfx::cuda::forward<P>(nullptr, bytes, w, -1, x, y, {2}), sfx::status::invalid_shape, "n < 0");
  expect(sfx::cuda::forward<P>(nullptr, bytes, w, 2, x, x + 1, {2}), sfx::status::invalid_argument,
         "X and Y overlap");
  using P8 = sfx::policy<8, sfx::select::avg_k, float, sfx::act::relu>;
  expect(sfx::cuda::forward<P8>(nullptr, bytes, w, 2, x, y, {2}), sfx::status::invalid_argument,
         "g mismatch");
  expect(sfx::cuda::forward<H>(nullptr, bytes, w, 2, x, y, {2}), sfx::status::invalid_argument,
         "hash without vocab");
  sfx::route_args a{2};
  a.vocab_size = 10;
  expect(sfx::cuda::forward<H>(nullptr, bytes, w, 2, x, y, a), sfx::status::null_pointer, "hash without ids");
  expect(sfx::cuda::forward_routed<P>(nullptr, bytes, w, 2, x, y,
                                      sfx::const_routing_view{3, 2, nullptr, nullptr}),
         sfx::status::invalid_shape, "routing rows");
  // A caller's routing weights must be aligned (a misaligned one used to become a sticky
  // misaligned-address fault on the device instead of a status).
  sfx::block_index_t* fake_blocks = reinterpret_cast<sfx::block_index_t*>(0x3000);
  float* odd_weights = reinterpret_cast<float*>(0x4002);
  expect(sfx::cuda::forward_routed<P>(nullptr, bytes, w, 2, x, y,
                                      sfx::const_routing_view{2, 2, fake_blocks, odd_weights}),
         sfx::status::misaligned_pointer, "misaligned routing weights");
  // A grid too large for one launch is refused by the size query itself, before anything is queued
  // (it used to be checked inside the launch sequence, after the first kernels were queued).
  const sfx::index_t huge = sfx::index_t{1} << 30;
  float* far_x = reinterpret_cast<float*>(std::uintptr_t{1} << 40);  // n·d floats apart: no overlap
  float* far_y = reinterpret_cast<float*>(std::uintptr_t{1} << 42);
  expect(sfx::cuda::forward_routed<P>(nullptr, bytes, w, huge, far_x, far_y,
                                      sfx::const_routing_view{huge, 4, fake_blocks, nullptr}),
         sfx::status::size_overflow, "grid too large (size query)");
  std::size_t small = 1;
  auto* ws = reinterpret_cast<void*>(0x100000);
  expect(sfx::cuda::forward<P>(ws, small, w, 2, x, y, {2}), sfx::status::invalid_argument,
         "workspace too small");
  // q8/q4 (host side): padded X and the partial rows are row_format<T>::cols floats wide, not ld (which
  // counts bytes: at d = 4096 a q4 row is 2368 bytes for 4096 values), and the value tiles cover every
  // 16-byte unit of quants; the size query accepts the policy and counts X at that width.
  {
    using Q4 = sfx::policy<16, sfx::select::avg_k, sfx::q4_t, sfx::act::relu>;
    const auto dq = test::random_dense<float>(r, 4096, 32, false, true);
    const auto mq = sfx::pack<sfx::q4_t>(dq.view(), {16});
    const auto& l = mq.view().layout;
    namespace cd = sfx::cuda::detail;
    const sfx::index_t cols = sfx::row_format<sfx::q4_t>::cols(4096);
    const bool widths = cd::act_width<sfx::q4_t>(l) == cols && l.ld < cols &&
                        cd::act_width<float>(w.layout) == w.layout.ld &&
                        cd::value_tiles<sfx::q4_t>(l) * sfx::cuda::kernels::k_threads * 16 >=
                            sfx::row_format<sfx::q4_t>::quant_bytes(cols) &&
                        (cd::value_tiles<sfx::q4_t>(l) - 1) * sfx::cuda::kernels::k_threads * 16 <
                            sfx::row_format<sfx::q4_t>::quant_bytes(cols);
    std::size_t qbytes = 0;
    const auto qres = sfx::cuda::forward<Q4>(nullptr, qbytes, mq.view(), 3, x, far_y, {2});
    const bool sized = qres && qbytes >= std::size_t(3) * std::size_t(cols) * sizeof(float);
    std::printf("%s q4 widths and workspace size: %s (%zu bytes)\n", widths && sized ? "ok  " : "FAIL",
                qres.message, qbytes);
    failures += !(widths && sized);
  }
  if (failures) return 1;
  return gpu_test_main(argc, argv, "test_cuda_errors");
}
