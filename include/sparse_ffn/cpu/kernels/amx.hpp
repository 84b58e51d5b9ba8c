// sparse_ffn — the key and value passes of bf16 weights, the key pass of q8/q4 key tiles and the value
// pass of q8/q4 value tiles, on Intel AMX (level `amx`, cpu/isa.hpp). The q8/q4 kernels (dots_int8 on
// AMX-INT8; apply_quant, the tiles dequantised to bf16) are described where they are.
//
// `tdpbf16ps` multiplies a tile A (M ≤ 16 rows × 32 bf16) by a tile B (16 rows of 16 bf16 pairs: B row p
// holds, for each of N ≤ 16 columns, the pair of elements 2p and 2p + 1 of the dot product) into a
// tile C of M × N floats: C[i][j] += A[i][2p]·B[p][2j] + A[i][2p + 1]·B[p][2j + 1] over p, in order, the
// products exact, denormals flushed. 16 × 16 × 32 multiply-adds per instruction (one per 16 cycles on
// Sapphire Rapids: ~1 TFLOP/s per core, 3× the AVX-512 FMA peak), so the batched passes become bound by
// memory rather than arithmetic.
//  - keys: A = 16 key rows straight from the block (stride ld), B = the pairs of up to 16 tokens' x
//    (rounded to bf16, as avx512_bf16), transposed once per block into a panel (16 × 16 dword
//    transposes); C[row][token] summed over the whole row (len), then stored.
//  - values: A = up to 16 tokens' coefficients of 32 rows (rounded to bf16), B = 32 value rows
//    interleaved into column pairs in registers (`vpermt2w`) per 32 columns; C[token][column] summed
//    over the chunk's 32 rows, then added to y, chunks ascending. A chunk of 32 rows whose coefficients are
//    all zero for the group is skipped (ReLU), but a chunk is read whole.
// Each output element is summed in C tiles (keys: one C element over the whole row; values: one per
// 32-row chunk, the chunks added to y in ascending order) in a fixed order that depends only on its own
// token's inputs, so a token's result does not depend on the other tokens of its call, the thread count
// or the run. Tile instructions are written as inline assembly (every assembler from binutils 2.36 and
// Clang 12 knows them) inside the avx512_bf16 target region; the tile state is configured at the start
// of each call and released at its end.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../config.hpp"
#include "../../quant.hpp"
#include "../../types.hpp"
#include "../isa.hpp"
#include "int8_x.hpp"

#if SPARSE_FFN_AMX

// Tile registers are operands of the instruction text, so they are literal numbers here. Loads and
// stores clobber memory (the B panels are written with ordinary stores right before a tile load).
// clang-format off
#define SPARSE_FFN_TILE_LOAD(t, base, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(static_cast<long>(stride)) : "memory")
#define SPARSE_FFN_TILE_STORE(t, base, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(static_cast<long>(stride)) : "memory")
#define SPARSE_FFN_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define SPARSE_FFN_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define SPARSE_FFN_TILE_DP_SS(c, a, b) __asm__ volatile("tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define SPARSE_FFN_TILE_DP_SU(c, a, b) __asm__ volatile("tdpbsud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
// clang-format on

