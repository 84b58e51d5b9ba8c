// safetensors I/O: round trips, a blocked model that reloads with identical forward outputs, and
// malformed or truncated files rejected with clear errors (plus the fuzz corpus as a regression set).
#include "support/test_support.hpp"

#include <sparse_ffn/convert/synthetic.hpp>
#include <sparse_ffn/io/model_io.hpp>
#include <sparse_ffn/io/safetensors.hpp>

#include <dirent.h>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <sparse_ffn/convert/report.hpp>
#include <sparse_ffn/io/file.hpp>

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

/// What the fuzz targets exercise (tests/fuzz/): open from memory and from a file, read every tensor
/// the header declares, load it as a dense FFN and as a blocked model.
void exercise(const std::vector<unsigned char>& img, const std::string& path) {
  try {
    const auto f = io::safetensors_file::from_memory(img.data(), img.size());
    for (const auto& [name, t] : f.tensors()) {
      (void)f.bytes(name);
      if (t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16") (void)f.read_float(name);
      if (t.dtype == "I32" || t.dtype == "I64") (void)f.read_int(name);
    }
    try {
      (void)io::load_dense(f, {"w1", "b1", "w2", "b2", "w3", "b3"});
    } catch (const sfx::error&) {
    }
  } catch (const sfx::error&) {
  }
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(img.data()), static_cast<std::streamsize>(img.size()));
  }
  try {
    (void)io::safetensors_file::open(path);
  } catch (const sfx::error&) {
  }
  try {
    (void)io::load_blocked<float>(path);
  } catch (const sfx::error&) {
  }
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
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
  REQUIRE(!dir.empty());
  const std::string path = tmp_path("corpus");
  DIR* d = opendir(dir.c_str());
  REQUIRE(d != nullptr);
  int files = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(dir + "/" + e->d_name, std::ios::binary);
    std::vector<unsigned char> img((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    exercise(img, path);
    ++files;
  }
  closedir(d);
  std::remove(path.c_str());
  REQUIRE(files > 0);
}

TEST_CASE("safetensors: directories, duplicate keys and short reads are io_errors", "[io][errors]") {
  // A directory used to "open" and parse uninitialised stack bytes as the header length.
  REQUIRE_ERROR(io::safetensors_file::open("."), sfx::status::io_error, "not a regular file");
  REQUIRE_ERROR(io::safetensors_file::open("/nonexistent/x.safetensors"), sfx::status::io_error,
                "cannot open");
  // Duplicate tensor names (nlohmann::json keeps the last): rejected, as are duplicate fields.
  require_io_error(
      image(
          R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          8),
      "key 't' twice");
  require_io_error(image(R"({"t":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})", 4),
                   "key 'dtype' twice");
  require_io_error(image(R"({"__metadata__":{"a":"1","a":"2"}})", 0), "key 'a' twice");
  // The same name in different objects is fine.
  const std::string ok =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  REQUIRE_NOTHROW(io::safetensors_file::from_memory(image(ok, 8).data(), image(ok, 8).size()));
  // read_finite names the tensor and the index of the first NaN / Inf.
  io::safetensors_writer w;
  std::vector<float> v(6, 1.0f);
  v[4] = std::numeric_limits<float>::quiet_NaN();
  w.add_float("m", {2, 3}, v);
  const auto bytes = w.serialize();
  const auto f = io::safetensors_file::from_memory(bytes.data(), bytes.size(), "ckpt");
  REQUIRE(f.read_float("m").size() == 6);
  REQUIRE_ERROR(f.read_finite("m"), sfx::status::invalid_argument,
                "ckpt: tensor 'm' has a non-finite value (nan) at index [1, 1]");
}

