// sparse_ffn — version of the headers. CMake reads these three lines (single source of truth).
#pragma once

#define SPARSE_FFN_VERSION_MAJOR 0
#define SPARSE_FFN_VERSION_MINOR 1
#define SPARSE_FFN_VERSION_PATCH 0

#define SPARSE_FFN_VERSION \
  (SPARSE_FFN_VERSION_MAJOR * 10000 + SPARSE_FFN_VERSION_MINOR * 100 + SPARSE_FFN_VERSION_PATCH)
