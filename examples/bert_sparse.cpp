// Whole-model example (issue 13; docs/moefication.md "The whole model"): a BERT sentence encoder
// (all-MiniLM-L6-v2, or any BERT checkpoint with Hugging Face names) run in C++ with a sparse FFN in
// every layer. It loads the checkpoint, runs the dense model on calibration text to collect each
// layer's FFN inputs, converts every FFN (convert::moefy: k-means split, fitted linear router, with
// and without pinned blocks), then embeds held-out sentences with every layer sparse and prints the
// cosine to the dense model's embeddings:
//   - selectors: the oracle, Avg-K (mean keys), the fitted linear router;
//   - uniform k (the same share of blocks in every layer) and two kinds of per-layer budgets at the same
//     average bytes, both by convert::allocate_blocks: "budget" on the conversion report's curves (each
//     FFN's own relative output error on held-out tokens, what moefy --budget uses), and "e2e" on
//     end-to-end curves (one layer sparse at a time, the embeddings' mean 1 − cosine on --dev sentences
//     of the calibration text);
//   - with --refine N, "refined" budgets: convert::refine_allocation from the better of uniform and e2e,
//     on the loss measured with every layer sparse (1 − mean cosine on the --dev sentences), at most N
//     evaluations per budget (pinned variant, linear router);
//   - the smallest average density whose mean cosine reaches --target (0.98);
//   - time per sentence, dense FFNs (OpenBLAS sgemm) and sparse (sparse_ffn), one sentence at a time.
//
//   bert_sparse --model DIR --calib FILE --sentences FILE [--json OUT] [--g 64] [--calib-tokens 60000]
//               [--pin-ratio 64] [--target 0.98] [--every 2] [--dev 100] [--router-target mass|output]
//               [--refine 0]
//   bert_sparse --model DIR --calib FILE --sentences FILE --dump OUT.safetensors   (dense embeddings only)
//   bert_sparse --synthetic     (a small random BERT with a planted massive activation; checks, exit 1 on
//                                a failed check: the ctest example_bert_sparse)
//
// DIR holds model.safetensors, vocab.txt and config.json (num_attention_heads). --calib: text, one
// sentence per line, all of it cut into sequences of 128 tokens (the FFN inputs the conversion fits on),
// its first --dev lines also the sentences of the end-to-end curves; --sentences: one per line, held out
// (not in the calibration text). --every: uniform k = every, 2·every, …, B.
// scripts/minilm_whole_model.sh installs the model and prepares both files.
#include "bert.hpp"

#include <sparse_ffn/convert/budget.hpp>
#include <sparse_ffn/convert/model.hpp>
#include <sparse_ffn/convert/pipeline.hpp>
#include <sparse_ffn/cpu/forward.hpp>
#include <sparse_ffn/io/file.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

namespace sf = sparse_ffn;
namespace cv = sparse_ffn::convert;
using bert::index_t;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const char* k_selectors[] = {"oracle", "avg_k", "linear"};

/// One conversion of every layer (pinned blocks or not) and its packed models.
struct variant {
  std::string name;
  double pin_ratio = 0;
  std::vector<sf::blocked_ffn<float>> mean_keys, linear;  // Avg-K rows: the mean keys / the fitted router
  std::vector<index_t> pinned;
  std::map<std::string, std::vector<cv::layer_curve>> curves;      // by selector: the report's local errors
  std::map<std::string, std::vector<cv::layer_curve>> e2e_curves;  // by selector: the embeddings' (dev set)
};

struct options {
  index_t g = 64;
  double pin_ratio = 64;
  double target = 0.98;
  index_t every = 2;  // uniform k = every, 2·every, …, B (and B)
  int epochs = 20;
  std::int64_t refine = 0;  // "refined" rows: local search with at most this many dev evaluations (0: none)
  std::string router_target = "mass";  // what the linear router learns: block mass or output norm
  bool quiet = false;
};

struct result_row {
  std::string variant, selector, mode;
  std::vector<index_t> k;
  index_t uniform_k = 0;  // the uniform k whose bytes a budget row matches (= k for uniform rows)
  double density = 0;     // block bytes computed / all block bytes
  double mean_cos = 0, min_cos = 0;
};

template <class P>
void sparse_layer(const sf::blocked_ffn<float>& m, index_t k, const float* x, index_t n, float* y,
                  sf::cpu::workspace& ws) {
  sf::route_args a;
  a.k = k;
  sf::cpu::forward<P>(m.view(), n, x, y, a, nullptr, &ws);
}

