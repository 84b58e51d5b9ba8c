// The backward test matrix: one policy on fresh random shapes (odd d, random B, k, pinned blocks,
// with/without biases) for n in {1, 3, 37}, its gradients compared with a float64 reference of the
// whole computation. The reference's own formulas are checked against central finite differences of
// its float64 forward (test_backward_linear.cpp), so a wrong derivative in both places cannot pass.
#pragma once

#include "test_support.hpp"

#if SPARSE_FFN_HAS_OPENMP
#include <omp.h>
#endif

namespace test {

/// A blocked model in double, per packed neuron (F = B·g rows of d), and its gradients.
struct dmodel {
  sfx::index_t d = 0, F = 0, B = 0, g = 0, P = 0;
  bool gated = false, gate = false;
  std::vector<double> K, U, V, b1, b3, b2, Wg, bg;  // K, U, V: F × d; Wg: B × d
};

struct dgrads {
  std::vector<double> dx, K, U, V, b1, b3, b2, Wg, bg, route;  // dx: n × d; route: n × k
};

template <class T>
dmodel to_double_model(const sfx::blocked_ffn_view<T>& w) {
  const auto& l = w.layout;
  dmodel m;
  m.d = l.d_model;
  m.F = l.d_ff;
  m.B = l.num_blocks;
  m.g = l.g;
  m.P = l.pinned;
  m.gated = l.gated;
  m.gate = w.gate_w != nullptr;
  const auto Fd = static_cast<std::size_t>(m.F * m.d);
  m.K.assign(Fd, 0);
  m.U.assign(Fd, 0);
  m.V.assign(Fd, 0);
  m.b1.assign(static_cast<std::size_t>(m.F), 0);
  m.b3.assign(static_cast<std::size_t>(m.F), 0);
  m.b2.assign(static_cast<std::size_t>(m.d), 0);
  for (sfx::index_t b = 0; b < m.B; ++b)
    for (sfx::index_t i = 0; i < m.g; ++i) {
      const sfx::index_t j = b * m.g + i;
      for (sfx::index_t c = 0; c < m.d; ++c) {
        m.K[static_cast<std::size_t>(j * m.d + c)] = wval(w.keys(b) + i * l.ld, c, m.d);
        if (m.gated) m.U[static_cast<std::size_t>(j * m.d + c)] = wval(w.up(b) + i * l.ld, c, m.d);
        m.V[static_cast<std::size_t>(j * m.d + c)] = wval(w.values(b) + i * l.ld, c, m.d);
      }
      if (w.b1) m.b1[static_cast<std::size_t>(j)] = w.b1[j];
      if (w.b3) m.b3[static_cast<std::size_t>(j)] = w.b3[j];
    }
  for (sfx::index_t c = 0; c < m.d; ++c)
    if (w.b2) m.b2[static_cast<std::size_t>(c)] = w.b2[c];
  if (m.gate) {
    m.Wg.assign(static_cast<std::size_t>(m.B * m.d), 0);
    m.bg.assign(static_cast<std::size_t>(m.B), 0);
    for (sfx::index_t b = 0; b < m.B; ++b) {
      for (sfx::index_t c = 0; c < m.d; ++c)
        m.Wg[static_cast<std::size_t>(b * m.d + c)] = wval(w.gate_row(b), c, m.d);
      if (w.gate_b) m.bg[static_cast<std::size_t>(b)] = w.gate_b[b];
    }
  }
  return m;
}

/// d act / d a of a plain activation (the inner one of a gated), in double.
inline double act_grad_ref(sfx::activation_kind k, double a) {
  using K = sfx::activation_kind;
  switch (k) {
    case K::relu: return a > 0 ? 1.0 : 0.0;
    case K::gelu_erf:
      return 0.5 * (1.0 + std::erf(a / std::sqrt(2.0))) + a * std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI);
    case K::gelu_tanh:
    case K::geglu: {
      const double c = std::sqrt(2.0 / M_PI), t = std::tanh(c * (a + 0.044715 * a * a * a));
      return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * a * a);
    }
    case K::silu:
    case K::swiglu: {
      const double s = 1.0 / (1.0 + std::exp(-a));
      return s * (1.0 + a * (1.0 - s));
    }
  }
  return 0;
}