TEST_CASE("load_dense: names, shapes, dtypes and finite values checked, errors name file and tensor",
          "[io][errors]") {
  const auto p = sparse_ffn::convert::make_planted_ffn(16, 4, 4, 4, 1, 3);
  auto write = [&](const std::vector<float>& w1, const std::vector<float>& w2, const std::string& w2dtype) {
    io::safetensors_writer w;
    w.add_float("w1", {16, 16}, w1);
    if (w2dtype == "F32")
      w.add_float("w2", {16, 16}, w2);
    else
      w.add("w2", "I32", {16, 16}, w2.data(), w2.size() * 4);
    w.add_float("b1", {16}, p.dense.b1);
    w.add_float("b2", {16}, p.dense.b2);
    w.add_float("b2_wrong", {15}, std::vector<float>(15));
    return w.serialize();
  };
  auto img = write(p.dense.w1, p.dense.w2, "F32");
  auto f = io::safetensors_file::from_memory(img.data(), img.size(), "ck.safetensors");
  const auto d = io::load_dense(f, {"w1", "b1", "w2", "b2", "", ""});
  REQUIRE(d.w1 == p.dense.w1);
  REQUIRE_ERROR(io::load_dense(f, {"w1", "", "w2", "", "", "b1"}), sfx::status::invalid_argument,
                "without W3");
  REQUIRE_ERROR(io::load_dense(f, {"w1", "", "w2", "b2_wrong", "", ""}), sfx::status::invalid_shape,
                "ck.safetensors: b2 'b2_wrong' has shape [15], expected [16]");
  REQUIRE_ERROR(io::load_dense(f, {"w1", "", "nope", "", "", ""}), sfx::status::io_error,
                "ck.safetensors: no tensor named 'nope'");
  img = write(p.dense.w1, p.dense.w2, "I32");
  f = io::safetensors_file::from_memory(img.data(), img.size(), "ck.safetensors");
  REQUIRE_ERROR(io::load_dense(f, {"w1", "", "w2", "", "", ""}), sfx::status::unsupported,
                "W2 'w2' has dtype I32");
  auto w2 = p.dense.w2;
  w2[16 * 2 + 5] = std::numeric_limits<float>::infinity();
  img = write(p.dense.w1, w2, "F32");
  f = io::safetensors_file::from_memory(img.data(), img.size(), "ck.safetensors");
  REQUIRE_ERROR(io::load_dense(f, {"w1", "", "w2", "", "", ""}), sfx::status::invalid_argument,
                "ck.safetensors: tensor 'w2' has a non-finite value (inf) at index [2, 5]");
}

TEST_CASE("load_blocked: the metadata alone never makes it allocate; errors are sparse_ffn::error",
          "[io][errors]") {
  // A few hundred bytes whose metadata claims a 16 TB model: it used to allocate and zero all of it
  // (or let std::bad_alloc escape) before noticing that no tensor matches.
  const std::string path = tmp_path("claim");
  for (const char* dff : {"1000000", "1099511627776"}) {
    io::safetensors_writer w;
    const std::vector<std::int32_t> perm{0};
    w.add("permutation", "I32", {1}, perm.data(), 4);
    for (auto kv : std::map<std::string, std::string>{{"format", "sparse_ffn.blocked"},
                                                      {"format_version", "1"},
                                                      {"d_model", "4096"},
                                                      {"d_ff", dff},
                                                      {"g", "1"},
                                                      {"gated", "1"}})
      w.add_metadata(kv.first, kv.second);
    w.write(path);
    try {
      (void)io::load_blocked<float>(path);
      FAIL("accepted");
    } catch (const sfx::error& e) {
      INFO(e.what());
      REQUIRE(e.code() == sfx::status::io_error);
      REQUIRE(std::string(e.what()).find(path) != std::string::npos);
    }
  }
  // A weights tensor whose shape disagrees with the metadata, and an unknown tensor.
  const auto p = sparse_ffn::convert::make_planted_ffn(32, 4, 8, 4, 2, 3);
  io::save_blocked(path, sfx::pack<float>(p.dense.view(), {8}));
  {
    const auto good = io::safetensors_file::open(path);
    io::safetensors_writer w;
    for (const auto& [name, t] : good.tensors()) {
      const auto b = good.bytes(name);
      w.add(name, t.dtype, t.shape, b.data(), b.size());
    }
    for (const auto& [k, v] : good.metadata()) w.add_metadata(k, k == "g" ? "16" : v);
    w.write(path);
  }
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::io_error,
                "tensor 'weights' has shape [4, 2, 8, 32], expected [2, 2, 16, 32]");
  std::remove(path.c_str());
}

