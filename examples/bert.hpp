// A small BERT encoder for the whole-model example (examples/bert_sparse.cpp): the uncased WordPiece
// tokenizer, the encoder (post-LayerNorm, GELU-erf FFN, as BERT and all-MiniLM-L6-v2), mean pooling,
// with the FFN of every layer left to the caller (dense, or a sparse_ffn kernel). Linear layers use
// OpenBLAS's sgemm. Not part of the library: the library computes FFNs; this file is the rest of a
// model, so the example can measure what sparse FFNs do to a real model's sentence embeddings.
//
// Also a float64 reference of the same encoder (encode_reference), written independently with plain
// loops, which the synthetic test compares the float encoder against.
//
// Tokenizer limits: ASCII text is handled as BERT's BasicTokenizer + WordPiece handle it (lower case,
// whitespace and punctuation split, greedy longest-match pieces, [UNK] for words over 100 bytes or
// without pieces); non-ASCII characters are kept inside words as UTF-8 bytes, without the Unicode
// normalisation and accent stripping BERT applies (so such words may tokenize differently).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <sparse_ffn/io/safetensors.hpp>

namespace bert {

using index_t = std::int64_t;

struct config {
  index_t d = 0, heads = 0, layers = 0, d_ff = 0, max_pos = 0, vocab = 0;
  float eps = 1e-12f;
};

struct layer_weights {
  std::vector<float> wq, bq, wk, bk, wv, bv, wo, bo, ln1_w, ln1_b;  // attention
  std::vector<float> w1, b1, w2, b2, ln2_w, ln2_b;                  // FFN (w1 [d_ff × d], w2 [d × d_ff])
};

struct model {
  config c;
  std::vector<float> word, pos, type, ln_w, ln_b;  // embeddings
  std::vector<layer_weights> layer;
};

inline std::string layer_prefix(index_t i) {
  return "encoder.layer." + std::to_string(i) + ".";
}

/// Loads a BERT checkpoint with Hugging Face tensor names (optionally under "bert."). `heads` is not
/// in the weights: the caller reads it from config.json.
inline model load(const std::string& path, index_t heads) {
  const auto f = sparse_ffn::io::safetensors_file::open(path);
  const std::string root = f.has("embeddings.word_embeddings.weight") ? "" : "bert.";
  auto get = [&](const std::string& name, std::vector<std::int64_t> shape) {
    return f.read_finite(root + name, shape);
  };
  model m;
  const auto& we = f.info(root + "embeddings.word_embeddings.weight").shape;
  const auto& pe = f.info(root + "embeddings.position_embeddings.weight").shape;
  if (we.size() != 2 || pe.size() != 2) throw std::runtime_error(path + ": embeddings must be 2-D");
  m.c.vocab = we[0];
  m.c.d = we[1];
  m.c.max_pos = pe[0];
  m.c.heads = heads;
  if (heads <= 0 || m.c.d % heads != 0)
    throw std::runtime_error("the hidden size " + std::to_string(m.c.d) + " is not a multiple of heads (" +
                             std::to_string(heads) + ")");
  while (f.has(root + layer_prefix(m.c.layers) + "attention.self.query.weight")) ++m.c.layers;
  if (m.c.layers == 0) throw std::runtime_error(path + ": no encoder.layer.0 tensors");
  const auto& w1 = f.info(root + layer_prefix(0) + "intermediate.dense.weight").shape;
  if (w1.size() != 2) throw std::runtime_error(path + ": W1 must be 2-D");
  m.c.d_ff = w1[0];
  const index_t d = m.c.d, F = m.c.d_ff;
  m.word = get("embeddings.word_embeddings.weight", {m.c.vocab, d});
  m.pos = get("embeddings.position_embeddings.weight", {m.c.max_pos, d});
  m.type = get("embeddings.token_type_embeddings.weight", {});
  if (m.type.size() < static_cast<std::size_t>(d)) throw std::runtime_error(path + ": no token type 0 row");
  m.ln_w = get("embeddings.LayerNorm.weight", {d});
  m.ln_b = get("embeddings.LayerNorm.bias", {d});
  for (index_t i = 0; i < m.c.layers; ++i) {
    const std::string p = layer_prefix(i);
    layer_weights L;
    L.wq = get(p + "attention.self.query.weight", {d, d});
    L.bq = get(p + "attention.self.query.bias", {d});
    L.wk = get(p + "attention.self.key.weight", {d, d});
    L.bk = get(p + "attention.self.key.bias", {d});
    L.wv = get(p + "attention.self.value.weight", {d, d});
    L.bv = get(p + "attention.self.value.bias", {d});
    L.wo = get(p + "attention.output.dense.weight", {d, d});
    L.bo = get(p + "attention.output.dense.bias", {d});
    L.ln1_w = get(p + "attention.output.LayerNorm.weight", {d});
    L.ln1_b = get(p + "attention.output.LayerNorm.bias", {d});
    L.w1 = get(p + "intermediate.dense.weight", {F, d});
    L.b1 = get(p + "intermediate.dense.bias", {F});
    L.w2 = get(p + "output.dense.weight", {d, F});
    L.b2 = get(p + "output.dense.bias", {d});
    L.ln2_w = get(p + "output.LayerNorm.weight", {d});
    L.ln2_b = get(p + "output.LayerNorm.bias", {d});
    m.layer.push_back(std::move(L));
  }
  return m;
}

// ---- tokenizer --------------------------------------------------------------------------------------
class wordpiece {
 public:
  wordpiece() = default;
  explicit wordpiece(const std::vector<std::string>& tokens) {
    for (std::size_t i = 0; i < tokens.size(); ++i) vocab_.emplace(tokens[i], static_cast<int>(i));
    unk_ = id("[UNK]");
    cls_ = id("[CLS]");
    sep_ = id("[SEP]");
  }
  static wordpiece from_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::vector<std::string> t;
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      t.push_back(line);
    }
    return wordpiece(t);
  }
  int id(const std::string& token) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) throw std::runtime_error("the vocabulary has no '" + token + "'");
    return it->second;
  }
  int cls() const { return cls_; }
  int sep() const { return sep_; }
  std::size_t size() const { return vocab_.size(); }

  /// BasicTokenizer's split (see the file comment for non-ASCII text).
  static std::vector<std::string> basic(const std::string& text) {
    std::vector<std::string> out;
    std::string word;
    auto flush = [&] {
      if (!word.empty()) out.push_back(word);
      word.clear();
    };
    for (unsigned char c : text) {
      if (c < 0x80 && (std::isspace(c) || std::iscntrl(c))) {
        flush();
      } else if (c < 0x80 && std::ispunct(c)) {  // ASCII 33–47, 58–64, 91–96, 123–126
        flush();
        out.emplace_back(1, static_cast<char>(c));
      } else {
        word += static_cast<char>(c < 0x80 ? std::tolower(c) : c);
      }
    }
    flush();
    return out;
  }

  /// Greedy longest-match pieces of one word ([UNK] when a position has no piece).
  void pieces(const std::string& w, std::vector<int>& out) const {
    if (w.size() > 100) {
      out.push_back(unk_);
      return;
    }
    std::vector<int> got;
    for (std::size_t start = 0; start < w.size();) {
      std::size_t end = w.size();
      int cur = -1;
      for (; start < end; --end) {
        const auto it = vocab_.find((start > 0 ? "##" : "") + w.substr(start, end - start));
        if (it != vocab_.end()) {
          cur = it->second;
          break;
        }
      }
      if (cur < 0) {
        out.push_back(unk_);
        return;
      }
      got.push_back(cur);
      start = end;
    }
    out.insert(out.end(), got.begin(), got.end());
  }

  /// Token ids of a text, without [CLS]/[SEP].
  std::vector<int> encode(const std::string& text) const {
    std::vector<int> ids;
    for (const auto& w : basic(text)) pieces(w, ids);
    return ids;
  }

  /// [CLS] text [SEP], the text cut to max_len - 2 tokens.
  std::vector<int> sentence(const std::string& text, std::size_t max_len) const {
    std::vector<int> ids = encode(text);
    if (ids.size() > max_len - 2) ids.resize(max_len - 2);
    ids.insert(ids.begin(), cls_);
    ids.push_back(sep_);
    return ids;
  }

 private:
  std::unordered_map<std::string, int> vocab_;
  int unk_ = 0, cls_ = 0, sep_ = 0;
};

