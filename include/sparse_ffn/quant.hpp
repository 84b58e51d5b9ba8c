// sparse_ffn — block-quantised weights (q8, q4) and the row format of every weight dtype.
//
// A weight row (a key, up or value row of a block, an Avg-K centroid, a learned-gate row) covers the
// d_model inputs (or outputs) of one neuron. For float / half / bfloat16 a row is `ld` elements, the
// first d_model of them the values and the rest zeros. A quantised row splits the d_model values into
// groups of 32 consecutive ones, each with one scale:
//
//   q8  value = q · s,        q int8 in [-127, 127]        8 bits + 16 bits per 32  (8.5 bits / value)
//   q4  value = (u − 8) · s,  u a nibble in [0, 15]         4 bits + 16 bits per 32  (4.5 bits / value)
//
// Byte layout of one row (`row_format<T>`; cols = d_model rounded up to 64 values for q8, 128 for q4:
// one 64-byte line of quants, the kernels' unit):
//
//   [ quants: q8 cols bytes, value c at byte c
//             q4 cols/2 bytes in chunks of 32 bytes per 64 values: byte j of chunk k holds value 64k+j
//                in its low nibble and value 64k+32+j in its high nibble (one AVX-512 load, an AND and
//                a shift give two whole groups)                                                          ]
//   [ scales: cols/32 bfloat16, group k's scale at index k, padded with zeros to a 64-byte line        ]
//   [ zeros up to ld, an odd number of 64-byte lines (as every row: layout.hpp)                        ]
//
// So a row is one contiguous, 64-byte aligned run (quants, then scales) and a block is still one run.
// Values past d_model (the tail of the last group and the whole groups up to cols) are zero: a tail
// group's scale comes from its real values only. Scales are bfloat16 rather than ggml's binary16: the
// product q·s of an int8 (or nibble) and a bfloat16 is exact in float (≤ 16 significant bits), the
// range is float's (no overflow for large weights, no subnormal precision loss for small groups), and
// widening one is a shift. Because q·s is exact, a kernel that dequantises and then multiplies in float
// computes exactly what a float kernel computes on the dequantised weights (`dequantize` / unpack).
//
// Quantisation (host, at pack time): q8 rounds to nearest with s = max|v| / 127 (rounded to bfloat16,
// then every q from the stored s, so the grid is the one the kernels use). q4 searches the scale: v_max
// (the value of largest magnitude) placed at −8, −7.75, …, −7 (−8 is ggml's q4_0 rule) or at 7, 6.5,
// each candidate also refitted once by least squares to its own integers; the one with the least
// squared error on the group wins among those whose every value is within one step. One candidate is
// the max-abs rule with its bfloat16 scale rounded away from zero, which always is within one step, so
// the search is never worse than that rule (checked in test_quant on 2000 Gaussian groups a run).
// Error bound per value: s/2 for q8; for q4 one step s (the range −8..7 is asymmetric: a value of the
// opposite sign to v_max may clamp at 7). NaN or Inf weights are rejected (status invalid_argument): a
// quantised model cannot carry them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"
#include "error.hpp"
#include "types.hpp"