namespace sparse_ffn {
namespace cpu {
namespace kernels {
namespace amx {

/// ldtilecfg's 64-byte operand (palette 1): bytes per row and rows of each of the 8 tiles.
struct alignas(64) tile_config {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};
static_assert(sizeof(tile_config) == 64, "ldtilecfg reads 64 bytes");

inline void configure(const tile_config& c) {
  __asm__ volatile("ldtilecfg %0" ::"m"(c));
}
inline void release() {
  __asm__ volatile("tilerelease" ::);
}

/// Bytes of the key kernel's panel (dots' `panel`) for rows of `len` elements: 16 tokens × len bf16.
inline constexpr index_t panel_bytes(index_t len) {
  return 32 * len;
}

SPARSE_FFN_TARGET_BEGIN(SPARSE_FFN_TARGET_AVX512_BF16)

/// panel[p·m + q] = the pair (x_q[2p], x_q[2p + 1]) as one dword, p < len / 2, q < m ≤ 16: B's layout
/// for the tokens' x (16 × 16 dword transposes; rows of absent tokens are zeros, never stored).
inline void transpose_pairs(const bfloat16_t* const* xb, index_t m, index_t len, std::uint32_t* panel) {
  const __mmask16 keep = static_cast<__mmask16>((1u << m) - 1u);
  for (index_t k = 0; k < len; k += 32) {
    __m512i r[16], t[16];
    for (int q = 0; q < 16; ++q) r[q] = q < m ? _mm512_loadu_si512(xb[q] + k) : _mm512_setzero_si512();
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // r[4i + j]: per 128-bit lane L, element 4L + j of rows 4i .. 4i + 3.
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
      r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
      r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
      r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    std::uint32_t* out = panel + (k / 2) * m;
    for (int j = 0; j < 4; ++j) {  // elements j, 4 + j, 8 + j, 12 + j of all 16 rows
      const __m512i a = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88),
                    b = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xdd);
      const __m512i c = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88),
                    d = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xdd);
      _mm512_mask_storeu_epi32(out + j * m, keep, _mm512_shuffle_i32x4(a, c, 0x88));
      _mm512_mask_storeu_epi32(out + (4 + j) * m, keep, _mm512_shuffle_i32x4(b, d, 0x88));
      _mm512_mask_storeu_epi32(out + (8 + j) * m, keep, _mm512_shuffle_i32x4(a, c, 0xdd));
      _mm512_mask_storeu_epi32(out + (12 + j) * m, keep, _mm512_shuffle_i32x4(b, d, 0xdd));
    }
  }
}

/// 16 rows (tile 4, stride ld) against the panel (tile 6), over len elements, into tile 0.
inline void key_rows16(const bfloat16_t* rows, index_t ld, index_t len, const std::uint32_t* b, index_t m) {
  const long as = static_cast<long>(ld) * 2, bs = 4 * m;
  SPARSE_FFN_TILE_ZERO(0);
  for (index_t k = 0; k < len; k += 32) {
    SPARSE_FFN_TILE_LOAD(6, b + (k / 2) * m, bs);
    SPARSE_FFN_TILE_LOAD(4, rows + k, as);
    SPARSE_FFN_TILE_DP(0, 4, 6);
  }
}

/// out[q·ostride + r] = Σ_c rows[r·ld + c]·x_q[c] (c < len) for q < m ≤ 16 and r < nrows (a multiple of
/// 16); x_q = xb[q], rounded to bf16; len a multiple of 32. panel: panel_bytes(len), 64-byte aligned
/// (unused when m = 1: one token's x is its own panel); panel_ready: it already holds these tokens' x
/// (a previous call with the same xb, m and len: the up rows after the keys).
inline void dots(const bfloat16_t* const* xb, index_t m, const bfloat16_t* rows, index_t nrows, index_t ld,
                 index_t len, std::uint32_t* panel, bool panel_ready, float* out, index_t ostride) {
  const std::uint32_t* b = panel;
  if (m == 1)
    b = reinterpret_cast<const std::uint32_t*>(xb[0]);
  else if (!panel_ready)
    transpose_pairs(xb, m, len, panel);
  // One group of 16 rows at a time, over the whole row: 16 row streams per walk. Four groups per walk
  // (64 streams, the panel loaded once per k-step for all of them) read ~35% slower with two threads at
  // batch 64 on an Emerald Rapids VM (docs/benchmarks.md, stop 52); the panel is re-read per group from
  // L1/L2 instead. The bits are the same either way (each C element sums its row in k order).
  tile_config cfg;
  cfg.colsb[0] = static_cast<std::uint16_t>(4 * m), cfg.rows[0] = 16;  // C
  cfg.colsb[4] = 64, cfg.rows[4] = 16;                                 // A
  cfg.colsb[6] = static_cast<std::uint16_t>(4 * m), cfg.rows[6] = 16;  // B
  configure(cfg);
  alignas(64) float c[16][16];
  for (index_t r0 = 0; r0 < nrows; r0 += 16) {
    key_rows16(rows + r0 * ld, ld, len, b, m);
    SPARSE_FFN_TILE_STORE(0, &c[0][0], 64);
    for (index_t q = 0; q < m; ++q)
      for (int r = 0; r < 16; ++r) out[q * ostride + r0 + r] = c[r][q];
  }
  release();
}

