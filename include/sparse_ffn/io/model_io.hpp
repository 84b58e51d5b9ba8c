// sparse_ffn — blocked models on disk (safetensors) and dense FFNs from checkpoints.
//
// save_blocked / load_blocked store everything a kernel and a converter need:
//   weights        [B, m, g, d_model]  keys, (up), values of each block, in the model dtype, unpadded
//   b1, b3         [d_ff]  F32 packed-order biases (when present); b2 [d_model]
//   centroids      [B, d_model] model dtype, centroid_bias [B] F32       (Avg-K / linear router rows)
//   gate_w         [B, d_model] model dtype, gate_b [B] F32              (learned gate)
//   permutation    [d_ff] I32: packed position -> original neuron
//   router.w1/b1/w2/b2  F32                                               (optional MLP router)
// and metadata: format=sparse_ffn.blocked, format_version, d_model, d_ff, g, gated, dtype, plus any
// caller entries (activation, selector, split, router …). Rows are stored without the in-memory
// padding, so files do not depend on the padding rule; load_blocked re-pads. Loading validates the
// shapes against the metadata and the permutation (a bijection) and converts to the requested dtype.
//
// load_dense reads a dense FFN in PyTorch layout from a checkpoint, by tensor names.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "../convert/router_fit.hpp"
#include "../pack.hpp"
#include "safetensors.hpp"

