"""CPU throughput of the C++ quantizers against the pure-PyTorch reference and a memory copy, same run.

    python benchmarks/bench_cpu_quantize.py [--json out.json]

The CPU kernels exist to define and check semantics, not to be fast; this keeps their cost visible.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations


def median_time(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=4096)
    args = parser.parse_args()
    x = torch.randn(args.rows, args.cols, dtype=torch.bfloat16)
    nbytes = x.numel() * 2
    t_copy = median_time(lambda: x.clone())
    rows = []
    for fmt in ("mxfp4", "nvfp4"):
        for r in (None, 32, 128):
            R = None if r is None else rotations.hadamard(r)
            if fmt == "mxfp4":
                kern = lambda: fq.quantize_mxfp4(x, R)  # noqa: E731
                refn = lambda: ref.quantize_mxfp4(x, R)  # noqa: E731
            else:
                g = fq.nvfp4_global_scale(x, R)
                kern = lambda: fq.quantize_nvfp4(x, g, R)  # noqa: E731
                refn = lambda: ref.quantize_nvfp4(x, g, R)  # noqa: E731
            tk, tr = median_time(kern), median_time(refn, reps=3)
            rows.append({"format": fmt, "rotation": r or 0, "kernel_ms": tk * 1e3, "reference_ms": tr * 1e3,
                         "kernel_GBps_read": nbytes / tk / 1e9, "copy_ms": t_copy * 1e3})
    meta = {"date": datetime.date.today().isoformat(), "device": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "shape": [args.rows, args.cols],
            "dtype": "bfloat16"}
    print(f"CPU quantize, {args.rows}x{args.cols} bf16, {meta['threads']} threads, {meta['date']}")
    print(f"{'format':<7}{'rot':>5}{'kernel ms':>11}{'ref ms':>9}{'kernel/ref':>11}{'kernel/copy':>12}")
    for r in rows:
        print(f"{r['format']:<7}{r['rotation']:>5}{r['kernel_ms']:>11.2f}{r['reference_ms']:>9.1f}"
              f"{r['reference_ms'] / r['kernel_ms']:>10.1f}x{r['kernel_ms'] / r['copy_ms']:>11.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
