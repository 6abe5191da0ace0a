#!/usr/bin/env bash
# One device call: build two trees of this project for the local GPU (BEFORE, default .before/, and the
# working tree), run the GPU tests and compute-sanitizer on the second, then the quantize and W4A16
# benchmarks of both, alternating, in this one run, and print a table of time ratios (after / before).
# Usage on the GPU machine from the repository root:  bash tools/compare_builds.sh [tests] [sanitizer] [bench]
set -uo pipefail
OUT="${OUT:-$PWD/out}"
BEFORE="${BEFORE:-.before}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=8
stages="${*:-tests sanitizer bench}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
cc=$(python3 -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}a' if m>=9 else f'{m}{n}')")
start=$(date +%s)
build() {  # build SRC DEST LOG
  if [[ -f "$2/fpquant_ext/__init__.py" ]]; then echo "$2 already built"; return 0; fi
  FPQUANT_CUDA_ARCHS="$cc" python3 -m pip install --no-build-isolation --no-deps --target "$2" "$1" > "$3" 2>&1 \
    || { grep -E "error" "$3" | head -30; tail -20 "$3"; return 1; }
}
build "$BEFORE" /tmp/before "$OUT/build_before.log" & pb=$!
build . /tmp/after "$OUT/build_after.log" & pa=$!
wait $pb || exit 1
wait $pa || exit 1
echo "built both for sm_${cc} in $(( $(date +%s) - start )) s"
grep "fpquant_ext: csrc/" "$OUT/build_after.log" | head -20
after() { PYTHONPATH=/tmp/after "$@"; }
after python3 -c "import fpquant_ext, json; print(fpquant_ext.__file__, json.dumps(fpquant_ext.backend_info()))"
if [[ " $stages " == *" tests "* ]]; then
  echo "== GPU tests (after)"
  after python3 -m pytest tests -q -p no:cacheprovider -m cuda -rfE -x 2>&1 | tee "$OUT/tests_cuda.log" | tail -15
fi
if [[ " $stages " == *" sanitizer "* ]]; then
  echo "== compute-sanitizer memcheck (after)"
  after compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests -q -x -p no:cacheprovider -m cuda \
    -k "edge or bad_input or quotients or partial or (rotation_close and dtype0 and (32 or 128)) or (orthogonal and 128 and dtype0) or odd_m or tile or exact or decode_config or nan or wgmma or packed or mma_sync or cluster" \
    2>&1 | tee "$OUT/memcheck.log" | tail -4
  echo "memcheck rc=${PIPESTATUS[0]}"
fi
if [[ " $stages " == *" bench "* ]]; then
  echo "== benchmarks, before and after alternating, ${ROUNDS:-3} rounds"
  raw=/tmp/bench_raw
  rm -rf "$raw" && mkdir -p "$raw"
  for round in $(seq "${ROUNDS:-3}"); do
    for side in before after; do
      (cd benchmarks && PYTHONPATH=/tmp/$side python3 bench_quantize.py --json "$raw/quantize_${side}_$round.json" > /dev/null)
      (cd benchmarks && PYTHONPATH=/tmp/$side python3 bench_w4a16.py --json "$raw/w4a16_${side}_$round.json" > /dev/null)
    done
  done
  python3 tools/compare_results.py "$raw" "$OUT/compare.json" | tee "$OUT/compare.md"
fi
