#!/usr/bin/env bash
# Installs the Debian packages the build, tests and benchmarks need, when run as root and something is
# missing. Without root it only reports what is missing (the build then fails with a clear message).
set -euo pipefail
pkgs=(cmake g++ make catch2 libbenchmark-dev libopenblas-openmp-dev libdnnl-dev nlohmann-json3-dev
      libmetis-dev libcli11-dev python3 python3-matplotlib)
# With clang present, the fuzz targets are built and run briefly: libFuzzer's runtime is in libclang-rt.
if command -v clang++ >/dev/null && clang++ --version | grep -q 'version 14\.'; then pkgs+=(libclang-rt-14-dev); fi
# On x86-64, the ISA tests run test_isa on emulated older CPUs (no AVX; AVX2 without AVX-512).
if [ "$(uname -m)" = x86_64 ]; then pkgs+=(qemu-user); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: missing Debian packages (run as root to install): ${missing[*]}" >&2
fi