/// The inner (plain) activation of a gated one, as a plain kind; plain kinds map to themselves.
inline sfx::activation_kind inner_kind(sfx::activation_kind k) {
  if (k == sfx::activation_kind::swiglu) return sfx::activation_kind::silu;
  if (k == sfx::activation_kind::geglu) return sfx::activation_kind::gelu_tanh;
  return k;
}

/// The magnitude of the terms of a plain activation (the inner one of a gated) and of its derivative:
/// their rounding error's scale for backward_ref(magnitude = true). 1 + erf(z) and 1 − t² cancel where
/// the value is small, so a float evaluation is accurate to eps·(1 + |erf|), not to eps·value.
inline double act_terms_ref(sfx::activation_kind k, double a) {
  using K = sfx::activation_kind;
  switch (inner_kind(k)) {
    case K::relu: return a > 0 ? a : 0.0;
    case K::gelu_erf: return 0.5 * std::fabs(a) * (1.0 + std::fabs(std::erf(a / std::sqrt(2.0))));
    case K::gelu_tanh: {
      const double t = std::tanh(std::sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a));
      return 0.5 * std::fabs(a) * (1.0 + std::fabs(t));
    }
    default: return std::fabs(a / (1.0 + std::exp(-a)));  // silu: a product, accurate to eps·value
  }
}

inline double act_grad_terms_ref(sfx::activation_kind k, double a) {
  using K = sfx::activation_kind;
  switch (inner_kind(k)) {
    case K::relu: return a > 0 ? 1.0 : 0.0;
    case K::gelu_erf:
      return 0.5 * (1.0 + std::fabs(std::erf(a / std::sqrt(2.0)))) +
             std::fabs(a) * std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI);
    case K::gelu_tanh: {
      const double c = std::sqrt(2.0 / M_PI), t = std::tanh(c * (a + 0.044715 * a * a * a));
      return 0.5 * (1.0 + std::fabs(t)) +
             0.5 * std::fabs(a) * (1.0 + t * t) * c * (1.0 + 3 * 0.044715 * a * a);
    }
    default: {  // silu: σ·(1 + a·(1 − σ))
      const double sg = 1.0 / (1.0 + std::exp(-a));
      return sg * (1.0 + std::fabs(a) * (1.0 + sg));
    }
  }
}

/// The learned gate's block weights of one token's routing row, in double (selector/learned_gate.hpp).
inline std::vector<double> gate_weights_ref(const dmodel& m, const double* x, const sfx::block_index_t* bl,
                                            sfx::index_t k, bool renorm,
                                            std::vector<double>* probs = nullptr) {
  std::vector<double> lg(static_cast<std::size_t>(m.B), 0), w(static_cast<std::size_t>(k), 1.0);
  if (k == m.P) return w;
  double mx = -1e300;
  for (sfx::index_t c = m.P; c < m.B; ++c) {
    double s = m.bg[static_cast<std::size_t>(c)];
    for (sfx::index_t e = 0; e < m.d; ++e) s += m.Wg[static_cast<std::size_t>(c * m.d + e)] * x[e];
    lg[static_cast<std::size_t>(c)] = s;
    mx = std::max(mx, s);
  }
  double all = 0, top = 0;
  for (sfx::index_t c = m.P; c < m.B; ++c) all += std::exp(lg[static_cast<std::size_t>(c)] - mx);
  for (sfx::index_t j = m.P; j < k; ++j) top += std::exp(lg[static_cast<std::size_t>(bl[j])] - mx);
  if (probs) {
    probs->assign(static_cast<std::size_t>(m.B), 0);
    for (sfx::index_t c = m.P; c < m.B; ++c)
      (*probs)[static_cast<std::size_t>(c)] =
          std::exp(lg[static_cast<std::size_t>(c)] - mx) / (renorm ? top : all);
  }
  for (sfx::index_t j = m.P; j < k; ++j)
    w[static_cast<std::size_t>(j)] =
        std::exp(lg[static_cast<std::size_t>(bl[j])] - mx) / (renorm ? top : all);
  return w;
}

