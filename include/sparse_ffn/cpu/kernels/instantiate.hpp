// sparse_ffn — compile the CPU kernels of one weight dtype in this translation unit (the counterpart of
// SPARSE_FFN_EXTERN_CPU_KERNELS; see the end of kernels.hpp):
//
//   #include <sparse_ffn/cpu/kernels/instantiate.hpp>
//   SPARSE_FFN_INSTANTIATE_CPU_KERNELS(sparse_ffn::bfloat16_t)
//
// at namespace scope, once per dtype in the whole program (one unit per dtype compiles them in parallel).
#pragma once

#include "kernels.hpp"

#define SPARSE_FFN_INSTANTIATE_CPU_KERNELS(T)                                                       \
  template const ::sparse_ffn::cpu::kernels::kernel_ops<T>& ::sparse_ffn::cpu::kernels::ops_for<T>( \
      ::sparse_ffn::cpu::isa_level);
