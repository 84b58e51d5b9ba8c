#!/usr/bin/env bash
# The main job: builds and runs the quickstart (packs a random FFN, runs every selector at 25%
# density, prints output error vs dense and the chosen blocks).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}/release
bash "$root/scripts/deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSPARSE_FFN_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target quickstart
"$build/examples/quickstart" "$@"
