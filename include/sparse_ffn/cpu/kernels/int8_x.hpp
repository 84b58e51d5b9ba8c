// sparse_ffn — the byte layout of a token's x quantised to int8 for the int8 key kernels
// (kernels.hpp prepare_x_int8 writes it; kernels.inl's dots_lanes / dots_tiles and amx.hpp's dots_int8
// read it).
#pragma once

#include <type_traits>

#include "../../quant.hpp"
#include "../../types.hpp"

namespace sparse_ffn {
namespace cpu {
namespace kernels {

/// Bytes of one token's prepared int8 x for `cols` values (prepare_x_int8).
inline constexpr index_t x_int8_bytes(index_t cols) {
  return cols + (cols / 4 + 63) / 64 * 64 + 4 * cols;
}
/// Where a token's prepared int8 x (cols a multiple of 64) holds its per-group terms (cols/32 int32, then
/// cols/32 float: x_int8_group) and its quad vectors (4·cols bytes, 64-byte aligned: x_int8_quads).
inline constexpr index_t x_int8_groups_at(index_t cols) {
  return cols;
}
/// Where its per-group x scales start (cols/32 float, natural group order), after the groups' int32 terms.
inline constexpr index_t x_int8_group_scales_at(index_t cols) {
  return x_int8_groups_at(cols) + cols / 8;
}
inline constexpr index_t x_int8_quads_at(index_t cols) {
  return cols + (cols / 4 + 63) / 64 * 64;
}

/// Kernel-order offset of the group of 32 values starting at g0 in a token's prepared int8 x
/// (prepare_x_int8): q8 natural; q4 per 128 values [0,32) [64,96) [32,64) [96,128) (the low, then the
/// high nibbles of one 64-byte line).
template <class T>
inline index_t x_int8_group_offset(index_t g0) {
  if constexpr (std::is_same<T, q8_t>::value) {
    return g0;
  } else {
    const index_t base = g0 / 128 * 128, part = (g0 % 128) / 32;  // natural quarter 0..3
    constexpr index_t order[4] = {0, 2, 1, 3};                    // -> kernel quarter
    return base + order[part] * 32;
  }
}

}  // namespace kernels
}  // namespace cpu
}  // namespace sparse_ffn
