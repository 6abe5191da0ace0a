#!/usr/bin/env bash
# One device call: build the CUDA variant for the local GPU, then the chosen stages. Logs and results go to
# $OUT (or ./out). Usage on the GPU machine, from the repository root, with .whl/ carried (README):
#   bash tools/device_check.sh [build] [tests] [bench] [sanitizer] [profile]   (default: the first four)
# Extra pytest arguments for the tests stage can be given in PYTEST_ARGS (no environment variable selects a
# kernel: tests force one with fpquant_ext.tuning.plan_override, e.g. quantize_path="rotate_sm90" for the
# Hopper rotation kernel at every size); BENCHES picks the benchmarks
# ("quantize w4a16" by default); CPU_TESTS=0 skips the CPU suite there (CI runs it).
set -uo pipefail
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
stages="${*:-build tests bench sanitizer}"
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
  readelf -d "$(python3 -c 'import fpquant_ext, os; print(fpquant_ext._C.__file__)')" | grep -E "NEEDED.*(stdc|c10|torch)"
  python3 -c "import fpquant_ext, json; print(json.dumps(fpquant_ext.backend_info()))"
fi
if [[ " $stages " == *" tests "* ]]; then
  echo "== GPU tests"
  eval "extra=(${PYTEST_ARGS:-})"  # shell quoting is kept: PYTEST_ARGS='-k "w4a16 or partial"'
  python3 -m pytest tests -q -p no:cacheprovider -m cuda -rfE --durations=8 "${extra[@]}" 2>&1 \
    | tee "$OUT/tests_cuda.log" | tail -60
  [[ "${CPU_TESTS:-1}" == 1 ]] && echo "== CPU tests" && python3 -m pytest tests -q -p no:cacheprovider -m "not cuda" 2>&1 | tee "$OUT/tests_cpu.log" | tail -5
fi
if [[ " $stages " == *" bench "* ]]; then
  echo "== benchmarks (${BENCHES:-quantize w4a16})"
  if [[ " ${BENCHES:-quantize w4a16} " == *" quantize "* ]]; then
    (cd benchmarks && python3 bench_quantize.py --json "$OUT/quantize_bench.json" --md "$OUT/quantize_bench.md")
  fi
  if [[ " ${BENCHES:-quantize w4a16} " == *" w4a16 "* ]]; then
    (cd benchmarks && python3 bench_w4a16.py --json "$OUT/w4a16_bench.json" --md "$OUT/w4a16_bench.md" \
      --plot "$OUT/w4a16_speedup.png")
  fi
fi
if [[ " $stages " == *" sanitizer "* ]]; then
  echo "== compute-sanitizer"
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests/quantize/test_cuda_quantize.py -q -x \
      -p no:cacheprovider -k "edge or bad_input or quotients or partial or (rotation_close and dtype0 and (32 or 128)) or (orthogonal and 128 and dtype0)" 2>&1 \
      | tee "$OUT/sanitizer_quantize_$tool.log" | tail -4
    echo "rc=$? ($tool, quantize)"
  done
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/w4a16/test_linear_w4a16.py -q -x \
    -p no:cacheprovider -k "odd_m or tile or exact or decode_config or nan or wgmma or packed or mma_sync" 2>&1 | tee "$OUT/sanitizer_w4a16_memcheck.log" | tail -4
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
