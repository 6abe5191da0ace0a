#!/usr/bin/env bash
# Compile every CUDA source to object files for each target architecture (default sm_90a, sm_100a,
# sm_120a) without building the extension: the CI check on machines that have nvcc but no GPU. Prints the
# targets of each source, each architecture-specific kernel's registers / spills / static shared memory
# (ptxas, checked by tools/kernel_resources.py) and each source's compile time.
set -euo pipefail
cd "$(dirname "$0")/.."
archs="${FPQUANT_CUDA_ARCHS:-90a;100a;120a}"
command -v nvcc >/dev/null || { echo "check_cuda_build: nvcc not found" >&2; exit 1; }
build=build/cuda-check
mkdir -p build
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DFPQUANT_CUDA_CHECK_ONLY=ON -DFPQUANT_PTXAS_VERBOSE=ON "-DFPQUANT_CUDA_ARCHS=${archs}" \
      -DPython_EXECUTABLE="$(command -v python)" -DCMAKE_BUILD_TYPE=Release > "$build.log" 2>&1 \
  || { cat "$build.log"; exit 1; }
grep "fpquant_ext: csrc/" "$build.log"  # each kernel source and the targets it is compiled for
# The four CUTLASS sources (csrc/cuda/matmul/*fp4_sm1?0.cu) need 6-8 GB of memory each to compile.
cmake --build "$build" -j "$(nproc)" > "$build/compile.log" 2>&1 \
  || { grep -v "^ptxas info\|bytes stack frame" "$build/compile.log" | tail -200; exit 1; }
python tools/kernel_resources.py "$build/compile.log"
# Compile time per source (ninja's log: start and end in ms; the latest build of each), slowest first.
awk '!/^#/ && $4 ~ /\.o$/ { o = $4; sub(/.*\.dir\//, "", o); sub(/\.o$/, "", o); t[o] = ($2 - $1) / 1000 }
     END { for (o in t) printf "  %6.1f s  %s\n", t[o], o }' "$build/.ninja_log" | sort -rn |
  { echo "compile time per source:"; cat; }
echo "check_cuda_build: CUDA sources compiled for ${archs} in $(( $(date +%s) - start )) s"
