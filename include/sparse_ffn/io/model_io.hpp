// sparse_ffn — blocked models on disk (safetensors) and dense FFNs from checkpoints.
//
// save_blocked / load_blocked store everything a kernel and a converter need:
//   weights        [B, m, g, d_model]  keys, (up), values of each block, in the model dtype, unpadded;
//                  q8/q4 models (format_version 2): U8 [B, m, g, P], each row's quants and bfloat16
//                  scales as in memory (quant.hpp) without the line padding, P = row_format::payload_bytes
//                  (centroids and gate_w likewise U8 [B, P])
//   b1, b3         [d_ff]  F32 packed-order biases (when present); b2 [d_model]
//   centroids      [B, d_model] model dtype, centroid_bias [B] F32       (Avg-K / linear router rows)
//   gate_w         [B, d_model] model dtype, gate_b [B] F32              (learned gate)
//   permutation    [d_ff] I32: packed position -> original neuron
//   router.w1/b1/w2/b2  F32                                               (optional MLP router)
// and metadata: format=sparse_ffn.blocked, format_version, d_model, d_ff, g, gated, dtype, pinned
// (format_version 3, written only for a model with pinned blocks), plus any
// caller entries (activation, selector, split, router …). Rows are stored without the in-memory
// padding, so files do not depend on the padding rule; load_blocked re-pads. save_blocked writes
// atomically (io/file.hpp). load_blocked checks, before allocating the model: the format and its
// version, a valid layout from the metadata, every tensor's presence and shape against it, no unknown
// tensor; then the values: finite weights, biases and router rows, a permutation that is a bijection.
// It converts to the requested dtype: a float file loads as any dtype (q8/q4: quantised as pack does);
// a q8/q4 file loads as its own dtype (bytes copied; every scale must be finite) or as a float dtype
// (dequantised), never as the other quantised dtype (an unsupported error: requantising loses more).
// Files of format_version 1 (float dtypes only) and 2 (no pinned blocks) still load. Every failure is a
// sparse_ffn::error naming the file (and the tensor); running out of memory is an io_error too, never
// std::bad_alloc.
//
// load_dense reads a dense FFN in PyTorch layout from a checkpoint, by tensor names, with the same
// checks (shapes implied by W1, float dtypes, finite values) before and while reading.
#pragma once

#include <algorithm>
#include <iterator>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "../convert/router_fit.hpp"
#include "../dispatch.hpp"
#include "../pack.hpp"
#include "safetensors.hpp"

