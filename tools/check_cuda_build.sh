#!/usr/bin/env bash
# Compile every CUDA source to object files for each target architecture (default sm_90a, sm_100a,
# sm_120a) without building the extension: the CI check on machines that have nvcc but no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
archs="${FPQUANT_CUDA_ARCHS:-90a;100a;120a}"
command -v nvcc >/dev/null || { echo "check_cuda_build: nvcc not found" >&2; exit 1; }
build=build/cuda-check
cmake -S . -B "$build" -G Ninja -DFPQUANT_CUDA_CHECK_ONLY=ON "-DFPQUANT_CUDA_ARCHS=${archs}" \
      -DPython_EXECUTABLE="$(command -v python)" -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 \
  || { cat "$build.log"; exit 1; }
grep "fpquant_ext: csrc/" "$build.log"  # each kernel source and the targets it is compiled for
cmake --build "$build" -j "$(nproc)"
echo "check_cuda_build: CUDA sources compiled for ${archs}"