TEST_CASE("atomic writes: complete or untouched, never over a non-regular file", "[io][errors]") {
  const std::string path = tmp_path("atomic");
  spit(path, "previous model");
  ::chmod(path.c_str(), 0640);
  io::atomic_write(path, std::string("new contents"));
  REQUIRE(slurp(path) == "new contents");
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  REQUIRE((st.st_mode & 0777) == 0640);  // the replaced file's permissions are kept

  // A write that fails midway (file size limit: EFBIG, as on a full disk) leaves the old file whole
  // and no temporary file behind. It used to truncate the old file first.
  {
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit old_limit;
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    rlimit small = old_limit;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    bool threw = false;
    try {
      io::atomic_write(path, std::string(100000, 'x'));
    } catch (const sfx::error& e) {
      threw = true;
      INFO(e.what());
      REQUIRE(e.code() == sfx::status::io_error);
      REQUIRE(std::string(e.what()).find("write failed") != std::string::npos);
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    ::signal(SIGXFSZ, old_handler);
    REQUIRE(threw);
    REQUIRE(slurp(path) == "new contents");
    DIR* d = opendir(".");
    REQUIRE(d != nullptr);
    while (dirent* e = readdir(d)) REQUIRE(std::string(e->d_name).find(path + ".tmp.") == std::string::npos);
    closedir(d);
  }

  // Paths that must be refused, with nothing written.
  REQUIRE_ERROR(io::atomic_write("/nonexistent/dir/r.json", std::string("x")), sfx::status::io_error,
                "/nonexistent/dir/r.json");
  REQUIRE_ERROR(io::atomic_write("/dev/full", std::string("x")), sfx::status::io_error, "not a regular file");
  REQUIRE_ERROR(io::atomic_write(".", std::string("x")), sfx::status::io_error, "not a regular file");
  REQUIRE_ERROR(io::check_output_path("/nonexistent/dir/r.json"), sfx::status::io_error, "does not exist");
  REQUIRE_ERROR(io::check_output_path("/dev/full"), sfx::status::io_error, "not a regular file");

  // A symbolic link is followed: its target gets the new contents, the link stays.
  const std::string link = tmp_path("atomic_link");
  std::remove(link.c_str());
  REQUIRE(::symlink(path.c_str(), link.c_str()) == 0);
  io::atomic_write(link, std::string("through the link"));
  REQUIRE(slurp(path) == "through the link");
  struct stat lst;
  REQUIRE(::lstat(link.c_str(), &lst) == 0);
  REQUIRE(S_ISLNK(lst.st_mode));

  // Outputs that resolve to an input: the same path, another spelling, a symlink, a hard link.
  const std::string hard = tmp_path("atomic_hard");
  std::remove(hard.c_str());
  REQUIRE(::link(path.c_str(), hard.c_str()) == 0);
  for (const std::string& out : {path, "./" + path, link, hard})
    REQUIRE_ERROR(io::check_output_path(out, {path}), sfx::status::io_error, "same file as the input");
  REQUIRE(io::same_file("new_a.json", "./new_a.json"));  // neither exists yet
  REQUIRE_FALSE(io::same_file("new_a.json", "new_b.json"));
  REQUIRE_NOTHROW(io::check_output_path(tmp_path("atomic_new"), {path}));
  for (const auto& f : {path, link, hard}) std::remove(f.c_str());
}

TEST_CASE("the quality report's JSON is valid for any values", "[io]") {
  std::vector<sparse_ffn::convert::quality_row> rows(2);
  rows[0].split = "kmeans";
  rows[0].selector = "avg_k";
  rows[0].density = 0.25;
  rows[0].rel_error = std::numeric_limits<double>::quiet_NaN();
  rows[1].split = "we\"ird\\";
  rows[1].coverage = std::numeric_limits<double>::infinity();
  const auto j = nlohmann::json::parse(sparse_ffn::convert::report_json(rows));
  REQUIRE(j["rows"].size() == 2);
  REQUIRE(j["rows"][0]["rel_error"].is_null());
  REQUIRE(j["rows"][1]["coverage"].is_null());
  REQUIRE(j["rows"][1]["split"] == "we\"ird\\");
  REQUIRE(j["rows"][0]["density"] == 0.25);
}

TEST_CASE("safetensors: a header with many tensors opens in linear time", "[io][errors]") {
  // 100k distinct tensor names (a 6 MB header). The duplicate-key check once used nlohmann's parse
  // callback, which rescans the parent object at each object's end: quadratic, ~2 minutes here. The
  // bound is a complexity guard with a wide margin (linear: well under a second), not a benchmark.
  std::string h = "{";
  for (int i = 0; i < 100000; ++i)
    h += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"U8","shape":[0],"data_offsets":[0,0]})";
  h += "}";
  const auto img = image(h, 0);
  const auto t0 = std::chrono::steady_clock::now();
  const auto f = io::safetensors_file::from_memory(img.data(), img.size());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(f.tensors().size() == 100000);
  INFO("seconds: " << s);
  REQUIRE(s < 30.0);
}

