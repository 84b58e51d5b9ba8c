// sparse_ffn — the CPU micro-kernels, written once over simd<Isa>. NOT a standalone header:
// kernels/kernels.hpp includes this file once per instruction set, inside that set's target region
// and with SPARSE_FFN_KERNEL_NS naming a namespace of its own (Highway's "foreach target" model), so
// one binary carries every ISA's code whatever flags the consumer compiles with.
//
// Key kernel: out[m][r] = sum_q rows[r*ld + q] * x[m][q]. Each (m, r) pair owns one vector accumulator
// that runs over q in order and is reduced with the ISA's fixed tree, so a dot product's bits are the
// same in every tile shape and blocking: a token gets the same pre-activations alone or in a batch.
// `project` walks d in chunks of k_dchunk so the R rows' chunk stays in L1 while every token tile of the
// batch uses it; accumulators are parked in a per-thread spill buffer between chunks (exact).
//
// Value kernel: y_t += sum_i s[t][i] * v_i over a block's listed value rows, every y element updated
// in ascending row order in every tile shape (so a token's output bits do not depend on tiling or batch
// size, up to the sign of an exact zero). Rows whose coefficient is zero for every token of the tile
// are left out by the caller, so a ReLU block reads only the value rows of its active neurons.
// q4 rows on avx2 (`axpy_rows_int`) and q8/q4 rows from avx512_vnni up (`axpy_rows_vnni`) sum each
// chunk of 32 rows exactly in integers and add the chunks in ascending order instead: the same
// independence from tiling and batch.
//
// avx512_bf16 with bf16 weights (`bf16_pairs`): the key kernel multiplies bf16 rows by the token's x
// rounded to bf16 with vdpbf16ps (32 elements per instruction). The value kernel does too where that
// instruction is fast (kernels.hpp fast_bf16_dot: AMD): axpy_rows_pairs, coefficients rounded to bf16,
// the listed rows interleaved two at a time in registers; elsewhere it stays in float (docs/design.md).

namespace SPARSE_FFN_KERNEL_NS {

template <class Isa>
struct impl {
  using V = simd<Isa>;
  using reg = typename V::reg;
  static constexpr int key_m = tile_shape<Isa>::key_m, key_r = tile_shape<Isa>::key_r,
                       rows_m = tile_shape<Isa>::rows_m, outer_m = tile_shape<Isa>::outer_m,
                       outer_vc = tile_shape<Isa>::outer_vc, width = V::width;
  template <class T>
  static constexpr bool bf16_pairs = (std::is_base_of<isa::avx512_bf16, Isa>::value &&
                                      std::is_same<T, bfloat16_t>::value);

  /// Calls f(std::integral_constant<int, v>{}) for the runtime v in [1, Max].
  template <int Max, class F>
  static void count(int v, F&& f) {
    static_assert(Max >= 1 && Max <= 8, "count supports 1..8");
    switch (v) {
      case 1: f(std::integral_constant<int, 1>{}); break;
      case 2:
        if constexpr (Max >= 2) f(std::integral_constant<int, 2>{});
        break;
      case 3:
        if constexpr (Max >= 3) f(std::integral_constant<int, 3>{});
        break;
      case 4:
        if constexpr (Max >= 4) f(std::integral_constant<int, 4>{});
        break;
      case 5:
        if constexpr (Max >= 5) f(std::integral_constant<int, 5>{});
        break;
      case 6:
        if constexpr (Max >= 6) f(std::integral_constant<int, 6>{});
        break;
      case 7:
        if constexpr (Max >= 7) f(std::integral_constant<int, 7>{});
        break;
      case 8:
        if constexpr (Max >= 8) f(std::integral_constant<int, 8>{});
        break;
      default: break;
    }
  }

  /// For n items in groups of up to Max: f(i0, std::integral_constant<int, size>{}) for each group's first
  /// item i0, in ascending order (count's dispatch per group; any n, 0 included).
  template <int Max, class F>
  static void groups(index_t n, F&& f) {
    for (index_t i0 = 0; i0 < n; i0 += Max)
      count<Max>(static_cast<int>(std::min<index_t>(Max, n - i0)), [&](auto M) { f(i0, M); });
  }

  /// acc[m][r] += rows[r][q] * x[m][q] for q in [q0, q1). acc holds M*R vectors (spill format);
  /// `first` starts from zero. With `prefetch`, software prefetch runs 1 KiB ahead along each row and,
  /// near the end of the rows, into the next R rows (the next tile of a block); the caller asks for it
  /// on the first token tile of a chunk only (later tiles find the chunk in L1). The key pass and the
  /// streaming value passes (axpy_rows, axpy_rows_pairs, axpy_rows_vnni) prefetch into L2 only
  /// (prefetch_l2): with 8 rows × 1 KiB in flight, prefetches into L1 held its miss buffers and cost
  /// the key pass 19–23% at batch 1 on Zen 4 (docs/benchmarks.md, 2026-12-03 late; the float value
  /// passes: 2026-12-04). Except axpy_rows_vnni on Intel (kernels.hpp values_prefetch_l1).
  template <int M, int R, class T, class X>
  static void dot_tile_acc(const X* const* x, const T* SPARSE_FFN_RESTRICT rows, index_t ld, index_t len,
                           index_t q0, index_t q1, float* SPARSE_FFN_RESTRICT acc, bool first,
                           bool prefetch) {
    constexpr index_t ahead = 1024 / sizeof(T), per_line = 64 / sizeof(T);
    constexpr index_t step = bf16_pairs<T> ? 32 : width;
    static_assert(per_line % step == 0, "a cache line holds whole steps");
    // Every loop over m and r is unrolled so the M×R accumulators live in registers (GCC at -O2, and
    // even at -O3 for the float path, otherwise keeps the arrays on the stack: 3-5x slower).
    reg a[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) a[m][r] = first ? V::zero() : V::load(acc + (m * R + r) * width);
    for (index_t line = q0; line < q1; line += per_line) {  // q0, q1: multiples of a cache line
      if (prefetch) {                                       // one prefetch per cache line and row
        const index_t p = line + ahead;
        const T* pf = p < len ? rows + p : rows + R * ld + (p - len);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) V::prefetch_l2(pf + r * ld);
      }
#pragma GCC unroll 4
      for (index_t q = line; q < line + per_line; q += step) {
        if constexpr (bf16_pairs<T>) {
          typename V::pairs xv[M];
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) xv[m] = V::load_pairs(x[m] + q);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const typename V::pairs kv = V::load_pairs(rows + r * ld + q);
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m) a[m][r] = V::dot(a[m][r], kv, xv[m]);
          }
        } else {
          reg xv[M];
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) xv[m] = V::load(x[m] + q);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const reg kv = V::load(rows + r * ld + q);
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m) a[m][r] = V::fma(kv, xv[m], a[m][r]);
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) V::store(acc + (m * R + r) * width, a[m][r]);
  }

  /// out[q*ostride + r] = dot(rows[r], x[q]) for m tokens (any number) and R rows, over len elements.
  /// `spill` holds m*R vectors. Token tiles have up to key_m tokens.
  template <int R, class T, class X>
  static void project(const X* const* x, index_t m, const T* rows, index_t ld, index_t len, float* spill,
                      float* out, index_t ostride) {
    for (index_t q0 = 0; q0 < len; q0 += k_dchunk) {
      const index_t q1 = std::min(len, q0 + k_dchunk);
      groups<key_m>(m, [&](index_t m0, auto M) {
        if constexpr (int8_q<T>)
          dot_tile_acc_int8<decltype(M)::value, R>(x + m0, rows, ld, len, q0, q1, spill + m0 * R * width,
                                                   q0 == 0, m0 == 0);
        else if constexpr (is_quantized<T>::value)
          dot_tile_acc_q<decltype(M)::value, R>(x + m0, rows, ld, len, q0, q1, spill + m0 * R * width,
                                                q0 == 0, m0 == 0);
        else
          dot_tile_acc<decltype(M)::value, R>(x + m0, rows, ld, len, q0, q1, spill + m0 * R * width,
                                              q0 == 0, m0 == 0);
      });
    }
    for (index_t q = 0; q < m; ++q)
      for (int r = 0; r < R; ++r) out[q * ostride + r] = V::hsum(V::load(spill + (q * R + r) * width));
  }

  /// out[q*nrows + r] = dot(rows[r*ld ..], x[q]) for q < m, r < nrows, over len elements (a multiple of
  /// 32). x is read from xq (int8, prepare_x_int8) when int8_q<T>, from xb (bf16) when bf16_pairs<T>,
  /// else from xf. spill: m × key_r × width floats.
  template <class T>
  static void dots(const float* const* xf, const bfloat16_t* const* xb, const std::uint8_t* const* xq,
                   index_t m, const T* rows, index_t nrows, index_t ld, index_t len, float* spill,
                   float* out) {
    if constexpr (int8_q<T> && width == lanes_r) {
      dots_lanes<T>(xq, m, rows, nrows, ld, len, spill, out);
    } else if constexpr (lanes8<T>) {
      dots_lanes8<T>(xq, m, rows, nrows, ld, len, spill, out);
    } else {
      groups<key_r>(nrows, [&](index_t r0, auto R) {
        if constexpr (int8_q<T>)
          project<decltype(R)::value>(xq, m, rows + r0 * ld, ld, len, spill, out + r0, nrows);
        else if constexpr (bf16_pairs<T>)
          project<decltype(R)::value>(xb, m, rows + r0 * ld, ld, len, spill, out + r0, nrows);
        else
          project<decltype(R)::value>(xf, m, rows + r0 * ld, ld, len, spill, out + r0, nrows);
      });
    }
  }

  // ---- quantised rows (quant.hpp): widen in registers, then the float arithmetic ------------------
  // Key pass (float path): every weight is widened and multiplied by its group's scale (exact in float),
  // so it computes bit for bit what the float kernel computes on the dequantised weights, in the same
  // per-accumulator order. Value pass: the coefficient of each (token, row, group) is formed once,
  // c = s · scale (one rounding), and the inner loop is widen + FMA: y = fma(c, q, y). A 64-value chunk
  // is two groups: a = values [0, 32), b = [32, 64).

  /// Widened weights (not scaled) of one row at value offset q + j (a) and q + 32 + j (b), j < 32.
  template <class T>
  static void load_raw(const std::uint8_t* row, index_t q, index_t j, reg& a, reg& b) {
    if constexpr (std::is_same<T, q8_t>::value) {
      a = V::load_q8(row + q + j);
      b = V::load_q8(row + q + 32 + j);
    } else {
      V::load_q4(row + q / 2 + j, a, b);
    }
  }

  /// load_raw times the groups' scales sa (a) and sb (b): the dequantised weights, exactly.
  template <class T>
  static void load_chunk(const std::uint8_t* row, index_t q, index_t j, reg sa, reg sb, reg& a, reg& b) {
    load_raw<T>(row, q, j, a, b);
    a = V::mul(a, sa);
    b = V::mul(b, sb);
  }

  /// Prefetches the scale lines of R rows that cover values [c_begin, c_end). The scales sit after a
  /// row's quants, far ahead of the stream the kernels read and prefetch, so without this every row's
  /// first scale line is a demand miss that stalls the kernel for a memory latency.
  template <int R, class T>
  static void prefetch_scales(const std::uint8_t* const* rows, index_t cols, index_t c_begin, index_t c_end) {
    using F = row_format<T>;
    const index_t first = c_begin / k_quant_group * 2 / 64 * 64, end = c_end / k_quant_group * 2;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const auto* sc =
          reinterpret_cast<const std::uint8_t*>(F::scales(reinterpret_cast<const T*>(rows[r]), cols));
      for (index_t b = first; b < end; b += 64) V::prefetch(sc + b);
    }
  }

  /// At the start of a key tile: the scale lines of its R rows and of the next R rows (the next tile).
  template <int R, class T>
  static void prefetch_tile_scales(const std::uint8_t* rows, index_t ld, index_t cols) {
    const std::uint8_t* r2[2 * R];
#pragma GCC unroll 16
    for (int r = 0; r < 2 * R; ++r) r2[r] = rows + r * ld;
    prefetch_scales<2 * R, T>(r2, cols, 0, cols);
  }

  /// dot_tile_acc for q8/q4 rows: cols values per row (a multiple of 64), scales after the quants.
  template <int M, int R, class T>
  static void dot_tile_acc_q(const float* const* x, const T* rows_t, index_t ld, index_t cols, index_t q0,
                             index_t q1, float* SPARSE_FFN_RESTRICT acc, bool first, bool prefetch) {
    using F = row_format<T>;
    const auto* rows = reinterpret_cast<const std::uint8_t*>(rows_t);
    const index_t qbytes = F::quant_bytes(cols);
    reg a[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) a[m][r] = first ? V::zero() : V::load(acc + (m * R + r) * width);
    if (prefetch && q0 == 0) prefetch_tile_scales<R, T>(rows, ld, cols);
    for (index_t q = q0; q < q1; q += k_quant_chunk) {  // q0, q1: multiples of 64
      const index_t byte = q * F::bits / 8;
      if (prefetch && byte % 64 == 0) {  // one prefetch per cache line and row, 1 KiB ahead
        const index_t p = byte + 1024;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          V::prefetch_l2(p < qbytes ? rows + r * ld + p : rows + (R + r) * ld + (p - qbytes));
      }
      reg xa[M], xb[M];
#pragma GCC unroll 4
      for (index_t j = 0; j < 32; j += width) {
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          xa[m] = V::load(x[m] + q + j);
          xb[m] = V::load(x[m] + q + 32 + j);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const std::uint8_t* row = rows + r * ld;
          const bfloat16_t* sc = F::scales(reinterpret_cast<const T*>(row), cols) + q / 32;
          reg wa, wb;
          load_chunk<T>(row, q, j, V::set1(to_float(sc[0])), V::set1(to_float(sc[1])), wa, wb);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) {
            a[m][r] = V::fma(wa, xa[m], a[m][r]);
            a[m][r] = V::fma(wb, xb[m], a[m][r]);
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) V::store(acc + (m * R + r) * width, a[m][r]);
  }

  /// U value rows (rows[idx .. idx+U)) of q8/q4 weights applied to M tokens over columns
  /// [c_begin, c_end) (multiples of 64): U sequential streams, software-prefetched 2 KiB ahead into L2
  /// and on into the next U rows. The M·U coefficients of each group, s[m][row] · scale, are formed for a
  /// span of columns at a time (vectorised), so the inner loop is one widening and M FMAs per weight vector.
  template <int M, int U, class T>
  static void axpy_group_q(float* const* yin, const float* const* s, const std::int32_t* rows, index_t idx,
                           index_t nrows, const std::uint8_t* v, index_t ld, index_t cols, index_t c_begin,
                           index_t c_end) {
    using F = row_format<T>;
    // The token pointers copied: a store through y[m] could alias the caller's array of them, so the
    // compiler reloaded y[0] and y[1] after every store of the q8 loop below.
    float* y[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) y[m] = yin[m];
    constexpr index_t span = 1024, span_groups = span / k_quant_group;
    alignas(64) float cf[M][U][span_groups];
    const std::uint8_t* vr[U];
    const std::uint8_t* next[U];
    const bfloat16_t* sc[U];
    float sv[M][U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      vr[u] = v + rows[idx + u] * ld;
      next[u] = idx + U + u < nrows ? v + rows[idx + U + u] * ld : vr[u];
      sc[u] = F::scales(reinterpret_cast<const T*>(vr[u]), cols);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) sv[m][u] = s[m][rows[idx + u]];
    }
    prefetch_scales<U, T>(vr, cols, c_begin, c_end);  // this group's, then the next group's
    prefetch_scales<U, T>(next, cols, c_begin, c_end);
    const index_t b_begin = c_begin * F::bits / 8, b_end = c_end * F::bits / 8;
    for (index_t c0 = c_begin; c0 < c_end; c0 += span) {
      const index_t c1 = std::min(c_end, c0 + span), g0 = c0 / k_quant_group, ng = (c1 - c0) / k_quant_group;
      for (int u = 0; u < U; ++u) {
        index_t g = 0;
        for (; g + width <= ng; g += width) {
          const reg f = V::load(sc[u] + g0 + g);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) V::store(&cf[m][u][g], V::mul(V::set1(sv[m][u]), f));
        }
        for (; g < ng; ++g) {
          const float f = to_float(sc[u][g0 + g]);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) cf[m][u][g] = sv[m][u] * f;
        }
      }
      for (index_t c = c0; c < c1; c += k_quant_chunk) {
        const index_t byte = c * F::bits / 8, g = (c - c0) / k_quant_group;
        if ((byte - b_begin) % 64 == 0) {  // one prefetch per cache line and row, 2 KiB ahead
          const index_t p = byte + 2048;
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u)
            V::prefetch_l2(p < b_end ? vr[u] + p : next[u] + b_begin + (p - b_end) % (b_end - b_begin));
        }
        if constexpr (std::is_same<T, q8_t>::value) {
          // q8: one group at a time, its 32 / width vectors of y for every token in registers while the
          // U rows pass: each row's group widened once for all M tokens and each coefficient broadcast
          // once per group (per vector before: a broadcast load beside every FMA, which held a Zen 3 core
          // to ~1 FMA per cycle). Per column the same FMAs in the same row order: the same bits.
          constexpr int nv = 32 / width;
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            reg acc[M][nv];
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
              for (int k = 0; k < nv; ++k) acc[m][k] = V::load(y[m] + c + 32 * h + k * width);
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
              reg w[nv];
#pragma GCC unroll 8
              for (int k = 0; k < nv; ++k) w[k] = V::load_q8(vr[u] + c + 32 * h + k * width);
#pragma GCC unroll 8
              for (int m = 0; m < M; ++m) {
                const reg cm = V::set1(cf[m][u][g + h]);
#pragma GCC unroll 8
                for (int k = 0; k < nv; ++k) acc[m][k] = V::fma(cm, w[k], acc[m][k]);
              }
            }
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
              for (int k = 0; k < nv; ++k) V::store(y[m] + c + 32 * h + k * width, acc[m][k]);
          }
          continue;
        }
