// safetensors I/O: round trips, a blocked model that reloads with identical forward outputs, and
// malformed or truncated files rejected with clear errors (plus the fuzz corpus as a regression set).
#include "support/test_support.hpp"

#include <sparse_ffn/convert/synthetic.hpp>
#include <sparse_ffn/io/model_io.hpp>
#include <sparse_ffn/io/safetensors.hpp>

#include <dirent.h>
#include <cstdio>
#include <fstream>

#ifndef SPARSE_FFN_FUZZ_CORPUS
#define SPARSE_FFN_FUZZ_CORPUS ""
#endif

namespace io = sparse_ffn::io;

namespace {

std::vector<unsigned char> image(const std::string& header, std::size_t data_bytes) {
  std::vector<unsigned char> out;
  out.reserve(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<unsigned char>((std::uint64_t(header.size()) >> (8 * i)) & 0xff));
  for (char c : header) out.push_back(static_cast<unsigned char>(c));
  out.resize(out.size() + data_bytes, 0);
  return out;
}

void require_io_error(const std::vector<unsigned char>& img, const std::string& what) {
  try {
    io::safetensors_file::from_memory(img.data(), img.size());
    FAIL("accepted: " << what);
  } catch (const sfx::error& e) {
    INFO(e.what());
    REQUIRE(e.code() == sfx::status::io_error);
    REQUIRE(std::string(e.what()).find(what) != std::string::npos);
  }
}

std::string tmp_path(const std::string& name) {
  return "sparse_ffn_test_" + name + ".safetensors";
}

/// What the fuzzer exercises: open, then read every tensor the header declares.
void exercise(const std::vector<unsigned char>& img) {
  try {
    const auto f = io::safetensors_file::from_memory(img.data(), img.size());
    for (const auto& [name, t] : f.tensors()) {
      (void)f.bytes(name);
      if (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16") (void)f.read_float(name);
      if (t.dtype == "I32" || t.dtype == "I64") (void)f.read_int(name);
    }
  } catch (const sfx::error&) {
  }
}

}  // namespace

TEST_CASE("safetensors: write then read every dtype", "[io]") {
  io::safetensors_writer w;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1e-3f};
  w.add_float("a", {2, 3}, a);
  std::vector<sfx::bfloat16_t> b = {sfx::bfloat16_t(1.0f), sfx::bfloat16_t(-0.5f)};
  w.add_typed("b", {2}, b.data(), b.size());
  std::vector<sfx::half_t> h = {sfx::half_t(3.0f)};
  w.add_typed("h", {1}, h.data(), h.size());
  const std::vector<std::int32_t> i = {1, -2, 3};
  w.add("i", "I32", {3}, i.data(), 12);
  w.add_metadata("k", "v");
  const auto bytes = w.serialize();
  const auto f = io::safetensors_file::from_memory(bytes.data(), bytes.size());
  REQUIRE(f.read_float("a", {2, 3}) == a);
  REQUIRE(f.read_float("b") == std::vector<float>{1.0f, -0.5f});
  REQUIRE(f.read_float("h") == std::vector<float>{3.0f});
  REQUIRE(f.read_int("i") == std::vector<std::int64_t>{1, -2, 3});
  REQUIRE(f.metadata().at("k") == "v");
  REQUIRE_THROWS_AS(f.read_float("a", {3, 2}), sfx::error);
  REQUIRE_THROWS_AS(f.read_float("i"), sfx::error);
  REQUIRE_THROWS_AS(f.read_float("missing"), sfx::error);
  // Through a file as well.
  const std::string path = tmp_path("rw");
  w.write(path);
  const auto g = io::safetensors_file::open(path);
  REQUIRE(g.read_float("a") == a);
  std::remove(path.c_str());
}