// ---- the encoder --------------------------------------------------------------------------------
/// y [n × out] = x [n × in] · Wᵀ + b, W [out × in] (PyTorch's layout).
inline void linear(const float* x, index_t n, index_t in, const std::vector<float>& w,
                   const std::vector<float>& b, index_t out, float* y) {
  for (index_t t = 0; t < n; ++t) std::copy(b.begin(), b.end(), y + t * out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(out),
              static_cast<int>(in), 1.0f, x, static_cast<int>(in), w.data(), static_cast<int>(in), 1.0f, y,
              static_cast<int>(out));
}

/// x = LayerNorm(x + r) row by row (r may be null).
inline void add_layer_norm(float* x, const float* r, index_t n, index_t d, const std::vector<float>& w,
                           const std::vector<float>& b, float eps) {
  for (index_t t = 0; t < n; ++t) {
    float* v = x + t * d;
    if (r)
      for (index_t j = 0; j < d; ++j) v[j] += r[t * d + j];
    double m = 0, s = 0;
    for (index_t j = 0; j < d; ++j) m += v[j];
    m /= double(d);
    for (index_t j = 0; j < d; ++j) s += (v[j] - m) * (v[j] - m);
    const float inv = static_cast<float>(1.0 / std::sqrt(s / double(d) + eps));
    for (index_t j = 0; j < d; ++j) v[j] = (v[j] - static_cast<float>(m)) * inv * w[j] + b[j];
  }
}

