#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time:
#   fuzz_safetensors (from_memory), fuzz_open (open a file), fuzz_load_blocked, fuzz_load_dense,
#   fuzz_moefy_args (moefy's command line).
# Seeds: tests/fuzz/corpus (kept findings, also replayed by test_io) plus what fuzz_make_seeds writes.
# New inputs go to a scratch corpus under the build tree; a crash, leak, timeout or out-of-memory
# fails the script and leaves the input in $build/artifacts/ (copy it to tests/fuzz/corpus once fixed).
#   FUZZ_SECONDS (default 60) per target; JOBS targets at a time (default: nproc).
# Skips with a message when clang++ or its libFuzzer runtime is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}/fuzz
seconds=${FUZZ_SECONDS:-60}
jobs=${JOBS:-$(nproc)}
if ! command -v clang++ >/dev/null; then
  echo "fuzz: SKIPPED (clang++ not found)"
  exit 0
fi
probe=$(mktemp -d)
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$probe/p.cpp"
if ! clang++ -fsanitize=fuzzer "$probe/p.cpp" -o "$probe/p" 2>/dev/null; then
  rm -rf "$probe"
  echo "fuzz: SKIPPED (clang++ has no libFuzzer runtime: apt-get install libclang-rt-14-dev)"
  exit 0
fi
rm -rf "$probe"
cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE= -DSPARSE_FFN_FUZZ=ON \
      -DSPARSE_FFN_BUILD_TESTS=ON -DSPARSE_FFN_BUILD_EXAMPLES=OFF -DSPARSE_FFN_BUILD_BENCH=OFF \
      -DSPARSE_FFN_CUDA=OFF -DSPARSE_FFN_NATIVE=OFF -DSPARSE_FFN_SANITIZE=OFF >/dev/null
targets=(fuzz_safetensors fuzz_open fuzz_load_blocked fuzz_load_dense fuzz_moefy_args)
cmake --build "$build" -j"$jobs" --target fuzz_all
seeds=$build/seeds
rm -rf "$seeds" "$build/artifacts"
mkdir -p "$seeds/files" "$seeds/args" "$build/artifacts"
"$build/tests/fuzz_make_seeds" "$seeds"
run_one() {
  local t=$1 corpus=$build/corpus/$1 in
  mkdir -p "$corpus"
  if [ "$t" = fuzz_moefy_args ]; then in=("$seeds/args"); else in=("$seeds/files" "$root/tests/fuzz/corpus"); fi
  if "$build/tests/$t" "$corpus" "${in[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -max_len=16384 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" >"$build/$t.log" 2>&1; then
    echo "fuzz: $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$') runs in ${seconds}s, no finding"
  else
    echo "fuzz: $t FAILED (log: $build/$t.log)"
    tail -40 "$build/$t.log"
    return 1
  fi
}
export -f run_one
export build seeds seconds root
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'