/// L = Σ y·dy of the forward with a fixed routing table (the learned gate's weights recomputed), in double.
inline double loss_ref(const dmodel& m, sfx::activation_kind act, const std::vector<double>& x,
                       const std::vector<double>& dy, const sfx::block_index_t* blocks, sfx::index_t n,
                       sfx::index_t k, bool renorm) {
  double L = 0;
  for (sfx::index_t t = 0; t < n; ++t) {
    const double* xt = x.data() + t * m.d;
    const double* dyt = dy.data() + t * m.d;
    const sfx::block_index_t* bl = blocks + t * k;
    const std::vector<double> w = m.gate ? gate_weights_ref(m, xt, bl, k, renorm)
                                         : std::vector<double>(static_cast<std::size_t>(k), 1.0);
    for (sfx::index_t c = 0; c < m.d; ++c) L += m.b2[static_cast<std::size_t>(c)] * dyt[c];
    for (sfx::index_t j = 0; j < k; ++j)
      for (sfx::index_t i = 0; i < m.g; ++i) {
        const sfx::index_t nr = bl[j] * m.g + i;
        double a = m.b1[static_cast<std::size_t>(nr)], u = m.b3[static_cast<std::size_t>(nr)], s = 0;
        for (sfx::index_t c = 0; c < m.d; ++c) {
          a += m.K[static_cast<std::size_t>(nr * m.d + c)] * xt[c];
          if (m.gated) u += m.U[static_cast<std::size_t>(nr * m.d + c)] * xt[c];
          s += m.V[static_cast<std::size_t>(nr * m.d + c)] * dyt[c];
        }
        L += w[static_cast<std::size_t>(j)] * act_ref(act, a, u) * s;
      }
  }
  return L;
}