#pragma GCC unroll 4
        for (index_t j = 0; j < 32; j += width) {
          reg va[U], vb[U];
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u) load_raw<T>(vr[u], c, j, va[u], vb[u]);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) {
            reg ya = V::load(y[m] + c + j), yb = V::load(y[m] + c + 32 + j);
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
              ya = V::fma(V::set1(cf[m][u][g]), va[u], ya);
              yb = V::fma(V::set1(cf[m][u][g + 1]), vb[u], yb);
            }
            V::store(y[m] + c + j, ya);
            V::store(y[m] + c + 32 + j, yb);
          }
        }
      }
    }
  }

  /// axpy_rows for q8/q4 value rows: groups of four rows, then one at a time (the same per-column order
  /// of FMAs either way, so a token's result does not depend on which rows its tile lists).
  template <int M, class T>
  static void axpy_rows_q(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                          const T* v_t, index_t ld, index_t cols, index_t c_begin, index_t c_end) {
    const auto* v = reinterpret_cast<const std::uint8_t*>(v_t);
    index_t idx = 0;
    for (; idx + 4 <= nrows; idx += 4)
      axpy_group_q<M, 4, T>(y, s, rows, idx, nrows, v, ld, cols, c_begin, c_end);
    for (; idx < nrows; ++idx) axpy_group_q<M, 1, T>(y, s, rows, idx, nrows, v, ld, cols, c_begin, c_end);
  }

  // ---- q4 value rows in integers (avx2) ------------------------------------------------------------
  // On AVX2 the value pass of q4 rows multiplies integers (design.md, "Quantised weights"). Per token,
  // chunk of 32 rows (rows 32h .. 32h + 31 of the block) and group of 32 columns, the coefficients
  // a_i = s_i · scale_i are quantised with one step t = max_i |a_i| / 127 to r_i = round(a_i / t) (to
  // nearest even), vpmaddubsw multiplies them by the nibbles u = q + 8 of two rows at a time, the
  // chunk's products are summed exactly in int32 (minus 8·Σ r), and y += t · float(sum) once per chunk
  // and column (an FMA), chunks in ascending order. An integer sum does not depend on which rows a tile
  // lists (a row whose s is 0 adds 0 and does not move the max), so a token's bits do not depend on its
  // tile or batch. A non-finite coefficient makes t NaN, so y is NaN as in the float path.
  // q8 on avx2 stays on the float path (axpy_rows_q): the same scheme with int16 coefficients and vpmaddwd
  // was measured on a Zen 3 (2 threads, 4096 × 16384, g 64, 25%): ~15% faster at batch 64 but 5–15% slower at
  // batch 1, where q8 is nearly bound by memory and the float path streams four rows at a time.
  template <class T>  // axpy_rows_vnni's dtypes and levels (below)
  static constexpr bool vnni_values = (std::is_base_of<isa::avx512_vnni, Isa>::value &&
                                       is_quantized<T>::value);
  /// Columns per step of the quantised value passes: one 64-byte line of quants per row on the VNNI
  /// levels (q8 64, q4 128: axpy_rows_vnni), else a 64-value chunk; kernel_ops::col_step for q8/q4.
  template <class T>
  static constexpr index_t quant_value_step = (vnni_values<T> && std::is_same<T, q4_t>::value)
                                                  ? 2 * k_quant_chunk
                                                  : k_quant_chunk;
  template <class T>
  static constexpr bool int_values =
      (std::is_same<isa::avx2, Isa>::value && std::is_same<T, q4_t>::value) || vnni_values<T>;
  /// The largest coefficient magnitude of the integer value pass (int8, vpmaddubsw's signed operand).
  static constexpr std::int32_t value_levels = 127;

  /// o mod n for o, n > 0, without a division where o < n: the usual case where axpy_rows_vnni wraps a
  /// prefetch into the next stream, which for one token is in every step of the last 1 KiB of each row
  /// (a 64-bit division there per step before).
  static index_t wrap(index_t o, index_t n) { return o < n ? o : o % n; }

  /// The integer value passes' chunks (axpy_rows_int, axpy_rows_vnni): the end i1 of the listed rows
  /// from rows[i0] that lie in one chunk of cr rows, and the next chunk's listed rows (nn of them, into
  /// nx), whose lines are prefetched while this chunk runs.
  static index_t int_chunk(const std::int32_t* rows, index_t nrows, index_t i0, index_t cr,
                           const std::uint8_t* v, index_t ld, const std::uint8_t** nx, index_t& nn) {
    index_t i1 = i0 + 1, i2;
    while (i1 < nrows && rows[i1] / cr == rows[i0] / cr) ++i1;
    for (i2 = i1 + 1; i2 < nrows && rows[i2] / cr == rows[i1] / cr;) ++i2;
    nn = i1 < nrows ? std::min<index_t>(i2, nrows) - i1 : 0;
    for (index_t r = 0; r < nn; ++r) nx[r] = v + rows[i1 + r] * ld;
    return i1;
  }

  /// The scale lines of the column range [c_begin, c_end): the chunk's nr rows (scales sc, read first),
  /// then the next chunk's nn rows nx.
  template <class T>
  static void prefetch_chunk_scales(const bfloat16_t* const* sc, index_t nr, const std::uint8_t* const* nx,
                                    index_t nn, index_t cols, index_t c_begin, index_t c_end) {
    using F = row_format<T>;
    const index_t first = c_begin / k_quant_group * 2 / 64 * 64, end = c_end / k_quant_group * 2;
    for (index_t r = 0; r < nr + nn; ++r) {
      const auto* sl = reinterpret_cast<const std::uint8_t*>(
          r < nr ? sc[r] : F::scales(reinterpret_cast<const T*>(nx[r - nr]), cols));
      for (index_t b = first; b < end; b += 64) V::prefetch(sl + b);
    }
  }

  template <int M, class T>
  static void axpy_rows_int(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                            const std::uint8_t* v, index_t ld, index_t cols, index_t c_begin, index_t c_end) {
    using F = row_format<T>;
    using I = typename V::ireg;
    static_assert(std::is_same<T, q4_t>::value, "the integer value pass is q4's");
    constexpr std::int32_t Q = value_levels;
    // span: columns per pass of coefficients (sg groups). Each register tile (one 32-byte chunk of quants
    // = two groups, 64 columns) walks down the chunk's rows, two at a time.
    // Measured on a Zen 3 (2 threads, 4096 × 16384, g 64, 25%): prefetching each row 128 bytes ahead
    // beats 64, 256 and 512 (32 rows in flight), and streaming 4 or 8 rows at a time across the span
    // (sums parked in acc32 between passes) was slower at batch 64 and no faster at batch 1.
    constexpr index_t span = 512, sg = span / k_quant_group, tile = 64, cr = 32;
    constexpr index_t ahead = 128;               // bytes a row is prefetched ahead
    alignas(32) float af[cr][sg];                // one token's coefficients, chunk rows × groups
    alignas(32) bfloat16_t scl[cr][sg];          // scales of a partial span (zero-padded to 8 groups)
    alignas(32) std::int32_t cp[M][cr / 2][sg];  // coefficient pairs, per token, row pair and group
    alignas(32) float ts[M][sg];                 // steps t
    alignas(32) std::int32_t corr[M][sg];        // −8 Σ r
    alignas(32) std::int32_t acc32[M][tile];     // a tile's int32 sums between its two passes
    const std::uint8_t* pa[cr / 2];
    const std::uint8_t* pb[cr / 2];
    const bfloat16_t* sc[cr];
    const std::uint8_t* nx[cr];  // the next chunk's rows (prefetched at the end of this one)
    const index_t b_begin = c_begin * F::bits / 8, b_end = c_end * F::bits / 8;
    for (index_t i0 = 0; i0 < nrows;) {
      index_t nn;
      const index_t i1 = int_chunk(rows, nrows, i0, cr, v, ld, nx, nn), nr = i1 - i0, np = (nr + 1) / 2;
      for (index_t r = 0; r < nr; ++r)
        sc[r] = F::scales(reinterpret_cast<const T*>(v + rows[i0 + r] * ld), cols);
      for (index_t p = 0; p < np; ++p) {
        pa[p] = v + rows[i0 + 2 * p] * ld;
        pb[p] = 2 * p + 1 < nr ? v + rows[i0 + 2 * p + 1] * ld : pa[p];
      }
      prefetch_chunk_scales<T>(sc, nr, nx, nn, cols, c_begin, c_end);
      for (index_t c0 = c_begin; c0 < c_end; c0 += span) {
        const index_t c1 = std::min(c_end, c0 + span), g0 = c0 / k_quant_group,
                      ng = (c1 - c0) / k_quant_group;
        const bool partial = ng % 8 != 0;  // vector loads of 8 scales would pass the span's last group
        if (partial)
          for (index_t r = 0; r < nr; ++r)
            for (index_t g = 0; g < sg; ++g) scl[r][g] = g < ng ? sc[r][g0 + g] : bfloat16_t{};
        for (int m = 0; m < M; ++m) {
          for (index_t gv = 0; gv < ng; gv += 8) {
            // Two partial maxima and NaN flags (even and odd rows), combined at the end: the maximum of
            // values ≥ 0 and the flag (0 or NaN) do not depend on the order (a NaN's payload may), and the
            // loop is not one chain of dependent vmaxps / vaddps over the rows (2–6% less time for one
            // token's 64 rows from L2).
            reg amax[2] = {V::zero(), V::zero()}, bad[2] = {V::zero(), V::zero()};
            for (index_t r = 0; r < nr; r += 2)
#pragma GCC unroll 2
              for (int k = 0; k < 2; ++k)
                if (r + k < nr) {
                  const reg a = V::mul(V::set1(s[m][rows[i0 + r + k]]),
                                       V::load(partial ? &scl[r + k][gv] : sc[r + k] + g0 + gv));
                  V::store(&af[r + k][gv], a);
                  amax[k] = V::max(amax[k], V::abs(a));
                  bad[k] = V::add(bad[k], V::sub(a, a));  // NaN once a coefficient is not finite
                }
            const reg levels = V::set1(static_cast<float>(Q));
            const reg am = V::max(amax[0], amax[1]);
            V::store(&ts[m][gv], V::add(V::div(am, levels), V::add(bad[0], bad[1])));
            const reg inv = V::select_ge0(V::sub(am, V::set1(k_value_coef_tiny)), V::div(levels, am), V::zero());
            I sum = V::bcast32(0);
            for (index_t p = 0; p < np; ++p) {
              const I a = V::round_clamp(V::mul(V::load(&af[2 * p][gv]), inv), Q),
                      b = 2 * p + 1 < nr ? V::round_clamp(V::mul(V::load(&af[2 * p + 1][gv]), inv), Q)
                                         : V::bcast32(0);
              sum = V::iadd(sum, V::iadd(a, b));
              V::istore(&cp[m][p][gv], V::pair8(a, b));
            }
            const I s2 = V::iadd(sum, sum), s4 = V::iadd(s2, s2);
            V::istore(&corr[m][gv], V::isub(V::bcast32(0), V::iadd(s4, s4)));
          }
        }
        for (index_t c = c0; c < c1; c += tile) {
          const index_t byte = c * F::bits / 8, g = (c - c0) / k_quant_group;
          if ((byte - b_begin) % 64 == 0) {  // one prefetch per cache line and row, `ahead` bytes on
            const index_t pf = byte + ahead;
            if (pf < b_end) {  // this chunk's rows (over this span or the next)
              for (index_t p = 0; p < np; ++p) {
                V::prefetch(pa[p] + pf);
                V::prefetch(pb[p] + pf);
              }
            } else {  // the next chunk's rows
              for (index_t r = 0; r < nn; ++r)
                V::prefetch(nx[r] + b_begin + (pf - b_end) % (b_end - b_begin));
            }
          }
          for (index_t p0 = 0; p0 < np; p0 += 8) {  // ≤ 8 pairs: the int16 sums cannot saturate
            const index_t p1 = std::min<index_t>(np, p0 + 8);
            I s16[M][4];
#pragma GCC unroll 4
            for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
              for (int k = 0; k < 4; ++k) s16[m][k] = V::zero16();
            for (index_t p = p0; p < p1; ++p) {
              I n[4];
              V::q4_pairs(pa[p] + byte, pb[p] + byte, n);
#pragma GCC unroll 4
              for (int m = 0; m < M; ++m) {
                const I ca = V::bcast32(cp[m][p][g]), cb = V::bcast32(cp[m][p][g + 1]);
                s16[m][0] = V::q4_madd(s16[m][0], n[0], ca);
                s16[m][1] = V::q4_madd(s16[m][1], n[1], ca);
                s16[m][2] = V::q4_madd(s16[m][2], n[2], cb);
                s16[m][3] = V::q4_madd(s16[m][3], n[3], cb);
              }
            }
            // n[k]'s low and high halves: columns lo_at[k] and hi_at[k] of the tile (simd<avx2>::q4_pairs)
            constexpr int lo_at[4] = {0, 8, 32, 40}, hi_at[4] = {16, 24, 48, 56};
            // A column's int32 sum: its group's corr + the int16 sums of each pass of ≤ 8 pairs, parked
            // in acc32 between the tile's passes; the last pass adds it to y (t · float(Σ), one FMA per chunk
            // and column). One pass (≤ 8 pairs: a ReLU block's chunk, typically) goes from corr straight to
            // y. Against acc32 set to corr before the tiles and a pass over it into y after them: 12% less
            // time per block for one token, 16–19% for two (one Zen 3 core, rows in L2; stop 68).
            const auto finish = [&](auto first, auto last) {
#pragma GCC unroll 4
              for (int m = 0; m < M; ++m) {
                const I ca = V::bcast32(corr[m][g]), cb = V::bcast32(corr[m][g + 1]);
                const reg ta = V::set1(ts[m][g]), tb = V::set1(ts[m][g + 1]);
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) {
                  const int lo = lo_at[k], hi = hi_at[k];
                  I sl = V::widen_lo(s16[m][k]), sh = V::widen_hi(s16[m][k]);
                  if constexpr (decltype(first)::value) {
                    sl = V::iadd(k < 2 ? ca : cb, sl);
                    sh = V::iadd(k < 2 ? ca : cb, sh);
                  } else {
                    sl = V::iadd(V::iload(&acc32[m][lo]), sl);
                    sh = V::iadd(V::iload(&acc32[m][hi]), sh);
                  }
                  if constexpr (decltype(last)::value) {
                    float* ylo = y[m] + c + lo;
                    float* yhi = y[m] + c + hi;
                    const reg tt = k < 2 ? ta : tb;
                    V::store(ylo, V::fma(tt, V::cvt(sl), V::load(ylo)));
                    V::store(yhi, V::fma(tt, V::cvt(sh), V::load(yhi)));
                  } else {
                    V::istore(&acc32[m][lo], sl);
                    V::istore(&acc32[m][hi], sh);
                  }
                }
              }
            };
            // A chunk has at most cr / 2 = 16 pairs: two passes at most, so a pass after the first is
            // the last.
            static_assert(cr / 2 <= 2 * 8, "at most two passes of 8 pairs");
            using yes = std::true_type;
            using no = std::false_type;
            if (p0 > 0)
              finish(no{}, yes{});
            else if (p1 == np)
              finish(yes{}, yes{});
            else
              finish(yes{}, no{});
          }
        }
      }
      i0 = i1;
    }
  }

  /// The integer value coefficients of one token over one register of groups (axpy_rows_vnni and
  /// axpy_tiles, avx512_vnni and up): a_r = coef(r) · scale(r) (scale(r): row r's scales of the register's
  /// groups as floats) for the nr ≤ 32 rows r of a chunk and the register's groups g, t = max_r |a_r| / Q (+
  /// bad: NaN where a coefficient is not finite, and NaN where a product overflowed; q4's odd groups t / 16:
  /// their high nibbles go in × 16), the quantised r = round(a · Q / max|a|) as nq quads of bytes
  /// (quad_bytes; rows past nr: 0) at cq + p·cq_ld, and corr = −z Σ r (q4 odd groups × 16). The maximum is
  /// kept in four partial maxima, rows r mod 4, combined at the end: a maximum of values ≥ 0 does not depend
  /// on the order, so the same bits as one running maximum, without its chain of nr dependent vmaxps (which
  /// held ~12% of the q4 row kernel's samples for one token from L2; 7–9% less time without it:
  /// benchmarks.md, stop 56). Each a_r is formed once and kept (2 KiB on the stack) for the rounding.
  template <class T, class Coef, class Scale>
  static void value_coefs(const Coef& coef, index_t nr, index_t nq, const Scale& scale, float bad,
                          float* t_out, std::int32_t* cq, index_t cq_ld, std::int32_t* corr_out) {
    using I = typename V::ireg;
    constexpr bool q8 = std::is_same<T, q8_t>::value;
    constexpr std::int32_t Q = value_levels, z = ::sparse_ffn::cpu::kernels::int8_zero_point<T>;
    reg part[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    alignas(64) float av[32][width];  // a_r
    for (index_t r = 0; r < nr; r += 4)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k)
        if (r + k < nr) {
          const reg a = V::mul(V::set1(coef(r + k)), scale(r + k));
          V::store(av[r + k], a);
          part[k] = V::max(part[k], V::abs(a));
        }
    const reg amax = V::max(V::max(part[0], part[1]), V::max(part[2], part[3]));
    const reg levels = V::set1(static_cast<float>(Q));
    // t is NaN where a product overflowed (amax = Inf) or a coefficient is not finite (bad).
    reg t = V::add(V::add(V::div(amax, levels), V::sub(amax, amax)), V::set1(bad));
    if constexpr (!q8) t = V::odd_div16(t);  // odd groups: high nibbles × 16 (nibble_x16)
    V::store(t_out, t);
    const reg inv = V::select_ge0(V::sub(amax, V::set1(k_value_coef_tiny)), V::div(levels, amax), V::zero());
    I sum = V::izero();
    for (index_t p = 0; p < nq; ++p) {
      I qr[4];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const index_t i = 4 * p + k;
        qr[k] = i < nr ? V::round_i32(V::mul(V::load(av[i]), inv)) : V::izero();
      }
      const I quad = V::quad_bytes(qr[0], qr[1], qr[2], qr[3]);
      sum = V::quad_sum(sum, quad);  // |r| ≤ Q: no byte saturates
      V::istore(cq + p * cq_ld, quad);
    }
    I zs = V::ineg_mul(sum, z);
    if constexpr (!q8) zs = V::odd_x16(zs);
    V::istore(corr_out, zs);
  }

  // ---- q8 and q4 value rows in integers on AVX512_VNNI ----------------------------------------------
  // The scheme of axpy_rows_int (the same coefficients, integers and FMA per chunk, so the same bits),
  // with vpdpbusd: four rows' weights at a time, as its unsigned operand (q8: q + 128; q4: u = q + 8),
  // the quantised coefficients as its signed one, exact int32 sums per chunk, minus z·Σ r (z = 128 or 8).
  // A unit is 64 columns of four rows, interleave4 putting the rows' bytes of a column in one dword: a
  // unit's 4 registers hold its columns in a fixed permuted order (lanes 0-1 of each: one group, 2-3:
  // another), which untangle4 undoes once per chunk before y is updated. q8: one unit per 64-byte
  // line; q4: the line's bytes are interleaved, then split into two units (low and high nibbles). The
  // coefficients of a quad are one dword per token and group of the span; coef_lanes picks the unit's
  // two. The chunk's rows are walked eight at a time (two quads), each a sequential stream across the
  // span, the int32 sums of each token and column parked in acc32 between those passes (in L1 at small
  // M): measured on Zen 4 this beats a register tile over all the chunk's rows at every batch, which
  // reads up to 32 rows at once in short pieces (docs/benchmarks.md, 2026-12-03).
  // q4's high nibbles (the odd groups) go in as 16 u (nibble_x16: one AND, no shift), so their sums are
  // 16 × exact: their corr is 16 × too and their t is t / 16 (exact: where a coefficient is nonzero,
  // t ≥ 2^-96 / 127, so t / 16 stays a normal float), and t / 16 · float(16 Σ) is the same real product
  // as t · float(Σ): the same bits.
  template <int M, class T>
  static void axpy_rows_vnni(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                             const std::uint8_t* v, index_t ld, index_t cols, index_t c_begin,
                             index_t c_end) {
    using F = row_format<T>;
    using I = typename V::ireg;
    constexpr bool q8 = std::is_same<T, q8_t>::value;
    // span: columns per pass of coefficients (sg groups: sg / width registers of them per row), cr: rows
    // per chunk, ahead: bytes each listed row is prefetched ahead (values_prefetch_l1: into L1 512 bytes
    // ahead, else into L2 1 KiB ahead; the prefetches into the next rows go to L2). acc32: the sums of the
    // span's columns per token, in L1/L2 between passes (M · 8 KiB; 16 KiB for one token).
    // One token (batch 1: whole rows) takes 4096 columns per span, a longer piece of each row per pass:
    // on one Zen 4 core (BM_kernel_values from memory, d 4096, medians of 3 in 4 alternating rounds) q4
    // read at 11.6–14.0 GB/s against 11.5–12.5 with 2048, q8 at 14.9–16.5 against 14.8–15.3. 8192
    // columns (stack arrays twice the size, half unused at d 4096) was slower than either, 10.6–12.0 q4:
    // the cause was not found. More tokens keep 2048 (their M · span sums stay in L1).
    // step: columns per step, one 64-byte line of quants per row (q8: one unit; q4: U = 2 units).
    constexpr index_t span = M == 1 ? 4096 : 2048, sg = span / k_quant_group, unit = 64, cr = 32,
                      nq_max = cr / 4;
    constexpr index_t step = quant_value_step<T>;
    constexpr int U = static_cast<int>(step / unit);
    static_assert(step * F::bits / 8 == 64, "a step is one 64-byte line of each row");
    const bool into_l1 = ::sparse_ffn::cpu::kernels::values_prefetch_l1();
    const index_t ahead = into_l1 ? 512 : 1024;
    static_assert(sg % width == 0, "whole registers of coefficients per row and span");
    static_assert(cr <= 32, "value_coefs keeps at most 32 rows' coefficients");
    alignas(64) std::int32_t acc32[M][span];
    alignas(64) float sf[M == 1 ? 1 : cr][sg];   // more tokens: the chunk's scales over the span, as floats
    alignas(64) std::int32_t cq[M][nq_max][sg];  // coefficient bytes of each quad, per token and group
    alignas(64) float ts[M][sg];                 // steps t
    alignas(64) std::int32_t corr[M][sg];        // −z Σ r
    float bad[M];                                // NaN where a token's coefficients are not all finite
    const std::uint8_t* pr[cr];                  // the chunk's rows (padded to whole quads)
    const bfloat16_t* sc[cr];
    const std::uint8_t* nx[cr];  // the next chunk's rows (prefetched at the end of this one)
    const index_t b_begin = c_begin * F::bits / 8, b_end = c_end * F::bits / 8;
    for (index_t i0 = 0; i0 < nrows;) {
      index_t nn;
      const index_t i1 = int_chunk(rows, nrows, i0, cr, v, ld, nx, nn), nr = i1 - i0, nq = (nr + 3) / 4;
      for (index_t r = 0; r < 4 * nq; ++r) {
        pr[r] = v + rows[i0 + std::min(r, nr - 1)] * ld;  // padding rows: a real row, coefficient 0
        sc[r] = F::scales(reinterpret_cast<const T*>(pr[r]), cols);
      }
      for (int m = 0; m < M; ++m) {
        float f = 0.0f;
        for (index_t r = 0; r < nr; ++r) f += 0.0f * s[m][rows[i0 + r]];  // NaN once one is not finite
        bad[m] = f;
      }
      prefetch_chunk_scales<T>(sc, nr, nx, nn, cols, c_begin, c_end);
      if (i0 == 0)  // the first rows' first lines (later chunks' are prefetched by the one before)
        for (index_t r = 0; r < std::min<index_t>(4 * nq, 8); ++r)
          for (index_t b = b_begin; b < std::min(b_end, b_begin + ahead); b += 64) V::prefetch_l2(pr[r] + b);
      for (index_t c0 = c_begin; c0 < c_end; c0 += span) {
        const index_t c1 = std::min(c_end, c0 + span), g0 = c0 / k_quant_group;
        const int ng = static_cast<int>((c1 - c0) / k_quant_group);
        // The span's groups, a register (width groups) at a time: those past ng in the last register get
        // coefficient 0; registers past it are never read (a partial span is short rows or the row's end).
        for (index_t gb = 0; gb < ng; gb += width) {
          const int ngb = static_cast<int>(std::min<index_t>(width, ng - gb));
          // The scales as floats: for one token read from the rows' bf16 where they are used; for more,
          // once into sf. (A 16 KiB sf beside one token's 16 KiB of sums and its 16 KiB of y: one core's
          // q4 / q8 value rows from memory ~2–3% slower; benchmarks.md, stop 61, which voids stop 59's 5–8%.)
          if constexpr (M > 1)
            for (index_t r = 0; r < nr; ++r) V::store(sf[r] + gb, V::load_bf16_n(sc[r] + g0 + gb, ngb));
          const auto scale = [&](index_t r) {
            if constexpr (M == 1)
              return V::load_bf16_n(sc[r] + g0 + gb, ngb);
            else
              return V::load(sf[r] + gb);
          };
          for (int m = 0; m < M; ++m)  // the coefficients of token m: a = s·scale, t, r = round(a·Q/max|a|)
            value_coefs<T>([&](index_t r) { return s[m][rows[i0 + r]]; }, nr, nq, scale, bad[m], ts[m] + gb,
                           cq[m][0] + gb, sg, corr[m] + gb);
        }
        // Two quads (eight rows) at a time, each row one sequential stream across the span; the next
        // pass's rows, then the next chunk's, are prefetched as the stream nears the span's end. The
        // sums are exact, so the order in which rows are added does not change a bit.
        auto pass = [&](auto np_c, index_t p) {
          constexpr int NP = decltype(np_c)::value;  // quads in this pass
          const bool first = p == 0, last = p + NP == nq;
          const index_t rn = 4 * (p + NP);  // the next pass's first row
          const index_t bs = c0 * F::bits / 8, be = c1 * F::bits / 8;
          for (index_t c = c0; c < c1; c += step) {
            const index_t byte = c * F::bits / 8, g = (c - c0) / k_quant_group;
            {  // one prefetch per cache line (step) and row
              const index_t pf = byte + ahead;
              if (pf < be && into_l1) {
#pragma GCC unroll 8
                for (int k = 0; k < 4 * NP; ++k) V::prefetch(pr[4 * p + k] + pf);
              } else if (pf < be) {
#pragma GCC unroll 8
                for (int k = 0; k < 4 * NP; ++k) V::prefetch_l2(pr[4 * p + k] + pf);
              } else if (!last) {
                const index_t w = bs + wrap(pf - be, be - bs);
                for (index_t r = rn; r < std::min<index_t>(4 * nq, rn + 4 * NP); ++r)
                  V::prefetch_l2(pr[r] + w);
              } else if (c1 == c_end) {  // the chunk's last span: the next chunk's first rows
                const index_t w = b_begin + wrap(pf - be, b_end - b_begin);
                for (index_t r = 0; r < std::min<index_t>(nn, 4 * NP); ++r) V::prefetch_l2(nx[r] + w);
              } else {  // the next span of this chunk's first rows
                const index_t w = be + wrap(pf - be, b_end - be);
                for (index_t r = 0; r < std::min<index_t>(4 * nq, 4 * NP); ++r) V::prefetch_l2(pr[r] + w);
              }
            }
            // d[q][h]: quad q's units. q8: one unit, columns [c, c + 64) (groups g, g + 1). q4: a whole
            // 64-byte line of each row, interleaved as bytes, then split: h = 0 the low nibbles, columns
            // [c, c + 32) and [c + 64, c + 96) (groups g, g + 2); h = 1 the high ones, [c + 32, c + 64)
            // and [c + 96, c + 128) (g + 1, g + 3). Interleaving the line's bytes once, before the
            // nibbles are split, takes 8 unpacks per quad and line; splitting each 32-byte half first
            // took 4 inserts and 16 unpacks.
            I d[NP][U][4];
#pragma GCC unroll 2
            for (int q = 0; q < NP; ++q) {
              I u[4];
              if constexpr (q8) {
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) u[k] = V::q8_unit(pr[4 * (p + q) + k] + byte);
                V::interleave4(u[0], u[1], u[2], u[3], d[q][0]);
              } else {
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) u[k] = V::iload(pr[4 * (p + q) + k] + byte);
                I t[4];
                V::interleave4(u[0], u[1], u[2], u[3], t);
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) {
                  d[q][0][k] = V::nibble_x16(t[k], 0);
                  d[q][U - 1][k] = V::nibble_x16(t[k], 1);
                }
              }
            }
#pragma GCC unroll 8
            for (int m = 0; m < M; ++m) {
#pragma GCC unroll 2
              for (int h = 0; h < U; ++h) {
                // The unit's groups: lanes 0-7 (its columns [0, 32)) ga, lanes 8-15 ([32, 64)) gb.
                const index_t ga = g + h, gb = q8 ? g + 1 : g + h + 2;
                const I idx = V::unit_index(static_cast<int>(ga % width), static_cast<int>(gb % width));
                std::int32_t* a = acc32[m] + (c - c0) + unit * h;
                I acc[4];
#pragma GCC unroll 4
                for (int k = 0; k < 4; ++k) acc[k] = first ? V::izero() : V::iload(a + width * k);
#pragma GCC unroll 2
                for (int q = 0; q < NP; ++q) {
                  const I cf = V::coef_lanes(idx, cq[m][p + q] + g / width * width);
#pragma GCC unroll 4
                  for (int k = 0; k < 4; ++k) acc[k] = V::dpbusd(acc[k], d[q][h][k], cf);
                }
                if (!last) {
#pragma GCC unroll 4
                  for (int k = 0; k < 4; ++k) V::istore(a + width * k, acc[k]);
                } else {              // y += t · float(Σ r·(q + z) − z Σ r), once per chunk and column
                  V::untangle4(acc);  // acc[k]: the unit's columns [16k, 16k + 16)
                  const I ca = V::bcast32(corr[m][ga]), cb = V::bcast32(corr[m][gb]);
                  const reg ta = V::set1(ts[m][ga]), tb = V::set1(ts[m][gb]);
#pragma GCC unroll 4
                  for (int k = 0; k < 4; ++k) {
                    float* yc = y[m] + c +
                                (k < 2 ? (ga - g) * k_quant_group + width * k
                                       : (gb - g) * k_quant_group + width * (k - 2));
                    V::store(yc,
                             V::fma(k < 2 ? ta : tb, V::cvt(V::iadd(acc[k], k < 2 ? ca : cb)), V::load(yc)));
                  }
                }
              }
            }
          }
        };
        index_t p = 0;
        for (; p + 2 <= nq; p += 2) pass(std::integral_constant<int, 2>{}, p);
        if (p < nq) pass(std::integral_constant<int, 1>{}, p);
      }
      i0 = i1;
    }
  }

  // ---- q8 and q4 value tiles on AVX512_VNNI ----------------------------------------------------------
  /// Whether axpy_tiles runs at this level for T (kernel_ops::apply_tiles).
  template <class T>
  static constexpr bool value_tiles = vnni_values<T>;

  /// axpy_rows_vnni for the 32 rows of one value_tile<T> (quant.hpp): y[t] += Σ_i s[t][i]·v_i over
  /// columns [c_begin, c_end) (multiples of quant_value_step<T>) for M tokens, s[t] the tile's 32
  /// coefficients. The same chunk (the tile's 32 rows), coefficients, steps t, exact int32 sums and one
  /// y FMA per column as axpy_rows_vnni on the rows: the same bits (rows whose s is 0 add 0 and do not
  /// move a maximum; a tile with no nonzero s must not be passed: its FMA would turn y = −0 into +0).
  /// The quads sit as vpdpbusd wants them, so each 64-byte line costs one load, one (q8: sign flip) or
  /// two (q4: the nibbles) logic operations and one or two vpdpbusd per token — against ~9 vector
  /// operations per row and line of axpy_rows_vnni (its interleave4, nibble splits, coefficient
  /// permutes and partial sums in L1). Quads whose four coefficients are 0 for every token are skipped.
  /// Every scale of the tile is read: a non-finite one (pack and load_blocked never make one; a hand-made
  /// view could) in a row no token uses can make its columns NaN here, where the row pass skips that row.
  template <int M, class T>
  static void axpy_tiles(float* const* y, const float* const* s, const std::uint8_t* tile, index_t cols,
                         index_t c_begin, index_t c_end) {
    using VT = value_tile<T>;
    using I = typename V::ireg;
    constexpr bool q8 = std::is_same<T, q8_t>::value;
    constexpr index_t R = VT::rows, NQ = VT::quads;
    // span: columns per pass of coefficients; step: columns per step (q8: one group, 2 pieces; q4: a
    // group pair, 2 pieces of low and high nibbles); ahead: bytes prefetched ahead along the stream.
    constexpr index_t span = 2048, sg = span / k_quant_group, step = q8 ? 32 : 64, ahead = 4096;
    constexpr int MT = 4;  // tokens per pass over a step's lines (4·MT or 2·MT accumulators)
    static_assert(sg % width == 0, "whole registers of coefficients per row and span");
    static_assert(M <= 2 * MT, "at most two passes of tokens");
    static_assert(R <= 32, "value_coefs keeps at most 32 rows' coefficients");
    alignas(64) float sf[R][sg];
    alignas(64) std::int32_t cq[M][NQ][sg];
    alignas(64) float ts[M][sg];
    alignas(64) std::int32_t corr[M][sg];
    float bad[M];
    unsigned live = 0;  // quads with a nonzero coefficient for some token
    for (int m = 0; m < M; ++m) {
      float f = 0.0f;
      for (index_t r = 0; r < R; ++r) {
        f += 0.0f * s[m][r];  // NaN once one is not finite
        if (s[m][r] != 0.0f) live |= 1u << (r / 4);
      }
      bad[m] = f;
    }
    for (index_t c0 = c_begin; c0 < c_end; c0 += span) {
      const index_t c1 = std::min(c_end, c0 + span), g0 = c0 / k_quant_group;
      const int ng = static_cast<int>((c1 - c0) / k_quant_group);
      for (index_t gb = 0; gb < ng; gb += width) {  // as axpy_rows_vnni, over all 32 rows
        const int ngb = static_cast<int>(std::min<index_t>(width, ng - gb));
        for (index_t r = 0; r < R; ++r)
          V::store(sf[r] + gb, V::load_bf16_n(VT::scales(tile, cols, r) + g0 + gb, ngb));
        for (int m = 0; m < M; ++m)
          value_coefs<T>([&](index_t r) { return s[m][r]; }, R, NQ,
                         [&](index_t r) { return V::load(sf[r] + gb); }, bad[m], ts[m] + gb, cq[m][0] + gb,
                         sg, corr[m] + gb);
      }
      for (index_t c = c0; c < c1; c += step) {
        const index_t j = c * row_format<T>::bits / 8 / 16,
                      g = (c - c0) / k_quant_group;           // first piece, group
        const std::uint8_t* l0 = VT::line(tile, cols, j, 0);  // 2 pieces × NQ lines from here on
        for (index_t b = 0; b < 2 * NQ * 64; b += 64) V::prefetch_l2(l0 + ahead + b);
        auto tokens = [&](int m0, auto n_c) {
          constexpr int N = decltype(n_c)::value;
          constexpr int H = q8 ? 1 : 2;  // units per line: q4's low and high nibbles
          I acc[N][2][H];
#pragma GCC unroll 8
          for (int t = 0; t < N; ++t)
#pragma GCC unroll 2
            for (int e = 0; e < 2; ++e)
#pragma GCC unroll 2
              for (int h = 0; h < H; ++h) acc[t][e][h] = V::izero();
          for (index_t q = 0; q < NQ; ++q) {
            if (!(live >> q & 1u)) continue;
#pragma GCC unroll 2
            for (int e = 0; e < 2; ++e) {
              const I w = V::iload(l0 + (e * NQ + q) * 64);
              I u[H];
              if constexpr (q8) {
                u[0] = V::flip_sign(w);
              } else {
                u[0] = V::nibble_x16(w, 0);
                u[1] = V::nibble_x16(w, 1);
              }
#pragma GCC unroll 8
              for (int t = 0; t < N; ++t)
#pragma GCC unroll 2
                for (int h = 0; h < H; ++h)
                  acc[t][e][h] = V::dpbusd(acc[t][e][h], u[h], V::bcast32(cq[m0 + t][q][g + h]));
            }
          }
          // y += t · float(Σ r·(q + z) − z Σ r): columns c + 16e (+ 32 for q4's high nibbles, group g + 1)
#pragma GCC unroll 8
          for (int t = 0; t < N; ++t)
#pragma GCC unroll 2
            for (int h = 0; h < H; ++h) {
              const I cc = V::bcast32(corr[m0 + t][g + h]);
              const reg tt = V::set1(ts[m0 + t][g + h]);
#pragma GCC unroll 2
              for (int e = 0; e < 2; ++e) {
                float* yc = y[m0 + t] + c + 16 * e + 32 * h;
                V::store(yc, V::fma(tt, V::cvt(V::iadd(acc[t][e][h], cc)), V::load(yc)));
              }
            }
        };
        if constexpr (M <= MT) {
          tokens(0, std::integral_constant<int, M>{});
        } else {
          tokens(0, std::integral_constant<int, MT>{});
          tokens(MT, std::integral_constant<int, M - MT>{});
        }
      }
    }
  }

  /// axpy_tiles for m tokens (rows_m at a time): the value pass of one tile (kernel_ops::apply_tiles).
  template <class T>
  static void apply_tiles(float* const* y, const float* const* s, index_t m, const std::uint8_t* tile,
                          index_t cols, index_t c_lo, index_t c_hi) {
    groups<rows_m>(m, [&](index_t m0, auto M) {
      if constexpr (value_tiles<T>) axpy_tiles<decltype(M)::value, T>(y + m0, s + m0, tile, cols, c_lo, c_hi);
    });
  }

  // ---- quantised rows in int8: int8 × int8 dot products (vpdpbusd with VNNI, else vpmaddubsw) -------
  // x is quantised per group of 32 to int8 (prepare_x_int8 in kernels.hpp, once per token).
  // AVX512_VNNI levels: dots_lanes (below), rows in lanes, one exact int32 sum per row and group.
  // AVX2, q4: dots_lanes8 (below), 8 rows in lanes. AVX2, q8: a row per register; each 32-byte unit is
  // one group and gives 8 int32 lanes by vpmaddubsw + vpmaddwd, whose int16 pair sums must not
  // saturate: |q| (≤ 128) times x's bytes with q's sign (≤ 127), as ggml's q8_0 does.
  // acc += float(lanes) × (weight scale × x scale) per lane: the same accumulator order in every tile
  // shape (bits depend on the ISA only).
  template <class T>
  static constexpr bool int8_q = ((std::is_base_of<isa::avx512_vnni, Isa>::value ||
                                   std::is_same<isa::avx2, Isa>::value) &&
                                  is_quantized<T>::value);

  /// dot_tile_acc_int8's work on one 64-byte line of R q8 rows on AVX2 (width 8): values [q, q + 64),
  /// two groups.
  template <int M, int R, class T>
  static void dot_line_int8_avx2(const std::uint8_t* const* xq, const std::uint8_t* rows, index_t ld,
                                 index_t cols, index_t q, index_t byte, reg (&a)[M][R]) {
    static_assert(std::is_same<T, q8_t>::value, "q4 rows take dots_lanes8 on avx2");
    using F = row_format<T>;
    using I = typename V::ireg;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const std::uint8_t* row = rows + r * ld;
      const bfloat16_t* sc = F::scales(reinterpret_cast<const T*>(row), cols) + q / 32;
      // The line's combined scales (row scale × x scale) per token, natural group order, in one multiply.
      alignas(16) float cs[M][4];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
        V::group_scales(sc, reinterpret_cast<const float*>(xq[m] + x_int8_group_scales_at(cols)) + q / 32,
                        cs[m]);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {  // 32-byte halves of the line: groups q / 32 + h
        const I v = V::iload(row + byte + 32 * h);
        const I u = V::abs8(v);
        const index_t kb = q + 32 * h;  // kernel order = natural order for q8
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const I i = V::dot4(u, V::sign8(V::iload(xq[m] + kb), v));
          a[m][r] = V::fma(V::cvt(i), V::set1(cs[m][h]), a[m][r]);
        }
      }
    }
  }

  /// The int8 key tile of AVX2 for q8 rows (the VNNI levels take dots_lanes, q4 on AVX2 dots_lanes8).
  template <int M, int R, class T>
  static void dot_tile_acc_int8(const std::uint8_t* const* xq, const T* rows_t, index_t ld, index_t cols,
                                index_t q0, index_t q1, float* SPARSE_FFN_RESTRICT acc, bool first,
                                bool prefetch) {
    using F = row_format<T>;
    constexpr index_t step = 64;  // values per 64-byte line of q8 quants
    const auto* rows = reinterpret_cast<const std::uint8_t*>(rows_t);
    const index_t qbytes = F::quant_bytes(cols);
    reg a[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) a[m][r] = first ? V::zero() : V::load(acc + (m * R + r) * width);
    if (prefetch && q0 == 0) prefetch_tile_scales<R, T>(rows, ld, cols);
    for (index_t q = q0; q < q1; q += step) {  // q0, q1: multiples of step
      const index_t byte = q * F::bits / 8;
      if (prefetch) {
        const index_t p = byte + 1024;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          V::prefetch_l2(p < qbytes ? rows + r * ld + p : rows + (R + r) * ld + (p - qbytes));
      }
      dot_line_int8_avx2<M, R, T>(xq, rows, ld, cols, q, byte, a);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) V::store(acc + (m * R + r) * width, a[m][r]);
  }

  // ---- key tiles walked side by side (dots_tiles, dots_tiles8) -------------------------------------
  /// Bytes each of TT tile streams is prefetched ahead (into L2): 4 KiB in all. One stream: 1-8 KiB
  /// measured on Emerald Rapids (docs/benchmarks.md, stop 49); four: 1 KiB each against 4 KiB, 14-17%
  /// less time in the key pass at batch 1 on Ice Lake (stop 57).
  template <int TT>
  static constexpr index_t tile_ahead() {
    return 4096 / TT / 64 * 64;
  }
  /// The TT tiles from `first`, stride bytes apart, into tile[]; with TT > 1, each stream's first
  /// tile_ahead<TT>() bytes (at most `bytes`, the tile's) prefetched into L2 (a lone tile's are its
  /// predecessor's tail).
  template <int TT>
  static void tile_streams(const std::uint8_t* first, index_t stride, index_t bytes,
                           const std::uint8_t* (&tile)[TT]) {
#pragma GCC unroll 4
    for (int k = 0; k < TT; ++k) tile[k] = first + k * stride;
    if constexpr (TT > 1) {
      for (int k = 0; k < TT; ++k)
        for (index_t p = 0; p < std::min<index_t>(tile_ahead<TT>(), bytes); p += 64)
          V::prefetch_l2(tile[k] + p);
    }
  }

  // ---- q4 key rows on AVX2: eight rows in lanes -----------------------------------------------------
  // As dots_lanes on the VNNI levels, with 8 rows per ymm (lane i = row i, dword i = four bytes of row i)
  // and vpmaddubsw for vpdpbusd: per group and token, the 8 products of the group's nibbles (unsigned,
  // ≤ 15) by the token's x dwords broadcast (|x| ≤ 127) are summed in int16 (a word ≤ 8 · 2 · 15 · 127 =
  // 30480: exact), one vpmaddwd gives each row's exact int32 sum, + corr (−8·Σx), and y = fma(float(Σ),
  // s · sx, y) per group in ascending order: one float epilogue per group serves 8 rows, where the row
  // kernel (dot_tile_acc_int8) pays it per row (llama.cpp's q4_0_8x8 repack does the same on AVX2).
  // dots_tiles8 reads key tiles (two 8-row halves of each 16-row tile, no transposes); dots_lanes8 reads
  // rows and transposes each line in registers; both call lanes8_pair, so the same bits. q8 keeps the
  // row kernel: its bytes meet x through vpsignb, per row and token, and a pair of products (≤ 2 · 128 ·
  // 127) leaves no room for a sum in int16.
  template <class T>
  static constexpr bool lanes8 = (std::is_same<Isa, isa::avx2>::value && std::is_same<T, q4_t>::value);
  static constexpr index_t lanes8_r = 8;  // rows per dots_lanes8 tile

  /// The two q4 groups in 8 dwords of 8 rows (rows in lanes; load(k), k < 8, gives dword k of every row:
  /// low nibbles group gg, high group gg + 1) for N tokens: y[t] = fma(float(Σ), s · sx[t], y[t]), low
  /// group first (s_lo), then high (s_hi). xo: the groups' kernel-order offsets in a token's x
  /// (lanes8_offsets).
  template <int N, class Load>
  SPARSE_FFN_FORCE_INLINE static void lanes8_pair(const Load& load, const std::uint8_t* const* xq,
                                                  index_t cols, index_t gg, const index_t (&xo)[2], reg s_lo,
                                                  reg s_hi, reg (&y)[N]) {
    using I = typename V::ireg;
    I a[2][N];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      I nib[2];
      V::nibbles(load(k), nib[0], nib[1]);
#pragma GCC unroll 2
      for (int n = 0; n < 2; ++n)
#pragma GCC unroll 4
        for (int t = 0; t < N; ++t) {
          std::int32_t xd;
          std::memcpy(&xd, xq[t] + xo[n] + 4 * k, 4);
          const I xb = V::bcast32(xd);
          a[n][t] = k == 0 ? V::maddubs(nib[n], xb) : V::madd_chain(a[n][t], nib[n], xb);
        }
    }
