#!/usr/bin/env bash
# One device call: build the CUDA variant for the local GPU, then the chosen stages. Logs and results go to
# $OUT (or ./out). Usage on the GPU machine, from the repository root, with .whl/ carried (README):
#   bash tools/device_check.sh [build] [build-all] [pack] [tests] [bench] [sweep] [sanitizer] [profile] [profile-matmul]
#   (default: build tests bench sanitizer)
# build-all starts, beside the other stages, a build for every target (90a;100a;120a; CUTLASS from .whl/) into
# /tmp/all and, at the end, checks that it loads, what its matmul plan picks on this GPU, and that both the
# default and the Hopper path match the CPU reference. pack saves the installed package to
# $OUT/fpquant_build.tgz.
# Extra pytest arguments for the tests stage can be given in PYTEST_ARGS (no environment variable selects a
# kernel: tests force one with fpquant_ext.tuning.plan_override, e.g. quantize_path="rotate_sm90" for the
# Hopper rotation kernel at every size); BENCHES picks the benchmarks ("quantize w4a16 matmul" by default;
# MATMUL_PATH forces bench_matmul's path; SWEEP_SHAPES / SWEEP_FORMATS / SWEEP_TILES narrow the tile sweep); CPU_TESTS=0 skips the CPU suite there (CI runs it); STEP_TIMEOUT
# bounds each test, benchmark and sanitizer step (seconds, default 240); ALL_DEADLINE bounds build-all
# (seconds from its start, default 480).
set -uo pipefail
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages="${*:-build tests bench sanitizer}"
T="${STEP_TIMEOUT:-240}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
if [[ " $stages " == *" build "* ]]; then
  cc=$(python3 -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}a' if m>=9 else f'{m}{n}')")
  echo "== build for sm_${cc}"
  start=$(date +%s)
  if ! FPQUANT_CUDA_ARCHS="$cc" python3 -m pip install -v --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40
    tail -40 "$OUT/build.log"
    exit 1
  fi
  echo "built in $(( $(date +%s) - start )) s"
  grep "fpquant_ext: " "$OUT/build.log" | head -20
  readelf -d "$(python3 -c 'import fpquant_ext, os; print(fpquant_ext._C.__file__)')" | grep -E "NEEDED.*(stdc|c10|torch)"
  python3 -c "import fpquant_ext, json; print(json.dumps(fpquant_ext.backend_info()))"
fi
if [[ " $stages " == *" pack "* ]]; then
  pkg=$(python3 -c 'import fpquant_ext, os; print(os.path.dirname(fpquant_ext.__file__))')
  tar -C "$(dirname "$pkg")" -czf "$OUT/fpquant_build.tgz" fpquant_ext && ls -la "$OUT/fpquant_build.tgz"
fi
if [[ " $stages " == *" build-all "* ]]; then
  echo "== build for 90a;100a;120a in the background (/tmp/all)"
  all_start=$(date +%s)
  setsid bash -c 'FPQUANT_CUDA_ARCHS="90a;100a;120a" CMAKE_BUILD_PARALLEL_LEVEL=${ALL_JOBS:-12} nice -n 10 python3 -m pip \
      install -v --no-build-isolation --no-deps --config-settings=build-dir=/tmp/build-all --target /tmp/all . \
      > "$0/build_all.log" 2>&1; echo "rc=$?" >> "$0/build_all.log"' "$OUT" &
  all_pid=$!
fi
if [[ " $stages " == *" tests "* ]]; then
  echo "== GPU tests"
  eval "extra=(${PYTEST_ARGS:-})"  # shell quoting is kept: PYTEST_ARGS='-k "w4a16 or partial"'
  timeout "$T" python3 -m pytest tests -q -p no:cacheprovider -m cuda -rfE --durations=8 "${extra[@]}" 2>&1 \
    | tee "$OUT/tests_cuda.log" | tail -60
  [[ "${CPU_TESTS:-1}" == 1 ]] && echo "== CPU tests" && python3 -m pytest tests -q -p no:cacheprovider -m "not cuda" 2>&1 | tee "$OUT/tests_cpu.log" | tail -5
fi
if [[ " $stages " == *" bench "* ]]; then
  benches="${BENCHES:-quantize w4a16 matmul}"
  echo "== benchmarks ($benches)"
  if [[ " $benches " == *" matmul "* ]]; then
    (cd benchmarks && timeout "$T" python3 bench_matmul.py ${MATMUL_PATH:+--matmul-path "$MATMUL_PATH"} \
      --json "$OUT/matmul_bench.json" --md "$OUT/matmul_bench.md")
  fi
  if [[ " $benches " == *" quantize "* ]]; then
    (cd benchmarks && timeout "$T" python3 bench_quantize.py --json "$OUT/quantize_bench.json" --md "$OUT/quantize_bench.md")
  fi
  if [[ " $benches " == *" w4a16 "* ]]; then
    (cd benchmarks && timeout "$T" python3 bench_w4a16.py --json "$OUT/w4a16_bench.json" --md "$OUT/w4a16_bench.md" \
      --plot "$OUT/w4a16_speedup.png")
  fi