/// The gradients of loss_ref, written from the chain rule in double. pre/up (optional, [n × k × g]):
/// the pre-activations to take instead of recomputing them (the forward's cache: the kernels' own
/// rounding then cannot flip a ReLU between the library and the reference). dy_s, x_gate (optional):
/// the dY that the dot products s = v·dy read and the x that the gate's logits read, where the
/// kernels round them (to bf16); dY and x elsewhere.
/// magnitude: instead of the gradients, the same chain rule with |·| on every product and factor, so
/// every sum adds magnitudes: the scale of each gradient's rounding error (a float sum of terms t_i is
/// off by at most ~n·eps·Σ|t_i|, whatever its order). A gradient that cancels (s = v·dy near 0 while
/// its terms are not) is judged against its terms, not its value. Needs pre (and up) from the cache: the
/// pre-activations are arguments here, not sums.
inline dgrads backward_ref(const dmodel& m, sfx::activation_kind act, const std::vector<double>& x,
                           const std::vector<double>& dy, const sfx::block_index_t* blocks, sfx::index_t n,
                           sfx::index_t k, bool renorm, const float* pre = nullptr, const float* up = nullptr,
                           const std::vector<double>* dy_s = nullptr,
                           const std::vector<double>* x_gate = nullptr, bool magnitude = false) {
  const auto M = [magnitude](double v) { return magnitude ? std::fabs(v) : v; };
  const auto d = static_cast<std::size_t>(m.d);
  dgrads gr;
  gr.dx.assign(static_cast<std::size_t>(n) * d, 0);
  gr.K.assign(m.K.size(), 0);
  gr.U.assign(m.U.size(), 0);
  gr.V.assign(m.V.size(), 0);
  gr.b1.assign(m.b1.size(), 0);
  gr.b3.assign(m.b3.size(), 0);
  gr.b2.assign(m.b2.size(), 0);
  gr.Wg.assign(m.Wg.size(), 0);
  gr.bg.assign(m.bg.size(), 0);
  gr.route.assign(static_cast<std::size_t>(n * k), 0);
  const sfx::activation_kind inner = inner_kind(act);
  for (sfx::index_t t = 0; t < n; ++t) {
    const double* xt = x.data() + t * m.d;
    const double* dyt = dy.data() + t * m.d;
    const double* dyst = (dy_s ? dy_s->data() : dy.data()) + t * m.d;
    double* dxt = gr.dx.data() + t * m.d;
    const sfx::block_index_t* bl = blocks + t * k;
    std::vector<double> probs;
    const double* xgt = (x_gate ? x_gate->data() : x.data()) + t * m.d;
    const std::vector<double> w = m.gate ? gate_weights_ref(m, xgt, bl, k, renorm, &probs)
                                         : std::vector<double>(static_cast<std::size_t>(k), 1.0);
    for (std::size_t c = 0; c < d; ++c) gr.b2[c] += M(dyt[c]);
    for (sfx::index_t j = 0; j < k; ++j) {
      double dw = 0;
      for (sfx::index_t i = 0; i < m.g; ++i) {
        const sfx::index_t nr = bl[j] * m.g + i;
        const auto row = static_cast<std::size_t>(nr) * d;
        double a = m.b1[static_cast<std::size_t>(nr)], u = m.b3[static_cast<std::size_t>(nr)], s = 0;
        for (std::size_t c = 0; c < d; ++c) {
          a += m.K[row + c] * xt[c];
          if (m.gated) u += m.U[row + c] * xt[c];
          s += M(m.V[row + c] * dyst[c]);
        }
        const auto at = static_cast<std::size_t>((t * k + j) * m.g + i);
        if (pre) a = pre[at];
        if (up && m.gated) u = up[at];
        const double wj = M(w[static_cast<std::size_t>(j)]);
        const double ha = magnitude ? act_terms_ref(act, a) : act_ref(inner, a, 0);  // the inner value
        const double ga = magnitude ? act_grad_terms_ref(act, a) : act_grad_ref(inner, a);
        const double h = m.gated ? ha * M(u) : ha, dh = wj * s;
        const double da = m.gated ? dh * M(u) * ga : dh * ga;
        const double du = m.gated ? dh * ha : 0.0;
        dw += h * s;
        gr.b1[static_cast<std::size_t>(nr)] += da;
        gr.b3[static_cast<std::size_t>(nr)] += du;
        for (std::size_t c = 0; c < d; ++c) {
          gr.V[row + c] += wj * h * M(dyt[c]);
          gr.K[row + c] += da * M(xt[c]);
          if (m.gated) gr.U[row + c] += du * M(xt[c]);
          dxt[c] += M(da * m.K[row + c]) + (m.gated ? M(du * m.U[row + c]) : 0.0);
        }
      }
      gr.route[static_cast<std::size_t>(t * k + j)] = dw;
    }
    if (m.gate && k > m.P) {
      // dL/dlogit_c = Σ_j dw_j ∂w_j/∂logit_c over the routed slots (softmax over [P, B), or over the
      // selected routed blocks when renormalised).
      std::vector<double> dl(static_cast<std::size_t>(m.B), 0);
      double gsum = 0;
      for (sfx::index_t j = m.P; j < k; ++j)
        gsum += M(gr.route[static_cast<std::size_t>(t * k + j)] * w[static_cast<std::size_t>(j)]);
      if (!renorm)
        for (sfx::index_t c = m.P; c < m.B; ++c)
          dl[static_cast<std::size_t>(c)] = M(-probs[static_cast<std::size_t>(c)] * gsum);
      for (sfx::index_t j = m.P; j < k; ++j)
        dl[static_cast<std::size_t>(bl[j])] +=
            M(w[static_cast<std::size_t>(j)] * gr.route[static_cast<std::size_t>(t * k + j)]) +
            M(renorm ? -w[static_cast<std::size_t>(j)] * gsum : 0.0);
      for (sfx::index_t c = 0; c < m.B; ++c) {
        const double g = dl[static_cast<std::size_t>(c)];
        gr.bg[static_cast<std::size_t>(c)] += g;
        for (std::size_t e = 0; e < d; ++e) {
          gr.Wg[static_cast<std::size_t>(c) * d + e] += M(g * xt[e]);
          dxt[e] += M(g * m.Wg[static_cast<std::size_t>(c) * d + e]);
        }
      }
    }
  }
  return gr;
}

