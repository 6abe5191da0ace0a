"""matmul_mxfp4 / matmul_nvfp4 on CUDA against the CPU operator (the float64 reference, bit-exact with
formats.py: tests/matmul/test_matmul_cpu.py), on whichever path plan_matmul picks for the GPU: the generic
path (exact operands, float64 sums by cuBLAS) on Hopper and older, the CUTLASS kernels on Blackwell
(compute capability 10.0: sm100, 12.0: sm120), plus every path the GPU can run, forced with plan_override.

Error bound per element: one rounding of the output dtype plus the summation error of the path's
accumulator, K * u * sum_k |a_mk b_nk| / (gA gB), with u = 2^-53 (generic: float64) or 2^-24 (the CUTLASS
kernels accumulate in float32, and the NVFP4 alpha = 1 / (gA gB) is a float32: one more u)."""

from __future__ import annotations

import math

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.tuning import GpuSpec, plan_matmul, plan_override

from matmul_helpers import quantize_operand as _quantize, run_matmul as _run
from conftest import diverse_tensor

pytestmark = pytest.mark.cuda
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MANTISSA = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
_MIN_EXP = {torch.float32: -126, torch.bfloat16: -126, torch.float16: -14}


def _operand(codes, scales, fmt, layout):
    """Exact operand values (float64, before global scales) on the CPU."""
    if fmt == "mxfp4":
        return fq.dequantize_mxfp4(codes, scales, None, layout).double()
    return fq.dequantize_nvfp4(codes, scales, 1.0, None, layout).double()


def _paths():
    """The paths tested here that this GPU can run: generic, and the Blackwell kernels' if the plan picks them
    (the Hopper kernel has its own tests and error model: test_matmul_sm90.py)."""
    if not torch.cuda.is_available():
        return ["generic"]
    native = plan_matmul(256, 4096, 4096, "mxfp4", torch.bfloat16, "blocked", GpuSpec.current()).path
    return sorted({"generic", native} & {"generic", "sm100", "sm120"})


def _check(out, ref, a, sa, ga, b, sb, gb, fmt, layout, path):
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.is_cuda
    out = out.cpu()
    assert torch.equal(out.isnan(), ref.isnan()), (out.isnan().sum(), ref.isnan().sum())
    A = _operand(a.cpu(), sa.cpu(), fmt, layout).reshape(-1, 2 * a.shape[-1])
    B = _operand(b.cpu(), sb.cpu(), fmt, layout)
    K = A.shape[1]
    S = (A.abs() @ B.abs().T).reshape(ref.shape)
    if fmt == "nvfp4":
        S = S / (ga.cpu().double() * gb.cpu().double())
    u = 2.0**-53 if path == "generic" else 2.0**-24
    r = ref.double()
    exp = torch.floor(torch.log2(r.abs().clamp_min(2.0**-149))).clamp_min(_MIN_EXP[ref.dtype])
    ulp = torch.exp2(exp - _MANTISSA[ref.dtype])
    bound = ulp + (K + 2) * u * S
    ok = ~ref.isnan() & torch.isfinite(r)
    err = (out.double() - r).abs()
    worst = (err[ok] / bound[ok]).max().item() if ok.any() else 0.0
    assert worst <= 1.0, f"error {worst:.3g} x the bound on the {path} path"


SHAPES = [(1, 64, 64), (77, 136, 96), (130, 256, 512), (300, 200, 1024)]


