"""Split-K and configuration sweep of the fused W4A16 kernels at decode sizes (a tuning aid for the
w4a16_splits and w4a16_decode_config heuristics).

    python benchmarks/sweep_w4a16_splits.py [--m 1,16] [--formats mxfp4,nvfp4] [--splits 0,1,2,4]
        [--configs 0,1,2] [--tiles 0,1,2] [--shapes 8192x8192,28672x8192]

Split 0 is the heuristic's choice; configs are the decode kernel's (M <= 16) CTA shapes, kW4A16DecodeShapes
in csrc/cuda/w4a16.h, and tiles the wgmma kernel's (65 <= M <= 1024 on sm_90; kTiles in w4a16_wgmma.cu)
(default for both: the heuristic's choice).
"""

import argparse
import os

import torch

import fpquant_ext as fq
from common import bench_graph_ms

parser = argparse.ArgumentParser()
parser.add_argument("--m", default="1")
parser.add_argument("--formats", default="mxfp4")
parser.add_argument("--splits", default="0,1,2,4,8")
parser.add_argument("--configs", default="")
parser.add_argument("--tiles", default="")
parser.add_argument("--shapes", default="8192x8192,28672x8192,8192x28672,4096x4096")
parser.add_argument("--vary", default="", help="NAME=v1,v2,...: also sweep an environment knob")
args = parser.parse_args()
vary_name, _, vary_values = args.vary.partition("=")
vary = [(vary_name, v) for v in vary_values.split(",")] if args.vary else [(None, None)]
configs = [int(c) for c in args.configs.split(",")] if args.configs else [None]
tiles = [int(t) for t in args.tiles.split(",")] if args.tiles else [None]

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
            for c, tile, (vn, vv) in [(c, t, v) for c in configs for t in tiles for v in vary]:
                if vn is not None:
                    os.environ[vn] = vv
                if c is not None:
                    os.environ["FPQUANT_W4A16_DECODE_CONFIG"] = str(c)
                if tile is not None:
                    os.environ["FPQUANT_W4A16_WGMMA_TILE"] = str(tile)
                knob = f" {vn}={vv}" if vn else ""
                line = [f"{fmt} N={N} K={K} M={M} config={c} tile={tile}{knob} bf16 {bf16 * 1e3:.1f} us |"]
                for s in (int(s) for s in args.splits.split(",")):
                    if s > K // 128:
                        continue
                    if s:
                        os.environ["FPQUANT_W4A16_SPLITS"] = str(s)
                    t = bench_graph_ms([lambda p=p: fq.linear_w4a16(x, p[0], p[1], p[2], format=fmt) for p in packed])
                    os.environ.pop("FPQUANT_W4A16_SPLITS", None)
                    line.append(f"s={s or 'auto'}: {t * 1e3:.1f} ({bf16 / t:.2f}x)")
                print(" ".join(line), flush=True)
            os.environ.pop("FPQUANT_W4A16_DECODE_CONFIG", None)
            os.environ.pop("FPQUANT_W4A16_WGMMA_TILE", None)
            if vary_name:
                os.environ.pop(vary_name, None)
