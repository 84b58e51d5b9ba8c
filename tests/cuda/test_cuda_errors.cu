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
  // Launch plans (host side: launch() issues exactly plan_steps' list). Decode (n < 16) is at most 4
  // kernels and no memset for Avg-K, the learned gate, hash and a caller's routing table, also when a
  // forward cache is kept (the top-k writes into it); the oracle takes 5.
  {
    namespace cd = sfx::cuda::detail;
    using S = cd::step;
    using LG = sfx::policy<64, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::swiglu>;
    using O = sfx::policy<16, sfx::select::oracle, float, sfx::act::relu>;
    using BF = sfx::policy<64, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::relu>;
    auto same = [](const cd::step_list& got, std::initializer_list<S> want) {
      return got.count == static_cast<int>(want.size()) && std::equal(want.begin(), want.end(), got.begin());
    };
    auto check = [&](bool ok, const char* what) {
      std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
      failures += !ok;
    };
    const sfx::index_t B = 224;
    for (sfx::index_t n : {1, 15}) {
      check(same(cd::plan_steps<P>(n, 56, B, false, false, true),
                 {S::linear_scores, S::topk_block, S::keys_values, S::combine}),
            "decode, avg_k: 4 kernels");
      check(same(cd::plan_steps<LG>(n, 56, B, false, false, true),
                 {S::linear_scores, S::topk_block, S::keys_values, S::combine}),
            "decode, learned gate (weights fused into the top-k): 4 kernels");
      check(same(cd::plan_steps<H>(n, 56, B, false, false, true),
                 {S::prepare_x, S::hash_route, S::keys_values, S::combine}),
            "decode, hash: 4 kernels");
      check(same(cd::plan_steps<P>(n, 56, B, true, false, true),
                 {S::prepare_x, S::copy_routing, S::keys_values, S::combine}),
            "decode, caller's routing: 4 kernels");
      check(same(cd::plan_steps<O>(n, 56, B, false, false, true),
                 {S::prepare_x, S::dense_keys, S::topk_block, S::keys_values, S::combine}),
            "decode, oracle (scores summed inside the top-k): 5 kernels");
    }
    check(same(cd::plan_steps<BF>(16, 56, B, false, false, true),
               {S::linear_scores, S::topk_block, S::group_pairs_block, S::keys_wmma, S::values_wmma,
                S::combine}),
          "batched bf16: one-kernel grouping, tensor-core key and value passes: 6 kernels");
    check(same(cd::plan_steps<BF>(1000, 56, B, false, false, true),
               {S::linear_scores, S::topk_block, S::group_pairs, S::keys_wmma, S::values_wmma, S::combine}),
          "batched bf16, n·k > 8192: CUB radix-sort grouping");
    check(same(cd::plan_steps<P>(16, 56, B, false, false, true),
               {S::linear_scores, S::topk_block, S::keys, S::values, S::combine}),
          "batched float: gather path");
    check(same(cd::plan_steps<LG>(1, 56, 5000, false, false, true),
               {S::linear_scores, S::sort_keys, S::segmented_sort, S::take_topk, S::gate_weights,
                S::keys_values, S::combine}),
          "B > 4096: radix-sort top-k");
    check(same(cd::plan_steps<P>(1, 56, B, false, false, false), {S::linear_scores, S::topk_block}),
          "route only: 2 kernels");
    // Routing written straight into a cache (both arrays given), copied otherwise or when routed.
    cd::buffers bufs;
    bufs.blocks = fake_blocks;
    bufs.weights = y;
    sfx::block_index_t* cb = reinterpret_cast<sfx::block_index_t*>(0x5000);
    float* cw = reinterpret_cast<float*>(0x6000);
    const sfx::forward_cache full{cb, cw, nullptr, nullptr}, half{cb, nullptr, nullptr, nullptr};
    const auto direct = cd::routing_for(bufs, false, nullptr, &full);
    const auto partial = cd::routing_for(bufs, false, nullptr, &half);
    const auto routed = cd::routing_for(bufs, true, nullptr, &full);
    const auto none = cd::routing_for(bufs, false, nullptr, nullptr);
    check(direct.blocks == cb && direct.weights == cw && !direct.copy_out && partial.blocks == fake_blocks &&
              partial.copy_out && routed.blocks == fake_blocks && routed.copy_out && !none.copy_out,
          "routing target: a full cache is written directly, else copied");
    // Decode rows per thread block: >= k_decode_ctas blocks where rows can shrink, never below min(g, 8).
    bool rows_ok = true;
    for (sfx::index_t G : {1, 8, 16, 64, 128, 256})
      for (sfx::index_t n : {1, 3, 15})
        for (sfx::index_t k : {1, 7, 56}) {
          const sfx::index_t R = sfx::cuda::kernels::decode_rows(n, k, G), lo = std::min<sfx::index_t>(G, 8);
          const sfx::index_t ctas = n * k * ((G + R - 1) / R);
          rows_ok &= R >= lo && R <= G && (ctas >= sfx::cuda::kernels::k_decode_ctas || R == lo) &&
                     (R == G || n * k * ((G + 2 * R - 1) / (2 * R)) < sfx::cuda::kernels::k_decode_ctas);
        }
    // keys_wmma's cp.async stages fit what every sm_80+ GPU grants a thread block (sm_86/89: 99 KiB).
    namespace ck = sfx::cuda::kernels;
    const std::size_t smem[] = {ck::keys_wmma_shape<sfx::bfloat16_t, sfx::act::relu, 16>::smem_bytes,
                                ck::keys_wmma_shape<sfx::bfloat16_t, sfx::act::swiglu, 64>::smem_bytes,
                                ck::keys_wmma_shape<sfx::half_t, sfx::act::swiglu, 128>::smem_bytes,
                                ck::keys_wmma_shape<sfx::half_t, sfx::act::relu, 256>::smem_bytes,
                                ck::keys_wmma_shape<sfx::bfloat16_t, sfx::act::geglu, 256>::smem_bytes};
    bool smem_ok = true;
    for (std::size_t b : smem) smem_ok &= b <= 99 * 1024;
    check(smem_ok && smem[1] <= 48 * 1024,
          "keys_wmma shared memory: <= 99 KiB for every g, <= 48 KiB at g = 64");
    check(rows_ok && sfx::cuda::kernels::decode_rows(1, 56, 64) == 8 &&
              sfx::cuda::kernels::decode_rows(15, 56, 64) == 64,
          "decode rows per thread block (1 token, k = 56, g = 64: 8 rows, 448 thread blocks)");
  }
  // The backward (host side): bad arguments get the CPU path's statuses before anything is sized or
  // queued, and the launch plan is what cuda/backward.cuh documents.
  {
    using PG = sfx::policy<16, sfx::select::learned_gate, float, sfx::act::swiglu>;
    namespace cd = sfx::cuda::detail;
    sfx::ffn_grads storage(w.layout, false);
    sfx::ffn_grads_view gv = storage.view();
    float* dy = reinterpret_cast<float*>(0x8000);
    float* dx = reinterpret_cast<float*>(0x9000);
    float* pre = reinterpret_cast<float*>(0xa000);
    const sfx::forward_cache cache{fake_blocks, nullptr, pre, nullptr};
    sfx::backward_args ba;
    ba.k = 2;
    sfx::backward_args bad_k = ba;
    bad_k.k = 5;
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, cache, dx, gv, bad_k),
           sfx::status::invalid_argument, "backward: k > B");
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, static_cast<float*>(nullptr), cache, dx, gv, ba),
           sfx::status::null_pointer, "backward: null dY");
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, cache, x + 1, gv, ba),
           sfx::status::invalid_argument, "backward: dX overlaps X");
    const sfx::forward_cache no_pre{fake_blocks, nullptr, nullptr, nullptr};
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, no_pre, dx, gv, ba),
           sfx::status::invalid_argument, "backward: no cached pre-activations");
    sfx::ffn_grads_view wrong = gv;
    wrong.layout.ld += 16;
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, cache, dx, wrong, ba),
           sfx::status::invalid_shape, "backward: gradient layout");
    sfx::ffn_grads_view gate_for_avg_k = gv;
    gate_for_avg_k.gate_b = reinterpret_cast<float*>(0xb000);
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, cache, dx, gate_for_avg_k, ba),
           sfx::status::invalid_argument, "backward: gate gradients for avg_k");
    sfx::ffn_grads_view odd = gv;
    odd.b2 = reinterpret_cast<float*>(0xb002);
    expect(sfx::cuda::backward<P>(nullptr, bytes, w, 2, x, dy, cache, dx, odd, ba),
           sfx::status::misaligned_pointer, "backward: misaligned gradient");
    using S = cd::bwd_step;
    auto same = [](const cd::bwd_step_list& got, std::initializer_list<S> want) {
      return got.count == static_cast<int>(want.size()) && std::equal(want.begin(), want.end(), got.begin());
    };
    sfx::ffn_grads_view all = gv;
    all.route_weights = reinterpret_cast<float*>(0xc000);
    sfx::ffn_grads_view gate_all = all;
    gate_all.gate_w = all.weights;
    gate_all.gate_b = all.b2;
    sfx::ffn_grads_view only_dx;
    const bool plans = same(cd::plan_backward_steps<P>(all, true),
                            {S::prepare_x, S::prepare_dy, S::routing, S::sort, S::offsets, S::pairs,
                             S::weights, S::db2_route, S::dx}) &&
                       same(cd::plan_backward_steps<PG>(gate_all, true),
                            {S::linear_scores, S::prepare_dy, S::routing, S::sort, S::offsets, S::pairs,
                             S::weights, S::db2_route, S::gate_logits, S::gate_rows, S::dx}) &&
                       same(cd::plan_backward_steps<PG>(only_dx, true),
                            {S::linear_scores, S::prepare_dy, S::routing, S::sort, S::offsets, S::pairs,
                             S::gate_logits, S::dx}) &&
                       same(cd::plan_backward_steps<P>(only_dx, false),
                            {S::prepare_x, S::prepare_dy, S::routing, S::sort, S::offsets, S::pairs});
    std::printf("%s backward launch plans\n", plans ? "ok  " : "FAIL");
    failures += !plans;
  }
  if (failures) return 1;
  return gpu_test_main(argc, argv, "test_cuda_errors");
}
