"""Split-K and configuration sweep of the fused W4A16 kernels (a tuning aid for plan_w4a16,
csrc/cuda/w4a16/w4a16_plan.cpp).

    python benchmarks/sweep_w4a16_splits.py [--m 1,16] [--formats mxfp4,nvfp4] [--splits 0,1,2,4]
        [--path decode|mma|wgmma] [--configs 0,1,2] [--shapes 8192x8192,28672x8192]

Split 0 is the plan's choice; configs are the chosen path's (the decode kernel's CTA shapes,
kW4A16DecodeShapes, or the wgmma kernel's tiles, kW4A16WgmmaTiles, both in w4a16_plan.h); default: the
plan's choice. Every choice is forced through fpquant_ext.tuning.plan_override.
"""

import argparse

import torch

import fpquant_ext as fq
from fpquant_ext.tuning import plan_override, plan_w4a16
from common import bench_graph_ms

parser = argparse.ArgumentParser()
parser.add_argument("--m", default="1")
parser.add_argument("--formats", default="mxfp4")
parser.add_argument("--splits", default="0,1,2,4,8")
parser.add_argument("--path", default=None, choices=["decode", "mma", "wgmma", "slab"])
parser.add_argument("--configs", default="")
parser.add_argument("--shapes", default="8192x8192,28672x8192,8192x28672,4096x4096")
args = parser.parse_args()
configs = [int(c) for c in args.configs.split(",")] if args.configs else [None]

for N, K in [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]:
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(3)]
    for fmt in args.formats.split(","):
        if fmt == "mxfp4":
            packed = [(*fq.pack_w4a16(*fq.quantize_mxfp4(w), fmt), None) for w in ws]
        else:
            packed = [(*fq.pack_w4a16(*fq.quantize_nvfp4(w, g), fmt), g) for w in ws for g in [fq.nvfp4_global_scale(w)]]
        for M in (int(m) for m in args.m.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            bf16 = bench_graph_ms([lambda w=w: torch.matmul(x, w.t()) for w in ws])
            for c in configs:
                line = [f"{fmt} N={N} K={K} M={M} path={args.path or 'auto'} config={c} bf16 {bf16 * 1e3:.1f} us |"]
                for s in (int(s) for s in args.splits.split(",")):
                    if s > K // 128:
                        continue
                    with plan_override(w4a16_path=args.path, w4a16_config=c, w4a16_splits=s or None):
                        plan = plan_w4a16(M, N, K, fmt)
                        t = bench_graph_ms([lambda p=p: fq.linear_w4a16(x, p[0], p[1], p[2], format=fmt) for p in packed])
                    line.append(f"s={s or 'auto'} ({plan.path} {plan.config}/{plan.splits}): {t * 1e3:.1f} ({bf16 / t:.2f}x)")
                print(" ".join(line), flush=True)