/// Bytes of the int8 key kernel's panel (dots_int8's `panel`): the tokens' x bytes by group, each group
/// one A tile of 16 rows × 32 bytes (row t: token t's 32 bytes), so that a tile load reads 512
/// consecutive bytes (rows of a token-major panel lie cols bytes apart: 16 lines in one L1 set at d 4096).
inline constexpr index_t int8_panel_bytes(index_t cols) {
  return 16 * cols;
}

// dots_int8_n's products of one group for one set of tiles (tile numbers are literals in the asm text):
// A (tokens × 32 bytes, stride 32) from `a` into tile a_, the two row tiles' B from b[0], b[1] into tiles
// 6 and 7 (8 rows × 64 bytes), C zeroed and summed in tiles c0 and c1 (the second only where `two`), then
// stored at st[0], st[1] (64-byte rows). sgn: tdpbssd (q8: B signed), else tdpbsud (q4: B unsigned).
// clang-format off
#define SPARSE_FFN_INT8_PRODUCTS(sgn, c0, c1, a_)                                          \
  SPARSE_FFN_TILE_LOAD(a_, a, 32);                                                         \
  SPARSE_FFN_TILE_LOAD(6, b[0], 64);                                                       \
  SPARSE_FFN_TILE_ZERO(c0);                                                                \
  if constexpr (sgn) SPARSE_FFN_TILE_DP_SS(c0, a_, 6); else SPARSE_FFN_TILE_DP_SU(c0, a_, 6); \
  if (two) {                                                                               \
    SPARSE_FFN_TILE_LOAD(7, b[1], 64);                                                     \
    SPARSE_FFN_TILE_ZERO(c1);                                                              \
    if constexpr (sgn) SPARSE_FFN_TILE_DP_SS(c1, a_, 7); else SPARSE_FFN_TILE_DP_SU(c1, a_, 7); \
  }                                                                                        \
  SPARSE_FFN_TILE_STORE(c0, st[0], 64);                                                    \
  if (two) SPARSE_FFN_TILE_STORE(c1, st[1], 64)
// clang-format on

