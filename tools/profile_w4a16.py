"""Launch the W4A16 operator once per configuration (after a warm-up), for Nsight Compute:

    ncu --profile-from-start off -k regex:w4a16 python3 tools/profile_w4a16.py [M ...]

Configurations: (8192, 8192) MXFP4 and NVFP4 with bf16 activations, for each M given (default 1 and 16),
each followed by the same product in bf16 through torch.matmul (cuBLAS), the baseline; add "-k regex:gemv" or
widen the kernel filter to profile it.
"""

from __future__ import annotations

import sys

import torch

import fpquant_ext as fq


def main() -> None:
    ms = [int(a) for a in sys.argv[1:]] or [1, 16]
    N = K = 8192
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
    g = fq.nvfp4_global_scale(w)
    weights = {"mxfp4": (*fq.pack_w4a16(*fq.quantize_mxfp4(w), "mxfp4"), None),
               "nvfp4": (*fq.pack_w4a16(*fq.quantize_nvfp4(w, g), "nvfp4"), g)}
    for M in ms:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        for fmt, (c, s, gs) in weights.items():
            fq.linear_w4a16(x, c, s, gs, format=fmt)  # warm-up
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            fq.linear_w4a16(x, c, s, gs, format=fmt)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
        torch.matmul(x, w.t())  # warm-up
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        torch.matmul(x, w.t())
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
