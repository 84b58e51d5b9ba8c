#!/usr/bin/env bash
# The whole test suite (what CI runs): installs missing Debian packages (as root), then
#   1. a Release build of the library's tests, examples, benchmarks (and CUDA code when nvcc exists),
#      and every ctest test;
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build of the tests, and every ctest test;
#   3. a bounded run of every fuzz target (scripts/fuzz.sh; FUZZ_SECONDS each, default 30 here, two
#      at a time; skipped with a message when clang's libFuzzer is missing).
# Every option of each build tree is set here (scripts/common.sh), so running scripts/main.sh first
# changes nothing; ctest fails when it finds no test. Build trees go to $BUILD_DIR (default: build/).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}
start=$SECONDS
stage() { printf '== %s (%dm%02ds) ==\n' "$1" $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }
bash "$root/scripts/deps.sh"
source "$root/scripts/common.sh"

stage "release build"
cmake -S "$root" -B "$build/release" "${release_cmake_args[@]}"
cmake --build "$build/release" -j"$jobs"
stage "release tests"
# Two test processes share the two cores: OpenMP threads that spin while waiting would take a core
# from the other process and slow both ~5x (measured: 164 s instead of 23 s); passive waiting sleeps.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
(cd "$build/release" && ctest -j"$jobs" --no-tests=error --output-on-failure --timeout 1500)

stage "ASan + UBSan build"
# -g1: line tables are all a sanitizer report needs, and compile faster than full debug info.
cmake -S "$root" -B "$build/asan" -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_FLAGS="-O1 -g1" -DSPARSE_FFN_SANITIZE=ON \
      -DSPARSE_FFN_BUILD_TESTS=ON -DSPARSE_FFN_BUILD_BENCH=OFF -DSPARSE_FFN_BUILD_EXAMPLES=OFF \
      -DSPARSE_FFN_CUDA=OFF -DSPARSE_FFN_FUZZ=OFF -DSPARSE_FFN_NATIVE=OFF -DSPARSE_FFN_OPENMP=ON
cmake --build "$build/asan" -j"$jobs"
stage "ASan + UBSan tests"
(cd "$build/asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest -j"$jobs" --no-tests=error --output-on-failure --timeout 3000 -E test_install_consumer)

stage "fuzz"
BUILD_DIR="$build" FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash "$root/scripts/fuzz.sh"
stage "all tests passed"