TEST_CASE("safetensors: malformed and truncated inputs are rejected", "[io]") {
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE_NOTHROW(io::safetensors_file::from_memory(image(ok, 8).data(), image(ok, 8).size()));
  require_io_error({1, 2, 3}, "shorter than the 8-byte header");
  auto big = image(ok, 8);
  big[6] = 1;  // header length ~2^48
  require_io_error(big, "exceeds the buffer size");
  require_io_error(image("not json", 0), "not valid JSON");
  require_io_error(image("[1,2]", 0), "not a JSON object");
  require_io_error(image(R"({"t":5})", 0), "is not an object");
  require_io_error(image(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", 8), "no string dtype");
  require_io_error(image(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype");
  require_io_error(image(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                   "not a non-negative integer");
  require_io_error(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), "data_offsets");
  require_io_error(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin > end");
  require_io_error(image(ok, 4), "past the data");
  require_io_error(image(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "bytes of shape");
  require_io_error(
      image(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
      "overflows");
  require_io_error(
      image(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          12),
      "overlap");
  require_io_error(image(R"({"__metadata__":{"k":1}})", 0), "not a string");
  try {
    io::safetensors_file::open("/nonexistent/file.safetensors");
    FAIL("opened a missing file");
  } catch (const sfx::error& e) {
    REQUIRE(e.code() == sfx::status::io_error);
  }
  // A truncated file on disk: header fine, data cut.
  const std::string path = tmp_path("trunc");
  {
    const auto img = image(ok, 8);
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size() - 4));
  }
  REQUIRE_THROWS_AS(io::safetensors_file::open(path), sfx::error);
  std::remove(path.c_str());
}

TEST_CASE("blocked model round trip: identical forward outputs", "[io]") {
  const auto p = sparse_ffn::convert::make_planted_ffn(48, 8, 16, 20, 3, 3);
  std::vector<float> gw(8 * 48);
  auto r = test::rng(2);
  test::fill_normal(gw, r, 0.2);
  sfx::pack_options po{16};
  const auto perm = sparse_ffn::convert::split_random(128, 16, 4);
  po.permutation = perm.data();
  po.gate_w = gw.data();
  const auto model = sfx::pack<sfx::bfloat16_t>(p.dense.view(), po);
  const std::string path = tmp_path("model");
  io::save_blocked(path, model, {{"activation", "relu"}, {"split", "random"}});
  io::blocked_file_info info;
  const auto back = io::load_blocked<sfx::bfloat16_t>(path, &info);
  std::remove(path.c_str());
  REQUIRE(info.metadata.at("split") == "random");
  REQUIRE(back.permutation() == model.permutation());
  using P = sfx::policy<16, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::relu>;
  using L = sfx::policy<16, sfx::select::learned_gate, sfx::bfloat16_t, sfx::act::relu>;
  std::vector<float> y1(20 * 48), y2(20 * 48);
  sfx::cpu::forward<P>(model.view(), 20, p.x.data(), y1.data(), {2});
  sfx::cpu::forward<P>(back.view(), 20, p.x.data(), y2.data(), {2});
  REQUIRE(y1 == y2);
  sfx::cpu::forward<L>(model.view(), 20, p.x.data(), y1.data(), {3});
  sfx::cpu::forward<L>(back.view(), 20, p.x.data(), y2.data(), {3});
  REQUIRE(y1 == y2);
  // Loading as another dtype converts (bf16 -> float is exact).
  io::save_blocked(path, model);
  const auto as_float = io::load_blocked<float>(path);
  std::remove(path.c_str());
  REQUIRE(sfx::unpack(as_float.view()).w1 == sfx::unpack(model.view()).w1);
}

TEST_CASE("blocked model files with inconsistent contents are rejected", "[io]") {
  const auto p = sparse_ffn::convert::make_planted_ffn(32, 4, 8, 4, 2, 3);
  const auto model = sfx::pack<float>(p.dense.view(), {8});
  const std::string path = tmp_path("bad");
  io::save_blocked(path, model);
  const auto good = io::safetensors_file::open(path);
  std::map<std::string, std::vector<unsigned char>> data;  // read everything before the file is rewritten
  for (const auto& kv : good.tensors()) data[kv.first] = good.bytes(kv.first);
  auto rewrite = [&](const std::map<std::string, std::string>& meta, const std::string& drop, bool bad_perm) {
    io::safetensors_writer w;
    for (const auto& [name, t] : good.tensors()) {
      if (name == drop) continue;
      auto bytes = data.at(name);
      if (bad_perm && name == "permutation") bytes[0] = 1;  // permutation[0] = 1: a duplicate
      w.add(name, t.dtype, t.shape, bytes.data(), bytes.size());
    }
    for (const auto& [k, v] : good.metadata()) w.add_metadata(k, meta.count(k) ? meta.at(k) : v);
    w.write(path);
  };
  rewrite({{"d_model", "31"}}, "", false);
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);
  rewrite({{"g", "x"}}, "", false);
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);
  rewrite({{"format", "other"}}, "", false);
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);
  rewrite({}, "weights", false);
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);
  rewrite({}, "", true);
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);
  std::remove(path.c_str());
}

TEST_CASE("fuzz corpus: every saved input is handled without crashing", "[io][fuzz]") {
  const std::string dir = SPARSE_FFN_FUZZ_CORPUS;
  if (dir.empty()) return;
  DIR* d = opendir(dir.c_str());
  REQUIRE(d != nullptr);
  int files = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(dir + "/" + e->d_name, std::ios::binary);
    std::vector<unsigned char> img((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    exercise(img);
    ++files;
  }
  closedir(d);
  REQUIRE(files > 0);
}