/// The dense FFN of layer l in float: y [n × d] = W2 · gelu(W1 x + b1) + b2.
inline void dense_ffn(const model& m, index_t l, const float* x, index_t n, float* y, std::vector<float>& h) {
  const layer_weights& L = m.layer[l];
  h.resize(static_cast<std::size_t>(n * m.c.d_ff));
  linear(x, n, m.c.d, L.w1, L.b1, m.c.d_ff, h.data());
  for (float& v : h) v = 0.5f * v * (1.0f + std::erf(v * 0.70710678f));
  linear(h.data(), n, m.c.d_ff, L.w2, L.b2, m.c.d, y);
}

/// ffn(layer, x [n × d], n, y [n × d]): the FFN's output (no residual, no LayerNorm).
using ffn_fn = std::function<void(index_t, const float*, index_t, float*)>;

/// The token embeddings after the embedding LayerNorm: [tokens × d] for the sequences in order (each
/// a full [CLS] … [SEP] row of ids; no padding).
inline std::vector<float> embed(const model& m, const std::vector<std::vector<int>>& seqs) {
  const index_t d = m.c.d;
  index_t n = 0;
  for (const auto& s : seqs) {
    if (s.empty() || static_cast<index_t>(s.size()) > m.c.max_pos)
      throw std::runtime_error("a sequence must have 1.." + std::to_string(m.c.max_pos) + " tokens");
    n += static_cast<index_t>(s.size());
  }
  std::vector<float> x(static_cast<std::size_t>(n * d));
  index_t t = 0;
  for (const auto& s : seqs)
    for (std::size_t p = 0; p < s.size(); ++p, ++t) {
      if (s[p] < 0 || s[p] >= m.c.vocab) throw std::runtime_error("token id out of range");
      for (index_t j = 0; j < d; ++j)
        x[t * d + j] = m.word[s[p] * d + j] + m.pos[static_cast<index_t>(p) * d + j] + m.type[j];
    }
  add_layer_norm(x.data(), nullptr, n, d, m.ln_w, m.ln_b, m.c.eps);
  return x;
}