namespace sparse_ffn {
namespace io {

inline constexpr const char* k_blocked_format = "sparse_ffn.blocked";
/// Version 2 added q8/q4 weights, version 3 pinned blocks (metadata `pinned`); a file is written with
/// the lowest version that holds it (float weights and no pinned blocks: version 1).
inline constexpr int k_blocked_format_version = 3;

struct blocked_file_info {
  std::map<std::string, std::string> metadata;
  bool has_mlp_router = false;
  convert::mlp_router mlp;
};

template <class T>
void save_blocked(const std::string& path, const blocked_ffn<T>& model,
                  const std::map<std::string, std::string>& extra = {},
                  const convert::mlp_router* router = nullptr) {
  if constexpr (is_quantized<T>::value)
    if (model.layout().key_tiles || model.layout().value_tiles) {  // files hold rows: save a copy as rows
      blocked_ffn<T> rows = model;
      if (rows.layout().key_tiles) rows.untile_keys();
      if (rows.layout().value_tiles) rows.untile_values();
      return save_blocked(path, rows, extra, router);
    }
  const block_layout& l = model.layout();
  const blocked_ffn_view<T> w = model.view();
  const index_t B = l.num_blocks, m = l.matrices(), g = l.g, d = l.d_model;
  // Elements (float dtypes) or bytes (q8/q4) stored per row.
  constexpr bool quant = is_quantized<T>::value;
  const index_t per_row = row_format<T>::payload_bytes(d);
  safetensors_writer out;
  auto add_rows_of = [&](const char* name, const T* p, index_t count, std::vector<std::int64_t> shape) {
    std::vector<T> rows(static_cast<std::size_t>(count * per_row));
    for (index_t r = 0; r < count; ++r)
      std::copy(p + r * l.ld, p + r * l.ld + per_row, rows.begin() + r * per_row);
    shape.push_back(per_row);
    if constexpr (quant)
      out.add(name, "U8", shape, rows.data(), rows.size());
    else
      out.add_typed(name, shape, rows.data(), rows.size());
  };
  add_rows_of("weights", w.weights, B * m * g, {B, m, g});
  auto add_vec = [&](const char* name, const float* p, index_t count) {
    if (p) out.add(name, "F32", {count}, p, static_cast<std::size_t>(count) * 4);
  };
  add_vec("b1", w.b1, l.d_ff);
  add_vec("b3", w.b3, l.d_ff);
  add_vec("b2", w.b2, d);
  auto add_rows = [&](const char* name, const T* p) {
    if (p) add_rows_of(name, p, B, {B});
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
  out.add_metadata("format_version", l.pinned > 0 ? "3" : quant ? "2" : "1");
  if (l.pinned > 0) out.add_metadata("pinned", std::to_string(l.pinned));
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

/// A float tensor whose shape load_blocked_impl has checked against the metadata; a NaN/Inf in a
/// saved model is a malformed file (io_error), not a bad argument.
inline std::vector<float> read_tensor(const safetensors_file& f, const std::string& name,
                                      const std::vector<std::int64_t>& shape) {
  try {
    return f.read_finite(name, shape);
  } catch (const error& e) {
    if (e.code() != status::invalid_argument) throw;
    throw error(status::io_error, std::string(e.what()).substr(std::string("sparse_ffn: ").size()));
  }
}

template <class T>
blocked_ffn<T> load_blocked_impl(const safetensors_file& f, blocked_file_info* info) {
  const std::string& path = f.name();
  const auto fmt = f.metadata().find("format");
  if (fmt == f.metadata().end() || fmt->second != k_blocked_format)
    sparse_ffn::detail::fail(status::io_error, path,
                             ": not a sparse_ffn blocked model (metadata format != ", k_blocked_format, ")");
  const index_t version = meta_int(f, "format_version");
  if (version < 1 || version > k_blocked_format_version)
    sparse_ffn::detail::fail(status::unsupported, path, ": unsupported format_version ", version);
  // Pinned blocks (version 3): an older reader refuses the file instead of routing them like any other.
  const bool has_pinned = f.metadata().count("pinned") > 0;
  sparse_ffn::detail::require(has_pinned == (version >= 3), status::io_error, path,
                              version >= 3 ? ": format_version 3 needs metadata 'pinned'"
                                           : ": metadata 'pinned' needs format_version 3");
  const index_t pinned = has_pinned ? meta_int(f, "pinned") : 0;
  // The stored weight dtype: q8/q4 files keep their bytes; float files hold F32/F16/BF16 tensors.
  const auto dt_it = f.metadata().find("dtype");
  const std::string fdt = dt_it == f.metadata().end() ? std::string() : dt_it->second;
  const bool fquant = fdt == "q8" || fdt == "q4";
  sparse_ffn::detail::require(!fquant || version >= 2, status::io_error, path, ": dtype ", fdt,
                              " needs format_version 2 (the file says ", version, ")");
  if constexpr (is_quantized<T>::value)
    sparse_ffn::detail::require(!fquant || fdt == dtype_traits<T>::name, status::unsupported, path,
                                ": the file holds ", fdt, " weights; load it as ", fdt,
                                " or as a float dtype (dequantised), not as ", dtype_traits<T>::name);
  const index_t d = meta_int(f, "d_model"), F = meta_int(f, "d_ff"), g = meta_int(f, "g");
  const index_t gated = meta_int(f, "gated");
  sparse_ffn::detail::require(gated == 0 || gated == 1, status::io_error, path,
                              ": metadata gated must be 0 or 1");
  block_layout l;
  try {
    l = make_layout<T>(d, F, g, gated == 1);  // validates d, F, g and the padded size
  } catch (const error& e) {
    sparse_ffn::detail::fail(status::io_error, path, ": the metadata describes no valid layout (", e.what(),
                             ")");
  }
  const index_t B = l.num_blocks, m = l.matrices();
  sparse_ffn::detail::require(pinned >= 0 && pinned <= B, status::io_error, path, ": metadata pinned (",
                              pinned, ") must be in [0, B=", B, "]");
  // Per stored row: d values, or a q8/q4 row's payload bytes.
  const index_t per_row = fdt == "q8"   ? row_format<q8_t>::payload_bytes(d)
                          : fdt == "q4" ? row_format<q4_t>::payload_bytes(d)
                                        : d;
  // Everything the file declares is checked against the metadata before the model is allocated: the
  // metadata alone must not make us allocate (a few bytes of header can claim terabytes).
  const std::vector<std::int64_t> wshape{B, m, g, per_row};
  auto check = [&](const char* name, const std::vector<std::int64_t>& shape) {
    if (!f.has(name)) return false;
    const tensor_info& t = f.info(name);
    const bool rows_tensor =
        std::string(name) == "weights" || std::string(name) == "centroids" || std::string(name) == "gate_w";
    if (fquant && rows_tensor && t.dtype != "U8")
      sparse_ffn::detail::fail(status::io_error, path, ": tensor '", name, "' has dtype ", t.dtype, "; a ",
                               fdt, " model stores U8 rows");
    if (t.shape != shape)
      sparse_ffn::detail::fail(status::io_error, path, ": tensor '", name, "' has shape ",
                               sparse_ffn::detail::shape_string(t.shape), ", expected ",
                               sparse_ffn::detail::shape_string(shape), " from the file's metadata");
    return true;
  };
  if (!check("weights", wshape))
    sparse_ffn::detail::fail(status::io_error, path, ": tensor 'weights' is missing");
  if (!check("permutation", {F}))
    sparse_ffn::detail::fail(status::io_error, path, ": tensor 'permutation' is missing");
  check("b1", {F});
  check("b2", {d});
  if (check("b3", {F}))
    sparse_ffn::detail::require(l.gated, status::io_error, path, ": b3 present in a non-gated model");
  const bool has_c = check("centroids", {B, per_row}), has_cb = check("centroid_bias", {B});
  const bool has_g = check("gate_w", {B, per_row}), has_gb = check("gate_b", {B});
  sparse_ffn::detail::require(has_c || !has_cb, status::io_error, path, ": centroid_bias without centroids");
  sparse_ffn::detail::require(has_g || !has_gb, status::io_error, path, ": gate_b without gate_w");
  const bool has_mlp = f.has("router.w1");
  const char* const mlp_names[] = {"router.w1", "router.b1", "router.w2", "router.b2"};
  const std::vector<std::int64_t> mlp_shapes[] = {{B, d}, {B}, {B, B}, {B}};
  for (int i = 0; i < 4; ++i)
    sparse_ffn::detail::require(check(mlp_names[i], mlp_shapes[i]) == has_mlp, status::io_error, path,
                                ": the MLP router needs all of router.w1, router.b1, router.w2, router.b2");
  for (const auto& kv : f.tensors()) {
    static const char* const known[] = {"weights",   "permutation",   "b1",       "b2",     "b3",
                                        "centroids", "centroid_bias", "gate_w",   "gate_b", "router.w1",
                                        "router.b1", "router.w2",     "router.b2"};
    sparse_ffn::detail::require(std::find_if(std::begin(known), std::end(known),
                                             [&](const char* k) { return kv.first == k; }) != std::end(known),
                                status::io_error, path, ": unexpected tensor '", kv.first,
                                "' in a blocked model");
  }

  blocked_ffn<T> model(l);
  model.set_pinned(pinned);
  // Reads `count` stored rows of tensor `name` into dst (row stride ld) in T.
  auto read_rows = [&](const char* name, index_t count, const std::vector<std::int64_t>& shape, T* dst) {
    if (fquant) {
      const std::vector<unsigned char> raw = f.bytes(name);
      auto rows_of = [&](auto qtag) {
        using Q = typename decltype(qtag)::type;
        using RQ = row_format<Q>;
        const index_t groups = RQ::groups(RQ::cols(d));
        std::vector<float> tmp(static_cast<std::size_t>(d));
        for (index_t r = 0; r < count; ++r) {
          const auto* src = reinterpret_cast<const Q*>(raw.data() + r * per_row);
          const bfloat16_t* sc = RQ::scales(src, RQ::cols(d));
          for (index_t k = 0; k < groups; ++k)
            sparse_ffn::detail::require((sc[k].bits & 0x7f80u) != 0x7f80u, status::io_error, path,
                                        ": tensor '", name, "' row ", r, " has a non-finite scale (group ", k,
                                        ")");
          if constexpr (std::is_same<Q, T>::value) {
            std::copy(src, src + per_row, dst + r * l.ld);
          } else if constexpr (!is_quantized<T>::value) {
            RQ::decode(src, d, tmp.data());
            row_format<T>::encode(tmp.data(), d, dst + r * l.ld, l.ld);
          }
        }
      };
      if (fdt == "q8")
        rows_of(type_tag<q8_t>{});
      else
        rows_of(type_tag<q4_t>{});
    } else {
      const std::vector<float> rows = read_tensor(f, name, shape);
      for (index_t r = 0; r < count; ++r) row_format<T>::encode(rows.data() + r * d, d, dst + r * l.ld, l.ld);
    }
  };
  read_rows("weights", B * m * g, wshape, model.weights());
  if (f.has("b1")) model.b1() = read_tensor(f, "b1", {F});
  if (f.has("b3")) model.b3() = read_tensor(f, "b3", {F});
  if (f.has("b2")) model.b2() = read_tensor(f, "b2", {d});
  const auto perm = f.read_int("permutation", {F});
  std::vector<std::int32_t>& p = model.permutation();
  for (index_t j = 0; j < F; ++j) {
    sparse_ffn::detail::require(
        perm[static_cast<std::size_t>(j)] >= 0 && perm[static_cast<std::size_t>(j)] < F, status::io_error,
        path, ": permutation[", j, "] = ", perm[static_cast<std::size_t>(j)], " is out of range");
    p[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(perm[static_cast<std::size_t>(j)]);
  }
  try {
    validate_permutation(p.data(), F);
  } catch (const error& e) {
    sparse_ffn::detail::fail(status::io_error, path, ": tensor 'permutation': ", e.what());
  }
  if (has_c) {
    std::vector<float> cb;
    if (has_cb) cb = read_tensor(f, "centroid_bias", {B});
    read_rows("centroids", B, {B, per_row}, model.alloc_centroids(std::move(cb)));
  }
  if (has_g) {
    std::vector<float> gb;
    if (has_gb) gb = read_tensor(f, "gate_b", {B});
    read_rows("gate_w", B, {B, per_row}, model.alloc_gate(std::move(gb)));
  }
  if (info) {
    info->metadata = f.metadata();
    info->has_mlp_router = has_mlp;
    info->mlp = convert::mlp_router{};
    if (has_mlp) {
      info->mlp.d_model = d;
      info->mlp.num_blocks = B;
      info->mlp.w1 = read_tensor(f, "router.w1", {B, d});
      info->mlp.b1 = read_tensor(f, "router.b1", {B});
      info->mlp.w2 = read_tensor(f, "router.w2", {B, B});
      info->mlp.b2 = read_tensor(f, "router.b2", {B});
    }
  }
  return model;
}

}  // namespace detail

/// Loads a blocked model from an opened file (see load_blocked(path)).
template <class T>
blocked_ffn<T> load_blocked(const safetensors_file& f, blocked_file_info* info = nullptr) {
  try {
    return detail::load_blocked_impl<T>(f, info);
  } catch (const std::bad_alloc&) {
    sparse_ffn::detail::fail(status::io_error, f.name(), ": out of memory loading the model");
  }
}

/// Loads a blocked model written by save_blocked, converting its weights to T. Validated before any
/// allocation: the format and version, the metadata (a valid layout), the presence, dtype and shape
/// of every tensor against the metadata; then the values (finite weights and biases, a permutation
/// that is a bijection). Every failure is a sparse_ffn::error naming the file (and the tensor).
template <class T>
blocked_ffn<T> load_blocked(const std::string& path, blocked_file_info* info = nullptr) {
  return load_blocked<T>(safetensors_file::open(path), info);
}

/// Names of a dense FFN's tensors in a checkpoint (empty = absent).
struct dense_names {
  std::string w1, b1, w2, b2, w3, b3;
};

/// Reads a dense FFN (float) from a checkpoint: W1 [d_ff × d], W2 [d × d_ff], optional W3, biases.
/// Checked before anything is read: the names given (W1 and W2 required; b3 only with W3), each tensor
/// present with a float dtype and the shape W1 implies; then every value finite. Errors name the file
/// and the tensor (a NaN/Inf also its index).
inline dense_ffn<float> load_dense(const safetensors_file& f, const dense_names& n) {
  const std::string& file = f.name();
  sparse_ffn::detail::require(!n.w1.empty() && !n.w2.empty(), status::invalid_argument,
                              "load_dense: W1 and W2 names are required");
  sparse_ffn::detail::require(n.b3.empty() || !n.w3.empty(), status::invalid_argument, "load_dense: b3 ('",
                              n.b3, "') given without W3 (the up projection)");
  const tensor_info& t1 = f.info(n.w1);
  if (t1.shape.size() != 2)
    sparse_ffn::detail::fail(status::invalid_shape, file, ": W1 '", n.w1,
                             "' must be 2-D [d_ff, d_model], has shape ",
                             sparse_ffn::detail::shape_string(t1.shape));
  const index_t F = t1.shape[0], d = t1.shape[1];
  sparse_ffn::detail::require(F > 0 && d > 0, status::invalid_shape, file, ": W1 '", n.w1,
                              "' has an empty dimension");
  struct want {
    const char* role;
    const std::string* name;
    std::vector<std::int64_t> shape;
  };
  const want all[] = {{"W1", &n.w1, {F, d}}, {"W2", &n.w2, {d, F}}, {"W3", &n.w3, {F, d}},
                      {"b1", &n.b1, {F}},    {"b2", &n.b2, {d}},    {"b3", &n.b3, {F}}};
  for (const auto& w : all) {
    if (w.name->empty()) continue;
    const tensor_info& t = f.info(*w.name);
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16")
      sparse_ffn::detail::fail(status::unsupported, file, ": ", w.role, " '", *w.name, "' has dtype ",
                               t.dtype, "; expected F32, F16 or BF16");
    if (t.shape != w.shape)
      sparse_ffn::detail::fail(status::invalid_shape, file, ": ", w.role, " '", *w.name, "' has shape ",
                               sparse_ffn::detail::shape_string(t.shape), ", expected ",
                               sparse_ffn::detail::shape_string(w.shape));
  }
  try {
    dense_ffn<float> out;
    out.d_model = d;
    out.d_ff = F;
    out.w1 = f.read_finite(n.w1, {F, d});
    out.w2 = f.read_finite(n.w2, {d, F});
    if (!n.w3.empty()) out.w3 = f.read_finite(n.w3, {F, d});
    auto bias = [&](const std::string& name, index_t len) {
      return name.empty() ? std::vector<float>(static_cast<std::size_t>(len), 0.0f)
                          : f.read_finite(name, {len});
    };
    if (!n.b1.empty() || !n.b2.empty() || !n.b3.empty()) {
      out.b1 = bias(n.b1, F);
      out.b2 = bias(n.b2, d);
      if (!n.w3.empty()) out.b3 = bias(n.b3, F);
    }
    return out;
  } catch (const std::bad_alloc&) {
    sparse_ffn::detail::fail(status::io_error, file, ": out of memory loading the dense FFN");
  }
}

}  // namespace io
}  // namespace sparse_ffn
