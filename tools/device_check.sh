#!/usr/bin/env bash
# One device call: build the CUDA variant for the local GPU's architecture, run the GPU tests (and the rest),
# compute-sanitizer on the CUDA quantization tests, then the benchmarks. Results land in $OUT (or ./out).
# Usage on the GPU machine, from the repository root, with .whl/ carried (see README "Offline machine"):
#   bash tools/device_check.sh [quick]
set -uo pipefail
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
cc=$(python3 -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}a' if m>=9 else f'{m}{n}')")
echo "== build for sm_${cc}"
time FPQUANT_CUDA_ARCHS="$cc" python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -20 | tee "$OUT/build.log"
python3 -c "import fpquant_ext, json; print(json.dumps(fpquant_ext.backend_info()))"
echo "== tests"
python3 -m pytest tests -q -x -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/tests.log"
[ "${1:-}" = quick ] && exit 0
echo "== compute-sanitizer (memcheck, racecheck) on the CUDA quantization tests"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest tests/test_cuda_quantize.py -q -x \
    -k "edge or bad_input or rotation_close and 32 and bfloat16" 2>&1 | tail -8 | tee "$OUT/sanitizer_$tool.log"
done
compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_linear_w4a16.py -q -x \
  -k "odd_m or tile" 2>&1 | tail -8 | tee "$OUT/sanitizer_w4a16.log"
echo "== benchmarks"
python3 benchmarks/bench_quantize.py --json "$OUT/quantize_bench.json" --md "$OUT/quantize_bench.md"
python3 benchmarks/bench_w4a16.py --json "$OUT/w4a16_bench.json" --md "$OUT/w4a16_bench.md" --plot "$OUT/w4a16_speedup.png"
