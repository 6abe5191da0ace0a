"""Split-K sweep of the fused W4A16 kernel at decode sizes (a tuning aid for the w4a16_splits heuristic).

    python benchmarks/sweep_w4a16_splits.py [--m 1,16] [--formats mxfp4,nvfp4]
"""

import argparse
import os

import torch

import fpquant_ext as fq
from common import bench_graph_ms

parser = argparse.ArgumentParser()
parser.add_argument("--m", default="1")
parser.add_argument("--formats", default="mxfp4")
args = parser.parse_args()

for N, K in [(8192, 8192), (28672, 8192), (8192, 28672), (4096, 4096)]:
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(3)]
    for fmt in args.formats.split(","):
        if fmt == "mxfp4":
            packed = [(*fq.quantize_mxfp4(w), None) for w in ws]
        else:
            packed = [(*fq.quantize_nvfp4(w, g), g) for w in ws for g in [fq.nvfp4_global_scale(w)]]
        for M in (int(m) for m in args.m.split(",")):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            bf16 = bench_graph_ms([lambda w=w: torch.matmul(x, w.t()) for w in ws])
            line = [f"{fmt} N={N} K={K} M={M} bf16 {bf16 * 1e3:.1f} us |"]
            for s in (1, 2, 4, 8, 16, 32):
                if s > K // 128:
                    continue
                os.environ["FPQUANT_W4A16_SPLITS"] = str(s)
                t = bench_graph_ms([lambda p=p: fq.linear_w4a16(x, p[0], p[1], p[2], format=fmt) for p in packed])
                line.append(f"s={s}: {t * 1e3:.1f}")
            os.environ.pop("FPQUANT_W4A16_SPLITS", None)
            print(" ".join(line), flush=True)