/// dots_int8 for N tokens (a multiple of 4, m ≤ N ≤ 16; rows of C past m stay zero and are not output).
/// Two tiles of 16 rows at a time (32 rows), group by group, the groups double-buffered: even groups' C
/// in tiles 0-1 and x (A) in tile 4, odd groups' in tiles 2-3 and 5, the row tiles' B in 6-7. The next
/// group's products run while this group's C is stored, scaled and added, and do not wait on its C and A
/// tiles (tile registers are not renamed; only B, 6-7, is reused by consecutive groups). One row tile at
/// a time was ~3× slower; four row tiles sharing one C set and one A ~1.2-1.3× slower (docs/benchmarks.md,
/// stop 53).
template <class T, int N>
void dots_int8_n(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
                 index_t tile_stride, index_t cols, const std::uint8_t* panel, float* out, index_t ostride) {
  using KT = key_tile<T>;
  constexpr bool q8 = std::is_same<T, q8_t>::value;
  constexpr index_t gpl = KT::groups_per_line;
  const index_t groups_at = x_int8_groups_at(cols), ngroups = cols / k_quant_group;
  alignas(64) std::int32_t c[2][2][16][16] = {};  // C of a group (buffer, row tile); rows m .. N stay zero
  alignas(64) std::uint8_t nib[2][2][8][64];      // q4: a half line's low, then high nibbles, per row tile
  alignas(64) float acc[2][N][16];                // y per row tile and token (rows in lanes)
  const std::int32_t* corr[N];  // the tokens' group terms (x_int8_group): −zero_point Σ x and the x scale
  const float* sx[N];           // (rows past m: token 0's, for a result never output)
  for (int t = 0; t < N; ++t) {
    const std::uint8_t* x = xq[t < m ? t : 0];
    corr[t] = reinterpret_cast<const std::int32_t*>(x + groups_at);
    sx[t] = reinterpret_cast<const float*>(x + groups_at + 4 * ngroups);
  }
  for (index_t r0 = 0; r0 < nrows; r0 += 32) {
    const index_t nt = std::min<index_t>(2, (nrows - r0) / 16);
    const std::uint8_t* tl[2];
    for (index_t i = 0; i < 2; ++i) tl[i] = tiles + (r0 / 16 + std::min(i, nt - 1)) * tile_stride;
    // Group gg's products into C set setc (tiles 0-1 with A in 4, or 2-3 with A in 5), stored into c[set].
    const auto issue = [&](index_t gg, auto setc) {
      constexpr int S = decltype(setc)::value;
      const index_t j = gg / gpl, gl = gg % gpl, off = j * KT::unit_bytes;
      const std::uint8_t* bp[2];
      for (index_t i = 0; i < 2; ++i) {
        const std::uint8_t* u = tl[i] + off;
        if (gl == 0)  // one stream per row tile: 2 KiB ahead into L1 (tile loads wait on misses)
          for (index_t o = 0; o < KT::unit_bytes; o += 64)
            _mm_prefetch(reinterpret_cast<const char*>(u + 2048 + o), _MM_HINT_T0);
        if constexpr (q8) {
          bp[i] = u + gl * 512;  // dwords 8 gl .. 8 gl + 7 of the line
        } else {                 // dwords 8 (gl / 2) ..: low nibbles group gl (even), high gl + 1
          if (gl % 2 == 0 && i < nt) {
            const __m512i lo = _mm512_set1_epi8(0x0f);
            for (int e = 0; e < 8; ++e) {
              const __m512i v = _mm512_loadu_si512(u + (gl / 2 * 8 + e) * 64);
              _mm512_store_si512(nib[i][0][e], _mm512_and_si512(v, lo));
              _mm512_store_si512(nib[i][1][e], _mm512_and_si512(_mm512_srli_epi16(v, 4), lo));
            }
          }
          bp[i] = nib[i][gl % 2][0];
        }
      }
      const std::uint8_t* a = panel + gg * 512;
      const std::uint8_t* const* b = bp;
      const bool two = nt > 1;
      std::int32_t* st[2] = {&c[S][0][0][0], &c[S][1][0][0]};
      if constexpr (S == 0) {
        SPARSE_FFN_INT8_PRODUCTS(q8, 0, 1, 4);
      } else {
        SPARSE_FFN_INT8_PRODUCTS(q8, 2, 3, 5);
      }
    };
    // Group gg's sums: y = fma(float(Σ + corr), s · sx, y) per row tile and token (rows in lanes).
    const auto finish = [&](index_t gg, int buf) {
      const index_t j = gg / gpl, gl = gg % gpl;
      for (index_t i = 0; i < nt; ++i) {
        const auto* sc = reinterpret_cast<const bfloat16_t*>(tl[i] + j * KT::unit_bytes + 16 * 64) + 16 * gl;
        const __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc))), 16));
#pragma GCC unroll 16
        for (int t = 0; t < N; ++t) {
          __m512i sum = _mm512_load_si512(c[buf][i][t]);
          if constexpr (!q8) sum = _mm512_add_epi32(sum, _mm512_set1_epi32(corr[t][gg]));
          const __m512 y = gg == 0 ? _mm512_setzero_ps() : _mm512_load_ps(acc[i][t]);
          _mm512_store_ps(acc[i][t], _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum),
                                                     _mm512_mul_ps(s, _mm512_set1_ps(sx[t][gg])), y));
        }
      }
    };
    using E = std::integral_constant<int, 0>;
    using O = std::integral_constant<int, 1>;
    issue(0, E{});
    for (index_t gg = 0; gg < ngroups; ++gg) {
      if (gg + 1 < ngroups) {
        if ((gg + 1) & 1)
          issue(gg + 1, O{});
        else
          issue(gg + 1, E{});
      }
      finish(gg, static_cast<int>(gg & 1));
    }
    for (index_t i = 0; i < nt; ++i)
      for (index_t t = 0; t < m; ++t)
        _mm512_storeu_ps(out + t * ostride + r0 + 16 * i, _mm512_load_ps(acc[i][t]));
  }
}