@pytest.mark.parametrize("path", _paths())
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_matches_cpu_reference(path, fmt, layout, out_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    for i, (M, N, K) in enumerate(SHAPES):
        x = torch.randn(M, K, generator=g) * 3
        w = torch.randn(N, K, generator=g) * 0.05
        a, sa, ga = _quantize(x, fmt, layout)
        b, sb, gb = _quantize(w, fmt, layout)
        bias = None
        if i % 2 == 1:
            bias = torch.randn(N, generator=g).to((torch.float32, torch.bfloat16, torch.float16)[i % 3])
        ref = _run(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias)
        cuda = [t.cuda() if t is not None else None for t in (a, sa, ga, b, sb, gb, bias)]
        with plan_override(matmul_path=path):
            out = _run(fmt, *cuda[:6], layout, out_dtype, cuda[6])
        _check(out, ref, a, sa, ga, b, sb, gb, fmt, layout, path)


@pytest.mark.parametrize("path", _paths())
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_batch_dims_diverse_magnitudes_and_both_tiles(path, fmt, seed):
    # Rows with magnitudes 2^-30 .. 2^30, leading batch dimensions; each tile of the CUTLASS path.
    x = diverse_tensor(2 * 3 * 50, 512, seed=seed).reshape(2, 3, 50, 512)
    w = diverse_tensor(72, 512, seed=seed + 1)
    a, sa, ga = _quantize(x, fmt, "blocked")
    b, sb, gb = _quantize(w, fmt, "blocked")
    configs = [None] if path == "generic" else [0, 1]
    for config in configs:
        for out_dtype in OUT_DTYPES:
            ref = _run(fmt, a, sa, ga, b, sb, gb, "blocked", out_dtype, None)
            cuda = [t.cuda() if t is not None else None for t in (a, sa, ga, b, sb, gb)]
            with plan_override(matmul_path=path, matmul_config=config):
                out = _run(fmt, *cuda, "blocked", out_dtype, None)
            assert out.shape == (2, 3, 50, 72)
            _check(out, ref, a, sa, ga, b, sb, gb, fmt, "blocked", path)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_shapes_the_kernels_cannot_take_run_on_the_generic_path(fmt, layout, seed):
    # N = 60 (bf16 rows of 120 bytes), and for NVFP4 K = 48: the Blackwell kernels cannot take these.
    g = torch.Generator().manual_seed(seed)
    K = 48 if fmt == "nvfp4" else 64
    x, w = torch.randn(33, K, generator=g), torch.randn(60, K, generator=g)
    a, sa, ga = _quantize(x, fmt, layout)
    b, sb, gb = _quantize(w, fmt, layout)
    path = plan_matmul(33, 60, K, fmt, torch.bfloat16, layout, GpuSpec.current()).path
    if path == "sm90":
        pytest.skip("the Hopper kernel takes these shapes (test_matmul_sm90.py)")
    assert path == "generic"
    ref = _run(fmt, a, sa, ga, b, sb, gb, layout, torch.bfloat16, None)
    cuda = [t.cuda() if t is not None else None for t in (a, sa, ga, b, sb, gb)]
    out = _run(fmt, *cuda, layout, torch.bfloat16, None)
    _check(out, ref, a, sa, ga, b, sb, gb, fmt, layout, "generic")


@pytest.mark.parametrize("path", _paths())
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_nan_groups_propagate(path, fmt, layout):
    x, w = torch.randn(130, 256), torch.randn(136, 256)
    x[2, 32:64] = float("nan")  # one MXFP4 group (two NVFP4 groups) of row 2 of A
    w[100, 160:192] = float("nan")  # and of row 100 of B: column 100 of the output
    if fmt == "mxfp4":
        a, sa = fq.quantize_mxfp4(x, None, "floor", layout)
        b, sb = fq.quantize_mxfp4(w, None, "floor", layout)
        ga = gb = None
    else:
        ga, gb = torch.ones(1), torch.full((1,), 2.0)  # nvfp4_global_scale would be NaN
        a, sa = fq.quantize_nvfp4(x, ga, None, layout)
        b, sb = fq.quantize_nvfp4(w, gb, None, layout)
    for out_dtype in OUT_DTYPES:
        ref = _run(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, None)
        assert ref[2].isnan().all() and ref[:, 100].isnan().all()
        cuda = [t.cuda() if t is not None else None for t in (a, sa, ga, b, sb, gb)]
        with plan_override(matmul_path=path):
            out = _run(fmt, *cuda, layout, out_dtype, None)
        _check(out, ref, a, sa, ga, b, sb, gb, fmt, layout, path)


@pytest.mark.parametrize("path", _paths())
def test_cuda_graph_capture_reads_global_scales_on_the_device(path):
    # No host synchronization: the NVFP4 alpha and the generic path's divisor come from device memory, so
    # a captured graph replayed with new global scales uses the new values.
    x, w = torch.randn(64, 128), torch.randn(72, 128)
    ga, gb = fq.nvfp4_global_scale(x), fq.nvfp4_global_scale(w)
    a, sa = fq.quantize_nvfp4(x, ga, None, "blocked")
    b, sb = fq.quantize_nvfp4(w, gb, None, "blocked")
    da, dsa, dga, db, dsb, dgb = (t.cuda() for t in (a, sa, ga, b, sb, gb))
    with plan_override(matmul_path=path):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fq.matmul_nvfp4(da, dsa, dga, db, dsb, dgb, "blocked", torch.float32)  # warm-up
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fq.matmul_nvfp4(da, dsa, dga, db, dsb, dgb, "blocked", torch.float32)
    dga.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    ref = fq.matmul_nvfp4(a, sa, ga * 2.0, b, sb, gb, "blocked", torch.float32)
    _check(out, ref, a, sa, ga * 2.0, b, sb, gb, "nvfp4", "blocked", path)
    assert not math.isnan(out.sum().item())