/// FFN of every layer sparse: selector `sel` (oracle / avg_k / linear) with k[l] blocks in layer l.
bert::ffn_fn sparse_ffns(const variant& v, const std::string& sel, const std::vector<index_t>& k, index_t g,
                         std::vector<sf::cpu::workspace>& ws) {
  return [&v, sel, k, g, &ws](index_t l, const float* x, index_t n, float* y) {
    const auto& m = sel == "linear" ? v.linear[l] : v.mean_keys[l];
    sf::dispatch_block_size(g, [&](auto G) {
      constexpr int Gv = decltype(G)::value;
      if (sel == "oracle")
        sparse_layer<sf::policy<Gv, sf::select::oracle, float, sf::act::gelu_erf>>(m, k[l], x, n, y, ws[l]);
      else
        sparse_layer<sf::policy<Gv, sf::select::avg_k, float, sf::act::gelu_erf>>(m, k[l], x, n, y, ws[l]);
    });
  };
}

bert::ffn_fn dense_ffns(const bert::model& m) {
  auto h = std::make_shared<std::vector<float>>();
  return [&m, h](index_t l, const float* x, index_t n, float* y) { bert::dense_ffn(m, l, x, n, y, *h); };
}

sf::dense_ffn<float> layer_ffn(const bert::model& m, index_t l) {
  sf::dense_ffn<float> f;
  f.d_model = m.c.d;
  f.d_ff = m.c.d_ff;
  const auto& L = m.layer[static_cast<std::size_t>(l)];
  f.w1 = L.w1;
  f.b1 = L.b1;
  f.w2 = L.w2;
  f.b2 = L.b2;
  return f;
}

variant convert_model(const bert::model& m, const std::vector<std::vector<float>>& hidden, index_t n,
                      const std::string& name, double pin_ratio, const options& opt) {
  variant v;
  v.name = name;
  v.pin_ratio = pin_ratio;
  const index_t B = m.c.d_ff / opt.g;
  const std::int64_t bytes = cv::block_bytes<float>(m.c.d, opt.g, false);
  for (index_t l = 0; l < m.c.layers; ++l) {
    const double t0 = now();
    cv::moefy_options o;
    o.g = opt.g;
    o.activation = sf::activation_kind::gelu_erf;
    o.split = "kmeans";
    o.router = "linear";
    o.report_splits = {};
    o.quality.densities.clear();
    for (index_t k = 1; k <= B; ++k) o.quality.densities.push_back(double(k) / double(B));
    o.quality.train.epochs = opt.epochs;
    o.quality.train.target = opt.router_target;
    o.pin.ratio = pin_ratio;
    const auto dense = layer_ffn(m, l);
    cv::moefy_result r = cv::moefy(dense, hidden[static_cast<std::size_t>(l)].data(), n, o);
    v.linear.push_back(cv::moefy_pack<float>(dense, r));
    cv::moefy_result mk = r;
    mk.router_rows.clear();
    mk.router_bias.clear();
    v.mean_keys.push_back(cv::moefy_pack<float>(dense, mk));
    v.pinned.push_back(r.pinned.blocks);
    for (const char* s : k_selectors)
      v.curves[s].push_back(cv::report_curve(r.report, "kmeans", s, r.pinned.blocks, bytes));
    if (!opt.quiet)
      std::fprintf(stderr, "[%s] layer %lld converted in %.1f s: %lld pinned block(s), hot neurons %lld\n",
                   name.c_str(), static_cast<long long>(l), now() - t0,
                   static_cast<long long>(r.pinned.blocks), static_cast<long long>(r.pinned.hot));
  }
  return v;
}

std::pair<double, double> cosines(const std::vector<float>& a, const std::vector<float>& b, index_t d) {
  const index_t n = static_cast<index_t>(a.size()) / d;
  double sum = 0, least = 1;
  for (index_t i = 0; i < n; ++i) {
    double ab = 0, aa = 0, bb = 0;
    for (index_t j = 0; j < d; ++j) {
      ab += double(a[i * d + j]) * b[i * d + j];
      aa += double(a[i * d + j]) * a[i * d + j];
      bb += double(b[i * d + j]) * b[i * d + j];
    }
    const double c = ab / std::sqrt(aa * bb);
    sum += c;
    least = std::min(least, c);
  }
  return {sum / double(n), least};
}

/// Calibration sequences: the text's tokens cut into rows of max_len ([CLS] … [SEP]), up to `tokens`.
std::vector<std::vector<int>> calibration_sequences(const bert::wordpiece& tok, const std::string& text,
                                                    index_t tokens, std::size_t max_len) {
  const std::vector<int> ids = tok.encode(text);
  std::vector<std::vector<int>> seqs;
  index_t total = 0;
  const std::size_t body = max_len - 2;
  for (std::size_t i = 0; i < ids.size(); i += body) {
    std::vector<int> s{tok.cls()};
    s.insert(s.end(), ids.begin() + static_cast<std::ptrdiff_t>(i),
             ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + body)));
    s.push_back(tok.sep());
    if (total + static_cast<index_t>(s.size()) > tokens) break;
    total += static_cast<index_t>(s.size());
    seqs.push_back(std::move(s));
  }
  return seqs;
}