/// Layers [l0, l1) on the hidden states x [tokens × d] in place. `capture`, when given, receives each
/// of these layers' FFN input (capture[l], all tokens, in order).
inline void run_layers(const model& m, const std::vector<std::vector<int>>& seqs, std::vector<float>& x,
                       index_t l0, index_t l1, const ffn_fn& ffn,
                       std::vector<std::vector<float>>* capture = nullptr) {
  const index_t d = m.c.d, H = m.c.heads, dh = d / H, n = static_cast<index_t>(x.size()) / d;
  std::vector<float> q(x.size()), k(x.size()), v(x.size()), ctx(x.size()), tmp(x.size()), sc;
  if (capture) capture->resize(static_cast<std::size_t>(m.c.layers));
  const float scale = 1.0f / std::sqrt(float(dh));
  for (index_t l = l0; l < l1; ++l) {
    const layer_weights& L = m.layer[l];
    linear(x.data(), n, d, L.wq, L.bq, d, q.data());
    linear(x.data(), n, d, L.wk, L.bk, d, k.data());
    linear(x.data(), n, d, L.wv, L.bv, d, v.data());
    index_t s0 = 0;
    for (const auto& s : seqs) {  // attention within each sequence, head by head
      const int len = static_cast<int>(s.size()), ld = static_cast<int>(d), h_d = static_cast<int>(dh);
      sc.resize(static_cast<std::size_t>(len) * static_cast<std::size_t>(len));
      for (index_t h = 0; h < H; ++h) {
        const index_t off = s0 * d + h * dh;
        // sc [len × len] = Q_h K_hᵀ · scale; row-wise softmax; ctx_h = sc · V_h
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, len, len, h_d, scale, &q[off], ld, &k[off], ld,
                    0.0f, sc.data(), len);
        for (int i = 0; i < len; ++i) {
          float* r = &sc[static_cast<std::size_t>(i) * len];
          const float mx = *std::max_element(r, r + len);
          float sum = 0;
          for (int j = 0; j < len; ++j) sum += r[j] = std::exp(r[j] - mx);
          for (int j = 0; j < len; ++j) r[j] /= sum;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, len, h_d, len, 1.0f, sc.data(), len, &v[off],
                    ld, 0.0f, &ctx[off], ld);
      }
      s0 += len;
    }
    linear(ctx.data(), n, d, L.wo, L.bo, d, tmp.data());
    add_layer_norm(x.data(), tmp.data(), n, d, L.ln1_w, L.ln1_b, m.c.eps);
    if (capture) (*capture)[l] = x;
    ffn(l, x.data(), n, tmp.data());
    add_layer_norm(x.data(), tmp.data(), n, d, L.ln2_w, L.ln2_b, m.c.eps);
  }
}

/// Mean over each sequence's tokens of x, L2-normalised (all-MiniLM-L6-v2's pooling): [sequences × d].
inline std::vector<float> pool(const model& m, const std::vector<std::vector<int>>& seqs,
                               const std::vector<float>& x) {
  const index_t d = m.c.d;
  std::vector<float> emb(seqs.size() * static_cast<std::size_t>(d), 0.0f);
  index_t t = 0;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    double acc_norm = 0;
    std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
    for (std::size_t p = 0; p < seqs[i].size(); ++p, ++t)
      for (index_t j = 0; j < d; ++j) acc[j] += x[t * d + j];
    for (double a : acc) acc_norm += a * a;
    const double inv = acc_norm > 0 ? 1.0 / std::sqrt(acc_norm) : 0.0;
    for (index_t j = 0; j < d; ++j) emb[i * d + j] = static_cast<float>(acc[j] * inv);
  }
  return emb;
}

