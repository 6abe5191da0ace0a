"""W4A16 linear (bf16 activations x FP4 weights) against bf16 cuBLAS (torch.matmul) in the same run.

    python benchmarks/bench_w4a16.py [--json out.json] [--md out.md] [--plot out.png] [--m 1,4,16]

For M in {1, 4, 16, 64, 128, 512, 2048, 8192} and (N, K) in {(8192, 8192), (28672, 8192), (8192, 28672),
(4096, 4096)}, both formats: median CUDA-event time of fpquant's kernel, of torch.matmul with the bf16 weight,
and of "dequantize then bf16 matmul"; speedups are ratios within this run. Each candidate is captured in a CUDA
graph (as a decode loop runs it, without per-call host latency) and the replays are timed; weights rotate among
three copies so that the small-M cases measure HBM, not L2. --m restricts M (e.g. decode only, for a short run).
"""

from __future__ import annotations

import argparse
import json

import torch

import fpquant_ext as fq
from common import bench_graph_ms, report, run_meta

M_LIST = [1, 4, 16, 64, 128, 512, 2048, 8192]
NK_LIST = [(8192, 8192), (28672, 8192), (8192, 28672), (4096, 4096)]


def plot(rows: list, meta: dict, path: str) -> None:
    """Speedup over bf16 vs M, one line per (format, shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for N, K in NK_LIST:
        for fmt, style in (("mxfp4", "-o"), ("nvfp4", "--s")):
            pts = [r for r in rows if r["N"] == N and r["K"] == K and r["format"] == fmt]
            ax.plot([r["M"] for r in pts], [r["speedup_vs_bf16"] for r in pts], style, label=f"{fmt} {N}x{K}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("speedup over bf16 torch.matmul")
    ax.set_title(f"W4A16 on {meta['device']} ({meta['date']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--md")
    parser.add_argument("--plot")
    parser.add_argument("--copies", type=int, default=3, help="weight copies to rotate through (beats L2)")
    parser.add_argument("--m", default=None, help="comma-separated M values (default: the full list)")
    parser.add_argument("--replot", help="only draw --plot from a JSON written by an earlier run (no GPU needed)")
    args = parser.parse_args()
    if args.replot:
        data = json.load(open(args.replot))
        plot(data["rows"], data["meta"], args.plot)
        return
    dev = torch.device("cuda")
    rows = []
    for N, K in NK_LIST:
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(args.copies)]
        packed = {}
        for fmt in ("mxfp4", "nvfp4"):
            packed[fmt] = []
            for w in ws:
                if fmt == "mxfp4":
                    c, s = fq.quantize_mxfp4(w)
                    g = None
                else:
                    g = fq.nvfp4_global_scale(w)
                    c, s = fq.quantize_nvfp4(w, g)
                # (canonical codes, scales, global scale, packed codes, packed scales): the operator runs on
                # the weight packed once, as a model holds it; the dequantize baseline on the canonical form.
                packed[fmt].append((c, s, g) + fq.pack_w4a16(c, s, fmt))
        for M in [int(v) for v in args.m.split(",")] if args.m else M_LIST:
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            t_bf16 = bench_graph_ms([lambda w=w: torch.matmul(x, w.t()) for w in ws])
            for fmt in ("mxfp4", "nvfp4"):
                t_fp4 = bench_graph_ms([lambda p=p: fq.linear_w4a16(x, p[3], p[4], p[2], format=fmt) for p in packed[fmt]])
                deq = (lambda p: fq.dequantize_mxfp4(p[0], p[1], out_dtype=torch.bfloat16)) if fmt == "mxfp4" else (
                    lambda p: fq.dequantize_nvfp4(p[0], p[1], p[2], out_dtype=torch.bfloat16))
                t_two = bench_graph_ms([lambda p=p: torch.matmul(x, deq(p).t()) for p in packed[fmt]])
                rows.append({"M": M, "N": N, "K": K, "format": fmt, "fp4_ms": t_fp4, "bf16_ms": t_bf16,
                             "dequant_matmul_ms": t_two, "speedup_vs_bf16": t_bf16 / t_fp4,
                             "speedup_vs_dequant_matmul": t_two / t_fp4})
                print(f"N={N} K={K} M={M} {fmt}: {t_fp4 * 1e3:.1f} us vs bf16 {t_bf16 * 1e3:.1f} us "
                      f"-> {t_bf16 / t_fp4:.2f}x", flush=True)
        del ws, packed
        torch.cuda.empty_cache()
    meta = run_meta(timing="CUDA graph of 4 rounds over 3 weight copies, median of 20 replays, per call",
                    weights="packed once by pack_w4a16")
    table = [[str(r["N"]), str(r["K"]), str(r["M"]), r["format"], f"{r['fp4_ms'] * 1e3:.1f}",
              f"{r['bf16_ms'] * 1e3:.1f}", f"{r['dequant_matmul_ms'] * 1e3:.1f}", f"{r['speedup_vs_bf16']:.2f}x",
              f"{r['speedup_vs_dequant_matmul']:.2f}x"] for r in rows]
    report(f"W4A16 linear vs bf16 cuBLAS, {meta['device']}, {meta['date']}",
           ["N", "K", "M", "format", "fp4 us", "bf16 us", "dequant+mm us", "vs bf16", "vs dequant+mm"],
           table, meta, rows, args.md, args.json)
    if args.plot:
        plot(rows, meta, args.plot)


if __name__ == "__main__":
    main()