struct study {
  std::vector<result_row> rows;
  std::vector<variant> variants;
  index_t calib_tokens = 0, eval_tokens = 0;
  nlohmann::json timing;
  nlohmann::json refined = nlohmann::json::array();  // the refine searches: dev losses, moves, time
};

/// The whole study on a loaded model (the real run and the synthetic test share it).
study run_study(const bert::model& m, const std::vector<std::vector<int>>& calib,
                const std::vector<std::vector<int>>& dev, const std::vector<std::vector<int>>& eval,
                const options& opt) {
  study st;
  const index_t B = m.c.d_ff / opt.g, L = m.c.layers, d = m.c.d;
  if (B * opt.g != m.c.d_ff) throw std::runtime_error("d_ff is not a multiple of g");
  // 1. FFN inputs of every layer on the calibration text.
  std::vector<std::vector<float>> hidden;
  double t0 = now();
  bert::encode(m, calib, dense_ffns(m), &hidden);
  for (const auto& s : calib) st.calib_tokens += static_cast<index_t>(s.size());
  for (const auto& s : eval) st.eval_tokens += static_cast<index_t>(s.size());
  if (!opt.quiet)
    std::fprintf(stderr, "dense model on %lld calibration tokens: %.1f s\n",
                 static_cast<long long>(st.calib_tokens), now() - t0);
  // 2. Convert every layer with and without pinned blocks.
  st.variants.push_back(convert_model(m, hidden, st.calib_tokens, "pinned", opt.pin_ratio, opt));
  st.variants.push_back(convert_model(m, hidden, st.calib_tokens, "no_pins", 0.0, opt));
  hidden.clear();
  // 3. Embeddings.
  const std::vector<float> ref = bert::encode(m, eval, dense_ffns(m));
  std::vector<sf::cpu::workspace> ws(static_cast<std::size_t>(L));
  const std::int64_t block = cv::block_bytes<float>(d, opt.g, false), all = L * B * block;
  auto measure = [&](const variant& v, const std::string& sel, const std::string& mode,
                     const std::vector<index_t>& k, index_t uniform_k) {
    result_row r{v.name, sel, mode, k, uniform_k};
    std::int64_t bytes = 0;
    for (index_t kl : k) bytes += kl * block;
    r.density = double(bytes) / double(all);
    const auto e = bert::encode(m, eval, sparse_ffns(v, sel, k, opt.g, ws));
    std::tie(r.mean_cos, r.min_cos) = cosines(e, ref, d);
    if (!opt.quiet)
      std::fprintf(stderr, "  %-8s %-7s %-7s density %.3f: mean cosine %.4f (min %.4f)\n", v.name.c_str(),
                   sel.c_str(), mode.c_str(), r.density, r.mean_cos, r.min_cos);
    st.rows.push_back(r);
  };
  std::vector<index_t> ks;
  for (index_t k = opt.every; k < B; k += opt.every) ks.push_back(k);
  ks.push_back(B);
  // End-to-end curves on the dev sentences (calibration text, not the held-out sentences): layer l alone
  // sparse with k blocks, the others dense; D_l(k) = mean (1 − cosine) to the dense embeddings. As
  // curves for allocate_blocks (error = √D_l, so it minimises Σ_l D_l(k_l)), they weigh each layer by
  // what its error does to the embeddings, which the layers' local output errors do not.
  {
    const double t1 = now();
    std::vector<std::vector<float>> state(static_cast<std::size_t>(L));  // dense input of every layer
    std::vector<float> x = bert::embed(m, dev);
    for (index_t l = 0; l < L; ++l) {
      state[static_cast<std::size_t>(l)] = x;
      bert::run_layers(m, dev, x, l, l + 1, dense_ffns(m));
    }
    const std::vector<float> dev_ref = bert::pool(m, dev, x);
    for (auto& v : st.variants) {
      if (v.name != "pinned") continue;  // end-to-end budgets: the pinned variant only
      for (const char* sel : k_selectors)
        for (index_t l = 0; l < L; ++l) {
          cv::layer_curve c;
          c.min_k = std::max<index_t>(1, v.pinned[static_cast<std::size_t>(l)]);
          c.block_bytes = block;
          for (index_t k : ks) {
            if (k < c.min_k) continue;
            std::vector<index_t> kl(static_cast<std::size_t>(L), B);
            kl[static_cast<std::size_t>(l)] = k;
            const auto dense = dense_ffns(m), sparse = sparse_ffns(v, sel, kl, opt.g, ws);
            std::vector<float> y = state[static_cast<std::size_t>(l)];
            bert::run_layers(m, dev, y, l, L, [&](index_t at, const float* in, index_t cnt, float* out) {
              (at == l ? sparse : dense)(at, in, cnt, out);
            });
            const double D =
                k == B ? 0.0 : std::max(0.0, 1.0 - cosines(bert::pool(m, dev, y), dev_ref, d).first);
            c.k.push_back(k);
            c.error.push_back(std::sqrt(D));
          }
          v.e2e_curves[sel].push_back(c);
        }
    }
    if (!opt.quiet)
      std::fprintf(stderr, "end-to-end curves on %zu dev sentences: %.1f s\n", dev.size(), now() - t1);
  }
  for (const auto& v : st.variants) {
    index_t P = 0;
    for (index_t p : v.pinned) P = std::max(P, p);
    for (const char* sel : k_selectors) {
      for (index_t k : ks) {
        if (k < std::max<index_t>(P, 1)) continue;
        measure(v, sel, "uniform", std::vector<index_t>(static_cast<std::size_t>(L), k), k);
      }
      for (index_t k : ks) {  // per-layer budgets at the same bytes as uniform k
        std::int64_t least = 0;
        for (index_t l = 0; l < L; ++l) least += std::max<index_t>(1, v.pinned[l]) * block;
        if (k * L * block < least) continue;
        const auto b = cv::allocate_blocks(v.curves.at(sel), k * L * block);
        measure(v, sel, "budget", b.k, k);
        if (v.e2e_curves.count(sel))
          measure(v, sel, "e2e", cv::allocate_blocks(v.e2e_curves.at(sel), k * L * block).k, k);
      }
    }
  }
  // Refined budgets (--refine N): convert::refine_allocation with the loss measured on the whole model,
  // every layer sparse (pinned variant, fitted linear router): 1 − mean cosine of the dev sentences'
  // embeddings to the dense model's. It starts from the better on dev of uniform k and the e2e budget at
  // the same bytes; the held-out sentences (the rows' cosines) are never seen by the search.
  if (opt.refine > 0) {
    const variant& v = st.variants[0];
    const std::string sel = "linear";
    const std::vector<float> x0 = bert::embed(m, dev);
    std::vector<float> dev_ref = x0;
    bert::run_layers(m, dev, dev_ref, 0, L, dense_ffns(m));
    dev_ref = bert::pool(m, dev, dev_ref);
    std::vector<cv::layer_range> range(static_cast<std::size_t>(L));
    for (index_t l = 0; l < L; ++l)
      range[static_cast<std::size_t>(l)] = {std::max<index_t>(1, v.pinned[static_cast<std::size_t>(l)]), B,
                                            block};
    std::int64_t least = 0;  // bytes of the smallest allocation within the bounds
    for (const auto& r : range) least += r.min_k * block;
    for (index_t k : ks) {
      if (k == B || k * L * block < least) continue;
      // The search's current allocation is the least loss seen so far; a candidate differs from it in
      // at most two layers, so the dev states before the first of them are reused.
      std::vector<index_t> best_k;
      double best_loss = 2;
      std::vector<std::vector<float>> best_states;  // input of each layer under best_k
      std::int64_t evals = 0;
      auto loss = [&](const std::vector<index_t>& kl) {
        index_t from = 0;
        if (!best_k.empty())
          while (from < L && kl[static_cast<std::size_t>(from)] == best_k[static_cast<std::size_t>(from)])
            ++from;
        if (from == L) return best_loss;  // the same allocation
        std::vector<std::vector<float>> states(static_cast<std::size_t>(L));
        for (index_t l = 0; l < from; ++l)
          states[static_cast<std::size_t>(l)] = best_states[static_cast<std::size_t>(l)];
        std::vector<float> y = best_k.empty() ? x0 : best_states[static_cast<std::size_t>(from)];
        const auto f = sparse_ffns(v, sel, kl, opt.g, ws);
        for (index_t l = from; l < L; ++l) {
          states[static_cast<std::size_t>(l)] = y;
          bert::run_layers(m, dev, y, l, l + 1, f);
        }
        const double D = 1.0 - cosines(bert::pool(m, dev, y), dev_ref, d).first;
        ++evals;
        if (D < best_loss) {
          best_loss = D;
          best_k = kl;
          best_states = std::move(states);
        }
        return D;
      };
      const double t1 = now();
      std::vector<index_t> start(static_cast<std::size_t>(L), k);
      const double uniform_loss = loss(start);
      double e2e_loss = -1;
      if (v.e2e_curves.count(sel)) {
        const auto e = cv::allocate_blocks(v.e2e_curves.at(sel), k * L * block).k;
        e2e_loss = loss(e);
        if (e2e_loss < uniform_loss) start = e;
      }
      cv::refine_options ro;
      ro.step = std::max<index_t>(1, k / 4);
      ro.max_evaluations = opt.refine;
      const cv::refine_result r = cv::refine_allocation(range, start, k * L * block, loss, ro);
      if (!opt.quiet)
        std::fprintf(
            stderr,
            "refined at %lld blocks a layer: dev loss %.4f -> %.4f, %lld moves, %lld evaluations, %.1f s\n",
            static_cast<long long>(k), r.start_loss, r.loss, static_cast<long long>(r.moves),
            static_cast<long long>(evals), now() - t1);
      st.refined.push_back({{"uniform_k", k},
                            {"dev_loss_uniform", uniform_loss},
                            {"dev_loss_e2e", e2e_loss},
                            {"start", start},
                            {"dev_loss", r.loss},
                            {"k", r.k},
                            {"moves", r.moves},
                            {"evaluations", evals},
                            {"seconds", now() - t1}});
      measure(v, sel, "refined", r.k, k);
    }
  }
  return st;
}

