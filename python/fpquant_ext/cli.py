"""The `fpquant` command line."""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _demo(args: argparse.Namespace) -> int:
    import fpquant_ext as fq
    from fpquant_ext import rotations

    info = fq.backend_info()
    device = torch.device(args.device) if args.device else torch.device("cpu")
    if device.type == "cuda" and info["cuda_device"] is None:
        print("fpquant demo: no CUDA kernels or no GPU here; use --device cpu", file=sys.stderr)
        return 2
    print(f"fpquant_ext {info['version']}  torch {info['torch']}  "
          f"CUDA targets compiled: {', '.join(info['cuda_archs_compiled']) or 'none'}")
    print(f"backend: {device.type}" + (f" ({info['cuda_device']})" if device.type == "cuda" else " (C++ kernels)"))
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.rows, args.cols, generator=gen).to(device=device, dtype=torch.bfloat16)
    xf = x.float()
    rot = rotations.get_rotation(args.rotation, args.rotation_size)
    rot = None if rot is None else rot.to(device)
    rows = []

    def report(name: str, xhat: torch.Tensor, bits: float) -> None:
        err = ((xhat.float() - xf).norm() / xf.norm()).item()
        rows.append({"format": name, "rel_error": err, "bits_per_element": bits})

    for method in ("floor", "ceil", "quest"):
        codes, scales = fq.quantize_mxfp4(x, rot, method=method)
        report(f"MXFP4 {method}", fq.dequantize_mxfp4(codes, scales, rot), 4 + 8 / 32)
    g = fq.nvfp4_global_scale(x, rot)
    codes, scales = fq.quantize_nvfp4(x, g, rot)
    report("NVFP4 absmax", fq.dequantize_nvfp4(codes, scales, g, rot), 4 + 8 / 16)

    print(f"input: {args.rows} x {args.cols} bfloat16, N(0, 1), seed {args.seed}; rotation: {args.rotation}"
          + (f" (r={args.rotation_size})" if rot is not None else ""))
    print(f"{'format':<14} {'bits/elem':>9} {'rel. Frobenius error':>21}")
    for r in rows:
        print(f"{r['format']:<14} {r['bits_per_element']:>9.3f} {r['rel_error']:>21.4f}")
    if args.json:
        print(json.dumps({"backend": device.type, "rows": rows}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fpquant", description="MXFP4 / NVFP4 quantization tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantize a random tensor with each format and print the error")
    demo.add_argument("--rows", type=int, default=256)
    demo.add_argument("--cols", type=int, default=4096)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cpu (default) or cuda")
    demo.add_argument("--rotation", default="none", help="none, hadamard, random_hadamard, dct, dst, gsr, identity")
    demo.add_argument("--rotation-size", type=int, default=32)
    demo.add_argument("--json", action="store_true", help="also print the results as JSON")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
