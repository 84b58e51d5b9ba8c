// Shared main of the GPU test binaries: without a CUDA device they print why and exit with 77, which
// CTest reports as "Skipped" (SKIP_RETURN_CODE 77); with one they run the Catch2 session.
#pragma once

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstdio>

inline int gpu_test_main(int argc, char** argv, const char* what) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIPPED: %s needs a CUDA device (%s); no GPU test ran.\n", what,
                e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
    return 77;
  }
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  std::printf("GPU: %s (sm_%d%d, %d SMs)\n", p.name, p.major, p.minor, p.multiProcessorCount);
  return Catch::Session().run(argc, argv);
}
