"""Perplexity of SmolLM2-135M-Instruct quantized by each algorithm (the tables of docs/quality.md).

For each format (MXFP4, NVFP4), algorithm (rtn, mse, hessian, gptq; mr-gptq = gptq with mse group scales on
Hadamard-rotated weights) and rotation (none, hadamard 128 shrunk to 64 where 128 does not divide K), the
decoder's Linear layers are quantized once (calibrated methods: block by block on --calib-windows windows of
the State of the Union addresses before 2001), then perplexity is measured on the held-out addresses (2001
on) with bf16 activations (W4A16) and with the same weights and FP4 activations (W4A4: each layer switched to
mode 'w4a4', dynamic activation scales with the format's rule).

    python benchmarks/quality_perplexity.py [--windows 8] [--calib-windows 16] [--only mxfp4]

Writes benchmarks/results/quality_smollm2.{json,md} after every row (a long run keeps what it finished).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fpquant_ext import FP4Config, FP4Linear, data, models, quantize_model
from fpquant_ext.perplexity import perplexity, windows

RESULTS = Path(__file__).resolve().parent / "results"

# (label, FP4Config keyword arguments); the rotation is added per row.
ALGORITHMS = {
    "rtn": {},
    "mse": {"weight_method": "mse"},
    "hessian": {"weight_method": "hessian"},
    "gptq": {"algorithm": "gptq"},
    "mr-gptq": {"algorithm": "gptq", "weight_method": "mse"},
}


def set_mode(model, mode: str) -> None:
    for m in model.modules():
        if isinstance(m, FP4Linear):
            m.mode = mode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=8, help="evaluation windows of 512 tokens (default 8)")
    p.add_argument("--calib-windows", type=int, default=16, help="calibration windows of 512 tokens (default 16)")
    p.add_argument("--only", choices=("mxfp4", "nvfp4"), default=None)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset")
    p.add_argument("--texts", default=None)
    p.add_argument("--out", default="quality_smollm2")
    p.add_argument("--resume", action="store_true", help="keep the rows of an earlier run's JSON, run the rest")
    args = p.parse_args()

    start = time.perf_counter()
    base, tok = models.load_model("smollm2", torch.bfloat16)
    ev = torch.tensor(tok(data.evaluation_text(args.texts)[: args.windows * 512 * 8], add_special_tokens=False)["input_ids"])
    cal = torch.tensor(tok(data.calibration_text(args.texts)[: args.calib_windows * 512 * 8],
                           add_special_tokens=False)["input_ids"])
    calib = windows(cal, 512, args.calib_windows)
    meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} CPU, no GPU",
            "torch": torch.__version__, "model": models.describe("smollm2"), "dtype": "bfloat16",
            "eval_windows": args.windows, "window": 512, "calib_windows": len(calib), "calib_tokens": sum(c.numel() for c in calib)}
    rows = []
    done = set()
    if args.resume and (RESULTS / f"{args.out}.json").exists():
        rows = json.loads((RESULTS / f"{args.out}.json").read_text())["rows"]
        done = {(r["format"], r["algorithm"], r["rotation"]) for r in rows}

    def save() -> None:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        (RESULTS / f"{args.out}.md").write_text(table(meta, rows) + "\n")

    if ("bf16", "-", "none") not in done:
        t = time.perf_counter()
        ppl = perplexity(base, ev, 512, args.windows).perplexity
        rows.append({"format": "bf16", "algorithm": "-", "rotation": "none", "w4a16": ppl, "w4a4": ppl,
                     "quantize_s": 0.0, "eval_s": time.perf_counter() - t})
        print(f"bf16 {ppl:.3f}", file=sys.stderr)
        save()
    formats = (args.only,) if args.only else ("mxfp4", "nvfp4")
    for fmt in formats:
        for name in args.algorithms.split(","):
            for rotation in (("hadamard",) if name == "mr-gptq" else ("none", "hadamard")):
                if (fmt, name, rotation) in done:
                    continue
                cfg = FP4Config(format=fmt, rotation=rotation, **ALGORITHMS[name])
                model = copy.deepcopy(base)
                t = time.perf_counter()
                # Calibrated in float32 (the bf16 weights widened exactly): CPU bf16 matmuls are several times
                # slower; round-to-nearest and mse weights do not depend on it; the calibrated methods see float32 activations.
                models.cast_parameters(model, torch.float32)
                summary = quantize_model(model, cfg, progress=False, calibration=calib if cfg.needs_calibration else None)
                models.cast_parameters(model, torch.bfloat16)
                q_s = time.perf_counter() - t
                t = time.perf_counter()
                w4a16 = perplexity(model, ev, 512, args.windows).perplexity
                set_mode(model, "w4a4")
                w4a4 = perplexity(model, ev, 512, args.windows).perplexity
                row = {"format": fmt, "algorithm": name, "rotation": rotation, "w4a16": w4a16, "w4a4": w4a4,
                       "quantize_s": q_s, "eval_s": time.perf_counter() - t}
                if summary.gptq:
                    v = summary.gptq.values()
                    row["gptq_mean_proxy_ratio"] = sum(x["proxy_error"] / x["rtn_proxy_error"] for x in v) / len(v)
                    row["gptq_max_damp"] = max(x["damp"] for x in v)
                rows.append(row)
                print(f"{fmt} {name} {rotation}: w4a16 {w4a16:.3f} w4a4 {w4a4:.3f} (quantize {q_s:.0f} s, "
                      f"total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
                save()
                del model
    print(table(meta, rows))
    return 0


def table(meta: dict, rows: list[dict]) -> str:
    base = rows[0]["w4a16"]
    lines = [f"# Perplexity of SmolLM2-135M-Instruct by quantization algorithm ({meta['date']}, {meta['machine']})", "",
             f"{meta['eval_windows']} windows x {meta['window']} tokens of held-out text (State of the Union 2001-); "
             f"calibration: {meta['calib_windows']} windows ({meta['calib_tokens']} tokens) of the addresses before "
             "2001. bf16 activations for W4A16; W4A4: the same weights, activations quantized every forward "
             "(dynamic scales, the format's rule). 'gap closed': the fraction of round-to-nearest's gap to bf16 "
             "(same format, no rotation) that the row closes.", "",
             "| format | algorithm | rotation | W4A16 ppl | x bf16 | gap closed | W4A4 ppl | x bf16 | quantize s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rtn = next((x for x in rows if x["format"] == r["format"] and x["algorithm"] == "rtn"
                    and x["rotation"] == "none"), None)
        closed = "" if rtn is None or r["algorithm"] == "-" else f"{(rtn['w4a16'] - r['w4a16']) / (rtn['w4a16'] - base):+.0%}"
        lines.append(f"| {r['format'].upper() if r['format'] != 'bf16' else 'bf16'} | {r['algorithm']} | {r['rotation']} | "
                     f"{r['w4a16']:.3f} | {r['w4a16'] / base:.3f} | {closed} | {r['w4a4']:.3f} | {r['w4a4'] / base:.3f} | "
                     f"{r['quantize_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
