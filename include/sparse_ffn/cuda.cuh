// sparse_ffn — umbrella header of the GPU kernels (compile with nvcc; sm_80 or newer). Includes the
// CPU library too: the same layout, policies, selectors and dtypes serve both.
#pragma once

#include "cuda/backward.cuh"
#include "cuda/common.cuh"
#include "cuda/forward.cuh"
#include "cuda/kernels.cuh"
#include "cuda/kernels_wmma.cuh"
#include "cuda/route.cuh"
#include "sparse_ffn.hpp"