/// Library gradient `got` (float) against the reference `want` (double): every element within
/// tol · mag + 1e-30, mag the element's magnitude sum (backward_ref with magnitude = true: the scale of
/// its rounding error, ≥ |want|). Returns the first failure's description, or "".
inline std::string compare_grad(const char* what, const float* got, const std::vector<double>& want,
                                const std::vector<double>& mag, double tol) {
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], e = want[i];
    if (!(std::fabs(g - e) <= tol * mag[i] + 1e-30)) {
      std::ostringstream os;
      os << what << "[" << i << "] = " << g << ", reference " << e << " (magnitude of its terms " << mag[i]
         << ", tol " << tol << ")";
      return os.str();
    }
  }
  return "";
}

/// Gradient rows of the library's blocked layout gathered into F × d (per packed neuron) order.
inline std::vector<float> gather_rows(const sfx::ffn_grads_view& g, int which) {
  const auto& l = g.layout;
  std::vector<float> out(static_cast<std::size_t>(l.d_ff * l.d_model));
  for (sfx::index_t b = 0; b < l.num_blocks; ++b)
    for (sfx::index_t i = 0; i < l.g; ++i) {
      const float* row = (which == 0 ? g.keys(b) : which == 1 ? g.up(b) : g.values(b)) + i * l.ld;
      std::copy(row, row + l.d_model, out.begin() + (b * l.g + i) * l.d_model);
    }
  return out;
}

/// One random case of policy P (odd d, random B, k, pinned blocks, with/without biases): the packed
/// model, X, dY, the routing arguments, and host buffers for the forward's cache.
template <class P>
struct backward_case {
  using T = typename P::dtype;
  static constexpr int g = P::block_size;
  static constexpr bool gate = std::is_same<typename P::selector, sfx::select::learned_gate>::value;
  sfx::index_t n = 0, d = 0, B = 0, F = 0, k = 0, pinned = 0;
  bool biases = false;
  sfx::blocked_ffn<T> model;
  std::vector<float> x, dy;
  std::vector<sfx::token_id_t> ids;
  sfx::route_args ra;
  std::vector<sfx::block_index_t> cb;  // the forward's cache: blocks, weights, pre, up
  std::vector<float> cw, cpre, cup;

