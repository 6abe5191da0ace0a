"""Block-scaled FP4 GEMMs (matmul_mxfp4 / matmul_nvfp4) against bf16 cuBLAS and other baselines in the same run.

    python benchmarks/bench_matmul.py [--json out.json] [--md out.md] [--plot out.png] [--shapes large|small|all]
    python benchmarks/bench_matmul.py --cpu-smoke      # tiny shapes on the CPU: exercises everything but timing
    python benchmarks/bench_matmul.py --matmul-path generic   # force a path (plan_override)

Shapes (M, N, K): (8192, 8192, 8192), (4096, 14336, 4096), (4096, 4096, 14336), (16384, 8192, 8192), and M in
{1, 16, 128, 512, 1024} for (N, K) = (8192, 8192). For each shape and format, medians (CUDA graphs,
benchmarks/common.py) of:
  fp4            the op alone on pre-quantized A and B (bf16 output), on the path the plan picks ("path");
  sm90, w4a16    up to M = 1024, the op forced onto the sm90 / w4a16 path (plan_override), where the GPU runs it:
                 the two paths side by side, for the plan's threshold between them (kMatmulW4a16MaxM);
  fp4+act        Hadamard-128 rotation + quantization of the bf16 activations (fpquant_ext ops; NVFP4 with a static
                 global scale, as `--act-scale static` serves it), then the op;
  bf16           torch.matmul, bf16 x bf16;
  fp8 rowwise    torch._scaled_mm, E4M3 operands with row-wise float32 scales (default accumulation, and with
                 use_fast_accum=True);
  dequant+bf16   dequantize both operands to bf16, then torch.matmul;
  triton         tl.dot_scaled MXFP4 x MXFP4 (MXFP4 only, where Triton is installed; checked against the op first).
Operands rotate among copies so that the working set exceeds L2 (60 MB on the H200). Ratios are only meaningful
within one run. Results: JSON (with date, GPU, torch), a markdown table and, where matplotlib exists, a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import fpquant_ext as fq
from common import bench_graph_ms, report, run_meta

LARGE = [(8192, 8192, 8192), (4096, 14336, 4096), (4096, 4096, 14336), (16384, 8192, 8192)]
SMALL = [(m, 8192, 8192) for m in (1, 16, 128, 1024)]
SMALL_AND_THRESHOLD = sorted(SMALL + [(512, 8192, 8192)])  # 512: kMatmulW4a16MaxM (matmul_plan.h)
SMOKE = [(64, 96, 256), (3, 128, 512)]
L2_BYTES = 60 << 20
SIDE_BY_SIDE_MAX_M = 1024  # rows up to which the sm90 and w4a16 paths are both timed
SIDE_BY_SIDE_PATHS = ("sm90", "w4a16")


def cpu_ms(fns, reps: int = 3) -> float:
    """Median wall milliseconds per call on the CPU (the smoke run: checks the plumbing, not speed)."""
    fns = list(fns)
    times = []
    for _ in range(reps):
        for f in fns:
            t0 = time.perf_counter()
            f()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def quantize(x, fmt, rotation=None, g=None):
    if fmt == "mxfp4":
        c, s = fq.quantize_mxfp4(x, rotation)
        return c, s, None
    g = fq.nvfp4_global_scale(x, rotation) if g is None else g
    c, s = fq.quantize_nvfp4(x, g, rotation)
    return c, s, g


def matmul(fmt, a, b, out_dtype=torch.bfloat16):
    if fmt == "mxfp4":
        return fq.matmul_mxfp4(a[0], a[1], b[0], b[1], "linear", out_dtype)
    return fq.matmul_nvfp4(a[0], a[1], a[2], b[0], b[1], b[2], "linear", out_dtype)


def dequant(fmt, q):
    if fmt == "mxfp4":
        return fq.dequantize_mxfp4(q[0], q[1], out_dtype=torch.bfloat16)
    return fq.dequantize_nvfp4(q[0], q[1], q[2], out_dtype=torch.bfloat16)


# ---- Triton tl.dot_scaled baseline (MXFP4 x MXFP4) ----------------------------------------------------------

_triton_kernel = None


def _build_triton():
    global _triton_kernel
    if _triton_kernel is not None:
        return _triton_kernel
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr):
        # a: [M, K/2] codes, as: [M, K/32] E8M0; b: [N, K/2], bs: [N, K/32]; c: [M, N] bf16. K % BK == 0.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rk2 = tl.arange(0, BK // 2)
        rks = tl.arange(0, BK // 32)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = tl.load(a_ptr + rm[:, None] * (K // 2) + (k0 // 2 + rk2)[None, :], mask=rm[:, None] < M, other=0)
            sa = tl.load(as_ptr + rm[:, None] * (K // 32) + (k0 // 32 + rks)[None, :], mask=rm[:, None] < M,
                         other=127)
            b = tl.load(b_ptr + rn[None, :] * (K // 2) + (k0 // 2 + rk2)[:, None], mask=rn[None, :] < N, other=0)
            sb = tl.load(bs_ptr + rn[:, None] * (K // 32) + (k0 // 32 + rks)[None, :], mask=rn[:, None] < N,
                         other=127)
            acc = tl.dot_scaled(a, sa, "e2m1", b, sb, "e2m1", acc)
        tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))

    def run(a, b, BM=128, BN=128, BK=128):
        M, K = a[0].shape[0], a[0].shape[1] * 2
        N = b[0].shape[0]
        c = torch.empty(M, N, device=a[0].device, dtype=torch.bfloat16)
        grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
        kernel[grid](a[0], a[1].view(torch.uint8), b[0], b[1].view(torch.uint8), c, M, N, K, BM=BM, BN=BN, BK=BK,
                     num_warps=8, num_stages=3)
        return c

    _triton_kernel = run
    return run


def triton_baseline(a, b, reference):
    """The dot_scaled runner if Triton is installed and it matches the op on this data; else (None, reason)."""
    try:
        run = _build_triton()
        out = run(a, b)
        err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        if not err < 1e-2:
            return None, f"mismatch {err:.2e}"
        return run, ""
    except Exception as e:  # noqa: BLE001 - any failure only drops this baseline
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


# ---- the run ----------------------------------------------------------------------------------------------


def fp8_rowwise(x, w):
    """E4M3 operands and row-wise float32 scales (amax / 448) for torch._scaled_mm."""
    def q(t):
        s = (t.float().abs().amax(dim=1, keepdim=True) / 448.0).clamp_min(1e-12)
        return (t.float() / s).to(torch.float8_e4m3fn), s
    x8, sx = q(x)
    w8, sw = q(w)
    return x8, sx, w8, sw.t().contiguous()


def plan_path(M, N, K, fmt, dev, path=None):
    """The path the op takes for this shape (bf16 output, linear scales), under a forced `path` if given; None
    where the GPU cannot run the forced path (the override would raise)."""
    if dev.type != "cuda":
        return "cpu"
    try:
        with fq.tuning.plan_override(matmul_path=path):
            return fq.tuning.plan_matmul(M, N, K, fmt, torch.bfloat16, "linear", fq.tuning.GpuSpec.current(dev)).path
    except ValueError:
        return None


def bench_shape(M, N, K, dev, timer, copies, args, notes):
    rows = []
    gen = torch.Generator(device=dev).manual_seed(M * 7 + N * 3 + K)
    xs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(copies)]
    ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(copies)]
    rot = fq.rotations.hadamard(128).to(dev)
    pairs = list(zip(xs, ws))
    t_bf16 = timer([lambda x=x, w=w: torch.matmul(x, w.t()) for x, w in pairs])
    t_fp8 = t_fp8_fast = None
    if dev.type == "cuda":
        try:
            f8 = [fp8_rowwise(x, w) for x, w in pairs]
            t_fp8 = timer([lambda f=f: torch._scaled_mm(f[0], f[2].t(), scale_a=f[1], scale_b=f[3],
                                                         out_dtype=torch.bfloat16) for f in f8])
            t_fp8_fast = timer([lambda f=f: torch._scaled_mm(f[0], f[2].t(), scale_a=f[1], scale_b=f[3],
                                                              out_dtype=torch.bfloat16, use_fast_accum=True)
                                for f in f8])
            del f8
        except Exception as e:  # noqa: BLE001
            notes.setdefault("fp8_rowwise", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    for fmt in ("mxfp4", "nvfp4"):
        qa = [quantize(x, fmt, rot) for x in xs]
        qb = [quantize(w, fmt, rot) for w in ws]
        qpairs = list(zip(qa, qb))
        t_fp4 = timer([lambda a=a, b=b: matmul(fmt, a, b) for a, b in qpairs])
        forced = {}
        for path in SIDE_BY_SIDE_PATHS if M <= SIDE_BY_SIDE_MAX_M else ():
            if plan_path(M, N, K, fmt, dev, path) is None:
                notes.setdefault(f"{path} path", "not run: this GPU or build cannot take it")
                continue
            with fq.tuning.plan_override(matmul_path=path):
                forced[path] = timer([lambda a=a, b=b: matmul(fmt, a, b) for a, b in qpairs])
        # activation quantization inside the timed call (weights quantized once, as a model holds them)
        t_act = timer([lambda x=x, a=a, b=b: matmul(fmt, quantize(x, fmt, rot, a[2]), b)
                       for x, (a, b) in zip(xs, qpairs)])
        t_deq = timer([lambda a=a, b=b: torch.matmul(dequant(fmt, a), dequant(fmt, b).t()) for a, b in qpairs])
        t_tri = None
        if fmt == "mxfp4" and dev.type == "cuda" and not args.no_triton:
            run, why = triton_baseline(qa[0], qb[0], matmul(fmt, qa[0], qb[0]))
            if run is not None:
                t_tri = timer([lambda a=a, b=b: run(a, b) for a, b in qpairs])
            else:
                notes.setdefault("triton", why)
        flop = 2.0 * M * N * K
        row = {"M": M, "N": N, "K": K, "format": fmt, "path": plan_path(M, N, K, fmt, dev), "fp4_ms": t_fp4,
               "sm90_ms": forced.get("sm90"), "w4a16_ms": forced.get("w4a16"), "fp4_act_ms": t_act, "bf16_ms": t_bf16,
               "fp8_rowwise_ms": t_fp8, "fp8_rowwise_fast_ms": t_fp8_fast, "dequant_bf16_ms": t_deq,
               "triton_dot_scaled_ms": t_tri, "fp4_tflops": flop / t_fp4 / 1e9,
               "speedup_vs_bf16": t_bf16 / t_fp4, "act_speedup_vs_bf16": t_bf16 / t_act}
        rows.append(row)
        side = "".join(f", {p} {v * 1e3:.1f} us" for p, v in forced.items())
        print(f"M={M} N={N} K={K} {fmt}: {t_fp4 * 1e3:.1f} us ({row['path']}, {row['fp4_tflops']:.0f} TFLOP/s){side}, "
              f"+act {t_act * 1e3:.1f} us, bf16 {t_bf16 * 1e3:.1f} us -> {row['speedup_vs_bf16']:.2f}x / "
              f"{row['act_speedup_vs_bf16']:.2f}x", flush=True)
        del qa, qb, qpairs
    return rows


def plot(rows: list, meta: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    labels = [f"{r['M']}x{r['N']}x{r['K']}" for r in rows if r["format"] == "mxfp4"]
    x = range(len(labels))
    series = [("mxfp4", "speedup_vs_bf16", "MXFP4"), ("mxfp4", "act_speedup_vs_bf16", "MXFP4 + act quant"),
              ("nvfp4", "speedup_vs_bf16", "NVFP4"), ("nvfp4", "act_speedup_vs_bf16", "NVFP4 + act quant")]
    width = 0.8 / (len(series) + 1)
    for i, (fmt, key, label) in enumerate(series):
        vals = [r[key] for r in rows if r["format"] == fmt]
        ax.bar([v + i * width for v in x], vals, width, label=label)
    fp8 = [r["bf16_ms"] / r["fp8_rowwise_ms"] if r["fp8_rowwise_ms"] else 0 for r in rows if r["format"] == "mxfp4"]
    ax.bar([v + len(series) * width for v in x], fp8, width, label="FP8 row-wise (cuBLAS)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks([v + 0.4 for v in x])
    ax.set_xticklabels(labels, rotation=30, fontsize=7)
    ax.set_ylabel("speedup over bf16 torch.matmul")
    ax.set_title(f"Block-scaled FP4 GEMM on {meta['device']} ({meta['date']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fmt_ms(v):
    return "-" if v is None else f"{v * 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--md")
    parser.add_argument("--plot")
    parser.add_argument("--shapes", default="all", choices=["all", "large", "small"])
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (no GPU needed)")
    parser.add_argument("--replot", help="only draw --plot from a JSON written by an earlier run")
    parser.add_argument("--matmul-path", choices=fq.tuning.MATMUL_PATHS, default=None,
                        help="force the op's path (plan_override), e.g. generic")
    args = parser.parse_args()
    with fq.tuning.plan_override(matmul_path=args.matmul_path):
        run(args)


def run(args) -> None:
    if args.replot:
        data = json.load(open(args.replot))
        plot(data["rows"], data["meta"], args.plot)
        return
    if args.cpu_smoke:
        dev, timer, shapes = torch.device("cpu"), cpu_ms, SMOKE
    else:
        dev, timer = torch.device("cuda"), bench_graph_ms
        shapes = {"all": LARGE + SMALL_AND_THRESHOLD, "large": LARGE, "small": SMALL_AND_THRESHOLD}[args.shapes]
    rows, notes = [], {}
    for M, N, K in shapes:
        fp4_bytes = (M + N) * K * 17 // 32  # codes + E8M0 scales
        copies = max(1, min(4, -(-2 * L2_BYTES // max(fp4_bytes, 1)))) if dev.type == "cuda" else 1
        rows += bench_shape(M, N, K, dev, timer, copies, args, notes)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if dev.type == "cuda":
        meta = run_meta(timing="CUDA graph of 4 rounds over the operand copies, median of 20 replays, per call",
                        notes=notes, matmul_path=args.matmul_path or "plan")
    else:
        meta = {"date": time.strftime("%Y-%m-%d"), "device": "cpu (smoke run, not a measurement)",
                "torch": torch.__version__, "notes": notes}
    table = [[f"{r['M']}x{r['N']}x{r['K']}", r["format"], r["path"], fmt_ms(r["fp4_ms"]), fmt_ms(r["sm90_ms"]),
              fmt_ms(r["w4a16_ms"]), f"{r['fp4_tflops']:.0f}", fmt_ms(r["fp4_act_ms"]), fmt_ms(r["bf16_ms"]),
              fmt_ms(r["fp8_rowwise_ms"]), fmt_ms(r["fp8_rowwise_fast_ms"]), fmt_ms(r["dequant_bf16_ms"]),
              fmt_ms(r["triton_dot_scaled_ms"]), f"{r['speedup_vs_bf16']:.2f}x", f"{r['act_speedup_vs_bf16']:.2f}x"]
             for r in rows]
    report(f"Block-scaled FP4 GEMM vs bf16 cuBLAS, {meta['device']}, {meta['date']} (us per call)",
           ["MxNxK", "format", "path", "fp4", "sm90 us", "w4a16 us", "fp4 TFLOP/s", "fp4+act", "bf16", "fp8 rowwise",
            "fp8 fast", "dequant+bf16", "triton", "fp4 vs bf16", "fp4+act vs bf16"], table, meta, rows, args.md,
           args.json)
    if notes:
        print("notes:", notes)
    if args.plot:
        try:
            plot(rows, meta, args.plot)
        except ImportError:
            print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