#pragma GCC unroll 2
    for (int n = 0; n < 2; ++n)
#pragma GCC unroll 4
      for (int t = 0; t < N; ++t) {
        std::int32_t corr;
        float sx;
        group_terms(xq[t], cols, gg + n, corr, sx);
        const I i = V::iadd(V::sum_pairs16(a[n][t]), V::bcast32(corr));
        y[t] = V::fma(V::cvt(i), V::mul(n == 0 ? s_lo : s_hi, V::set1(sx)), y[t]);
      }
  }

  /// lanes8_pair's x offsets for the groups of the 64-byte line j (lanes8 rows: 128 values a line) in
  /// its 32-byte half a: low nibbles group 4j + 2a, high 4j + 2a + 1.
  static void lanes8_offsets(index_t j, index_t (&xo)[2][2]) {
    for (index_t a = 0; a < 2; ++a)
      for (index_t n = 0; n < 2; ++n)
        xo[a][n] = x_int8_group_offset<q4_t>((4 * j + 2 * a + n) * k_quant_group);
  }

  /// kernel_ops::dots for q4 rows on AVX2 (see above): each d chunk's lines of 8 rows transposed once
  /// (transpose8 per 32-byte half) into a buffer, their scales into lanes, then every token pair. spill: m
  /// vectors.
  template <class T>
  static void dots_lanes8(const std::uint8_t* const* xq, index_t m, const T* rows_t, index_t nrows,
                          index_t ld, index_t cols, float* spill, float* out) {
    using F = row_format<T>;
    using I = typename V::ireg;
    constexpr int MT = 2;                             // tokens per pass
    constexpr index_t gc = k_dchunk / k_quant_group;  // groups per chunk (16)
    constexpr index_t lc = k_dchunk / 128;            // 64-byte lines per chunk (4)
    constexpr index_t ahead = 1024;                   // prefetch distance along each row
    static_assert(width == lanes8_r, "one row per lane");
    alignas(32) I wt[lc][2][8];   // the chunk's lines, rows in lanes (2 KiB)
    alignas(32) float sv[gc][8];  // their scales
    const auto* base = reinterpret_cast<const std::uint8_t*>(rows_t);
    const index_t qbytes = F::quant_bytes(cols);
    for (index_t r0 = 0; r0 < nrows; r0 += lanes8_r) {
      const index_t nr = std::min<index_t>(lanes8_r, nrows - r0);
      const std::uint8_t* row[lanes8_r];
      for (index_t i = 0; i < lanes8_r; ++i)
        row[i] = base + (r0 + std::min(i, nr - 1)) * ld;  // padding: a real row
      prefetch_tile_scales<lanes8_r, T>(base + r0 * ld, ld, cols);
      for (index_t q0 = 0; q0 < cols; q0 += k_dchunk) {
        const index_t q1 = std::min(cols, q0 + k_dchunk), ng = (q1 - q0) / k_quant_group;
        {  // the chunk's scales, rows in lanes: 8 rows × 16 groups, two 8 × 8 transposes
          reg s[2][8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) {
            const bfloat16_t* b = F::scales(reinterpret_cast<const T*>(row[i]), cols) + q0 / k_quant_group;
            alignas(32) bfloat16_t part[gc] = {};
            if (ng < gc) {  // the last chunk: no read past the row's scales
              std::memcpy(part, b, static_cast<std::size_t>(ng) * sizeof(bfloat16_t));
              b = part;
            }
            s[0][i] = V::load(b);
            s[1][i] = V::load(b + 8);
          }
          V::transpose8(s[0]);
          V::transpose8(s[1]);
#pragma GCC unroll 16
          for (int g = 0; g < static_cast<int>(gc); ++g) V::store(sv[g], s[g / 8][g % 8]);
        }
        for (index_t q = q0; q < q1; q += 128) {
          const index_t byte = q / 2, l = (q - q0) / 128;
          const index_t p = byte + ahead;
#pragma GCC unroll 8
          for (index_t i = 0; i < lanes8_r; ++i)
            V::prefetch_l2(p < qbytes ? row[i] + p : base + (r0 + lanes8_r + i) * ld + (p - qbytes));
#pragma GCC unroll 2
          for (int a = 0; a < 2; ++a) {
            reg tr[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) tr[i] = V::as_float(V::iload(row[i] + byte + 32 * a));
            V::transpose8(tr);  // tr[k]: dword k of the half line of every row
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k) wt[l][a][k] = V::as_int(tr[k]);
          }
        }
        groups<MT>(m, [&](index_t m0, auto M) {
          constexpr int N = decltype(M)::value;
          reg y[N];
#pragma GCC unroll 4
          for (int t = 0; t < N; ++t) y[t] = q0 == 0 ? V::zero() : V::load(spill + (m0 + t) * width);
          for (index_t l = 0; l < (q1 - q0) / 128; ++l) {
            index_t xo[2][2];
            lanes8_offsets(q0 / 128 + l, xo);
#pragma GCC unroll 2
            for (int a = 0; a < 2; ++a) {
              const index_t gi = 4 * l + 2 * a;  // the pair's low group in the chunk
              lanes8_pair<N>([&](int k) { return wt[l][a][k]; }, xq + m0, cols, q0 / k_quant_group + gi,
                             xo[a], V::load(sv[gi]), V::load(sv[gi + 1]), y);
            }
          }
#pragma GCC unroll 4
          for (int t = 0; t < N; ++t) V::store(spill + (m0 + t) * width, y[t]);
        });
      }
      for (index_t t = 0; t < m; ++t)
        for (index_t i = 0; i < nr; ++i) out[t * nrows + r0 + i] = spill[t * width + i];
    }
  }

  /// kernel_ops::dots_tiles for q4 on AVX2: the key tiles of dots_tiles (quant.hpp key_tile), each read
  /// as two 8-row halves (the low and high 32 bytes of every 64-byte vector, scales likewise), one token
  /// pair at a time; the same groups in the same order as dots_lanes8, so the same bits. One token walks
  /// up to 4 tiles side by side (4 streams; see dots_tiles). spill: m · min(4, nrows / 16) · 2 vectors.
  template <class T>
  static void dots_tiles8(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
                          index_t tile_stride, index_t cols, float* spill, float* out) {
    using KT = key_tile<T>;
    constexpr int MT = 2;                         // tokens per pass
    constexpr index_t gpl = KT::groups_per_line;  // 4
    constexpr index_t lines_per_chunk = k_dchunk / 128;
    static_assert(width == lanes8_r && KT::rows == 2 * lanes8_r, "a key tile is two halves of 8 rows");
    const index_t lines = KT::lines(cols), ntiles = nrows / KT::rows;
    // Tiles side by side: y holds TT · 2 halves · N accumulators, at most 8.
    const index_t tt_max = m <= 1 ? 4 : 1;
    for (index_t i0 = 0; i0 < ntiles; i0 += tt_max) {
      count<4>(static_cast<int>(std::min(tt_max, ntiles - i0)), [&](auto tt_c) {
        constexpr int TT = decltype(tt_c)::value;
        constexpr index_t ahead = tile_ahead<TT>();
        const std::uint8_t* tile[TT];
        tile_streams<TT>(tiles + i0 * tile_stride, tile_stride, lines * KT::unit_bytes, tile);
        for (index_t j0 = 0; j0 < lines; j0 += lines_per_chunk) {
          const index_t j1 = std::min(lines, j0 + lines_per_chunk);
          groups<MT>(m, [&](index_t m0, auto M) {
            constexpr int N = decltype(M)::value;
            if constexpr (TT == 1 || 2 * TT * N <= 8) {  // the others never run (tt_max)
              reg y[TT][2][N];
#pragma GCC unroll 4
              for (int k = 0; k < TT; ++k) {
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
                  for (int t = 0; t < N; ++t)
                    y[k][h][t] = j0 == 0 ? V::zero() : V::load(spill + ((2 * k + h) * m + m0 + t) * width);
              }
              // The chunk's lines for rows 0-7 of the tiles (bytes 0-31 of each vector), then again (from
              // L1) for rows 8-15.
#pragma GCC unroll 2
              for (int h = 0; h < 2; ++h)
                for (index_t j = j0; j < j1; ++j) {
                  index_t xo[2][2];
                  lanes8_offsets(j, xo);
#pragma GCC unroll 4
                  for (int k = 0; k < TT; ++k) {
                    const std::uint8_t* u = tile[k] + j * KT::unit_bytes;
                    const auto* sc = reinterpret_cast<const bfloat16_t*>(u + KT::rows * 64);
                    if (m0 == 0 && h == 0) {
                      for (index_t p = 0; p < KT::unit_bytes; p += 64) V::prefetch_l2(u + ahead + p);
                    }
                    // Dwords 8a .. 8a + 7 of the line: groups 4j + 2a (low nibbles), 4j + 2a + 1 (high).
#pragma GCC unroll 2
                    for (int a = 0; a < 2; ++a)
                      lanes8_pair<N>([&](int e) { return V::iload(u + (8 * a + e) * 64 + 32 * h); }, xq + m0,
                                     cols, gpl * j + 2 * a, xo[a], V::load(sc + KT::rows * (2 * a) + 8 * h),
                                     V::load(sc + KT::rows * (2 * a + 1) + 8 * h), y[k][h]);
                  }
                }
#pragma GCC unroll 4
              for (int k = 0; k < TT; ++k)
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
                  for (int t = 0; t < N; ++t)
                    V::store(spill + ((2 * k + h) * m + m0 + t) * width, y[k][h][t]);
            }
          });
        }
        for (int k = 0; k < TT; ++k)
          for (int h = 0; h < 2; ++h)
            for (index_t t = 0; t < m; ++t)
              for (index_t i = 0; i < lanes8_r; ++i)
                out[t * nrows + (i0 + k) * KT::rows + 8 * h + i] = spill[((2 * k + h) * m + t) * width + i];
      });
    }
  }

  // ---- q8 and q4 key rows on AVX512_VNNI: rows in lanes ---------------------------------------------
  // dots_lanes takes 16 rows at a time, lane i of every vector being row i. Each 64-byte line of the 16
  // rows is transposed as dwords (transpose16), so wt[g][k] holds the four weights 4k .. 4k + 3 of group
  // g of every row (q8: q + 128; q4: the nibbles u = q + 8, split after the transpose), and vpdpbusd
  // multiplies it by the token's four x bytes broadcast: eight of them sum a whole group exactly in
  // int32, from the group's −zero_point · Σ x (x_int8_group). Then, per token, row and group in
  // ascending order, y = fma(float(Σ), scale · sx, y): one rounding per group, in the same order for
  // every token tile and batch (batch invariance), and the integer work per group and token is 8
  // instructions for 16 rows — against 16 rows × (vpdpbusd, cvt, mul, fma) per 64 values for a row per
  // register (dot_tile_acc_int8, AVX2). The transposes (64 shuffles per line of 16 rows) are shared by
  // every token of the block.
  static constexpr index_t lanes_r = 16;  // rows per dots_lanes tile
  /// Rows per call of dots that fill its tiles (kernel_ops::key_r): lanes_r where dots_lanes runs,
  /// lanes8_r where dots_lanes8 does.
  template <class T>
  static constexpr int key_r_for = (int8_q<T> && width == lanes_r) ? static_cast<int>(lanes_r)
                                   : lanes8<T>                     ? static_cast<int>(lanes8_r)
                                                                   : key_r;

  /// One group of MT tokens: y[t] = fma(float(Σ), s · sx[t], y[t]), Σ = corr[t] + the 8 vpdpbusd of
  /// the group's weights w (rows in lanes) by the token's x bytes xg[t] (4 broadcast per instruction).
  template <int MT, class I>
  static void lanes_group(const I* w, const std::uint8_t* const* xg, const std::int32_t* corr,
                          const float* sx, reg s, reg (&y)[MT]) {
    I a[MT];
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t) a[t] = V::bcast32(corr[t]);
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k)
#pragma GCC unroll 8
      for (int t = 0; t < MT; ++t) {
        std::int32_t xd;
        std::memcpy(&xd, xg[t] + 4 * k, 4);
        a[t] = V::dpbusd(a[t], w[k], V::bcast32(xd));
      }
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t) y[t] = V::fma(V::cvt(a[t]), V::mul(s, V::set1(sx[t])), y[t]);
  }

  /// Group gg's terms in a token's prepared x (x_int8_group): −zero_point · Σ x and the x scale.
  static void group_terms(const std::uint8_t* xq, index_t cols, index_t gg, std::int32_t& corr, float& sx) {
    std::memcpy(&corr, xq + x_int8_groups_at(cols) + 4 * gg, 4);
    std::memcpy(&sx, xq + x_int8_group_scales_at(cols) + 4 * gg, 4);
  }

  /// Group gi (of the chunk starting at value q0) for MT tokens: their x bytes and group terms.
  template <int MT, class T, class I>
  static void lanes_group_at(const std::uint8_t* const* xq, index_t cols, index_t q0, index_t gi, const I* w,
                             reg s, reg (&y)[MT]) {
    const std::uint8_t* xg[MT];
    std::int32_t corr[MT];
    float sx[MT];
    const index_t kb = x_int8_group_offset<T>(q0 + gi * k_quant_group), gg = q0 / k_quant_group + gi;
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t) {
      xg[t] = xq[t] + kb;
      group_terms(xq[t], cols, gg, corr[t], sx[t]);
    }
    lanes_group<MT>(w, xg, corr, sx, s, y);
  }

  /// kernel_ops::dots for q8/q4 rows on the VNNI levels (see above). spill: m vectors.
  template <class T>
  static void dots_lanes(const std::uint8_t* const* xq, index_t m, const T* rows_t, index_t nrows, index_t ld,
                         index_t cols, float* spill, float* out) {
    using F = row_format<T>;
    using I = typename V::ireg;
    constexpr bool q8 = std::is_same<T, q8_t>::value;
    constexpr index_t step = q8 ? 64 : 128;  // values per 64-byte line of quants
    constexpr index_t gc = k_dchunk / k_quant_group;
    constexpr int MT = 4;            // tokens per tile
    constexpr index_t ahead = 1024;  // batch 1, one thread, from memory: 512 and 2048 no different
    static_assert(width == lanes_r, "one row per lane");
    alignas(64) I wt[gc][8];       // the chunk's weights, rows in lanes (8 KiB; more than MT tokens)
    alignas(64) float sv[gc][16];  // their scales
    const auto* base = reinterpret_cast<const std::uint8_t*>(rows_t);
    const index_t qbytes = F::quant_bytes(cols);
    for (index_t r0 = 0; r0 < nrows; r0 += lanes_r) {
      const index_t nr = std::min<index_t>(lanes_r, nrows - r0);
      const std::uint8_t* row[lanes_r];
      for (index_t i = 0; i < lanes_r; ++i)
        row[i] = base + (r0 + std::min(i, nr - 1)) * ld;  // padding: a real row
      prefetch_tile_scales<lanes_r, T>(base + r0 * ld, ld, cols);
      // Into L2, `ahead` bytes along each row, then into the next tile's rows.
      const auto prefetch_line = [&](index_t byte) {
        const index_t p = byte + ahead;
#pragma GCC unroll 16
        for (index_t i = 0; i < lanes_r; ++i)
          V::prefetch_l2(p < qbytes ? row[i] + p : base + (r0 + lanes_r + i) * ld + (p - qbytes));
      };
      // The scales of chunk [q0, q0 + 32 ng) into sv, rows in lanes.
      const auto chunk_scales = [&](index_t q0, index_t ng) {
        const bfloat16_t* sp[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          sp[i] = F::scales(reinterpret_cast<const T*>(row[i]), cols) + q0 / k_quant_group;
        reg sc[16];
        V::scales_lanes(sp, static_cast<int>(ng), sc);
        for (index_t g = 0; g < ng; ++g) V::store(sv[g], sc[g]);
      };
      // Each 64-byte line of the chunk's rows, transposed: on_group(gi, w) for its groups in ascending
      // order (gi: the group's index in the chunk; w: its 8 weight vectors, rows in lanes).
      const auto chunk_lines = [&](index_t q0, index_t q1, auto&& on_group) {
        for (index_t q = q0; q < q1; q += step) {
          const index_t byte = q * F::bits / 8, g = (q - q0) / k_quant_group;
          prefetch_line(byte);
          reg tr[16];
#pragma GCC unroll 16
          for (int i = 0; i < 16; ++i) tr[i] = V::as_float(V::iload(row[i] + byte));
          V::transpose16(tr);  // tr[j]: dword j of the line (its bytes 4j .. 4j + 3) of every row
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            if constexpr (q8) {  // dwords 8h .. 8h + 7: group g + h
              I w[8];
#pragma GCC unroll 8
              for (int k = 0; k < 8; ++k) w[k] = V::flip_sign(V::as_int(tr[8 * h + k]));
              on_group(g + h, w);
            } else {  // dwords 8h ..: low nibbles group g + 2h, high g + 2h + 1
              I lo[8], hi[8];
#pragma GCC unroll 8
              for (int k = 0; k < 8; ++k) V::nibbles(V::as_int(tr[8 * h + k]), lo[k], hi[k]);
              on_group(g + 2 * h, lo);
              on_group(g + 2 * h + 1, hi);
            }
          }
        }
      };
      if (m <= MT) {
        // One token tile: each line's rows only go through the first two stages of the transpose
        // (transpose_quads: vector 4i + e holds, per 128-bit lane L, dword 4L + e of rows 4i .. 4i + 3),
        // vpdpbusd meets the token's quad vectors of x (x_int8_quads), each lane summing its row's
        // dwords 4L .. 4L + 3, and combine_quads adds the two lanes of each group: the same exact
        // integer per row and group as the buffered path below, so the same bits, for half the shuffles.
        // q4's high nibbles go in as 16 u (nibble_x16: one AND, no shift) and their exact sums are
        // divided by 16 after combine_quads (the buffered path shifts each nibble instead: per token, a
        // shift per group would cost more there).
        count<MT>(static_cast<int>(m), [&](auto M) {
          constexpr int N = decltype(M)::value;
          reg y[N];
          const std::uint8_t* xv[N];
#pragma GCC unroll 8
          for (int t = 0; t < N; ++t) {
            y[t] = V::zero();
            xv[t] = xq[t] + x_int8_quads_at(cols);
          }
          for (index_t q0 = 0; q0 < cols; q0 += k_dchunk) {
            const index_t q1 = std::min(cols, q0 + k_dchunk);
            chunk_scales(q0, (q1 - q0) / k_quant_group);
            for (index_t q = q0; q < q1; q += step) {
              const index_t byte = q * F::bits / 8, g = (q - q0) / k_quant_group;
              prefetch_line(byte);
              I v[16];
#pragma GCC unroll 16
              for (int i = 0; i < 16; ++i) v[i] = V::iload(row[i] + byte);
              V::transpose_quads(v);
              constexpr int U = q8 ? 1 : 2;  // units of x per line: q8 the line; q4 low, then high nibbles
              I sums[U][N][2];               // per unit and token: its two groups, rows in lanes
#pragma GCC unroll 2
              for (int h = 0; h < U; ++h) {
                I acc[N][4];
#pragma GCC unroll 4
                for (int e = 0; e < 4; ++e) {
                  const index_t xo = ((byte / 64 * U + h) * 4 + e) * 64;  // the unit's quad vector e
#pragma GCC unroll 4
                  for (int i = 0; i < 4; ++i) {
                    const I w = q8 ? V::flip_sign(v[4 * i + e]) : V::nibble_x16(v[4 * i + e], h);
#pragma GCC unroll 8
                    for (int t = 0; t < N; ++t)
                      acc[t][i] = V::dpbusd(e == 0 ? V::izero() : acc[t][i], w, V::iload(xv[t] + xo));
                  }
                }
#pragma GCC unroll 8
                for (int t = 0; t < N; ++t) {
                  V::combine_quads(acc[t], sums[h][t][0], sums[h][t][1]);
                  if (!q8 && h == 1) {  // nibble_x16: 16 × the high nibbles' sums, divided back exactly
                    sums[h][t][0] = V::idiv16(sums[h][t][0]);
                    sums[h][t][1] = V::idiv16(sums[h][t][1]);
                  }
                }
              }
              // Groups in ascending order: q8 g, g + 1; q4 g (low), g + 1 (high), g + 2 (low), g + 3 (high).
#pragma GCC unroll 2
              for (int a = 0; a < 2; ++a)
#pragma GCC unroll 2
                for (int h = 0; h < U; ++h) {
                  const index_t gi = g + a * U + h, gg = q0 / k_quant_group + gi;
                  const reg s = V::load(sv[gi]);
#pragma GCC unroll 8
                  for (int t = 0; t < N; ++t) {
                    std::int32_t corr;
                    float sx;
                    group_terms(xq[t], cols, gg, corr, sx);
                    y[t] = V::fma(V::cvt(V::iadd(sums[h][t][a], V::bcast32(corr))), V::mul(s, V::set1(sx)),
                                  y[t]);
                  }
                }
            }
          }
#pragma GCC unroll 8
          for (int t = 0; t < N; ++t) V::store(spill + t * width, y[t]);
        });
      } else {  // the chunk's weights transposed once into wt, then every token tile
        for (index_t q0 = 0; q0 < cols; q0 += k_dchunk) {
          const index_t q1 = std::min(cols, q0 + k_dchunk), ng = (q1 - q0) / k_quant_group;
          chunk_scales(q0, ng);
          chunk_lines(q0, q1, [&](index_t gi, const I* w) {
#pragma GCC unroll 8
            for (int k = 0; k < 8; ++k) wt[gi][k] = w[k];
          });
          groups<MT>(m, [&](index_t m0, auto M) {
              constexpr int N = decltype(M)::value;
              reg y[N];
              float* acc = spill + m0 * width;
#pragma GCC unroll 8
              for (int t = 0; t < N; ++t) y[t] = q0 == 0 ? V::zero() : V::load(acc + t * width);
              for (index_t gi = 0; gi < ng; ++gi)
                lanes_group_at<N, T>(xq + m0, cols, q0, gi, wt[gi], V::load(sv[gi]), y);
#pragma GCC unroll 8
              for (int t = 0; t < N; ++t) V::store(acc + t * width, y[t]);
            });
        }
      }
      for (index_t t = 0; t < m; ++t)
        for (index_t i = 0; i < nr; ++i) out[t * nrows + r0 + i] = spill[t * width + i];
    }
  }

  /// Whether dots_tiles (16 rows in lanes) is this level's key-tile kernel for T (kernel_ops::dots_tiles;
  /// q4 on avx2 has dots_tiles8 instead: lanes8).
  template <class T>
  static constexpr bool key_tiles = int8_q<T> && width == lanes_r;

  /// dots_lanes for q8/q4 rows stored as key_tile<T> (quant.hpp): out[t·nrows + r] for m tokens and
  /// nrows rows (a multiple of 16), tile r / 16 at tiles + (r / 16)·tile_stride bytes. The rows are in
  /// lanes already: no transposes, one stream per tile, the scales in it. Each (token, row, group) gets
  /// the same exact integer and the same float steps, in the same group order, as in dots_lanes
  /// (lanes_group), so the same bits. Few tokens walk several tiles side by side (up to 4 for m <= 2, 2
  /// for m <= 4), each its own stream and accumulators: from memory one stream per thread reads slower
  /// than several (Ice Lake, docs/benchmarks.md stop 57). spill: m · min(4, nrows / 16) vectors.
  template <class T>
  static void dots_tiles(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
                         index_t tile_stride, index_t cols, float* spill, float* out) {
    using KT = key_tile<T>;
    using I = typename V::ireg;
    constexpr bool q8 = std::is_same<T, q8_t>::value;
    constexpr int MT = 4;                             // tokens per pass
    constexpr index_t gpl = KT::groups_per_line;      // groups per line unit
    constexpr index_t lines_per_chunk = k_dchunk / (q8 ? 64 : 128);
    static_assert(width == lanes_r, "one row per lane");
    const index_t lines = KT::lines(cols), ntiles = nrows / lanes_r;
    // Tiles side by side: TT · (tokens per pass) accumulators stay at most 8 (with the 16 of w and hi).
    const index_t tt_max = m <= 2 ? 4 : m <= 4 ? 2 : 1;
    for (index_t i0 = 0; i0 < ntiles; i0 += tt_max) {
      count<4>(static_cast<int>(std::min(tt_max, ntiles - i0)), [&](auto tt_c) {
        constexpr int TT = decltype(tt_c)::value;
        constexpr index_t ahead = tile_ahead<TT>();
        const std::uint8_t* tile[TT];
        tile_streams<TT>(tiles + i0 * tile_stride, tile_stride, lines * KT::unit_bytes, tile);
        for (index_t j0 = 0; j0 < lines; j0 += lines_per_chunk) {
          const index_t j1 = std::min(lines, j0 + lines_per_chunk);
          groups<MT>(m, [&](index_t m0, auto M) {
            constexpr int N = decltype(M)::value;
            if constexpr (TT == 1 || TT * N <= 8) {  // the others never run (tt_max)
              reg y[TT][N];
#pragma GCC unroll 4
              for (int k = 0; k < TT; ++k)
#pragma GCC unroll 8
                for (int t = 0; t < N; ++t)
                  y[k][t] = j0 == 0 ? V::zero() : V::load(spill + (k * m + m0 + t) * width);
              for (index_t j = j0; j < j1; ++j) {
#pragma GCC unroll 4
                for (int k = 0; k < TT; ++k) {
                  const std::uint8_t* u = tile[k] + j * KT::unit_bytes;
                  const auto* sc = reinterpret_cast<const bfloat16_t*>(u + lanes_r * 64);
                  if (m0 == 0)
                    for (index_t p = 0; p < KT::unit_bytes; p += 64) V::prefetch_l2(u + ahead + p);
                  // Dwords 8a .. 8a + 7 of the line: q8 group 2j + a; q4 4j + 2a, + 1.
#pragma GCC unroll 2
                  for (int a = 0; a < 2; ++a) {
                    I w[8], hi[8];
#pragma GCC unroll 8
                    for (int e = 0; e < 8; ++e) {
                      const I v = V::iload(u + (8 * a + e) * 64);
                      if constexpr (q8)
                        w[e] = V::flip_sign(v);
                      else
                        V::nibbles(v, w[e], hi[e]);
                    }
                    constexpr int per_half = q8 ? 1 : 2;
#pragma GCC unroll 2
                    for (int h = 0; h < per_half; ++h) {
                      // The group's index in the line; gpl·j + gl in the row.
                      const index_t gl = per_half * a + h;
                      lanes_group_at<N, T>(xq + m0, cols, 0, gpl * j + gl, h == 0 ? w : hi,
                                           V::load_bf16_n(sc + lanes_r * gl, 16), y[k]);
                    }
                  }
                }
              }
#pragma GCC unroll 4
              for (int k = 0; k < TT; ++k)
#pragma GCC unroll 8
                for (int t = 0; t < N; ++t) V::store(spill + (k * m + m0 + t) * width, y[k][t]);
            }
          });
        }
        for (int k = 0; k < TT; ++k)
          for (index_t t = 0; t < m; ++t)
            for (index_t i = 0; i < lanes_r; ++i)
              out[t * nrows + (i0 + k) * lanes_r + i] = spill[(k * m + t) * width + i];
      });
    }
  }

  /// kernels::prepare_x_int8 with each group quantised by the ISA (the same bytes); scalar elsewhere.
  template <class T>
  static void prepare_x_int8(const float* x, index_t cols, std::uint8_t* out) {
    if constexpr (int8_q<T>) {
      auto* xq = reinterpret_cast<std::int8_t*>(out);
      auto* corr_g = reinterpret_cast<std::int32_t*>(out + x_int8_groups_at(cols));
      auto* xs_g = reinterpret_cast<float*>(out + x_int8_group_scales_at(cols));
      for (index_t g0 = 0; g0 < cols; g0 += 32) {
        const index_t kb = x_int8_group_offset<T>(g0);
        const float sx = V::quantize_x32(x + g0, xq + kb);
        corr_g[g0 / 32] = V::x_int8_sum(xq + kb, ::sparse_ffn::cpu::kernels::int8_zero_point<T>);
        xs_g[g0 / 32] = sx;
      }
      std::memset(out + x_int8_groups_at(cols) + cols / 4, 0,
                  static_cast<std::size_t>(x_int8_quads_at(cols) - x_int8_groups_at(cols) - cols / 4));
      std::uint8_t* quads = out + x_int8_quads_at(cols);
      if constexpr (width == lanes_r) {
        for (index_t u = 0; u < cols / 64; ++u) {
          const typename V::ireg v = V::iload(xq + 64 * u);
#pragma GCC unroll 4
          for (int e = 0; e < 4; ++e) V::istore(quads + (4 * u + e) * 64, V::quad_x(v, e));
        }
      } else {
        x_int8_quads(xq, cols, quads);
      }
    } else {
      ::sparse_ffn::cpu::kernels::prepare_x_int8<T>(x, cols, out);
    }
  }

  /// Rows idx, idx + 1, … of the list applied to M tokens U at a time (advancing idx past the groups it
  /// took), streaming the group's rows front to back over the column range (U sequential streams,
  /// software-prefetched `Ahead` bytes ahead into L2, across groups) with the U·M coefficients in
  /// registers and y in L1/L2: y += s_0·v_0, then s_1·v_1, …, one FMA each, so the bits do not depend on U.
  template <int U, index_t Ahead, int M, class T>
  static void axpy_row_groups(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                              const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_begin, index_t c_end,
                              index_t& idx) {
    constexpr index_t ahead = Ahead / sizeof(T), per_line = 64 / sizeof(T);
    const index_t span = c_end - c_begin;
    for (; idx + U <= nrows; idx += U) {
      const T* vr[U];
      const T* next[U];
      reg sb[M][U];
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        vr[u] = v + rows[idx + u] * ld;
        next[u] = idx + U + u < nrows ? v + rows[idx + U + u] * ld : vr[u];
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) sb[m][u] = V::set1(s[m][rows[idx + u]]);
      }
      for (index_t c = c_begin; c < c_end; c += width) {
        if ((c - c_begin) % per_line == 0) {  // one prefetch per cache line and row
          const index_t p = c + ahead;
#pragma GCC unroll 8
          for (int u = 0; u < U; ++u)
            V::prefetch_l2(p < c_end ? vr[u] + p : next[u] + c_begin + (p - c_end) % span);
        }
        reg vv[U];
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) vv[u] = V::load(vr[u] + c);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          reg a = V::load(y[m] + c);
#pragma GCC unroll 8
          for (int u = 0; u < U; ++u) a = V::fma(sb[m][u], vv[u], a);
          V::store(y[m] + c, a);
        }
      }
    }
  }

  /// The listed value rows applied to M tokens (axpy_row_groups): for one or two tokens eight rows at a
  /// time, prefetched 1 KiB ahead (the key pass's shape: y loaded and stored once per eight rows), then
  /// four at a time, 2 KiB ahead (more tokens: 4·M coefficients in registers), then one by one. One token,
  /// bf16 rows on avx512 (Ice Lake, 2 threads, d 4096, d_ff 16384, 25%, ReLU and SiLU): the forward's
  /// value pass ~11% less time than four rows 2 KiB ahead (batch 8: ~5%; docs/benchmarks.md, stop 60).
  /// (Into L1 at 1 KiB before: at batch 1 and 8 on Zen 4, f32 5–17% and bf16 at the avx512 level 7–19%
  /// slower; 2026-12-04.)
  template <int M, class T>
  static void axpy_rows(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                        const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_begin, index_t c_end) {
    index_t idx = 0;
    if constexpr (M <= 2) axpy_row_groups<8, 1024, M>(y, s, rows, nrows, v, ld, c_begin, c_end, idx);
    axpy_row_groups<4, 2048, M>(y, s, rows, nrows, v, ld, c_begin, c_end, idx);
    axpy_row_groups<1, 2048, M>(y, s, rows, nrows, v, ld, c_begin, c_end, idx);
  }

  /// axpy_rows for bf16 rows on avx512_bf16 (`bf16_pairs`): the coefficients rounded to bf16 and the
  /// listed rows taken two at a time as column pairs for vdpbf16ps (simd::interleave), eight rows per
  /// pass over the column range (y loaded and stored once per eight rows), then pairs, then a last row
  /// by an FMA. vdpbf16ps adds the earlier row's exact product, then the later one's, each rounded
  /// (simd.hpp; test_isa checks the instruction does so on the machine), which is what two FMAs with
  /// the rounded coefficients give: every element is y + p(r0) + p(r1) + … in ascending row order
  /// whichever rows are paired, so a token's bits do not depend on the rest of its tile (up to
  /// denormals, which the instruction flushes). c_begin, c_end: multiples of 32.
  template <int M>
  static void axpy_rows_pairs(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                              const bfloat16_t* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_begin,
                              index_t c_end) {
    using P = typename V::pairs;
    constexpr index_t ahead = 512;  // elements: 1 KiB, into L2
    const index_t span = c_end - c_begin;
    index_t idx = 0;
    auto pass = [&](auto U_) {  // U rows (U/2 pairs) from idx
      constexpr int U = decltype(U_)::value, NP = U / 2;
      const bfloat16_t* vr[U];
      const bfloat16_t* next[U];
      std::uint32_t cp[M][NP];
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        vr[u] = v + rows[idx + u] * ld;
        next[u] = idx + U + u < nrows ? v + rows[idx + U + u] * ld : vr[u];
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p)
          cp[m][p] = std::uint32_t{::sparse_ffn::detail::float_to_bf16_bits(s[m][rows[idx + 2 * p]])} << 16 |
                     ::sparse_ffn::detail::float_to_bf16_bits(s[m][rows[idx + 2 * p + 1]]);
      for (index_t c = c_begin; c < c_end; c += 32) {  // one cache line per row
        const index_t pf = c + ahead;
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u)
          V::prefetch_l2(pf < c_end ? vr[u] + pf : next[u] + c_begin + (pf - c_end) % span);
        P lo[NP], hi[NP];
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) V::interleave(vr[2 * p] + c, vr[2 * p + 1] + c, lo[p], hi[p]);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          reg a = V::load(y[m] + c), b = V::load(y[m] + c + 16);
#pragma GCC unroll 4
          for (int p = 0; p < NP; ++p) {
            const P h = V::set1_pair(cp[m][p]);
            a = V::dot(a, lo[p], h);
            b = V::dot(b, hi[p], h);
          }
          V::store(y[m] + c, a);
          V::store(y[m] + c + 16, b);
        }
      }
      idx += U;
    };
    while (idx + 8 <= nrows) pass(std::integral_constant<int, 8>{});
    while (idx + 2 <= nrows) pass(std::integral_constant<int, 2>{});
    if (idx < nrows) {
      const bfloat16_t* vi = v + rows[idx] * ld;
      for (int m = 0; m < M; ++m) {
        const reg si = V::set1(to_float(from_float<bfloat16_t>(s[m][rows[idx]])));
        for (index_t c = c_begin; c < c_end; c += width)
          V::store(y[m] + c, V::fma(si, V::load(vi + c), V::load(y[m] + c)));
      }
    }
  }

  /// y[q] += Σ over the listed rows i (ascending) of s[q][i] · v_i for q < M, columns [c_lo, c_hi)
  /// (multiples of width), with the M × outer_vc-vector tile of sums in registers over all the rows and added
  /// to y once: the backward's products (a gradient row += Σ_t coef·x_t over a block's tokens; dX +=
  /// Σ_i da_i·k_i over a block's neurons), whose rows are short and reused from cache, so the tile's
  /// walk across rows costs less than the streaming kernel's y traffic (axpy_rows: y loaded and
  /// stored per four rows). Each element: one sum from zero in row order, then y + sum (`assign`: y =
  /// sum).
  template <int M, class T>
  static void outer_tile(float* const* y, const float* const* s, const std::int32_t* rows, index_t nrows,
                         const T* SPARSE_FFN_RESTRICT v, index_t ld, index_t c_lo, index_t c_hi,
                         bool assign) {
    constexpr int VC = outer_vc;
    constexpr index_t per_line = 64 / sizeof(T);
    const reg one = V::set1(1.0f);
    index_t c = c_lo;
    for (; c + VC * width <= c_hi; c += VC * width) {
      reg a[M][VC];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
        for (int u = 0; u < VC; ++u) a[m][u] = V::zero();
      const bool more = c + 2 * VC * width <= c_hi;
      for (index_t idx = 0; idx < nrows; ++idx) {
        const index_t r = rows[idx];
        const T* vr = v + r * ld + c;
        if (more)  // this row's part of the next column tile, one prefetch per line
          for (index_t p = VC * width; p < 2 * VC * width; p += per_line) V::prefetch(vr + p);
        reg xv[VC];
#pragma GCC unroll 4
        for (int u = 0; u < VC; ++u) xv[u] = V::load(vr + u * width);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const reg sb = V::set1(s[m][r]);
#pragma GCC unroll 4
          for (int u = 0; u < VC; ++u) a[m][u] = V::fma(sb, xv[u], a[m][u]);
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
        for (int u = 0; u < VC; ++u)
          V::store(y[m] + c + u * width,
                   assign ? a[m][u] : V::fma(one, a[m][u], V::load(y[m] + c + u * width)));
    }
    for (; c < c_hi; c += width) {
      reg a[M];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) a[m] = V::zero();
      for (index_t idx = 0; idx < nrows; ++idx) {
        const index_t r = rows[idx];
        const reg xv = V::load(v + r * ld + c);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) a[m] = V::fma(V::set1(s[m][r]), xv, a[m]);
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) V::store(y[m] + c, assign ? a[m] : V::fma(one, a[m], V::load(y[m] + c)));
    }
  }

  /// outer_tile for m outputs, outer_m at a time (each output's sums are its own, so any grouping gives
  /// the same bits); element dtypes only (the backward's weights).
  template <class T>
  static void outer_rows(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                         index_t nrows, const T* v, index_t ld, index_t c_lo, index_t c_hi, bool assign) {
    groups<outer_m>(m, [&](index_t m0, auto M) {
      outer_tile<decltype(M)::value>(y + m0, s + m0, rows, nrows, v, ld, c_lo, c_hi, assign);
    });
  }

  /// out[c · out_ld + i] = float(v_i[c0 + c]) for rows i < nrows and c < nc (a multiple of width), and
  /// 0 for nrows ≤ i < out_ld (a multiple of 16): rows of a matrix transposed into a float panel, so
  /// a product that reduces over their columns can run as outer products (outer_rows) instead of
  /// dot products (the backward's S = dY V_bᵀ). Blocks of width × width, transposed in registers.
  template <class T>
  static void transpose_rows(const T* v, index_t ld, index_t nrows, index_t c0, index_t nc, float* out,
                             index_t out_ld) {
    for (index_t c = 0; c < nc; c += width)
      for (index_t i0 = 0; i0 < out_ld; i0 += width) {
        reg r[width];
        if (i0 + width <= nrows) {
#pragma GCC unroll 16
          for (int j = 0; j < width; ++j) r[j] = V::load(v + (i0 + j) * ld + c0 + c);
        } else {
          for (int j = 0; j < width; ++j)
            r[j] = i0 + j < nrows ? V::load(v + (i0 + j) * ld + c0 + c) : V::zero();
        }
        float* o = out + c * out_ld + i0;
        if constexpr (width == 16)
          V::transpose16(r);
        else
          V::transpose8(r);
#pragma GCC unroll 16
        for (int j = 0; j < width; ++j) V::store(o + j * out_ld, r[j]);
      }
  }

  /// out[i · out_ld + c] = float(v_i[c0 + c]) for rows i < nrows and c < nc (a multiple of width): a
  /// column range of a block's rows widened to a float panel, so the backward's products over them run
  /// on float rows (outer_rows<float>: no conversion per use; the widening is exact).
  template <class T>
  static void widen_rows(const T* v, index_t ld, index_t nrows, index_t c0, index_t nc, float* out,
                         index_t out_ld) {
    for (index_t i = 0; i < nrows; ++i) {
      const T* src = v + i * ld + c0;
      float* dst = out + i * out_ld;
      for (index_t c = 0; c < nc; c += width) V::store(dst + c, V::load(src + c));
    }
  }

  // ---- level-1 loops for host code outside the forward (the converter's router training and the
  // fitted routers' scores): any n, any alignment; a fixed order for a given ISA ------------------------

  /// Σ a[j]·b[j], j < n: four vector accumulators over blocks of 4·width, one over the remaining whole
  /// vectors, then the scalar tail.
  static float vdot(const float* a, const float* b, index_t n) {
    reg s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
    index_t j = 0;
    for (; j + 4 * width <= n; j += 4 * width) {
      s0 = V::fma(V::load(a + j), V::load(b + j), s0);
      s1 = V::fma(V::load(a + j + width), V::load(b + j + width), s1);
      s2 = V::fma(V::load(a + j + 2 * width), V::load(b + j + 2 * width), s2);
      s3 = V::fma(V::load(a + j + 3 * width), V::load(b + j + 3 * width), s3);
    }
    for (; j + width <= n; j += width) s0 = V::fma(V::load(a + j), V::load(b + j), s0);
    float s = (V::hsum(s0) + V::hsum(s1)) + (V::hsum(s2) + V::hsum(s3));
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
  }

  /// y[j] += c·x[j], j < n.
  static void vaxpy(float c, const float* x, float* y, index_t n) {
    const reg cv = V::set1(c);
    index_t j = 0;
    for (; j + width <= n; j += width) V::store(y + j, V::fma(cv, V::load(x + j), V::load(y + j)));
    for (; j < n; ++j) y[j] += c * x[j];
  }

  /// Adam on n parameters (the converter's router training): m = b1·m + (1−b1)·g,
  /// v = b2·v + (1−b2)·g², p −= lr·(m/c1) / (√(v/c2) + eps), each element on its own; the tail runs
  /// the same vector code on a padded copy, so an element's bits depend only on its inputs.
  static void adam(float* p, float* m, float* v, const float* g, index_t n, const adam_step& h) {
    const reg b1 = V::set1(h.b1), a1 = V::set1(1 - h.b1), b2 = V::set1(h.b2), a2 = V::set1(1 - h.b2),
              lr = V::set1(h.lr), c1 = V::set1(h.c1), c2 = V::set1(h.c2), eps = V::set1(h.eps);
    auto one = [&](float* pj, float* mj, float* vj, const float* gj) {
      const reg gv = V::load(gj);
      const reg mv = V::add(V::mul(b1, V::load(mj)), V::mul(a1, gv));
      const reg vv = V::add(V::mul(b2, V::load(vj)), V::mul(V::mul(a2, gv), gv));
      V::store(mj, mv);
      V::store(vj, vv);
      V::store(pj,
               V::sub(V::load(pj), V::div(V::mul(lr, V::div(mv, c1)), V::add(V::sqrt(V::div(vv, c2)), eps))));
    };
    index_t j = 0;
    for (; j + width <= n; j += width) one(p + j, m + j, v + j, g + j);
    if (j < n) {
      float tp[width] = {}, tm[width] = {}, tv[width] = {}, tg[width] = {};
      for (index_t q = j; q < n; ++q) tp[q - j] = p[q], tm[q - j] = m[q], tv[q - j] = v[q], tg[q - j] = g[q];
      one(tp, tm, tv, tg);
      for (index_t q = j; q < n; ++q) p[q] = tp[q - j], m[q] = tm[q - j], v[q] = tv[q - j];
    }
  }

  /// out[j] = f(z[j]) for j < n on whole vectors, the tail on a zero-padded copy (the same code).
  template <class F>
  static void map_rows(const float* z, float* out, index_t n, F f) {
    index_t j = 0;
    for (; j + width <= n; j += width) V::store(out + j, f(V::load(z + j)));
    if (j < n) {
      float tz[width] = {}, to[width];
      for (index_t q = j; q < n; ++q) tz[q - j] = z[q];
      V::store(to, f(V::load(tz)));
      for (index_t q = j; q < n; ++q) out[q] = to[q - j];
    }
  }
  /// out[j] = 1 / (1 + e^{−z[j]}) (the exp below: NaN is clamped, not propagated).
  static void vsigmoid(const float* z, float* out, index_t n) {
    map_rows(z, out, n,
             [](reg x) { return V::div(V::set1(1.0f), V::add(V::set1(1.0f), exp(V::sub(V::zero(), x)))); });
  }
  /// out[j] = tanh(z[j]) as 1 − 2 / (e^{2z} + 1) (saturates to ±1; absolute error ~1e-7, the
  /// formula the converter's MLP router used with libm's expf).
  static void vtanh(const float* z, float* out, index_t n) {
    map_rows(z, out, n, [](reg x) {
      return V::sub(V::set1(1.0f), V::div(V::set1(2.0f), V::add(exp(V::add(x, x)), V::set1(1.0f))));
    });
  }

  // ---- vectorised activations (the converter's dense passes; activation.hpp has the scalar ones) --

  /// e^x: Cephes' single-precision expf (x = n ln 2 + r, a degree-6 polynomial in r, times 2^n),
  /// ~1 ulp; x clamped to [-88.38, 88.38] (below: ~0, 2^-127 rounds to 0; NaN: clamped too — the
  /// activations multiply by a, which keeps the NaN).
  static reg exp(reg x) {
    x = V::min(V::max(x, V::set1(-88.3762626647949f)), V::set1(88.3762626647949f));
    const reg n = V::floor(V::fma(x, V::set1(1.44269504088896341f), V::set1(0.5f)));
    x = V::fma(n, V::set1(-0.693359375f), x);
    x = V::fma(n, V::set1(2.12194440e-4f), x);
    reg y = V::set1(1.9875691500e-4f);
    y = V::fma(y, x, V::set1(1.3981999507e-3f));
    y = V::fma(y, x, V::set1(8.3334519073e-3f));
    y = V::fma(y, x, V::set1(4.1665795894e-2f));
    y = V::fma(y, x, V::set1(1.6666665459e-1f));
    y = V::fma(y, x, V::set1(5.0000001201e-1f));
    y = V::fma(y, V::mul(x, x), V::add(x, V::set1(1.0f)));
    return V::mul(y, V::pow2i(n));
  }

  /// erfc(z) = t·exp(−z² + P(t)), t = 1 / (1 + |z|/2), for z >= 0 (2 − that below): the Chebyshev
  /// fit of Numerical Recipes (erfcc; fractional error < 1.2e-7 in exact arithmetic, ~2e-5 at most in
  /// float where erfc < 1e-30). No cancellation in either tail, unlike 1 + erf.
  static reg erfc(reg z) {
    const reg az = V::abs(z);
    const reg t = V::div(V::set1(1.0f), V::fma(az, V::set1(0.5f), V::set1(1.0f)));
    reg p = V::set1(0.17087277f);
    p = V::fma(p, t, V::set1(-0.82215223f));
    p = V::fma(p, t, V::set1(1.48851587f));
    p = V::fma(p, t, V::set1(-1.13520398f));
    p = V::fma(p, t, V::set1(0.27886807f));
    p = V::fma(p, t, V::set1(-0.18628806f));
    p = V::fma(p, t, V::set1(0.09678418f));
    p = V::fma(p, t, V::set1(0.37409196f));
    p = V::fma(p, t, V::set1(1.00002368f));
    p = V::fma(p, t, V::set1(-1.26551223f));
    const reg r = V::mul(t, exp(V::fma(V::sub(V::zero(), az), az, p)));
    return V::select_ge0(z, r, V::sub(V::set1(2.0f), r));
  }

  /// The plain activation of Act (its inner one when gated), as a value of that tag type.
  template <class Act>
  static auto plain_of() {
    if constexpr (Act::gated)
      return typename Act::inner{};
    else
      return Act{};
  }

  /// A plain activation of a vector (activation.hpp's formulas; GELU as a/2 · erfc(−a/√2)).
  template <class Act>
  static reg activate_plain(reg a) {
    if constexpr (std::is_same<Act, act::gelu_erf>::value) {
      return V::mul(V::mul(V::set1(0.5f), a), gelu_erfc(a));
    } else if constexpr (std::is_same<Act, act::gelu_tanh>::value) {
      return V::div(a, gelu_tanh_den(a));
    } else {
      static_assert(std::is_same<Act, act::silu>::value, "activate_plain: gelu_erf, gelu_tanh or silu");
      return V::div(a, silu_den(a));
    }
  }
  /// erfc(−a/√2) = 2·Φ(a): GELU-erf is a/2 times it.
  static reg gelu_erfc(reg a) {
    return erfc(V::mul(a, V::set1(-0.70710678118654752f)));
  }
  /// 1 + e^{−2y}, y = √(2/π)·(a + 0.044715·a³): GELU-tanh a/2 · (1 + tanh y) is a over it (no
  /// cancellation where tanh y is near −1), and (1 + tanh y)/2 is 1 over it.
  static reg gelu_tanh_den(reg a) {
    const reg y2 =
        V::mul(V::set1(-1.5957691216057307f), V::fma(V::mul(V::set1(0.044715f), a), V::mul(a, a), a));
    return V::add(V::set1(1.0f), exp(y2));
  }
  /// 1 + e^{−a}: SiLU is a over it, σ(a) 1 over it.
  static reg silu_den(reg a) {
    return V::add(V::set1(1.0f), exp(V::sub(V::zero(), a)));
  }

  /// h[j] = activate<Act>(a[j], u[j]) for j < n (u: the up projections, gated only; else unused):
  /// GELU, SiLU and their gated forms vectorised (exp and erfc above; within ~1e-6 relative of
  /// the scalar functions, not bit-equal to them); ReLU and its NaN rule scalar. The tail runs the
  /// same vector code on a padded copy, so every element's bits depend only on its inputs.
  template <class Act>
  static void activate_rows(const float* a, const float* u, float* h, index_t n) {
    using Inner = decltype(plain_of<Act>());
    if constexpr (std::is_same<Inner, act::relu>::value) {
      for (index_t j = 0; j < n; ++j) h[j] = activate<Act>(a[j], Act::gated ? u[j] : 0.0f);
    } else {
      auto one = [&](const float* av, const float* uv, float* hv) {
        reg r = activate_plain<Inner>(V::load(av));
        if constexpr (Act::gated) r = V::mul(r, V::load(uv));
        V::store(hv, r);
      };
      index_t j = 0;
      for (; j + width <= n; j += width) one(a + j, Act::gated ? u + j : nullptr, h + j);
      if (j < n) {
        float ta[width] = {}, tu[width] = {}, th[width];
        for (index_t q = j; q < n; ++q) {
          ta[q - j] = a[q];
          if constexpr (Act::gated) tu[q - j] = u[q];
        }
        one(ta, tu, th);
        for (index_t q = j; q < n; ++q) h[q] = th[q - j];
      }
    }
  }

  /// A plain activation of a vector and its derivative: f = act(a), g = act'(a) (activation.hpp's
  /// formulas; GELU and SiLU within ~1e-6 relative of the scalar functions, f as activate_plain; ReLU
  /// exactly, its NaN rule and the sign of zero included).
  template <class Act>
  static void activate_and_grad(reg a, reg& f, reg& g) {
    const reg one = V::set1(1.0f);
    if constexpr (std::is_same<Act, act::relu>::value) {
      const reg na = V::sub(V::zero(), a);
      f = V::select_gt0(na, V::zero(), a);                         // a < 0 ? 0 : a
      g = V::select_gt0(a, one, V::select_ge0(na, V::zero(), a));  // a > 0 ? 1 : a <= 0 ? 0 : NaN
    } else if constexpr (std::is_same<Act, act::silu>::value) {
      const reg den = silu_den(a), s = V::div(one, den);  // σ(a)
      f = V::div(a, den);
      g = V::mul(s, V::fma(a, V::sub(one, s), one));  // σ(a)·(1 + a·(1 − σ(a)))
    } else if constexpr (std::is_same<Act, act::gelu_erf>::value) {
      const reg e = gelu_erfc(a), phi = V::mul(V::set1(0.5f), e);  // Φ(a)
      f = V::mul(V::mul(V::set1(0.5f), a), e);
      g = V::fma(V::mul(a, V::set1(0.39894228040143268f)), exp(V::mul(V::set1(-0.5f), V::mul(a, a))),
                 phi);  // Φ(a) + a·φ(a)
    } else {
      static_assert(std::is_same<Act, act::gelu_tanh>::value, "activate_and_grad: a plain activation");
      // s = (1 + tanh y)/2 = 1 / gelu_tanh_den; 1 − tanh² y = 4·s·(1 − s):
      // g = s + 2c·a·s·(1 − s)·(1 + 0.134145·a²), c = √(2/π).
      const reg den = gelu_tanh_den(a), s = V::div(one, den);
      f = V::div(a, den);
      g = V::fma(V::mul(V::mul(V::set1(1.5957691216057307f), a), V::mul(s, V::sub(one, s))),
                 V::fma(V::set1(0.134145f), V::mul(a, a), one), s);
    }
  }

  /// The backward's chain rule over the n neurons of one routing slot: with dh = wt·s[j],
  /// da[j] = dh·act'(a[j]) (gated: dh·u[j]·inner'(a[j]), and du[j] = dh·inner(a[j])), wh[j] = wt·h[j];
  /// returns Σ_j h[j]·s[j] (per lane, then the lanes summed: a fixed order). The tail runs the same
  /// vector code on a zero-padded copy (padded lanes add an exact 0).
  template <class Act>
  static float chain_rows(const float* a, const float* u, const float* s, float wt, index_t n, float* da,
                          float* du, float* wh) {
    using Inner = decltype(plain_of<Act>());
    const reg w = V::set1(wt);
    reg acc = V::zero();
    auto one = [&](const float* av, const float* uv, const float* sv, float* dav, float* duv, float* whv) {
      reg f, g;
      activate_and_grad<Inner>(V::load(av), f, g);
      const reg sr = V::load(sv), dh = V::mul(w, sr);
      reg h = f;
      if constexpr (Act::gated) {
        const reg ur = V::load(uv);
        V::store(dav, V::mul(V::mul(dh, ur), g));
        V::store(duv, V::mul(dh, f));
        h = V::mul(f, ur);
      } else {
        V::store(dav, V::mul(dh, g));
      }
      V::store(whv, V::mul(w, h));
      acc = V::fma(h, sr, acc);
    };
    index_t j = 0;
    for (; j + width <= n; j += width)
      one(a + j, Act::gated ? u + j : nullptr, s + j, da + j, Act::gated ? du + j : nullptr, wh + j);
    if (j < n) {
      float ta[width] = {}, tu[width] = {}, tsv[width] = {}, tda[width], tdu[width], twh[width];
      for (index_t q = j; q < n; ++q) {
        ta[q - j] = a[q];
        tsv[q - j] = s[q];
        if constexpr (Act::gated) tu[q - j] = u[q];
      }
      one(ta, tu, tsv, tda, tdu, twh);
      for (index_t q = j; q < n; ++q) {
        da[q] = tda[q - j];
        wh[q] = twh[q - j];
        if constexpr (Act::gated) du[q] = tdu[q - j];
      }
    }
    return V::hsum(acc);
  }

  /// y[q] += sum over the listed rows i of s[q][i] * v[i] for q < m tokens (rows_m at a time), columns
  /// [c_lo, c_hi) (multiples of width; of 64 for quantised rows). rows: ascending, nrows of them.
  /// cols: values per row (quantised rows: where the scales start). Pairs: bf16 rows on avx512_bf16
  /// take the pair kernel (axpy_rows_pairs; columns multiples of 32), else the float one.
  template <class T, bool Pairs>
  static void apply_rows(float* const* y, const float* const* s, index_t m, const std::int32_t* rows,
                         index_t nrows, const T* v, index_t ld, index_t cols, index_t c_lo, index_t c_hi) {
    // Groups of up to rows_m tokens: a token's bits do not depend on its group (the file comment).
    groups<rows_m>(m, [&](index_t m0, auto M) {
      float* const* yg = y + m0;
      const float* const* sg = s + m0;
      if constexpr (vnni_values<T>)
        axpy_rows_vnni<decltype(M)::value, T>(yg, sg, rows, nrows, reinterpret_cast<const std::uint8_t*>(v), ld,
                                              cols, c_lo, c_hi);
      else if constexpr (int_values<T>)
        axpy_rows_int<decltype(M)::value, T>(yg, sg, rows, nrows, reinterpret_cast<const std::uint8_t*>(v), ld,
                                             cols, c_lo, c_hi);
      else if constexpr (is_quantized<T>::value)
        axpy_rows_q<decltype(M)::value>(yg, sg, rows, nrows, v, ld, cols, c_lo, c_hi);
      else if constexpr (Pairs && bf16_pairs<T>)
        axpy_rows_pairs<decltype(M)::value>(yg, sg, rows, nrows, v, ld, c_lo, c_hi);
      else
        axpy_rows<decltype(M)::value>(yg, sg, rows, nrows, v, ld, c_lo, c_hi);
    });
  }
};

}  // namespace SPARSE_FFN_KERNEL_NS