namespace sparse_ffn {

/// One byte of a q8 row (see the file comment): an opaque storage unit, never a value on its own.
struct alignas(1) q8_t {
  std::uint8_t bits;
};
/// One byte of a q4 row (two nibbles of two different values; see the file comment).
struct alignas(1) q4_t {
  std::uint8_t bits;
};
static_assert(sizeof(q8_t) == 1 && sizeof(q4_t) == 1, "quantised storage units are bytes");

template <class T>
struct is_quantized
    : std::integral_constant<bool, std::is_same<T, q8_t>::value || std::is_same<T, q4_t>::value> {};
template <class T>
inline constexpr bool is_quantized_v = is_quantized<std::remove_cv_t<T>>::value;

/// Weight dtypes: the element types plus the quantised formats.
template <class T>
struct is_weight_dtype : std::integral_constant<bool, is_dtype<T>::value || is_quantized<T>::value> {};

template <>
struct dtype_traits<q8_t> {
  static constexpr dtype id = dtype::q8;
  static constexpr const char* name = "q8";
  using accum_type = float;
};
template <>
struct dtype_traits<q4_t> {
  static constexpr dtype id = dtype::q4;
  static constexpr const char* name = "q4";
  using accum_type = float;
};

/// Values per quantisation group (one scale each).
inline constexpr index_t k_quant_group = 32;
/// The kernels' column unit for quantised rows: values per 64-value chunk (two groups).
inline constexpr index_t k_quant_chunk = 64;

namespace detail {

SPARSE_FFN_HD index_t round_up(index_t v, index_t m) {
  return (v + m - 1) / m * m;
}

/// Row stride in units of T for `payload` units: whole 64-byte lines, an odd number of them.
template <class T>
constexpr index_t odd_lines(index_t payload_units) {
  constexpr index_t per_line = static_cast<index_t>(k_row_alignment / sizeof(T));
  index_t lines = (payload_units + per_line - 1) / per_line;
  if (lines % 2 == 0) ++lines;
  return lines * per_line;
}

}  // namespace detail

/// Row format of an unquantised weight dtype: `ld` elements, values first, zeros after.
template <class T, class Enable = void>
struct row_format {
  static_assert(is_dtype<T>::value,
                "sparse_ffn: weight dtype must be float, half_t, bfloat16_t, q8_t or q4_t");
  static constexpr bool quantized = false;
  /// Values per row the kernels walk (x, y and accumulators are padded to it): the whole row.
  static constexpr index_t cols(index_t d_model) { return detail::odd_lines<T>(d_model); }
  /// Row stride in elements.
  static constexpr index_t ld(index_t d_model) { return detail::odd_lines<T>(d_model); }
  /// Units a row needs at least (a hand-made view may use a larger 64-byte multiple).
  static constexpr index_t min_ld(index_t d_model) { return d_model; }
  /// Units a file stores per row (the values, no padding).
  static constexpr index_t payload_bytes(index_t d_model) { return d_model; }
  static float get(const T* row, index_t c, index_t /*d_model*/) { return to_float(row[c]); }
  /// Writes the row (values then zeros up to ld) from src[0..d_model).
  static void encode(const float* src, index_t d_model, T* row, index_t ld) {
    for (index_t c = 0; c < d_model; ++c) row[c] = from_float<T>(src[c]);
    for (index_t c = d_model; c < ld; ++c) row[c] = from_float<T>(0.0f);
  }
  static void decode(const T* row, index_t d_model, float* dst) {
    for (index_t c = 0; c < d_model; ++c) dst[c] = to_float(row[c]);
  }
};

/// The 16-byte units of a q8/q4 row's quants, as the GPU kernels read them (one 16-byte load per
/// thread; host and device share this code, test_quant checks it against row_format::get). The unit at
/// byte offset `byte` (a multiple of 16, below quant_bytes) holds `runs` runs of 16 consecutive values:
/// run r starts at value run_start(byte, r), a multiple of 16, so a run lies in one group of 32.
template <class T>
struct quant_unit {
  static_assert(is_quantized<T>::value, "quant_unit is for q8_t / q4_t");
  static constexpr int runs = std::is_same<T, q8_t>::value ? 1 : 2;
  static constexpr int values = 16 * runs;
  /// Bytes of quants of a row of `cols` values (row_format::quant_bytes); the scales follow them.
  SPARSE_FFN_HD static index_t quant_bytes(index_t cols) { return runs == 1 ? cols : cols / 2; }
  SPARSE_FFN_HD static index_t run_start(index_t byte, int r) {
    if constexpr (runs == 1) {
      return byte + 0 * r;
    } else {  // byte j of a 32-byte chunk: value 64·chunk + j (low nibble), + 32 (high nibble)
      return byte / 32 * 64 + byte % 32 + 32 * r;
    }
  }
  /// out[16·r + i] = the integer of value run_start(byte, r) + i (q8: q; q4: u − 8) from the unit's bytes.
  SPARSE_FFN_HD static void ints(const std::uint8_t* raw, int* out) {
    for (int i = 0; i < 16; ++i) {
      if constexpr (runs == 1) {
        out[i] = static_cast<int>(static_cast<std::int8_t>(raw[i]));
      } else {
        out[i] = static_cast<int>(raw[i] & 0x0f) - 8;
        out[16 + i] = static_cast<int>(raw[i] >> 4) - 8;
      }
    }
  }
};

/// Row format of q8 / q4 (see the file comment).
template <class T>
struct row_format<T, std::enable_if_t<is_quantized<T>::value>> {
  static constexpr bool quantized = true;
  static constexpr int bits = std::is_same<T, q8_t>::value ? 8 : 4;
  /// q8: d_model rounded up to 64; q4: to 128 (one 64-byte line of nibbles: the int8 kernels' load).
  static constexpr index_t cols(index_t d_model) { return detail::round_up(d_model, bits == 8 ? 64 : 128); }
  /// Bytes of quants (the scales start there).
  static constexpr index_t quant_bytes(index_t cols_) { return cols_ * bits / 8; }
  static constexpr index_t groups(index_t cols_) { return cols_ / k_quant_group; }
  static constexpr index_t min_ld(index_t d_model) {
    return quant_bytes(cols(d_model)) + detail::round_up(groups(cols(d_model)) * 2, 64);
  }
  static constexpr index_t ld(index_t d_model) { return detail::odd_lines<T>(min_ld(d_model)); }
  /// Bytes of quants and scales of a row, without padding (what a file stores per row).
  static constexpr index_t payload_bytes(index_t d_model) {
    return quant_bytes(cols(d_model)) + groups(cols(d_model)) * 2;
  }

