"""Launch each quantize configuration of the bandwidth benchmark once (after a warm-up), for Nsight Compute:

    ncu -k regex:quantize --launch-skip-before-match 0 python3 tools/profile_quantize.py [M K]

Configurations: MXFP4 / NVFP4 x rotation none / 32 / 128 on bf16 input, the benchmark's Hadamard matrices.
"""

from __future__ import annotations

import sys

import torch

import fpquant_ext as fq
from fpquant_ext import rotations


def main() -> None:
    M, K = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (8192, 8192)
    dev = torch.device("cuda")
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    configs = []
    for fmt in ("MXFP4", "NVFP4"):
        for r in (0, 32, 128):
            R = rotations.hadamard(r).to(dev) if r else None
            g = fq.nvfp4_global_scale(x, R)
            configs.append((fmt, r, R, g))
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for fmt, r, R, g in configs:
        torch.cuda.nvtx.range_push(f"{fmt} r={r}")
        if fmt == "MXFP4":
            fq.quantize_mxfp4(x, R)
        else:
            fq.quantize_nvfp4(x, g, R)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