  /// d_model: d_fixed, or random in [1, 150] when 0.
  backward_case(std::mt19937_64& r, sfx::index_t tokens, sfx::index_t d_fixed = 0) : n(tokens) {
    using Act = typename P::activation;
    std::uniform_int_distribution<sfx::index_t> dd(1, 150),
        bb(g == 1 ? 8 : 2, g == 1 ? 64 : (g >= 64 ? 5 : 10));
    d = d_fixed ? d_fixed : dd(r);
    B = bb(r);
    F = B * g;
    k = std::uniform_int_distribution<sfx::index_t>(1, B)(r);
    pinned = (r() & 1) ? std::uniform_int_distribution<sfx::index_t>(1, k)(r) : 0;
    biases = (r() & 1) != 0;
    const auto dense = random_dense<T>(r, d, F, Act::gated, biases);
    const auto perm = random_perm(r, F);
    std::vector<float> gate_w(static_cast<std::size_t>(B * d)), gate_b(static_cast<std::size_t>(B));
    fill_normal(gate_w, r, 1.0 / std::sqrt(double(d)));
    fill_normal(gate_b, r, 0.5);
    for (auto& v : gate_w) v = sfx::to_float(sfx::from_float<T>(v));
    sfx::pack_options po;
    po.g = g;
    po.permutation = perm.data();
    if (gate) {
      po.gate_w = gate_w.data();
      po.gate_b = gate_b.data();
    }
    po.pinned = pinned;
    model = sfx::pack<T>(dense.view(), po);
    x.resize(static_cast<std::size_t>(n * d));
    dy.resize(x.size());
    fill_normal(x, r, 1.0);
    fill_normal(dy, r, 1.0);
    ids.resize(static_cast<std::size_t>(n));
    for (auto& id : ids) id = static_cast<sfx::token_id_t>(r() % 1000);
    ra.k = k;
    ra.token_ids = ids.data();
    ra.vocab_size = 1000;
    ra.seed = r();
    ra.renormalize = (r() & 1) != 0;
    const auto nk = static_cast<std::size_t>(n * k);
    cb.resize(nk);
    cw.resize(nk);
    cpre.resize(nk * g);
    cup.resize(nk * g);
  }
  sfx::forward_cache cache() {
    return {cb.data(), cw.data(), cpre.data(), P::activation::gated ? cup.data() : nullptr};
  }
  sfx::backward_args args() const {
    sfx::backward_args ba;
    ba.k = k;
    ba.renormalize = ra.renormalize;
    return ba;
  }
  std::string describe(const char* kernels) const {
    std::ostringstream os;
    os << "g=" << g << " selector=" << P::selector::name << " dtype=" << sfx::dtype_traits<T>::name
       << " act=" << P::activation::name << " | n=" << n << " d=" << d << " B=" << B << " k=" << k
       << " pinned=" << pinned << " biases=" << biases << " renormalize=" << ra.renormalize << " | kernels "
       << kernels;
    return os.str();
  }
};

/// Every gradient buffer of gv and dX, route set to NaN: an overwrite must write all of them.
inline void poison_grads(const sfx::ffn_grads_view& gv, std::vector<float>& route, std::vector<float>& dx) {
  const auto& l = gv.layout;
  std::fill(gv.weights, gv.weights + l.total_elements(), NAN);
  std::fill(gv.b1, gv.b1 + l.d_ff, NAN);
  if (gv.b3) std::fill(gv.b3, gv.b3 + l.d_ff, NAN);
  std::fill(gv.b2, gv.b2 + l.d_model, NAN);
  if (gv.gate_w) std::fill(gv.gate_w, gv.gate_w + l.num_blocks * l.ld, NAN);
  if (gv.gate_b) std::fill(gv.gate_b, gv.gate_b + l.num_blocks, NAN);
  poison(route);
  poison(dx);
}

