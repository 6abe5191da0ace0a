"""CPU quantizers: time with 1 and 2 threads against torch + torchao, and peak memory, in one run.

    python benchmarks/bench_cpu_quantize.py [--rows 4096 --cols 4096] [--mem-gib 1] [--reference]
        [--json benchmarks/results/cpu_quantize.json --md benchmarks/results/cpu_quantize.md]

Timing (median of --reps calls after one warm-up, bf16 input): quantize_mxfp4 / quantize_nvfp4 without and
with a Hadamard-128 rotation, dequantize and nvfp4_global_scale, against the composition a user would write
otherwise: torch's float32 matmul of the r-blocks with R, then torchao's `to_mx` (or `nvfp4_quantize`). The
torchao results are not bit-identical to ours (rounding rules differ); they are the speed yardstick.

Memory: each case runs in a child process on a bf16 input of --mem-gib GiB. The child builds its inputs,
resets its peak RSS (/proc/self/clear_refs), runs the operator once and reports VmHWM; "extra" is the peak
above the resident size before the call minus the outputs, i.e. what the operator holds besides its result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings

import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations

ROT = 128


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rotate_f32(x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """torch's float32 matmul of each r-block with R (what a user would run before an unrotated quantizer)."""
    return (x.float().reshape(-1, R.shape[0]) @ R).reshape(x.shape)


def torchao_fns():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.mx_tensor import to_mx
        from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize

    def mx(x, R):
        return to_mx(x if R is None else rotate_f32(x, R), torch.float4_e2m1fn_x2, 32)

    def nv(x, R, g):
        # torchao's per-tensor scale is the decode multiplier, the inverse of ours.
        return nvfp4_quantize(x if R is None else rotate_f32(x, R), 16, 1.0 / g)

    return mx, nv


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        return m.group(1).strip() if m else "unknown"
    except OSError:
        return "unknown"