/// Median time per sentence (ms), one sentence at a time, with the given FFNs.
double time_per_sentence(const bert::model& m, const std::vector<std::vector<int>>& eval,
                         const bert::ffn_fn& f, int reps) {
  std::vector<double> per;
  for (int r = 0; r < reps; ++r)
    for (const auto& s : eval) {
      const double t0 = now();
      (void)bert::encode(m, {s}, f);
      per.push_back((now() - t0) * 1e3);
    }
  std::nth_element(per.begin(), per.begin() + static_cast<std::ptrdiff_t>(per.size() / 2), per.end());
  return per[per.size() / 2];
}

/// The smallest density whose mean cosine reaches the target, per (variant, selector, mode); -1: none.
std::map<std::string, const result_row*> smallest_reaching(const std::vector<result_row>& rows,
                                                           double target) {
  std::map<std::string, const result_row*> best;
  for (const auto& r : rows) {
    if (r.mean_cos < target) continue;
    const std::string key = r.variant + " " + r.selector + " " + r.mode;
    auto& b = best[key];
    if (!b || r.density < b->density) b = &r;
  }
  return best;
}

void print_table(const study& st, const options& opt) {
  std::printf("%-8s %-7s %-8s %8s  %9s %8s  k per layer\n", "pins", "router", "k", "density", "mean cos",
              "min cos");
  for (const auto& r : st.rows) {
    std::string ks;
    for (index_t k : r.k) ks += std::to_string(k) + " ";
    std::printf("%-8s %-7s %-8s %8.3f  %9.4f %8.4f  %s\n", r.variant.c_str(), r.selector.c_str(),
                r.mode.c_str(), r.density, r.mean_cos, r.min_cos, ks.c_str());
  }
  std::printf("\nsmallest measured density with mean cosine >= %.2f:\n", opt.target);
  for (const auto& [key, r] : smallest_reaching(st.rows, opt.target))
    std::printf("  %-26s %.3f (mean cosine %.4f)\n", key.c_str(), r->density, r->mean_cos);
}