/// The library's gradients (host copies: gv, dx, route) of case c against the float64 reference, from
/// the cache the forward wrote (c.cb, c.cpre, c.cup): every element within tol of the magnitude of its
/// terms (compare_grad); then the blocks
/// no token chose, which must be exactly zero, padding columns included. x_gate: the x the gate's
/// logits read where the kernels round it (else null). REQUIREs.
template <class P>
void check_backward_grads(const backward_case<P>& c, const sfx::ffn_grads_view& gv, const float* dx,
                          const float* route, const std::vector<double>* x_gate, double tol) {
  using Act = typename P::activation;
  const dmodel m = to_double_model(c.model.view());
  std::vector<double> xd(c.x.begin(), c.x.end()), dyd(c.dy.begin(), c.dy.end());
  const auto ref_of = [&](bool magnitude) {
    return backward_ref(m, sfx::activation_kind(Act::kind), xd, dyd, c.cb.data(), c.n, c.k, c.ra.renormalize,
                        c.cpre.data(), Act::gated ? c.cup.data() : nullptr, nullptr, x_gate, magnitude);
  };
  const dgrads ref = ref_of(false), mag = ref_of(true);
  std::string bad;
  auto check = [&](const char* what, const float* got, const std::vector<double>& want,
                   const std::vector<double>& scale) {
    if (bad.empty()) bad = compare_grad(what, got, want, scale, tol);
  };
  check("dx", dx, ref.dx, mag.dx);
  check("route_weights", route, ref.route, mag.route);
  const auto K = gather_rows(gv, 0), V = gather_rows(gv, 2);
  check("dW1", K.data(), ref.K, mag.K);
  check("dW2", V.data(), ref.V, mag.V);
  if (Act::gated) {
    const auto U = gather_rows(gv, 1);
    check("dW3", U.data(), ref.U, mag.U);
    check("db3", gv.b3, ref.b3, mag.b3);
  }
  check("db1", gv.b1, ref.b1, mag.b1);
  check("db2", gv.b2, ref.b2, mag.b2);
  if (c.gate) {
    std::vector<float> wg(static_cast<std::size_t>(c.B * c.d));
    for (sfx::index_t b = 0; b < c.B; ++b)
      std::copy(gv.gate_w + b * gv.layout.ld, gv.gate_w + b * gv.layout.ld + c.d, wg.begin() + b * c.d);
    check("dWg", wg.data(), ref.Wg, mag.Wg);
    check("dbg", gv.gate_b, ref.bg, mag.bg);
  }
  INFO(bad);
  REQUIRE(bad.empty());
  // Blocks no token chose: exactly zero, padding columns included.
  std::vector<char> used(static_cast<std::size_t>(c.B), 0);
  for (auto b : c.cb) used[static_cast<std::size_t>(b)] = 1;
  const sfx::index_t stride = gv.layout.block_stride();
  for (sfx::index_t b = 0; b < c.B; ++b) {
    const float* blk = gv.weights + b * stride;
    sfx::index_t bad_at = -1;  // one REQUIRE per block (millions of REQUIREs are slow under the sanitizers)
    for (sfx::index_t e = 0; e < stride && bad_at < 0; ++e)
      if ((!used[static_cast<std::size_t>(b)] || e % gv.layout.ld >= c.d) && blk[e] != 0.0f) bad_at = e;
    INFO("block " << b << (used[static_cast<std::size_t>(b)] ? " (selected)" : " (not selected)")
                  << ": first nonzero element that must be 0: " << bad_at);
    REQUIRE(bad_at == -1);
  }
}