def rotation_kernel() -> str:
    """The rotation kernel the extension picks here (cpu_rotation.h: AVX-512, else AVX2+FMA, else generic)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(re.search(r"^flags\s*:\s*(.*)$", f.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return "unknown"
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "generic"


def time_cases(x: torch.Tensor, reps: int, threads: list[int], with_reference: bool) -> list[dict]:
    ao_mx, ao_nv = torchao_fns()
    H = rotations.hadamard(ROT)
    rows = []
    for nt in threads:
        torch.set_num_threads(nt)
        for R in (None, H):
            r = 0 if R is None else ROT
            g = fq.nvfp4_global_scale(x, R)
            mc, ms = fq.quantize_mxfp4(x, R)
            nc, ns = fq.quantize_nvfp4(x, g, R)
            cases = [
                ("quantize_mxfp4", lambda: fq.quantize_mxfp4(x, R), lambda: ao_mx(x, R),
                 lambda: ref.quantize_mxfp4(x, R)),
                ("quantize_nvfp4", lambda: fq.quantize_nvfp4(x, g, R), lambda: ao_nv(x, R, g),
                 lambda: ref.quantize_nvfp4(x, g, R)),
                ("nvfp4_global_scale", lambda: fq.nvfp4_global_scale(x, R), None,
                 lambda: ref.nvfp4_global_scale(x, R)),
                ("dequantize_mxfp4", lambda: fq.dequantize_mxfp4(mc, ms, R, out_dtype=torch.bfloat16), None,
                 lambda: ref.dequantize_mxfp4(mc, ms, R, out_dtype=torch.bfloat16)),
                ("dequantize_nvfp4", lambda: fq.dequantize_nvfp4(nc, ns, g, R, out_dtype=torch.bfloat16), None,
                 lambda: ref.dequantize_nvfp4(nc, ns, g, R, out_dtype=torch.bfloat16)),
            ]
            if R is None:
                # A native torch op of the same size: what this machine's thread hand-off costs torch itself.
                cases.append(("torch x.float() (yardstick)", lambda: x.float(), None, lambda: x.float()))
            for op, ours, theirs, reference in cases:
                row = {"op": op, "rotation": r, "threads": nt, "ms": median_time(ours, reps) * 1e3}
                if theirs is not None:
                    row["torchao_ms"] = median_time(theirs, reps) * 1e3
                if with_reference:
                    row["reference_ms"] = median_time(reference, 1) * 1e3
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# ---- memory: one child process per case ----------------------------------------------------------------

MEM_CASES = [
    ("quantize_mxfp4", 0), ("quantize_mxfp4", ROT), ("quantize_nvfp4", 0), ("quantize_nvfp4", ROT),
    ("nvfp4_global_scale", ROT), ("dequantize_mxfp4", 0), ("dequantize_mxfp4", ROT), ("dequantize_nvfp4", ROT),
]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+)", f.read(), re.M).group(1))


def child_memory(op: str, r: int, gib: float, cols: int) -> None:
    rows = int(gib * 2**30) // 2 // cols
    x = torch.empty(rows, cols, dtype=torch.bfloat16).normal_()
    R = rotations.hadamard(r) if r else None
    g = torch.tensor([448.0 * 6 / 5.0])
    if op.startswith("dequantize"):
        inputs = fq.quantize_mxfp4(x, R) if op == "dequantize_mxfp4" else fq.quantize_nvfp4(x, g, R)
        del x
        x = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS") * 1024
    if op == "quantize_mxfp4":
        out = fq.quantize_mxfp4(x, R)
    elif op == "quantize_nvfp4":
        out = fq.quantize_nvfp4(x, g, R)
    elif op == "nvfp4_global_scale":
        out = (fq.nvfp4_global_scale(x, R),)
    elif op == "dequantize_mxfp4":
        out = (fq.dequantize_mxfp4(*inputs, R, out_dtype=torch.bfloat16),)
    else:
        out = (fq.dequantize_nvfp4(*inputs, g, R, out_dtype=torch.bfloat16),)
    peak = _status_kib("VmHWM") * 1024
    out_bytes = sum(t.numel() * t.element_size() for t in out)
    in_bytes = rows * cols * 2 if x is not None else sum(t.numel() * t.element_size() for t in inputs)
    print(json.dumps({"op": op, "rotation": r, "shape": [rows, cols], "input_bytes": in_bytes,
                      "output_bytes": out_bytes, "rss_before": before, "peak_rss": peak,
                      "extra_bytes": peak - before - out_bytes, "threads": torch.get_num_threads()}))


def memory_cases(gib: float, cols: int) -> list[dict]:
    rows = []
    for op, r in MEM_CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--child-mem", f"{op}:{r}", "--mem-gib", str(gib),
               "--mem-cols", str(cols)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- report ---------------------------------------------------------------------------------------------


def markdown(meta: dict, timing: list[dict], memory: list[dict]) -> str:
    rows, cols = meta["shape"]
    lines = [
        f"# CPU quantize: {rows}x{cols} bf16, {meta['date']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores, rotation kernel: {meta['rotation_kernel']}), "
        f"torch {meta['torch']}, torchao {meta['torchao']}; "
        f"median of {meta['reps']} calls. torchao column: torch float32 matmul with R (rotated rows only), then "
        "torchao `to_mx` (MXFP4) or `nvfp4_quantize` (NVFP4); not bit-identical to ours, a speed yardstick.",
        "",
        "| op | rotation | ms, 1 thread | ms, 2 threads | 2-thread speedup | torchao ms, 1 / 2 threads "
        "| ours vs torchao, 2 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(t["op"], t["rotation"], t["threads"]): t for t in timing}
    for op, r in dict.fromkeys((t["op"], t["rotation"]) for t in timing):
        one, two = by.get((op, r, 1)), by.get((op, r, 2))
        if one is None or two is None:
            continue
        ao = "-"
        vs = "-"
        if "torchao_ms" in two:
            ao = f"{one['torchao_ms']:.1f} / {two['torchao_ms']:.1f}"
            vs = f"{two['torchao_ms'] / two['ms']:.1f}x faster"
        lines.append(f"| {op} | {r or '-'} | {one['ms']:.1f} | {two['ms']:.1f} | {one['ms'] / two['ms']:.2f}x "
                     f"| {ao} | {vs} |")
    if memory:
        mr, mc = memory[0]["shape"]
        mib = 2**20
        lines += [
            "",
            f"## Peak memory, {mr}x{mc} bf16 ({memory[0]['input_bytes'] / 2**30:.2f} GiB), "
            f"{memory[0]['threads']} threads, one child process per case",
            "",
            "| op | rotation | input MiB | output MiB | peak RSS MiB | extra MiB (peak - before - outputs) |",
            "|---|---|---|---|---|---|",
        ]
        for m in memory:
            lines.append(f"| {m['op']} | {m['rotation'] or '-'} | {m['input_bytes'] / mib:.0f} "
                         f"| {m['output_bytes'] / mib:.0f} | {m['peak_rss'] / mib:.0f} | {m['extra_bytes'] / mib:.1f} |")
        worst = max(m["extra_bytes"] for m in memory)
        lines += [
            "",
            f"Memory bound: peak = input + outputs + at most {worst / mib:.1f} MiB here. The kernels hold no "
            "whole-tensor intermediate: each thread works on tiles of at most 8 rows x 2048 columns, 64 KiB of "
            "float32 scratch plus, with a rotation, 128 KiB of float64; the parallel loop adds one byte per tile "
            "and nvfp4_global_scale five bytes per tile (one tile per 16 K elements); the rest of the "
            "extra is allocator and page granularity.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--mem-gib", type=float, default=1.0, help="0 skips the memory cases")
    parser.add_argument("--mem-cols", type=int, default=4096)
    parser.add_argument("--reference", action="store_true", help="also time the pure-PyTorch reference")
    parser.add_argument("--json", default="benchmarks/results/cpu_quantize.json")
    parser.add_argument("--md", default="benchmarks/results/cpu_quantize.md")
    parser.add_argument("--child-mem", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mem:
        op, r = args.child_mem.split(":")
        child_memory(op, int(r), args.mem_gib, args.mem_cols)
        return

    import torchao

    x = torch.randn(args.rows, args.cols, dtype=torch.bfloat16)
    threads = [int(t) for t in args.threads.split(",")]
    timing = time_cases(x, args.reps, threads, args.reference)
    memory = memory_cases(args.mem_gib, args.mem_cols) if args.mem_gib > 0 else []
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "rotation_kernel": rotation_kernel(),
            "torch": torch.__version__, "torchao": torchao.__version__, "fpquant_ext": fq.__file__,
            "shape": [args.rows, args.cols], "dtype": "bfloat16", "reps": args.reps}
    report = markdown(meta, timing, memory)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "timing": timing, "memory": memory}, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