nlohmann::json to_json(const study& st, const options& opt) {
  nlohmann::json j;
  j["g"] = opt.g;
  j["router_target"] = opt.router_target;
  j["target"] = opt.target;
  j["calibration_tokens"] = st.calib_tokens;
  j["eval_tokens"] = st.eval_tokens;
  for (const auto& v : st.variants) {
    nlohmann::json jv;
    jv["name"] = v.name;
    jv["pin_ratio"] = v.pin_ratio;
    jv["pinned_blocks"] = v.pinned;
    j["variants"].push_back(jv);
  }
  for (const auto& r : st.rows)
    j["rows"].push_back({{"pins", r.variant},
                         {"router", r.selector},
                         {"k_mode", r.mode},
                         {"k", r.k},
                         {"density", r.density},
                         {"mean_cos", r.mean_cos},
                         {"min_cos", r.min_cos}});
  j["timing"] = st.timing;
  j["refined"] = st.refined;
  return j;
}

// ---- the synthetic check ------------------------------------------------------------------------
int synthetic() {
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
    failures += !ok;
  };
  // Vocabulary: specials, words, their plural piece, letters and continuation letters, punctuation.
  std::vector<std::string> vocab{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "##s", ".", ","};
  const std::vector<std::string> words{"the",  "cat",  "dog", "sat",   "on",    "mat",
                                       "a",    "big",  "red", "ran",   "to",    "house",
                                       "bird", "sang", "and", "slept", "under", "tree"};
  vocab.insert(vocab.end(), words.begin(), words.end());
  for (char c = 'a'; c <= 'z'; ++c) {
    vocab.push_back(std::string(1, c));
    vocab.push_back("##" + std::string(1, c));
  }
  const bert::wordpiece tok(vocab);
  {
    const auto ids = tok.encode("The CATS, sat.\tQz!");
    const std::vector<int> want{tok.id("the"), tok.id("cat"), tok.id("##s"), tok.id(","),    tok.id("sat"),
                                tok.id("."),   tok.id("q"),   tok.id("##z"), tok.id("[UNK]")};
    check(ids == want, "WordPiece: lower case, punctuation split, longest match, ## pieces, [UNK]");
  }
  // A random BERT: d 64, 4 heads, 2 layers, d_ff 256; neuron 7 of every layer is a planted massive
  // activation (always on, its value column 30x the others').
  bert::model m;
  m.c = {64, 4, 2, 256, 64, static_cast<index_t>(vocab.size()), 1e-12f};
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](index_t count, float scale) {
    std::vector<float> v(static_cast<std::size_t>(count));
    for (auto& e : v) e = nd(rng) * scale;
    return v;
  };
  const index_t d = m.c.d, F = m.c.d_ff;
  const float s = 1.0f / std::sqrt(float(d));
  m.word = rnd(m.c.vocab * d, 1.0f);
  m.pos = rnd(m.c.max_pos * d, 0.3f);
  m.type = rnd(d, 0.1f);
  m.ln_w.assign(static_cast<std::size_t>(d), 1.0f);
  m.ln_b.assign(static_cast<std::size_t>(d), 0.0f);
  for (index_t l = 0; l < m.c.layers; ++l) {
    bert::layer_weights L;
    L.wq = rnd(d * d, s), L.bq = rnd(d, 0.1f), L.wk = rnd(d * d, s), L.bk = rnd(d, 0.1f);
    L.wv = rnd(d * d, s), L.bv = rnd(d, 0.1f), L.wo = rnd(d * d, s), L.bo = rnd(d, 0.1f);
    L.ln1_w = rnd(d, 0.1f), L.ln1_b = rnd(d, 0.1f), L.ln2_w = rnd(d, 0.1f), L.ln2_b = rnd(d, 0.1f);
    for (auto* w : {&L.ln1_w, &L.ln2_w})
      for (auto& e : *w) e += 1.0f;
    L.w1 = rnd(F * d, s), L.b1 = rnd(F, 0.5f), L.w2 = rnd(d * F, 1.0f / std::sqrt(float(F))),
    L.b2 = rnd(d, 0.1f);
    L.b1[7] = 6.0f;
    for (index_t j = 0; j < d; ++j) L.w2[j * F + 7] *= 30.0f;
    m.layer.push_back(std::move(L));
  }
  // Sentences of random words (calibration 4000 tokens; 40 held-out sentences).
  std::uniform_int_distribution<std::size_t> pick(0, words.size() - 1);
  auto sentence = [&](int len) {
    std::string t;
    for (int i = 0; i < len; ++i) t += words[pick(rng)] + (i % 5 == 4 ? ", " : " ");
    return t + ".";
  };
  std::string calib_text;
  for (int i = 0; i < 400; ++i) calib_text += sentence(9) + " ";
  const auto calib = calibration_sequences(tok, calib_text, 4000, 64);
  std::vector<std::vector<int>> eval;
  for (int i = 0; i < 40; ++i) eval.push_back(tok.sentence(sentence(4 + i % 9), 64));

  {  // The float encoder against the float64 reference.
    const auto e = bert::encode(m, eval, dense_ffns(m));
    double worst = 0;
    for (std::size_t i = 0; i < eval.size(); ++i) {
      const auto r = bert::encode_reference(m, eval[i]);
      for (index_t j = 0; j < d; ++j) worst = std::max(worst, std::abs(double(e[i * d + j]) - r[j]));
    }
    check(worst < 2e-5,
          "float encoder vs float64 reference: max |difference| " + std::to_string(worst * 1e6) + "e-6");
    std::vector<float> bad = e;
    bad[3] += 1e-3f;
    double worst_bad = 0;
    const auto r0 = bert::encode_reference(m, eval[0]);
    for (index_t j = 0; j < d; ++j) worst_bad = std::max(worst_bad, std::abs(double(bad[j]) - r0[j]));
    check(worst_bad > 2e-5, "the comparison sees a 1e-3 change");
  }
  options opt;
  opt.g = 16;
  opt.every = 4;
  opt.epochs = 10;
  opt.refine = 40;
  opt.quiet = true;
  std::vector<std::vector<int>> dev;
  for (int i = 0; i < 20; ++i) dev.push_back(tok.sentence(sentence(4 + i % 7), 64));
  const study st = run_study(m, calib, dev, eval, opt);
  const index_t B = F / opt.g;
  check(st.variants[0].pinned == std::vector<index_t>{1, 1} &&
            st.variants[1].pinned == std::vector<index_t>{0, 0},
        "the planted neuron is pinned in every layer (one block), and only with --pin-ratio > 0");
  auto row = [&](const std::string& v, const std::string& sel, const std::string& mode, index_t k) {
    for (const auto& r : st.rows)
      if (r.variant == v && r.selector == sel && r.mode == mode && r.k[0] == k && r.k[1] == k) return r;
    throw std::runtime_error("no row " + v + " " + sel + " " + mode + " " + std::to_string(k));
  };
  for (const char* sel : k_selectors)
    for (const char* v : {"pinned", "no_pins"})
      check(row(v, sel, "uniform", B).mean_cos > 0.99999,
            std::string(v) + " " + sel + " with every block: the dense model's embeddings");
  const double pinned = row("pinned", "avg_k", "uniform", 4).mean_cos,
               unpinned = row("no_pins", "avg_k", "uniform", 4).mean_cos;
  check(pinned > unpinned + 0.05, "Avg-K at 25%: pinned blocks raise the mean cosine (" +
                                      std::to_string(unpinned) + " -> " + std::to_string(pinned) + ")");
  bool budgets_ok = true;
  for (const auto& r : st.rows)
    if (r.mode != "uniform") {
      index_t sum = 0;
      for (index_t k : r.k) sum += k;
      budgets_ok = budgets_ok && sum <= r.uniform_k * m.c.layers;
    }
  check(budgets_ok, "per-layer budgets stay within the uniform rows' bytes");
  bool refined_ok = st.refined.size() == static_cast<std::size_t>(B / opt.every - 1);
  for (const auto& r : st.refined)
    refined_ok = refined_ok && r.at("dev_loss").get<double>() <= r.at("dev_loss_uniform").get<double>() &&
                 r.at("dev_loss_e2e").get<double>() >= 0 &&
                 r.at("dev_loss").get<double>() <= r.at("dev_loss_e2e").get<double>() &&
                 r.at("evaluations").get<std::int64_t>() <= 40 + 2;
  check(refined_ok,
        "refined budgets: one search per uniform k < B, its dev loss at most uniform's and e2e's");
  check(st.variants[0].e2e_curves.size() == 3 && st.variants[0].e2e_curves.at("avg_k").size() == 2 &&
            st.variants[1].e2e_curves.empty(),
        "end-to-end curves for each selector and layer of the pinned variant");
  std::printf("%s\n", failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(
      stderr,
      "%s\nusage: bert_sparse --model DIR --calib FILE --sentences FILE [--json OUT] [--g 64]\n"
      "                   [--calib-tokens 60000] [--pin-ratio 64] [--target 0.98] [--every 2] [--dev 100]\n"
      "                   [--router-target mass|output] [--refine 0] [--dump OUT]\n"
      "       bert_sparse --synthetic\n",
      why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> a;
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      if (k == "--synthetic") return synthetic();
      if (k.rfind("--", 0) != 0 || i + 1 >= argc) usage(("bad argument: " + k).c_str());
      if (!a.emplace(k.substr(2), argv[++i]).second) usage(("repeated: " + k).c_str());
    }
    for (const auto& [k, v] : a)
      if (k != "model" && k != "calib" && k != "sentences" && k != "json" && k != "g" &&
          k != "calib-tokens" && k != "pin-ratio" && k != "target" && k != "every" && k != "dump" &&
          k != "dev" && k != "router-target" && k != "refine")
        usage(("unknown option --" + k).c_str());
    if (!a.count("model") || !a.count("calib") || !a.count("sentences"))
      usage("--model, --calib and --sentences are required");
    options opt;
    auto num = [&](const char* k, double dflt) {
      if (!a.count(k)) return dflt;
      const std::string& v = a.at(k);
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !std::isfinite(x))
        usage(("--" + std::string(k) + ": not a number: " + v).c_str());
      return x;
    };
    opt.g = static_cast<index_t>(num("g", 64));
    opt.pin_ratio = num("pin-ratio", 64);
    opt.target = num("target", 0.98);
    opt.every = static_cast<index_t>(num("every", 2));
    const index_t calib_tokens = static_cast<index_t>(num("calib-tokens", 60000));
    const index_t dev_count = static_cast<index_t>(num("dev", 100));
    opt.refine = static_cast<std::int64_t>(num("refine", 0));
    if (opt.g != 16 && opt.g != 32 && opt.g != 64 && opt.g != 128) usage("--g must be 16, 32, 64 or 128");
    if (opt.every < 1 || calib_tokens < 1 || dev_count < 1 || opt.refine < 0)
      usage("--every, --calib-tokens and --dev must be >= 1, --refine >= 0");
    if (a.count("router-target")) opt.router_target = a.at("router-target");
    if (opt.router_target != "mass" && opt.router_target != "output")
      usage("--router-target must be mass or output");
    const std::string dir = a.at("model");
    const auto cfg = nlohmann::json::parse(read_text(dir + "/config.json"));
    const bert::model m =
        bert::load(dir + "/model.safetensors", cfg.at("num_attention_heads").get<index_t>());
    const auto tok = bert::wordpiece::from_file(dir + "/vocab.txt");
    const std::string calib_text = read_text(a.at("calib"));
    const auto calib = calibration_sequences(tok, calib_text, calib_tokens, 128);
    std::vector<std::vector<int>> dev;  // the calibration text's first lines, for end-to-end budgets
    {
      std::istringstream in(calib_text);
      for (std::string line; dev.size() < static_cast<std::size_t>(dev_count) && std::getline(in, line);)
        if (!line.empty()) dev.push_back(tok.sentence(line, 128));
    }
    std::vector<std::vector<int>> eval;
    {
      std::istringstream in(read_text(a.at("sentences")));
      for (std::string line; std::getline(in, line);)
        if (!line.empty()) eval.push_back(tok.sentence(line, 128));
    }
    if (calib.empty() || eval.empty()) usage("no calibration text or no sentences");
    std::fprintf(stderr,
                 "BERT: d %lld, %lld heads, %lld layers, d_ff %lld; %zu sentences held out; ISA %s; OpenBLAS "
                 "core %s\n",
                 static_cast<long long>(m.c.d), static_cast<long long>(m.c.heads),
                 static_cast<long long>(m.c.layers), static_cast<long long>(m.c.d_ff), eval.size(),
                 sf::cpu::isa_name(sf::cpu::active_isa()), openblas_get_corename());
    if (a.count("dump")) {  // the dense embeddings, to compare with another implementation
      sf::io::check_output_path(a.at("dump"), {dir + "/model.safetensors", a.at("calib"), a.at("sentences")});
      sf::io::safetensors_writer w;
      w.add_float("embeddings", {static_cast<std::int64_t>(eval.size()), m.c.d},
                  bert::encode(m, eval, dense_ffns(m)));
      w.write(a.at("dump"));
      return 0;
    }
    study st = run_study(m, calib, dev, eval, opt);
    print_table(st, opt);
    // Time per sentence: dense, and the pinned linear router at the smallest budget reaching the target
    // and at 25% of the blocks.
    std::vector<sf::cpu::workspace> ws(static_cast<std::size_t>(m.c.layers));
    const double dense_ms = time_per_sentence(m, eval, dense_ffns(m), 3);
    st.timing["dense_ms"] = dense_ms;
    std::printf("\ntime per sentence (median of %zu, %.1f tokens on average): dense FFNs %.3f ms\n",
                eval.size(), double(st.eval_tokens) / double(eval.size()), dense_ms);
    const double rest_ms = time_per_sentence(
        m, eval, [&](index_t, const float*, index_t cnt, float* y) { std::fill(y, y + cnt * m.c.d, 0.0f); },
        3);
    st.timing["without_ffn_ms"] = rest_ms;
    std::printf("  of which outside the FFNs (attention, LayerNorms, embeddings, pooling): %.3f ms\n",
                rest_ms);
    const auto best = smallest_reaching(st.rows, opt.target);
    for (const std::string mode : {"e2e", "uniform"}) {
      const auto it = best.find("pinned linear " + mode);
      if (it == best.end()) continue;
      const double ms =
          time_per_sentence(m, eval, sparse_ffns(st.variants[0], "linear", it->second->k, opt.g, ws), 3);
      st.timing["pinned_linear_" + mode + "_ms"] = ms;
      st.timing["pinned_linear_" + mode + "_density"] = it->second->density;
      std::printf("  pinned linear router, %s k at density %.3f: %.3f ms (%.2fx dense; FFNs alone %.2fx)\n",
                  mode.c_str(), it->second->density, ms, dense_ms / ms,
                  (dense_ms - rest_ms) / (ms - rest_ms));
    }
    const index_t quarter = std::max<index_t>(1, (m.c.d_ff / opt.g) / 4);
    const double q_ms = time_per_sentence(
        m, eval, sparse_ffns(st.variants[0], "linear", std::vector<index_t>(m.c.layers, quarter), opt.g, ws),
        3);
    st.timing["pinned_linear_uniform_25_ms"] = q_ms;
    std::printf(
        "  pinned linear router, 25%% of the blocks in every layer: %.3f ms (%.2fx dense; FFNs alone "
        "%.2fx)\n",
        q_ms, dense_ms / q_ms, (dense_ms - rest_ms) / (q_ms - rest_ms));
    if (a.count("json")) {
      sf::io::check_output_path(a.at("json"), {dir + "/model.safetensors", a.at("calib"), a.at("sentences")});
      sf::io::atomic_write(a.at("json"), to_json(st, opt).dump(1) + "\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bert_sparse: %s\n", e.what());
    return 1;
  }
}
