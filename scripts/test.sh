#!/usr/bin/env bash
# The whole test suite (what CI runs): installs missing Debian packages (as root), then
#   1. a Release build of the library's tests, examples, benchmarks (and CUDA code when nvcc exists),
#      and every ctest test;
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build of the tests, and every ctest test.
# Build trees go to $BUILD_DIR (default: build/ in the checkout).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}
bash "$root/scripts/deps.sh"

echo "== release build =="
cmake -S "$root" -B "$build/release" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build/release" -j"$jobs"
(cd "$build/release" && ctest -j"$jobs" --output-on-failure --timeout 1500)

echo "== ASan + UBSan build =="
cmake -S "$root" -B "$build/asan" -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_FLAGS="-O1 -g" \
      -DSPARSE_FFN_SANITIZE=ON -DSPARSE_FFN_BUILD_BENCH=OFF -DSPARSE_FFN_BUILD_EXAMPLES=OFF -DSPARSE_FFN_CUDA=OFF
cmake --build "$build/asan" -j"$jobs"
(cd "$build/asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest -j"$jobs" --output-on-failure --timeout 3000 -E test_install_consumer)
echo "== all tests passed =="