/// Sentence embeddings of a batch of sequences: embed, every layer, pool.
inline std::vector<float> encode(const model& m, const std::vector<std::vector<int>>& seqs, const ffn_fn& ffn,
                                 std::vector<std::vector<float>>* capture = nullptr) {
  std::vector<float> x = embed(m, seqs);
  run_layers(m, seqs, x, 0, m.c.layers, ffn, capture);
  return pool(m, seqs, x);
}

/// The same encoder in float64 with plain loops and the dense FFN (the synthetic test's reference).
inline std::vector<double> encode_reference(const model& m, const std::vector<int>& s) {
  const index_t d = m.c.d, H = m.c.heads, dh = d / H, n = static_cast<index_t>(s.size()), F = m.c.d_ff;
  using vec = std::vector<double>;
  auto lin = [&](const vec& in, index_t din, const std::vector<float>& w, const std::vector<float>& b,
                 index_t dout) {
    vec out(static_cast<std::size_t>(n * dout));
    for (index_t t = 0; t < n; ++t)
      for (index_t o = 0; o < dout; ++o) {
        double a = b[o];
        for (index_t i = 0; i < din; ++i) a += in[t * din + i] * double(w[o * din + i]);
        out[t * dout + o] = a;
      }
    return out;
  };
  auto norm = [&](vec& a, const std::vector<float>& w, const std::vector<float>& b) {
    for (index_t t = 0; t < n; ++t) {
      double mean = 0, var = 0;
      for (index_t j = 0; j < d; ++j) mean += a[t * d + j] / double(d);
      for (index_t j = 0; j < d; ++j) var += (a[t * d + j] - mean) * (a[t * d + j] - mean) / double(d);
      for (index_t j = 0; j < d; ++j)
        a[t * d + j] = (a[t * d + j] - mean) / std::sqrt(var + double(m.c.eps)) * w[j] + b[j];
    }
  };
  vec x(static_cast<std::size_t>(n * d));
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < d; ++j)
      x[t * d + j] = double(m.word[s[t] * d + j]) + double(m.pos[t * d + j]) + double(m.type[j]);
  norm(x, m.ln_w, m.ln_b);
  for (index_t l = 0; l < m.c.layers; ++l) {
    const layer_weights& L = m.layer[l];
    const vec q = lin(x, d, L.wq, L.bq, d), k = lin(x, d, L.wk, L.bk, d), v = lin(x, d, L.wv, L.bv, d);
    vec ctx(x.size(), 0.0);
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < n; ++i) {
        vec p(static_cast<std::size_t>(n));
        double mx = -INFINITY, sum = 0;
        for (index_t j = 0; j < n; ++j) {
          double a = 0;
          for (index_t e = 0; e < dh; ++e) a += q[i * d + h * dh + e] * k[j * d + h * dh + e];
          p[j] = a / std::sqrt(double(dh));
          mx = std::max(mx, p[j]);
        }
        for (auto& e : p) sum += e = std::exp(e - mx);
        for (index_t j = 0; j < n; ++j)
          for (index_t e = 0; e < dh; ++e) ctx[i * d + h * dh + e] += p[j] / sum * v[j * d + h * dh + e];
      }
    vec a = lin(ctx, d, L.wo, L.bo, d);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] += x[i];
    norm(a, L.ln1_w, L.ln1_b);
    vec hmid = lin(a, d, L.w1, L.b1, F);
    for (auto& e : hmid) e = 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
    vec y = lin(hmid, F, L.w2, L.b2, d);
    for (std::size_t i = 0; i < y.size(); ++i) y[i] += a[i];
    norm(y, L.ln2_w, L.ln2_b);
    x = y;
  }
  vec emb(static_cast<std::size_t>(d), 0.0);
  double nn = 0;
  for (index_t t = 0; t < n; ++t)
    for (index_t j = 0; j < d; ++j) emb[j] += x[t * d + j];
  for (double e : emb) nn += e * e;
  for (double& e : emb) e /= std::sqrt(nn);
  return emb;
}

}  // namespace bert