  static const bfloat16_t* scales(const T* row, index_t cols_) {
    return reinterpret_cast<const bfloat16_t*>(reinterpret_cast<const std::uint8_t*>(row) +
                                               quant_bytes(cols_));
  }
  /// The integer of value c (q8: q; q4: u − 8).
  static int quant(const T* row, index_t c) {
    const std::uint8_t* p = reinterpret_cast<const std::uint8_t*>(row);
    if constexpr (bits == 8) {
      return static_cast<int>(static_cast<std::int8_t>(p[c]));
    } else {
      const index_t chunk = c / k_quant_chunk, j = c % k_quant_chunk;
      const std::uint8_t b = p[chunk * 32 + (j % 32)];
      return static_cast<int>(j < 32 ? (b & 0x0f) : (b >> 4)) - 8;
    }
  }
  static float get(const T* row, index_t c, index_t d_model) {
    return static_cast<float>(quant(row, c)) * to_float(scales(row, cols(d_model))[c / k_quant_group]);
  }
  static void decode(const T* row, index_t d_model, float* dst) {
    for (index_t c = 0; c < d_model; ++c) dst[c] = get(row, c, d_model);
  }

  /// Quantises src[0..d_model) into the row (quants, scales, zero padding up to ld). Throws on a
  /// non-finite value.
  static void encode(const float* src, index_t d_model, T* row, index_t ld) {
    const index_t nc = cols(d_model);
    std::uint8_t* p = reinterpret_cast<std::uint8_t*>(row);
    for (index_t u = 0; u < ld; ++u) p[u] = 0;
    bfloat16_t* sc = reinterpret_cast<bfloat16_t*>(p + quant_bytes(nc));
    for (index_t c = 0; c < d_model; ++c)
      detail::require(std::isfinite(src[c]), status::invalid_argument,
                      "cannot quantise a non-finite weight (", src[c], " at column ", c, ")");
    float v[k_quant_group];
    int q[k_quant_group];
    for (index_t grp = 0; grp < groups(nc); ++grp) {
      for (index_t i = 0; i < k_quant_group; ++i) {
        const index_t c = grp * k_quant_group + i;
        v[i] = c < d_model ? src[c] : 0.0f;
      }
      const float s = quantize_group(v, q);
      sc[grp] = bfloat16_t(s);
      for (index_t i = 0; i < k_quant_group; ++i) {
        const index_t c = grp * k_quant_group + i;
        if constexpr (bits == 8) {
          p[c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q[i]));
        } else {
          const index_t chunk = c / k_quant_chunk, j = c % k_quant_chunk;
          std::uint8_t& b = p[chunk * 32 + (j % 32)];
          const auto u = static_cast<std::uint8_t>(q[i] + 8);
          b = static_cast<std::uint8_t>(j < 32 ? ((b & 0xf0) | u) : ((b & 0x0f) | (u << 4)));
        }
      }
    }
  }

