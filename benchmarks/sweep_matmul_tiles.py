"""Tile sweep of the Hopper FP4 GEMMs (a tuning aid for plan_matmul, csrc/cuda/matmul/matmul_plan.cpp), with
the time split between the operand pass and the GEMM kernel.

    python benchmarks/sweep_matmul_tiles.py [--json out.json] [--shapes 8192x8192x8192,16x8192x8192] [--formats nvfp4] [--tiles 0,8]

Every tile of kMatmulSm90MxTiles / kMatmulSm90NvTiles (matmul_sm90_tiles.h) is forced through
fpquant_ext.tuning.plan_override(matmul_path="sm90", matmul_config=c) and timed as bench_matmul times the op
(bf16 output, linear scales, CUDA-graph medians over operand copies larger than the L2); the split comes from
one profiled call of each (torch.profiler kernel times).
"""

import argparse
import json

import torch

import fpquant_ext as fq
from bench_matmul import LARGE, L2_BYTES, SMALL, matmul, quantize
from common import bench_graph_ms, run_meta

TILES = {"mxfp4": 4, "nvfp4": 8}


def kernel_split(fn):
    """Microseconds per kernel name (first 60 characters) in one call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            out[e.key[:60]] = round(e.device_time_total, 1)
    return out


def save(path, rows):
    with open(path, "w") as f:
        json.dump({"meta": run_meta(timing="CUDA-graph medians per call"), "rows": rows}, f, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--shapes", default=",".join(f"{m}x{n}x{k}" for m, n, k in LARGE + SMALL))
    parser.add_argument("--formats", default="mxfp4,nvfp4")
    parser.add_argument("--tiles", help="comma-separated tile indices (default: every tile of the format)")
    args = parser.parse_args()
    rows = []
    for M, N, K in [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]:
        copies = max(1, min(4, -(-2 * L2_BYTES // ((M + N) * K * 17 // 32))))
        xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
        ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        bf16 = bench_graph_ms([lambda x=x, w=w: torch.matmul(x, w.t()) for x, w in zip(xs, ws)])
        for fmt in args.formats.split(","):
            pairs = [(quantize(x, fmt), quantize(w, fmt)) for x, w in zip(xs, ws)]
            tiles = [int(t) for t in args.tiles.split(",")] if args.tiles else range(TILES[fmt])
            for c in (t for t in tiles if t < TILES[fmt]):
                with fq.tuning.plan_override(matmul_path="sm90", matmul_config=c):
                    t = bench_graph_ms([lambda a=a, b=b: matmul(fmt, a, b) for a, b in pairs])
                    split = kernel_split(lambda: matmul(fmt, *pairs[0]))
                row = {"M": M, "N": N, "K": K, "format": fmt, "tile": c, "ms": t, "bf16_ms": bf16,
                       "vs_bf16": bf16 / t, "kernels_us": split}
                rows.append(row)
                if args.json:  # after every row: a step cut short by its time limit keeps what it measured
                    save(args.json, rows)
                print(f"{M}x{N}x{K} {fmt} tile {c}: {t * 1e3:.1f} us ({bf16 / t:.2f}x bf16 {bf16 * 1e3:.1f} us)  "
                      + ", ".join(f"{k}: {v}" for k, v in split.items()), flush=True)
            del pairs
        del xs, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