fi
if [[ " $stages " == *" sanitizer "* ]]; then
  echo "== compute-sanitizer"
  timeout "$T" compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/matmul/test_matmul_sm90.py \
    tests/matmul/test_matmul_cuda.py tests/matmul/test_matmul_w4a16_path.py tests/w4a16/test_w4a16_pack.py -q -x \
    -p no:cacheprovider -k "${SANITIZER_K:-poison or nan or edge or odd or bias or b_rows or pack_kernel or load_width}" 2>&1 \
    | tee "$OUT/sanitizer_matmul_memcheck.log" | tail -4
  echo "rc=${PIPESTATUS[0]} (memcheck, matmul)"
  if [[ "${SANITIZER_ALL:-0}" == 1 ]]; then
    for tool in memcheck racecheck; do
      timeout "$T" compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests/quantize/test_cuda_quantize.py -q -x \
        -p no:cacheprovider -k "edge or bad_input or quotients or partial or (rotation_close and dtype0 and (32 or 128)) or (orthogonal and 128 and dtype0)" 2>&1 \
        | tee "$OUT/sanitizer_quantize_$tool.log" | tail -4
      echo "rc=${PIPESTATUS[0]} ($tool, quantize)"
    done
    timeout "$T" compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/w4a16/test_linear_w4a16.py -q -x \
      -p no:cacheprovider -k "odd_m or tile or exact or decode_config or nan or wgmma or packed or mma_sync" 2>&1 | tee "$OUT/sanitizer_w4a16_memcheck.log" | tail -4
  fi
fi
if [[ " $stages " == *" sweep "* ]]; then
  echo "== matmul tile sweep"
  (cd benchmarks && timeout "$T" python3 sweep_matmul_tiles.py ${SWEEP_SHAPES:+--shapes "$SWEEP_SHAPES"} ${SWEEP_TILES:+--tiles "$SWEEP_TILES"} \
    ${SWEEP_FORMATS:+--formats "$SWEEP_FORMATS"} --json "$OUT/matmul_tiles.json")
fi
if [[ " $stages " == *" profile "* ]]; then
  echo "== Nsight Compute: quantize kernels (tools/profile_quantize.py)"
  ncu --profile-from-start off -k regex:"quantize_groups|rotate_quantize" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section InstructionStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section SourceCounters \
    python3 tools/profile_quantize.py > "$OUT/ncu_quantize.txt" 2>&1
  echo "rc=$? (ncu)"
  grep -E "rotate_quantize|quantize_groups|Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Memory Throughput|Executed Ipc A|Stall" "$OUT/ncu_quantize.txt" | cut -c1-160 | head -150
fi
if [[ " $stages " == *" profile-matmul "* ]]; then
  echo "== Nsight Compute: the Hopper GEMMs (tools/profile_matmul.py ${PROFILE_MATMUL_ARGS:-})"
  timeout "$T" ncu --profile-from-start off -k regex:"gemm_kernel|fold_mx|decode_nv" \
    --section SpeedOfLight --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    python3 tools/profile_matmul.py ${PROFILE_MATMUL_ARGS:-} > "$OUT/ncu_matmul.txt" 2>&1
  echo "rc=$? (ncu)"
  grep -E "gemm_kernel|fold_mx|decode_nv|Duration|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Executed Ipc A|Compute \(SM\) Throughput|Stall" "$OUT/ncu_matmul.txt" | cut -c1-160 | head -120
fi
if [[ -n "${all_pid:-}" ]]; then
  left=$(( ${ALL_DEADLINE:-480} - ($(date +%s) - all_start) ))
  echo "== waiting up to ${left} s for the all-targets build"
  for ((i = 0; i < left; i += 5)); do grep -q "^rc=" "$OUT/build_all.log" && break; sleep 5; done
  grep -q "^rc=" "$OUT/build_all.log" || { kill -- -"$all_pid" 2>/dev/null; echo "all-targets build unfinished"; }
  tail -1 "$OUT/build_all.log"; grep "fpquant_ext: " "$OUT/build_all.log" | head -30
  echo "all-targets build: $(( $(date +%s) - all_start )) s"
  PYTHONPATH=/tmp/all:${PYTHONPATH:-} python3 tools/device_plan_check.py
fi