TEMPLATE_TEST_CASE("quantised blocked models: saved and loaded bit-identical; conversions and errors",
                   "[io][quant]", sfx::q8_t, sfx::q4_t) {
  using Q = TestType;
  using Other = std::conditional_t<std::is_same<Q, sfx::q8_t>::value, sfx::q4_t, sfx::q8_t>;
  const auto p = sparse_ffn::convert::make_planted_ffn(88, 8, 16, 20, 3, 3);  // odd d: a tail group
  std::vector<float> gw(8 * 88);
  auto r = test::rng(21);
  test::fill_normal(gw, r, 0.2);
  sfx::pack_options po{16};
  po.gate_w = gw.data();
  const auto model = sfx::pack<Q>(p.dense.view(), po);
  const std::string path = tmp_path("qmodel");
  io::save_blocked(path, model, {{"activation", "relu"}});
  {
    const auto f = io::safetensors_file::open(path);
    REQUIRE(f.metadata().at("dtype") == sfx::dtype_traits<Q>::name);
    REQUIRE(f.metadata().at("format_version") == "2");
    REQUIRE(f.info("weights").dtype == "U8");
  }
  const auto back = io::load_blocked<Q>(path);
  // The same bytes: every stored row, centroid and gate row.
  const auto& l = model.layout();
  REQUIRE(back.layout().ld == l.ld);
  const auto w0 = model.view(), w1 = back.view();
  REQUIRE(std::memcmp(w0.weights, w1.weights, static_cast<std::size_t>(l.total_elements())) == 0);
  REQUIRE(std::memcmp(w0.centroids, w1.centroids, static_cast<std::size_t>(l.num_blocks * l.ld)) == 0);
  REQUIRE(std::memcmp(w0.gate_w, w1.gate_w, static_cast<std::size_t>(l.num_blocks * l.ld)) == 0);
  using P = sfx::policy<16, sfx::select::avg_k, Q, sfx::act::relu>;
  std::vector<float> y1(20 * 88), y2(20 * 88);
  sfx::cpu::forward<P>(w0, 20, p.x.data(), y1.data(), {2});
  sfx::cpu::forward<P>(w1, 20, p.x.data(), y2.data(), {2});
  REQUIRE(y1 == y2);
  {  // A model with key tiles is saved as rows: the same file contents, and the model keeps its tiles.
    auto tiled = model;
    tiled.tile_keys();
    const std::string tpath = tmp_path("qmodel_tiles");
    io::save_blocked(tpath, tiled, {{"activation", "relu"}});
    REQUIRE(tiled.layout().key_tiles);
    std::ifstream a(path, std::ios::binary), b(tpath, std::ios::binary);
    const std::string fa((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
    const std::string fb((std::istreambuf_iterator<char>(b)), std::istreambuf_iterator<char>());
    REQUIRE(!fa.empty());
    REQUIRE(fa == fb);
    std::remove(tpath.c_str());
  }
  {  // Value tiles (g a multiple of 32) and key tiles together: saved as rows too.
    sfx::pack_options p32{32};
    const auto m32 = sfx::pack<Q>(p.dense.view(), p32);
    auto tiled = m32;
    tiled.tile_keys();
    tiled.tile_values();
    const std::string apath = tmp_path("qmodel32"), tpath = tmp_path("qmodel32_tiles");
    io::save_blocked(apath, m32, {{"activation", "relu"}});
    io::save_blocked(tpath, tiled, {{"activation", "relu"}});
    REQUIRE(tiled.layout().key_tiles);
    REQUIRE(tiled.layout().value_tiles);
    std::ifstream a(apath, std::ios::binary), b(tpath, std::ios::binary);
    const std::string fa((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
    const std::string fb((std::istreambuf_iterator<char>(b)), std::istreambuf_iterator<char>());
    REQUIRE(!fa.empty());
    REQUIRE(fa == fb);
    std::remove(apath.c_str());
    std::remove(tpath.c_str());
  }
  // As float: the dequantised weights, exactly.
  const auto as_float = io::load_blocked<float>(path);
  REQUIRE(sfx::unpack(as_float.view()).w1 == sfx::unpack(w0).w1);
  REQUIRE(sfx::unpack(as_float.view()).w2 == sfx::unpack(w0).w2);
  // As the other quantised dtype: refused, with a message naming both.
  try {
    (void)io::load_blocked<Other>(path);
    FAIL("loading " << sfx::dtype_traits<Q>::name << " as " << sfx::dtype_traits<Other>::name
                    << " did not throw");
  } catch (const sfx::error& e) {
    REQUIRE(e.code() == sfx::status::unsupported);
    REQUIRE(std::string(e.what()).find(sfx::dtype_traits<Other>::name) != std::string::npos);
  }
  // A float file loads as Q: quantised as pack<Q> does.
  io::save_blocked(path, sfx::pack<float>(p.dense.view(), po));
  const auto quantised = io::load_blocked<Q>(path);
  REQUIRE(std::memcmp(quantised.view().weights, w0.weights, static_cast<std::size_t>(l.total_elements())) ==
          0);

  // Damaged files: a truncated row tensor, a non-finite scale, a float dtype claimed for U8 rows.
  io::save_blocked(path, model);
  const auto good = io::safetensors_file::open(path);
  std::map<std::string, std::vector<unsigned char>> data;
  for (const auto& kv : good.tensors()) data[kv.first] = good.bytes(kv.first);
  auto rewrite =
      [&](const std::function<void(const std::string&, io::tensor_info&, std::vector<unsigned char>&)>& edit,
          const std::map<std::string, std::string>& meta) {
        io::safetensors_writer w;
        for (const auto& [name, t0] : good.tensors()) {
          auto t = t0;
          auto bytes = data.at(name);
          edit(name, t, bytes);
          w.add(name, t.dtype, t.shape, bytes.data(), bytes.size());
        }
        for (const auto& [k, v] : good.metadata()) w.add_metadata(k, meta.count(k) ? meta.at(k) : v);
        w.write(path);
      };
  const sfx::index_t payload = sfx::row_format<Q>::payload_bytes(88);
  const sfx::index_t scale_at = sfx::row_format<Q>::quant_bytes(sfx::row_format<Q>::cols(88));
  rewrite(
      [&](const std::string& n, io::tensor_info& t, std::vector<unsigned char>& b) {
        if (n == "weights") {
          t.shape.back() = payload - 2;  // rows two bytes short
          b.resize(static_cast<std::size_t>(t.numel()));
        }
      },
      {});
  REQUIRE_THROWS_AS(io::load_blocked<Q>(path), sfx::error);
  rewrite(
      [&](const std::string& n, io::tensor_info&, std::vector<unsigned char>& b) {
        if (n == "weights") {  // row 3's first scale := +Inf (bfloat16 0x7f80)
          b[static_cast<std::size_t>(3 * payload + scale_at)] = 0x80;
          b[static_cast<std::size_t>(3 * payload + scale_at + 1)] = 0x7f;
        }
      },
      {});
  try {
    (void)io::load_blocked<Q>(path);
    FAIL("a non-finite scale was accepted");
  } catch (const sfx::error& e) {
    REQUIRE(e.code() == sfx::status::io_error);
    REQUIRE(std::string(e.what()).find("non-finite scale") != std::string::npos);
  }
  rewrite([](const std::string&, io::tensor_info&, std::vector<unsigned char>&) {},
          {{"format_version", "1"}});
  REQUIRE_THROWS_AS(io::load_blocked<Q>(path), sfx::error);  // q8/q4 need version 2
  rewrite([](const std::string&, io::tensor_info&, std::vector<unsigned char>&) {},
          {{"dtype", sfx::dtype_traits<Other>::name}});
  REQUIRE_THROWS_AS(io::load_blocked<float>(path), sfx::error);  // row size of the other format
  std::remove(path.c_str());
}

TEST_CASE("pinned blocks: saved as format_version 3, loaded with them; bad pinned metadata refused",
          "[io][pinned]") {
  const auto p = sparse_ffn::convert::make_planted_ffn(40, 8, 16, 12, 3, 5);
  sfx::pack_options po{16};
  po.pinned = 2;
  const auto model = sfx::pack<sfx::bfloat16_t>(p.dense.view(), po);
  REQUIRE(model.layout().pinned == 2);
  const std::string path = tmp_path("pinned");
  io::save_blocked(path, model);
  const auto good = io::safetensors_file::open(path);
  REQUIRE(good.metadata().at("format_version") == "3");
  REQUIRE(good.metadata().at("pinned") == "2");
  const auto back = io::load_blocked<sfx::bfloat16_t>(path);
  REQUIRE(back.layout().pinned == 2);
  // As q8 too (quantised on load), the pinned blocks kept; the forward is the same as the original's.
  REQUIRE(io::load_blocked<sfx::q8_t>(path).layout().pinned == 2);
  using P = sfx::policy<16, sfx::select::avg_k, sfx::bfloat16_t, sfx::act::relu>;
  std::vector<float> y1(12 * 40), y2(12 * 40);
  sfx::cpu::forward<P>(model.view(), 12, p.x.data(), y1.data(), {3});
  sfx::cpu::forward<P>(back.view(), 12, p.x.data(), y2.data(), {3});
  REQUIRE(y1 == y2);
  // A model without pinned blocks is still written as version 1.
  io::save_blocked(path, sfx::pack<float>(p.dense.view(), {16}));
  REQUIRE(io::safetensors_file::open(path).metadata().at("format_version") == "1");
  REQUIRE(io::load_blocked<float>(path).layout().pinned == 0);

  std::map<std::string, std::vector<unsigned char>> data;
  for (const auto& kv : good.tensors()) data[kv.first] = good.bytes(kv.first);
  auto rewrite = [&](const std::map<std::string, std::string>& meta, const std::string& drop) {
    io::safetensors_writer w;
    for (const auto& [name, t] : good.tensors())
      w.add(name, t.dtype, t.shape, data.at(name).data(), data.at(name).size());
    for (const auto& [k, v] : good.metadata())
      if (k != drop) w.add_metadata(k, meta.count(k) ? meta.at(k) : v);
    w.write(path);
  };
  rewrite({{"pinned", "9"}}, "");  // B = 8
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::io_error,
                "metadata pinned (9) must be in [0, B=8]");
  rewrite({{"pinned", "-1"}}, "");
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::io_error, "metadata pinned (-1)");
  rewrite({}, "pinned");
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::io_error,
                "format_version 3 needs metadata 'pinned'");
  rewrite({{"format_version", "2"}}, "");  // an old version cannot carry pinned blocks
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::io_error,
                "metadata 'pinned' needs format_version 3");
  rewrite({{"format_version", "4"}}, "");
  REQUIRE_ERROR(io::load_blocked<float>(path), sfx::status::unsupported, "unsupported format_version 4");
  std::remove(path.c_str());
}
