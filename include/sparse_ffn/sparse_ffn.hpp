// sparse_ffn — umbrella header for the CPU library (no CUDA needed). For the GPU kernels include
// <sparse_ffn/cuda.cuh> from a .cu file.
#pragma once

#include "activation.hpp"
#include "config.hpp"
#include "cpu/backward.hpp"
#include "cpu/dense.hpp"
#include "cpu/forward.hpp"
#include "cpu/workspace.hpp"
#include "dispatch.hpp"
#include "error.hpp"
#include "grads.hpp"
#include "layout.hpp"
#include "pack.hpp"
#include "policy.hpp"
#include "routing.hpp"
#include "selector/avg_k.hpp"
#include "selector/hash.hpp"
#include "selector/learned_gate.hpp"
#include "selector/oracle.hpp"
#include "selector/topk.hpp"
#include "types.hpp"
#include "version.hpp"