  /// Quantises one group of 32 values: returns the scale (exactly representable in bfloat16) and the
  /// integers q (q8: [-127, 127]; q4: [-8, 7]).
  static float quantize_group(const float* v, int* q) {
    float amax = 0.0f, vmax = 0.0f;
    for (index_t i = 0; i < k_quant_group; ++i)
      if (std::fabs(v[i]) > amax) {
        amax = std::fabs(v[i]);
        vmax = v[i];
      }
    if (amax == 0.0f) {
      for (index_t i = 0; i < k_quant_group; ++i) q[i] = 0;
      return 0.0f;
    }
    if constexpr (bits == 8) {
      const float s = stored_scale(amax / 127.0f);
      round_with(v, s, -127, 127, q);
      return s;
    } else {
      // Candidates: v_max at -8, -7.75, ..., -7 or at 7, 6.5, each followed by one least-squares refit of s
      // to its own integers (s = Σ q v / Σ q²). Keep the least squared error.
      float best_s = 0.0f;
      double best_err = -1.0;
      int tmp[k_quant_group];
      auto consider = [&](float s) {
        if (!(s != 0.0f) || !std::isfinite(s)) return;
        double worst = 0;
        const double err = round_with(v, s, -8, 7, tmp, &worst);
        if (worst > std::fabs(static_cast<double>(s)) * (1 + 1e-6)) return;  // keep the one-step bound
        if (best_err < 0 || err < best_err) {
          best_err = err;
          best_s = s;
          for (index_t i = 0; i < k_quant_group; ++i) q[i] = tmp[i];
        }
      };
      // The max-abs rule with its scale rounded away from zero: |s| >= max|v| / 8, so it is always within
      // one step (rounded to nearest, s may come out below max|v| / 8 and clamp a value of the other sign
      // at 7 by more than a step); the search below never does worse than it.
      consider(outward_scale(vmax / -8.0f));
      static constexpr float targets[] = {-8.0f, -7.75f, -7.5f, -7.25f, -7.0f, 7.0f, 6.5f};
      for (const float target : targets) {
        const float s = stored_scale(vmax / target);
        consider(s);
        if (!(s != 0.0f)) continue;
        round_with(v, s, -8, 7, tmp);
        double qv = 0, qq = 0;
        for (index_t i = 0; i < k_quant_group; ++i) {
          qv += static_cast<double>(tmp[i]) * v[i];
          qq += static_cast<double>(tmp[i]) * tmp[i];
        }
        if (qq > 0) consider(stored_scale(static_cast<float>(qv / qq)));
      }
      return best_s;
    }
  }

 private:
  /// A scale as stored (bfloat16, round to nearest even), as a float.
  static float stored_scale(float s) { return to_float(bfloat16_t(s)); }

 public:
  /// A scale as stored, rounded away from zero (|result| >= |s|; s finite and below bfloat16's max).
  static float outward_scale(float s) {
    const bfloat16_t b(s);
    if (std::fabs(to_float(b)) >= std::fabs(s)) return to_float(b);
    return to_float(bfloat16_t::from_bits(static_cast<std::uint16_t>(b.bits + 1)));
  }