/// The key pass of q8/q4 rows stored as key_tile<T> (quant.hpp) on the tile unit, x quantised per group
/// of 32 (xq: prepare_x_int8): out[q·ostride + r] for q < m ≤ 16 tokens and r < nrows (a multiple of 16),
/// tile r / 16 at tiles + (r / 16)·tile_stride bytes. Per group of 32 values, tdpbssd (q8: q signed) or
/// tdpbsud (q4: the nibbles u = q + 8, plus the group's −8 Σ x) sums each (token, row) exactly in int32;
/// then y = fma(float(Σ), s · sx, y), groups ascending: the same integers and float steps as the
/// AVX512_VNNI kernel (kernels.inl dots_tiles), so the same bits. panel: int8_panel_bytes(cols), 64-byte
/// aligned (panel_ready: a previous call left these tokens' x in it: the up rows after the keys).
template <class T>
void dots_int8(const std::uint8_t* const* xq, index_t m, const std::uint8_t* tiles, index_t nrows,
               index_t tile_stride, index_t cols, std::uint8_t* panel, bool panel_ready, float* out,
               index_t ostride) {
  if (!panel_ready)  // group g of token q at panel[512 g + 32 q] (rows past m are never loaded)
    for (index_t g = 0; g < cols / k_quant_group; ++g)
      for (index_t q = 0; q < m; ++q)
        std::memcpy(panel + 512 * g + 32 * q, xq[q] + x_int8_group_offset<T>(g * k_quant_group), 32);
  tile_config cfg;
  for (int i = 0; i < 4; ++i)  // C: tokens × 16 rows (int32), two sets of two row tiles
    cfg.colsb[i] = 64, cfg.rows[i] = static_cast<std::uint8_t>(m);
  for (int i = 4; i < 6; ++i)  // A: tokens × 32 x bytes, one per set
    cfg.colsb[i] = 32, cfg.rows[i] = static_cast<std::uint8_t>(m);
  for (int i = 6; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 8;  // B: 8 dwords × 16 rows
  configure(cfg);
  if (m <= 4)
    dots_int8_n<T, 4>(xq, m, tiles, nrows, tile_stride, cols, panel, out, ostride);
  else if (m <= 8)
    dots_int8_n<T, 8>(xq, m, tiles, nrows, tile_stride, cols, panel, out, ostride);
  else if (m <= 12)
    dots_int8_n<T, 12>(xq, m, tiles, nrows, tile_stride, cols, panel, out, ostride);
  else
    dots_int8_n<T, 16>(xq, m, tiles, nrows, tile_stride, cols, panel, out, ostride);
  release();
}

/// Rows of one value chunk: a tdpbf16ps K (32 rows = 16 pairs).
inline constexpr index_t k_value_chunk = 32;

/// The value kernels' A: if any of the m tokens' coefficients s[q][r0 .. r0 + 32) is nonzero, writes them
/// rounded to bf16 at a + 32·q and returns true (a chunk all zero is skipped).
inline bool chunk_coefficients(const float* const* s, index_t m, index_t r0, std::uint16_t* a) {
  bool any = false;
  for (index_t q = 0; q < m && !any; ++q)
    for (index_t i = 0; i < k_value_chunk; ++i) any |= s[q][r0 + i] != 0.0f;
  if (!any) return false;
  for (index_t q = 0; q < m; ++q)
    for (index_t i = 0; i < k_value_chunk; ++i) a[q * k_value_chunk + i] = bfloat16_t(s[q][r0 + i]).bits;
  return true;
}

/// The value kernels' products of 32 columns: C = A (tile 4) × B (tiles 2 and 3, 16 columns each) from
/// zero, through c into y[q][c0 .. c0 + 32) for the tile's m tokens.
inline void chunk_products(float* const* y, index_t m, index_t c0, float (&c)[2][16][16]) {
  SPARSE_FFN_TILE_ZERO(0);
  SPARSE_FFN_TILE_ZERO(1);
  SPARSE_FFN_TILE_DP(0, 4, 2);
  SPARSE_FFN_TILE_DP(1, 4, 3);
  SPARSE_FFN_TILE_STORE(0, &c[0][0][0], 64);
  SPARSE_FFN_TILE_STORE(1, &c[1][0][0], 64);
  for (index_t q = 0; q < m; ++q) {
    float* yq = y[q] + c0;
    _mm512_storeu_ps(yq, _mm512_add_ps(_mm512_loadu_ps(yq), _mm512_load_ps(c[0][q])));
    _mm512_storeu_ps(yq + 16, _mm512_add_ps(_mm512_loadu_ps(yq + 16), _mm512_load_ps(c[1][q])));
  }
}

/// y_q[c] += Σ_i s_q[i]·v_i[c] for q < m ≤ 16, i < nrows (a multiple of 32), c in [c_lo, c_hi) (multiples
/// of 32): each chunk of 32 rows summed from zero in a tile (the s rounded to bf16), then added to y,
/// chunks ascending. Chunks with every s zero are not read. One chunk per walk over the columns: 32 row
/// streams (four chunks per walk, 128 streams, read ~20% slower with two threads at batch 64 on an
/// Emerald Rapids VM; docs/benchmarks.md, stop 52).
inline void apply(float* const* y, const float* const* s, index_t m, const bfloat16_t* v, index_t ld,
                  index_t nrows, index_t c_lo, index_t c_hi) {
  alignas(64) std::uint16_t a[16 * k_value_chunk];
  alignas(64) std::uint32_t bt[2][16][16];  // [column half][pair][column]
  alignas(64) float c[2][16][16];
  const __m512i ilo =
      _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36,
                       4, 35, 3, 34, 2, 33, 1, 32, 0);  // word 2i: a[i], 2i+1: b[i]
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
  tile_config cfg;
  cfg.colsb[0] = cfg.colsb[1] = 64, cfg.rows[0] = cfg.rows[1] = static_cast<std::uint8_t>(m);  // C
  cfg.colsb[2] = cfg.colsb[3] = 64, cfg.rows[2] = cfg.rows[3] = 16;                            // B
  cfg.colsb[4] = 64, cfg.rows[4] = static_cast<std::uint8_t>(m);                               // A
  bool configured = false;
  for (index_t r0 = 0; r0 < nrows; r0 += k_value_chunk) {
    if (!chunk_coefficients(s, m, r0, a)) continue;
    if (!configured) configure(cfg), configured = true;
    SPARSE_FFN_TILE_LOAD(4, a, 2 * k_value_chunk);
    for (index_t c0 = c_lo; c0 < c_hi; c0 += 32) {
      for (int p = 0; p < 16; ++p) {
        const bfloat16_t* r = v + (r0 + 2 * p) * ld + c0;
        // The hardware prefetcher does not follow 32 interleaved row walks: 256 bytes ahead into L1.
        _mm_prefetch(reinterpret_cast<const char*>(r + 128), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(r + ld + 128), _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512(r), w1 = _mm512_loadu_si512(r + ld);
        _mm512_store_si512(bt[0][p], _mm512_permutex2var_epi16(w0, ilo, w1));
        _mm512_store_si512(bt[1][p], _mm512_permutex2var_epi16(w0, ihi, w1));
      }
      SPARSE_FFN_TILE_LOAD(2, &bt[0][0][0], 64);
      SPARSE_FFN_TILE_LOAD(3, &bt[1][0][0], 64);
      chunk_products(y, m, c0, c);
    }
  }
  if (configured) release();
}

/// Most tokens of one apply_quant call (16 per A tile); its prefetch distance in bytes.
inline constexpr index_t k_quant_max_tokens = 64, k_quant_ahead = 4096;

/// apply on q8/q4 value tiles (value_tile<T>, quant.hpp; tile i, rows 32i .. 32i + 31, at
/// tiles + i·tile_stride): each tile's integers times their row's group scale, rounded to bf16 (one
/// rounding: |q| ≤ 127 and the scale has 8 significant bits, so the float product is exact) and laid out
/// as B in registers, 32 columns at a time; then as apply (A = the coefficients rounded to bf16, each
/// chunk summed from zero in C tiles, added to y, chunks ascending), B converted once for all the call's
/// tokens, 16 at a time. m ≤ k_quant_max_tokens, nrows a multiple of 32, columns [c_lo, c_hi) multiples
/// of 32. scale: amx_quant_scale_floats(cols) of 64-byte aligned scratch.
template <class T>
void apply_quant(float* const* y, const float* const* s, index_t m, const std::uint8_t* tiles,
                 index_t tile_stride, index_t nrows, index_t cols, index_t c_lo, index_t c_hi, float* scale) {
  using VT = value_tile<T>;
  constexpr bool q4 = std::is_same<T, q4_t>::value;
  // A per 16 tokens (rows past m zero); B: [column half][pair][column]; C: [column half][token][column].
  alignas(64) std::uint16_t a[k_quant_max_tokens / 16][16 * k_value_chunk];
  alignas(64) std::uint32_t bt[2][16][16];
  alignas(64) float c[2][16][16];
  // Dwords 2j (rows 4Q, 4Q + 1 of column j) and 2j + 1 (rows 4Q + 2, 4Q + 3) of two converted quarters.
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i low4 = _mm512_set1_epi32(0x0f);
  const index_t g_lo = c_lo / k_quant_group, ng = c_hi / k_quant_group - g_lo, nb = (ng + 15) / 16;
  // Bytes of quants per group of 32 columns (32 rows); where the thread's start in a tile (q4: g_lo even).
  constexpr index_t bpg = 32 * k_quant_group * row_format<T>::bits / 8;
  const index_t quants_lo = VT::quants_at(cols) + g_lo * bpg;
  tile_config cfg;
  const index_t tg = (m + 15) / 16;  // token groups
  const auto tm = static_cast<std::uint8_t>(std::min<index_t>(m, 16));
  cfg.colsb[0] = cfg.colsb[1] = 64, cfg.rows[0] = cfg.rows[1] = tm;  // C
  cfg.colsb[2] = cfg.colsb[3] = 64, cfg.rows[2] = cfg.rows[3] = 16;  // B
  cfg.colsb[4] = 64, cfg.rows[4] = tm;                               // A
  if (m % 16 && m > 16) std::memset(a[tg - 1], 0, sizeof a[0]);
  bool configured = false;
  for (index_t r0 = 0; r0 < nrows; r0 += k_value_chunk) {
    if (!chunk_coefficients(s, m, r0, &a[0][0])) continue;  // token q's row at a[q / 16][32 (q % 16)]
    const std::uint8_t* tile = tiles + (r0 / k_value_chunk) * tile_stride;
    // The scales of rows 4Q .. 4Q + 3 for 16 groups (from g_lo + 16b) as four floats per group (a 4 × 16
    // transpose), at scale + 64·(16·(nb·Q + b) + 4·(j % 4) + j / 4) for group j of the 16.
    for (index_t qd = 0; qd < 8; ++qd)
      for (index_t b = 0; b < nb; ++b) {
        const __mmask16 k = static_cast<__mmask16>(ng - 16 * b >= 16 ? 0xffff : (1u << (ng - 16 * b)) - 1);
        __m512 r[4];
        for (int i = 0; i < 4; ++i)
          r[i] = _mm512_castsi512_ps(
              _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                                    k, VT::scales(tile, cols, 4 * qd + i) + g_lo + 16 * b)),
                                16));
        const __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
        const __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
        float* out = scale + 64 * (nb * qd + b);
        const auto pd = [](__m512 v) { return _mm512_castps_pd(v); };
        _mm512_store_pd(reinterpret_cast<double*>(out), _mm512_unpacklo_pd(pd(t0), pd(t2)));
        _mm512_store_pd(reinterpret_cast<double*>(out + 16), _mm512_unpackhi_pd(pd(t0), pd(t2)));
        _mm512_store_pd(reinterpret_cast<double*>(out + 32), _mm512_unpacklo_pd(pd(t1), pd(t3)));
        _mm512_store_pd(reinterpret_cast<double*>(out + 48), _mm512_unpackhi_pd(pd(t1), pd(t3)));
      }
    // Tiles from memory: this thread's bytes of the tile (its groups' quants, bpg a group, contiguous) are
    // prefetched k_quant_ahead ahead into L2, running on into the next tile's, and its scales one tile
    // ahead (measured: the value pass at batch 64, q8, 25% of d 4096 × 16384 from memory, 2 threads, 8.0
    // → 6.1 ms on an Emerald Rapids VM; docs/benchmarks.md, stop 55).
    const std::uint8_t* next = r0 + k_value_chunk < nrows ? tile + tile_stride : nullptr;
    if (next)
      for (index_t i = 0; i < k_value_chunk; ++i)
        for (index_t o = 0; o < 2 * ng; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(VT::scales(next, cols, i) + g_lo) + o, _MM_HINT_T1);
    if (!configured) configure(cfg), configured = true;
    for (index_t gi = 0; gi < ng; ++gi) {
      const index_t g = g_lo + gi;
      const index_t ahead = gi * bpg + k_quant_ahead;  // bytes past the start of the thread's range
      const std::uint8_t* pf = ahead < ng * bpg ? tile + quants_lo + ahead
                               : next           ? next + quants_lo + (ahead - ng * bpg)
                                                : nullptr;
      if (pf)
        for (index_t l = 0; l < bpg; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(pf + l), _MM_HINT_T1);
      // q8: the group's 32 columns are pieces 2g, 2g + 1; q4: the low (g even) or high nibbles of the
      // pieces of its chunk of 64 values.
      const index_t piece = q4 ? (g / 2) * 2 : 2 * g;
      const float* gs = scale + 64 * (gi / 16) + 4 * (4 * (gi % 4) + gi % 16 / 4);
      for (int h = 0; h < 2; ++h)
        for (int qd = 0; qd < 8; ++qd) {
          const std::uint8_t* line = VT::line(tile, cols, piece + h, qd);
          const __m512 sv = _mm512_broadcast_f32x4(_mm_load_ps(gs + 64 * nb * qd));
          // Quarter k: columns 4k .. 4k + 3 of the piece, four rows each (q4: (u − 8)·s = u·s − 8s).
          const auto quarter = [&](int k) {
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(line + 16 * k));
            if constexpr (q4) {
              const __m512i u = _mm512_cvtepu8_epi32(b);
              const __m512i n = g % 2 ? _mm512_srli_epi32(u, 4) : _mm512_and_si512(u, low4);
              return _mm512_fmsub_ps(_mm512_cvtepi32_ps(n), sv, _mm512_mul_ps(sv, _mm512_set1_ps(8.0f)));
            } else {
              return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), sv);
            }
          };
          const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(quarter(1), quarter(0));
          const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(quarter(3), quarter(2));
          _mm512_store_si512(bt[h][2 * qd], _mm512_permutex2var_epi32(lo, even, hi));
          _mm512_store_si512(bt[h][2 * qd + 1], _mm512_permutex2var_epi32(lo, odd, hi));
        }
      SPARSE_FFN_TILE_LOAD(2, &bt[0][0][0], 64);
      SPARSE_FFN_TILE_LOAD(3, &bt[1][0][0], 64);
      const index_t c0 = g * k_quant_group;
      for (index_t t = 0; t < tg; ++t) {  // B once for every 16 tokens
        SPARSE_FFN_TILE_LOAD(4, a[t], 2 * k_value_chunk);
        chunk_products(y + 16 * t, std::min<index_t>(16, m - 16 * t), c0, c);
      }
    }
  }
  if (configured) release();
}

SPARSE_FFN_TARGET_END

}  // namespace amx
}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn

#undef SPARSE_FFN_TILE_LOAD
#undef SPARSE_FFN_TILE_STORE
#undef SPARSE_FFN_TILE_ZERO
#undef SPARSE_FFN_TILE_DP
#undef SPARSE_FFN_TILE_DP_SS
#undef SPARSE_FFN_TILE_DP_SU
#undef SPARSE_FFN_INT8_PRODUCTS

#endif  // SPARSE_FFN_AMX
