"""Run the Hopper FP4 GEMMs once per tile configuration (after a warm-up), for Nsight Compute:

    ncu --profile-from-start off -k regex:"gemm_kernel|fold_mx|decode_nv" python3 tools/profile_matmul.py [M N K] [--configs mxfp4:0,3 nvfp4:0]

Operands are quantized random bf16 matrices; the sm90 path is forced with each named tile.
"""

from __future__ import annotations

import argparse

import torch

import fpquant_ext as fq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", nargs="*", type=int, default=[8192, 8192, 8192])
    ap.add_argument("--configs", nargs="*", default=["mxfp4:0", "nvfp4:0"])
    args = ap.parse_args()
    M, N, K = args.shape
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    ops = []
    for item in args.configs:
        fmt, configs = item.split(":")
        for c in (int(v) for v in configs.split(",")):
            if fmt == "mxfp4":
                a, sa = fq.quantize_mxfp4(x)
                b, sb = fq.quantize_mxfp4(w)
                run = lambda a=a, sa=sa, b=b, sb=sb: fq.matmul_mxfp4(a, sa, b, sb, "linear", torch.bfloat16)  # noqa: E731
            else:
                ga, gb = fq.nvfp4_global_scale(x), fq.nvfp4_global_scale(w)
                a, sa = fq.quantize_nvfp4(x, ga)
                b, sb = fq.quantize_nvfp4(w, gb)
                run = lambda a=a, sa=sa, b=b, sb=sb, ga=ga, gb=gb: fq.matmul_nvfp4(  # noqa: E731
                    a, sa, ga, b, sb, gb, "linear", torch.bfloat16)
            ops.append((f"{fmt} tile {c}", c, run))
    with fq.tuning.plan_override(matmul_path="sm90"):
        for _, c, run in ops:
            with fq.tuning.plan_override(matmul_path="sm90", matmul_config=c):
                run()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for name, c, run in ops:
            torch.cuda.nvtx.range_push(name)
            with fq.tuning.plan_override(matmul_path="sm90", matmul_config=c):
                run()
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