 private:
  /// q = clamp(round(v / s)); returns the squared error of q·s.
  static double round_with(const float* v, float s, int lo, int hi, int* q, double* worst = nullptr) {
    double err = 0.0;
    for (index_t i = 0; i < k_quant_group; ++i) {
      float r = std::nearbyint(v[i] / s);
      r = r < static_cast<float>(lo) ? static_cast<float>(lo)
                                     : (r > static_cast<float>(hi) ? static_cast<float>(hi) : r);
      q[i] = static_cast<int>(r);
      const double e = static_cast<double>(q[i]) * static_cast<double>(s) - static_cast<double>(v[i]);
      err += e * e;
      if (worst) *worst = std::max(*worst, std::fabs(e));
    }
    return err;
  }
};

/// Sixteen q8/q4 key rows re-laid with rows in lanes: the key kernels of the AVX512_VNNI levels (q8/q4)
/// and of AVX2 (q4: each tile as two halves of 8 rows, the low and high 32 bytes of every vector) read
/// them without transposes, as one stream (kernels.inl dots_tiles, dots_tiles8). A model's keys and up rows
/// take this form in place, 16 rows of a block per tile, with blocked_ffn::tile_keys (layout.hpp key_tiles; a
/// CPU forward form, docs/design.md "Key tiles"). For each 64-byte line j of the rows' quants (row_format:
/// quant_bytes / 64 lines), one line unit:
///
///   [ 16 vectors of 64 bytes: vector e, dword i = bytes 4e .. 4e + 3 of line j of row i               ]
///   [ the scales of the line's groups (q8 2, q4 4; ascending), 16 bfloat16 each, row i at index i     ]
///
/// So a tile is one stream, line units of 1088 (q8) or 1152 (q4) bytes, and no larger than the 16 rows
/// (bytes(cols) ≤ 16 · ld · sizeof(T)).
template <class T>
struct key_tile {
  static_assert(is_quantized<T>::value, "key_tile is for q8_t / q4_t");
  using F = row_format<T>;
  static constexpr index_t rows = 16;
  static constexpr index_t groups_per_line = std::is_same<T, q8_t>::value ? 2 : 4;
  static constexpr index_t unit_bytes = rows * 64 + groups_per_line * rows * 2;
  static constexpr index_t lines(index_t cols) { return F::quant_bytes(cols) / 64; }
  static constexpr index_t bytes(index_t cols) { return lines(cols) * unit_bytes; }
  /// Writes bytes(cols) bytes at out from 16 rows (row i at rows + i·ld; cols = row_format::cols).
  static void pack(const T* rows_in, index_t ld, index_t cols, std::uint8_t* out) {
    for (index_t j = 0; j < lines(cols); ++j) {
      std::uint8_t* u = out + j * unit_bytes;
      for (index_t i = 0; i < rows; ++i) {
        const T* row = rows_in + i * ld;
        const auto* q = reinterpret_cast<const std::uint8_t*>(row) + 64 * j;
        for (index_t e = 0; e < 16; ++e)
          for (index_t b = 0; b < 4; ++b) u[64 * e + 4 * i + b] = q[4 * e + b];
        const bfloat16_t* sc = F::scales(row, cols) + groups_per_line * j;
        for (index_t g = 0; g < groups_per_line; ++g) std::memcpy(u + rows * 64 + 32 * g + 2 * i, sc + g, 2);
      }
    }
  }
  /// The inverse of pack: writes the 16 rows' quants and scales (the rest of each row untouched).
  static void unpack(const std::uint8_t* tile, index_t cols, T* rows_out, index_t ld) {
    for (index_t j = 0; j < lines(cols); ++j) {
      const std::uint8_t* u = tile + j * unit_bytes;
      for (index_t i = 0; i < rows; ++i) {
        auto* row = reinterpret_cast<std::uint8_t*>(rows_out + i * ld);
        for (index_t e = 0; e < 16; ++e)
          for (index_t b = 0; b < 4; ++b) row[64 * j + 4 * e + b] = u[64 * e + 4 * i + b];
        std::uint8_t* sc = row + F::quant_bytes(cols) + 2 * groups_per_line * j;
        for (index_t g = 0; g < groups_per_line; ++g)
          std::memcpy(sc + 2 * g, u + rows * 64 + 32 * g + 2 * i, 2);
      }
    }
  }
};