/// One random case of policy P: forward with a cache, backward, checks.
template <class P>
void run_backward_case(std::mt19937_64& r, sfx::index_t n, sfx::index_t d_fixed = 0) {
  using T = typename P::dtype;
  backward_case<P> c(r, n, d_fixed);
  const auto w = c.model.view();
  const sfx::index_t F = c.F;
  std::vector<float> y(c.x.size());
  const sfx::forward_cache cache = c.cache();
  sfx::cpu::forward<P>(w, n, c.x.data(), y.data(), c.ra, &cache);
  INFO(c.describe(sfx::cpu::isa_name(sfx::cpu::active_isa())));
  sfx::ffn_grads storage(w.layout, c.gate);
  sfx::ffn_grads_view gv = storage.view();
  std::vector<float> route(static_cast<std::size_t>(n * c.k)), dx(c.x.size());
  gv.route_weights = route.data();
  poison_grads(gv, route, dx);
  sfx::backward_args ba = c.args();
  sfx::cpu::backward<P>(w, n, c.x.data(), c.dy.data(), cache, dx.data(), gv, ba);
  // Where the kernels round x to bf16 for the gate's logits (avx512_bf16 with bf16 weights, as the
  // forward), so does the reference: what is left is float accumulation (~1e-6 relative). s = v·dy
  // reads dY in float on every level.
  const bool rounds = sfx::cpu::rounds_inputs_to_bf16<T>();
  std::vector<double> x16(c.x.begin(), c.x.end());
  for (auto& v : x16) v = sfx::to_float(sfx::bfloat16_t(static_cast<float>(v)));
  check_backward_grads(c, gv, dx.data(), route.data(), rounds ? &x16 : nullptr, 5e-5);

  // Bit-identical with one and two threads, and accumulate = true adds exactly.
  const std::vector<float> w2(gv.weights, gv.weights + gv.layout.total_elements()), dx2 = dx;
#if SPARSE_FFN_HAS_OPENMP
  const int saved = omp_get_max_threads();
  omp_set_num_threads(saved == 1 ? 2 : 1);
#endif
  poison_grads(gv, route, dx);
  sfx::cpu::backward<P>(w, n, c.x.data(), c.dy.data(), cache, dx.data(), gv, ba);
#if SPARSE_FFN_HAS_OPENMP
  omp_set_num_threads(saved);
#endif
  REQUIRE(std::memcmp(w2.data(), gv.weights, w2.size() * sizeof(float)) == 0);
  REQUIRE(std::memcmp(dx2.data(), dx.data(), dx.size() * sizeof(float)) == 0);
  std::vector<float> base(w2.size());
  fill_normal(base, r, 1.0);
  std::copy(base.begin(), base.end(), gv.weights);
  const std::vector<float> b1_before(gv.b1, gv.b1 + F);
  ba.accumulate = true;
  sfx::cpu::backward<P>(w, n, c.x.data(), c.dy.data(), cache, static_cast<float*>(nullptr), gv, ba);
  std::size_t bad_acc = base.size();
  for (std::size_t e = 0; e < base.size() && bad_acc == base.size(); ++e)
    if (!(gv.weights[e] == base[e] + w2[e])) bad_acc = e;
  INFO("first accumulated weight gradient element that is not old + overwrite: " << bad_acc);
  REQUIRE(bad_acc == base.size());
  for (sfx::index_t e = 0; e < F; ++e) REQUIRE(gv.b1[e] == b1_before[static_cast<std::size_t>(e)] * 2.0f);
}

/// Every activation; under AddressSanitizer (SPARSE_FFN_TEST_MEMORY_MATRIX, as in forward_matrix.hpp)
/// one per memory-access pattern of the backward: relu (value rows whose coefficient is zero skipped),
/// silu (every row) and swiglu (a third matrix per block and its gradient). The others differ only in
/// the scalar derivative, which the Release build checks against the float64 reference.
template <class Sel, class T, int G>
void backward_acts(std::mt19937_64& r, sfx::index_t n) {
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::relu>>(r, n);
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::silu>>(r, n);
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::swiglu>>(r, n);
#if !defined(SPARSE_FFN_TEST_MEMORY_MATRIX)
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::gelu_erf>>(r, n);
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::gelu_tanh>>(r, n);
  run_backward_case<sfx::policy<G, Sel, T, sfx::act::geglu>>(r, n);
#endif
}

/// Every activation × {float, bf16} × g ∈ {1, 16, 64} (half at g = 16) × n ∈ {1, 3, 37} for selector Sel.
template <class Sel>
void check_backward_matrix(std::uint64_t salt) {
  auto r = rng(salt);
  for (sfx::index_t n : {1, 3, 37}) {
    backward_acts<Sel, float, 1>(r, n);
    backward_acts<Sel, float, 16>(r, n);
    backward_acts<Sel, float, 64>(r, n);
    backward_acts<Sel, sfx::bfloat16_t, 1>(r, n);
    backward_acts<Sel, sfx::bfloat16_t, 16>(r, n);
    backward_acts<Sel, sfx::bfloat16_t, 64>(r, n);
    backward_acts<Sel, sfx::half_t, 16>(r, n);
  }
}

}  // namespace test
