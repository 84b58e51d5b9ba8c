#!/usr/bin/env bash
# The main job (~7 min on 2 cores: building the benchmark, then ~5 min running it): a selector
# comparison with the benchmark suite, and its table.
#   - BM_stream_read/<reader> (the fastest is the bandwidth yardstick) and the dense FFN with OpenBLAS
#     f32 and oneDNN f32/bf16 (d=4096, d_ff=16384; batch 1, 8, 64): speedups are given over OpenBLAS
#     and over the best of them
#   - every selector, f32, g=64, 25% of blocks, batch 1; Avg-K f32, bf16, q8 and q4 at batch 1, 8, 64
#   - BM_kernel_keys|values/bf16|q8|q4/l2|dram: one thread's key and value micro-kernels alone, and the
#     value kernel for 2, 4, 6 tokens at once from L2 (BM_kernel_values/<dtype>/l2/tokens:<M>)
#   - --sffn_pair=all: every sparse iteration next to a plain read of its bytes and the dense oneDNN bf16
#     FFN (the report's "paired" table: % of stream and speedup as medians of per-iteration ratios)
# Writes build/bench/main.json and PNG plots in build/bench/plots. Extra arguments go to
# sparse_ffn_bench (e.g. --benchmark_repetitions=5). Also builds and runs the quickstart example.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}/release
out=${BUILD_DIR:-$root/build}/bench
bash "$root/scripts/deps.sh"
source "$root/scripts/common.sh"
cmake -S "$root" -B "$build" "${release_cmake_args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target quickstart sparse_ffn_bench
"$build/examples/quickstart"
echo
mkdir -p "$out"
shape='d:4096/dff:16384'
filter="BM_stream_read|BM_dense_(openblas_f32|onednn_f32|onednn_bf16)/${shape}/|BM_sparse_(avg_k|hash|learned_gate|oracle)_f32/${shape}/g:64/density:25/batch:1/|BM_sparse_avg_k_(f32|bf16)/${shape}/g:64/density:25/batch:(8|64)/|BM_sparse_avg_k_(bf16|q8|q4)/${shape}/g:64/density:25/batch:(1|8|64)/|BM_kernel_(keys|values)/(bf16|q8|q4)/"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} "$build/bench/sparse_ffn_bench" \
  --benchmark_filter="$filter" --benchmark_min_time=0.3 --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/main.json" --benchmark_out_format=json \
  --sffn_pair=all "$@" >/dev/null
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" "$root/bench/report.py" "$out/main.json" --plots "$out/plots"