/// Thirty-two q8/q4 value rows (one chunk of the integer value pass: kernels.inl axpy_rows_vnni) re-laid
/// as four-row quads, each dword one column's bytes of four rows: the value kernel of the AVX512_VNNI
/// levels feeds them to vpdpbusd as they are, with no transposes and one stream per tile (kernels.inl
/// axpy_tiles). A model's value rows take this form in place, 32 rows of a block per tile, with
/// blocked_ffn::tile_values (layout.hpp value_tiles; a CPU forward form, docs/design.md "Value tiles"):
///
///   [ the scales: row i's groups (ascending, bfloat16) at 2·groups·i bytes                             ]
///   [ the quants: for each 16-byte piece j of the rows' quants (row_format: quant_bytes / 16 pieces),   ]
///   [   for each quad q < 8, one 64-byte line: dword l, byte e = byte 16j + l of row 4q + e              ]
///
/// So a q8 line holds 16 columns of one group; a q4 line 16 columns of one group in its low nibbles
/// and the same 16 columns of the next group in its high ones (row_format's q4 pairs group 2c with
/// 2c + 1 in the bytes of chunk c). No larger than the 32 rows (bytes(cols) ≤ 32 · ld · sizeof(T)).
template <class T>
struct value_tile {
  static_assert(is_quantized<T>::value, "value_tile is for q8_t / q4_t");
  using F = row_format<T>;
  static constexpr index_t rows = 32, quads = rows / 4;
  /// Bytes of one row's scales; where the quants start; the whole tile.
  static constexpr index_t scale_bytes(index_t cols) { return 2 * F::groups(cols); }
  static constexpr index_t quants_at(index_t cols) { return rows * scale_bytes(cols); }
  static constexpr index_t bytes(index_t cols) { return quants_at(cols) + rows * F::quant_bytes(cols); }
  /// Row r's scales.
  static const bfloat16_t* scales(const std::uint8_t* tile, index_t cols, index_t r) {
    return reinterpret_cast<const bfloat16_t*>(tile + r * scale_bytes(cols));
  }
  /// The line of piece j (16 bytes of each row's quants) and quad q.
  static const std::uint8_t* line(const std::uint8_t* tile, index_t cols, index_t j, index_t q) {
    return tile + quants_at(cols) + (j * quads + q) * 64;
  }
  /// Writes bytes(cols) bytes at out from 32 rows (row i at rows + i·ld; cols = row_format::cols).
  static void pack(const T* rows_in, index_t ld, index_t cols, std::uint8_t* out) {
    const index_t pieces = F::quant_bytes(cols) / 16;
    for (index_t i = 0; i < rows; ++i) {
      const T* row = rows_in + i * ld;
      const auto* q = reinterpret_cast<const std::uint8_t*>(row);
      std::memcpy(out + i * scale_bytes(cols), F::scales(row, cols),
                  static_cast<std::size_t>(scale_bytes(cols)));
      for (index_t j = 0; j < pieces; ++j)
        for (index_t l = 0; l < 16; ++l)
          out[quants_at(cols) + (j * quads + i / 4) * 64 + 4 * l + i % 4] = q[16 * j + l];
    }
  }
  /// The inverse of pack: writes the 32 rows' quants and scales (the rest of each row untouched).
  static void unpack(const std::uint8_t* tile, index_t cols, T* rows_out, index_t ld) {
    const index_t pieces = F::quant_bytes(cols) / 16;
    for (index_t i = 0; i < rows; ++i) {
      auto* row = reinterpret_cast<std::uint8_t*>(rows_out + i * ld);
      std::memcpy(row + F::quant_bytes(cols), tile + i * scale_bytes(cols),
                  static_cast<std::size_t>(scale_bytes(cols)));
      for (index_t j = 0; j < pieces; ++j)
        for (index_t l = 0; l < 16; ++l)
          row[16 * j + l] = tile[quants_at(cols) + (j * quads + i / 4) * 64 + 4 * l + i % 4];
    }
  }
};

}  // namespace sparse_ffn
