"""Quantization kernel bandwidth on the GPU, against a device-to-device copy measured in the same run.

    python benchmarks/bench_quantize.py [--json out.json] [--md out.md]

For each [M, K], format and rotation size it reports the effective bandwidth (bytes read + written by the
fused kernel: x once, codes and scales once) as a fraction of torch's copy bandwidth (x.clone(): bytes read
+ written), and the speedup over the two-step torch baseline (bf16/fp32 matmul by the rotation, then the
pure-PyTorch reference quantizer on the GPU). The kernel and the copy are timed as CUDA graph replays (no
per-call host latency); the slow two-step baseline eagerly.
"""

from __future__ import annotations

import argparse

import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations
from common import bench_graph_ms, bench_ms, report, run_meta

SHAPES = [(8192, 8192), (16384, 8192), (32, 8192)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--md", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    rows = []
    for M, K in SHAPES:
        x = torch.randn(M, K, device=dev, dtype=dtype)
        copy_ms = bench_graph_ms(lambda: x.clone())
        copy_bw = 2 * x.numel() * x.element_size() / (copy_ms * 1e-3)
        for fmt, group in (("MXFP4", 32), ("NVFP4", 16)):
            for r in (0, 32, 128):
                R = rotations.hadamard(r).to(dev) if r else None
                g = fq.nvfp4_global_scale(x, R)
                if fmt == "MXFP4":
                    fused = lambda: fq.quantize_mxfp4(x, R)  # noqa: E731

                    def two_step():
                        xr = x if R is None else (x.reshape(-1, r) @ R.to(dtype)).reshape(M, K)
                        return ref.quantize_mxfp4(xr)
                else:
                    fused = lambda: fq.quantize_nvfp4(x, g, R)  # noqa: E731

                    def two_step():
                        xr = x if R is None else (x.reshape(-1, r) @ R.to(dtype)).reshape(M, K)
                        return ref.quantize_nvfp4(xr, g)
                ms = bench_graph_ms(fused)
                base_ms = bench_ms(two_step, warmup=3, reps=10)
                nbytes = x.numel() * x.element_size() + x.numel() // 2 + x.numel() // group
                bw = nbytes / (ms * 1e-3)
                rows.append({"M": M, "K": K, "format": fmt, "rotation": r, "ms": ms, "GBps": bw / 1e9,
                             "copy_GBps": copy_bw / 1e9, "fraction_of_copy": bw / copy_bw,
                             "two_step_ms": base_ms, "speedup_vs_two_step": base_ms / ms})
    meta = run_meta(dtype=args.dtype, timing="kernel and copy: CUDA graph replays (median of 20, per call); "
                    "two-step baseline: median of 10 event-timed eager calls")
    table = [[str(r["M"]), str(r["K"]), r["format"], str(r["rotation"] or "-"), f"{r['ms']:.4f}",
              f"{r['GBps']:.0f}", f"{r['copy_GBps']:.0f}", f"{100 * r['fraction_of_copy']:.0f}%",
              f"{r['two_step_ms']:.3f}", f"{r['speedup_vs_two_step']:.1f}x"] for r in rows]
    report(f"Quantize bandwidth, {name}, {args.dtype} input, {meta['date']}",
           ["M", "K", "format", "r", "ms", "GB/s", "copy GB/s", "of copy", "two-step ms", "speedup"],
           table, meta, rows, args.md, args.json)


if __name__ == "__main__":
    main()