namespace sparse_ffn {
namespace io {

inline constexpr const char* k_blocked_format = "sparse_ffn.blocked";
inline constexpr int k_blocked_format_version = 1;

struct blocked_file_info {
  std::map<std::string, std::string> metadata;
  bool has_mlp_router = false;
  convert::mlp_router mlp;
};

template <class T>
void save_blocked(const std::string& path, const blocked_ffn<T>& model,
                  const std::map<std::string, std::string>& extra = {},
                  const convert::mlp_router* router = nullptr) {
  const block_layout& l = model.layout();
  const blocked_ffn_view<T> w = model.view();
  const index_t B = l.num_blocks, m = l.matrices(), g = l.g, d = l.d_model;
  std::vector<T> rows(static_cast<std::size_t>(B * m * g * d));
  for (index_t b = 0; b < B; ++b)
    for (index_t r = 0; r < m * g; ++r)
      std::copy(w.keys(b) + r * l.ld, w.keys(b) + r * l.ld + d, rows.begin() + (b * m * g + r) * d);
  safetensors_writer out;
  out.add_typed("weights", {B, m, g, d}, rows.data(), rows.size());
  auto add_vec = [&](const char* name, const float* p, index_t count) {
    if (p) out.add(name, "F32", {count}, p, static_cast<std::size_t>(count) * 4);
  };
  add_vec("b1", w.b1, l.d_ff);
  add_vec("b3", w.b3, l.d_ff);
  add_vec("b2", w.b2, d);
  auto add_rows = [&](const char* name, const T* p) {
    if (!p) return;
    std::vector<T> r(static_cast<std::size_t>(B * d));
    for (index_t b = 0; b < B; ++b) std::copy(p + b * l.ld, p + b * l.ld + d, r.begin() + b * d);
    out.add_typed(name, {B, d}, r.data(), r.size());
  };
  add_rows("centroids", w.centroids);
  add_vec("centroid_bias", w.centroid_bias, B);
  add_rows("gate_w", w.gate_w);
  add_vec("gate_b", w.gate_b, B);
  out.add("permutation", "I32", {l.d_ff}, model.permutation().data(), model.permutation().size() * 4);
  if (router) {
    sparse_ffn::detail::require(router->d_model == d && router->num_blocks == B, status::invalid_shape,
                                "save_blocked: MLP router shape does not match the model");
    out.add_float("router.w1", {B, d}, router->w1);
    out.add_float("router.b1", {B}, router->b1);
    out.add_float("router.w2", {B, B}, router->w2);
    out.add_float("router.b2", {B}, router->b2);
  }
  for (const auto& [k, v] : extra) out.add_metadata(k, v);
  out.add_metadata("format", k_blocked_format);
  out.add_metadata("format_version", std::to_string(k_blocked_format_version));
  out.add_metadata("d_model", std::to_string(d));
  out.add_metadata("d_ff", std::to_string(l.d_ff));
  out.add_metadata("g", std::to_string(g));
  out.add_metadata("gated", l.gated ? "1" : "0");
  out.add_metadata("dtype", dtype_traits<T>::name);
  out.write(path);
}

namespace detail {
inline index_t meta_int(const safetensors_file& f, const std::string& key) {
  const auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    sparse_ffn::detail::fail(status::io_error, f.name(), ": metadata '", key, "' is missing");
  std::size_t pos = 0;
  long long v = 0;
  try {
    v = std::stoll(it->second, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != it->second.size())
    sparse_ffn::detail::fail(status::io_error, f.name(), ": metadata '", key, "' is not an integer: '",
                             it->second, "'");
  return v;
}
}  // namespace detail

/// Loads a blocked model written by save_blocked, converting its weights to T.
template <class T>
blocked_ffn<T> load_blocked(const std::string& path, blocked_file_info* info = nullptr) {
  const safetensors_file f = safetensors_file::open(path);
  const auto fmt = f.metadata().find("format");
  if (fmt == f.metadata().end() || fmt->second != k_blocked_format)
    sparse_ffn::detail::fail(status::io_error, path,
                             ": not a sparse_ffn blocked model (metadata format != ", k_blocked_format, ")");
  if (detail::meta_int(f, "format_version") != k_blocked_format_version)
    sparse_ffn::detail::fail(status::unsupported, path, ": unsupported format_version ",
                             detail::meta_int(f, "format_version"));
  const index_t d = detail::meta_int(f, "d_model"), F = detail::meta_int(f, "d_ff"),
                g = detail::meta_int(f, "g");
  const index_t gated = detail::meta_int(f, "gated");
  sparse_ffn::detail::require(gated == 0 || gated == 1, status::io_error, path,
                              ": metadata gated must be 0 or 1");
  const block_layout l = make_layout<T>(d, F, g, gated == 1);  // validates d, F, g
  const index_t B = l.num_blocks, m = l.matrices();
  blocked_ffn<T> model(l);
  const std::vector<float> rows = f.read_float("weights", {B, m, g, d});
  T* wp = model.weights();
  for (index_t b = 0; b < B; ++b)
    for (index_t r = 0; r < m * g; ++r)
      for (index_t c = 0; c < d; ++c)
        wp[b * l.block_stride() + r * l.ld + c] =
            from_float<T>(rows[static_cast<std::size_t>((b * m * g + r) * d + c)]);
  if (f.has("b1")) model.b1() = f.read_float("b1", {F});
  if (f.has("b3")) {
    sparse_ffn::detail::require(l.gated, status::io_error, path, ": b3 present in a non-gated model");
    model.b3() = f.read_float("b3", {F});
  }
  if (f.has("b2")) model.b2() = f.read_float("b2", {d});
  const auto perm = f.read_int("permutation", {F});
  std::vector<std::int32_t>& p = model.permutation();
  for (index_t j = 0; j < F; ++j) {
    sparse_ffn::detail::require(
        perm[static_cast<std::size_t>(j)] >= 0 && perm[static_cast<std::size_t>(j)] < F, status::io_error,
        path, ": permutation[", j, "] = ", perm[static_cast<std::size_t>(j)], " is out of range");
    p[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(perm[static_cast<std::size_t>(j)]);
  }
  validate_permutation(p.data(), F);
  if (f.has("centroids")) {
    const auto c = f.read_float("centroids", {B, d});
    std::vector<float> cb;
    if (f.has("centroid_bias")) cb = f.read_float("centroid_bias", {B});
    model.set_centroids(c.data(), cb.empty() ? nullptr : cb.data());
  }
  if (f.has("gate_w")) {
    const auto gw = f.read_float("gate_w", {B, d});
    std::vector<float> gb;
    if (f.has("gate_b")) gb = f.read_float("gate_b", {B});
    model.set_gate(gw.data(), gb.empty() ? nullptr : gb.data());
  }
  if (info) {
    info->metadata = f.metadata();
    info->has_mlp_router = f.has("router.w1");
    if (info->has_mlp_router) {
      info->mlp.d_model = d;
      info->mlp.num_blocks = B;
      info->mlp.w1 = f.read_float("router.w1", {B, d});
      info->mlp.b1 = f.read_float("router.b1", {B});
      info->mlp.w2 = f.read_float("router.w2", {B, B});
      info->mlp.b2 = f.read_float("router.b2", {B});
    }
  }
  return model;
}

/// Names of a dense FFN's tensors in a checkpoint (empty = absent).
struct dense_names {
  std::string w1, b1, w2, b2, w3, b3;
};

/// Reads a dense FFN (float) from a checkpoint: W1 [d_ff × d], W2 [d × d_ff], optional W3, biases.
inline dense_ffn<float> load_dense(const safetensors_file& f, const dense_names& n) {
  sparse_ffn::detail::require(!n.w1.empty() && !n.w2.empty(), status::invalid_argument,
                              "load_dense: W1 and W2 names are required");
  const tensor_info& t1 = f.info(n.w1);
  if (t1.shape.size() != 2)
    sparse_ffn::detail::fail(status::invalid_shape, f.name(), ": W1 '", n.w1,
                             "' must be 2-D [d_ff, d_model]");
  const index_t F = t1.shape[0], d = t1.shape[1];
  sparse_ffn::detail::require(F > 0 && d > 0, status::invalid_shape, f.name(), ": W1 has an empty dimension");
  dense_ffn<float> out;
  out.d_model = d;
  out.d_ff = F;
  out.w1 = f.read_float(n.w1, {F, d});
  out.w2 = f.read_float(n.w2, {d, F});
  if (!n.w3.empty()) out.w3 = f.read_float(n.w3, {F, d});
  const bool any_bias = !n.b1.empty() || !n.b2.empty() || !n.b3.empty();
  if (any_bias) {
    out.b1 = n.b1.empty() ? std::vector<float>(static_cast<std::size_t>(F), 0.0f) : f.read_float(n.b1, {F});
    out.b2 = n.b2.empty() ? std::vector<float>(static_cast<std::size_t>(d), 0.0f) : f.read_float(n.b2, {d});
    if (!n.w3.empty())
      out.b3 = n.b3.empty() ? std::vector<float>(static_cast<std::size_t>(F), 0.0f) : f.read_float(n.b3, {F});
  }
  return out;
}

}  // namespace io
}  // namespace sparse_ffn
