"""The w4a16 path of matmul_mxfp4 / matmul_nvfp4 (csrc/ops/matmul_cuda.cpp, matmul_w4a16): A dequantized to
bfloat16, then linear_w4a16 with B as its FP4 weight, against the CPU operator (the float64 reference,
csrc/ops/matmul_cpu.cpp).

Accuracy target: bf16 output within 2.5e-3 relative Frobenius error (A and B are exact in bf16, the W4A16
kernels sum in float32, one rounding to bf16); NaN exactly where the reference has NaN. Tests force the path
with plan_override(matmul_path="w4a16") unless they check the plan's own choice. Marked `cuda`: skipped without
a GPU; the W4A16 kernels need compute capability 8.0."""

from __future__ import annotations

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.tuning import GpuSpec, plan_matmul, plan_override

from conftest import diverse_tensor, replay_matches
from matmul_helpers import (add_nan_groups_and_a_zero_row, check_against_reference, gpu_and_reference,
                            poison_allocator, quantize_operand, random_operand, run_matmul, to_cuda)

pytestmark = pytest.mark.cuda

TOL = 2.5e-3
BF16 = torch.bfloat16
# (M, N, K): M in {1, 7, 16, 100, 300}; N and K multiples of the W4A16 tiles (32, 128).
SHAPES = [(1, 96, 1024), (7, 160, 384), (16, 96, 128), (100, 160, 1024), (300, 256, 512)]


@pytest.fixture(autouse=True)
def _w4a16_path():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the W4A16 kernels need a GPU of compute capability 8.0 or newer")
    with plan_override(matmul_path="w4a16"):
        yield


def operands(M, N, K, fmt, layout, seed):
    """Quantized A (std 3) and B (std 0.05) on the CPU: (a, sa, ga, b, sb, gb)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * 3
    w = torch.randn(N, K, generator=g) * 0.05
    return (*quantize_operand(x, fmt, layout), *quantize_operand(w, fmt, layout))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("bias_dtype", [None, BF16])
def test_matches_cpu_reference(fmt, layout, bias_dtype, seed):
    # The bias is of the outputs' size: one much smaller only breaks the reference's ties between two bf16
    # values, which float32 sums round away (FP4 x FP4 sums have few significant bits, so ties are common at
    # small K); that costs at most one ulp per element, but the tolerance here is the Frobenius one.
    for i, (M, N, K) in enumerate(SHAPES):
        a, sa, ga, b, sb, gb = operands(M, N, K, fmt, layout, seed + 10 * i)
        bias = None
        if bias_dtype is not None:
            bias = (torch.randn(N, generator=torch.Generator().manual_seed(seed)) * K**0.5 / 8).to(BF16)
        got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, layout, BF16, bias)
        check_against_reference(got, ref, TOL)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_leading_dimensions_and_diverse_magnitudes(fmt, seed):
    # Rows of magnitudes 2^-30 .. 2^30 (each row's own group scales; NVFP4's one global scale for all).
    x = diverse_tensor(2 * 3 * 50, 256, seed).reshape(2, 3, 50, 256)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(seed + 1))
    a, sa, ga = quantize_operand(x, fmt, "linear")
    b, sb, gb = quantize_operand(w, fmt, "linear")
    got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "linear", BF16)
    assert got.shape == (2, 3, 50, 64)
    check_against_reference(got, ref, TOL)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_random_scales_nan_groups_and_zero_rows(fmt, layout, seed):
    # Random codes and group scales (E8M0 over 2^-20 .. 2^20, E4M3 normals), global scales other than 1, NaN
    # scales in A (its row turns NaN) and in B (its column), a zero row of A with the largest scale.
    gen = torch.Generator().manual_seed(seed)
    M, N, K = 100, 160, 1024
    a, sa = random_operand(M, K, fmt, gen, span=20)
    b, sb = random_operand(N, K, fmt, gen, span=20)
    add_nan_groups_and_a_zero_row(a, sa, sb, fmt)  # NaN rows 3 and 50, columns 7 and N - 1; zero row 10
    ga, gb = (None, None) if fmt == "mxfp4" else (torch.tensor([3.5]), torch.tensor([0.25]))
    if layout == "blocked":
        sa, sb = fq.swizzle_scales(sa), fq.swizzle_scales(sb)
    got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, layout, BF16)
    assert ref[3].isnan().all() and ref[50].isnan().all() and ref[:, 7].isnan().all()
    check_against_reference(got, ref, TOL)
    assert (got[10][~ref[10].isnan()] == 0).all()


def test_mxfp4_elements_beyond_bf16_range_are_inf():
    # The known limit of the path (docs/perf/matmul.md): A's elements of magnitude >= 2^128 (here 6 * 2^127)
    # overflow bf16, so their row is not finite, where the float64 reference, with B's scales at 2^-100, is.
    gen = torch.Generator().manual_seed(0)
    M, N, K = 4, 32, 128
    a, sa = random_operand(M, K, "mxfp4", gen, span=2, zero_groups=0)
    b, sb = random_operand(N, K, "mxfp4", gen, span=2, zero_groups=0)
    a[1, :16] = 0x77  # code 6 twice per byte: the first group of row 1
    sa.view(torch.uint8)[1, 0] = 254  # 2^127
    sb.view(torch.uint8)[:] = 27  # 2^-100
    got, ref = gpu_and_reference("mxfp4", a, sa, None, b, sb, None, "linear", BF16)
    assert ref.isfinite().all()
    assert not got[1].isfinite().any()
    rest = torch.tensor([0, 2, 3])
    check_against_reference(got[rest], ref[rest], TOL)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_poisoned_output_is_fully_written(fmt, seed):
    # Every output element must be written: the allocator hands out memory full of NaN bytes first.
    M, N, K = 300, 160, 256
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed + 1))
    a, sa, ga = quantize_operand(x, fmt, "linear")
    b, sb, gb = quantize_operand(w, fmt, "linear")
    args = to_cuda(a, sa, ga, b, sb, gb)
    for M_used in (1, 16, M):  # the decode, wgmma / mma and larger kernels of the W4A16 plan
        poison_allocator()
        got = run_matmul(fmt, args[0][:M_used], args[1][:M_used], *args[2:], "linear", BF16, None)
        torch.cuda.synchronize()
        assert not got.isnan().any(), M_used
        ref = run_matmul(fmt, a[:M_used], sa[:M_used], ga, b, sb, gb, "linear", BF16, None)
        check_against_reference(got.cpu(), ref, TOL)


@pytest.mark.parametrize("w4a16_path,M", [("decode", 7), ("mma", 40), ("slab", 40), ("wgmma", 100)])
def test_the_w4a16_overrides_steer_its_kernel(w4a16_path, M, seed):
    gpu = GpuSpec.current()
    if w4a16_path == "wgmma" and not (gpu.cc == (9, 0) and gpu.sm90_kernels):
        pytest.skip("the wgmma kernel needs a Hopper GPU and an sm_90a build")
    for fmt in ("mxfp4", "nvfp4"):
        a, sa, ga, b, sb, gb = operands(M, 96, 512, fmt, "blocked", seed)
        with plan_override(matmul_path="w4a16", w4a16_path=w4a16_path):
            if w4a16_path == "slab":  # cuBLAS on bf16 slabs: measured 2.54e-3, more than one rounding
                with pytest.raises(ValueError, match="slab"):
                    gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "blocked", BF16)
                continue
            got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "blocked", BF16)
        check_against_reference(got, ref, TOL)


def test_cuda_graph_capture_reads_global_scales_on_the_device():
    # gA * gB is formed on the device: a captured graph replayed with a new global scale uses it.
    x, w = torch.randn(16, 256), torch.randn(96, 256)
    ga, gb = fq.nvfp4_global_scale(x), fq.nvfp4_global_scale(w)
    a, sa = fq.quantize_nvfp4(x, ga, None, "blocked")
    b, sb = fq.quantize_nvfp4(w, gb, None, "blocked")
    bias = torch.randn(96).to(BF16)
    da, dsa, dga, db, dsb, dgb, dbias = to_cuda(a, sa, ga, b, sb, gb, bias)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fq.matmul_nvfp4(da, dsa, dga, db, dsb, dgb, "blocked", BF16, dbias)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fq.matmul_nvfp4(da, dsa, dga, db, dsb, dgb, "blocked", BF16, dbias)
    dga.mul_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    ref = fq.matmul_nvfp4(a, sa, ga * 2.0, b, sb, gb, "blocked", BF16, bias)
    check_against_reference(out.cpu(), ref, TOL)


def test_cuda_graph_of_quantize_and_matmul():
    w = torch.randn(160, 512)
    b, sb = fq.quantize_mxfp4(w)
    bc, sbc = b.cuda(), sb.cuda()

    def fn(xx):
        c, s = fq.quantize_mxfp4(xx)
        return fq.matmul_mxfp4(c, s, bc, sbc, "linear", BF16)

    out, eager = replay_matches(fn, torch.randn(7, 512, device="cuda"))
    assert torch.equal(out, eager)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_plan_takes_the_path_by_default(fmt, seed):
    # Hopper (with its sm_90a kernels): bf16 output at small M; Ampere / Ada: every M. Then the op, under the
    # plan's own choice, matches the forced path bit for bit.
    gpu = GpuSpec.current()
    hopper = gpu.cc == (9, 0) and gpu.sm90_kernels
    if not (hopper or gpu.cc[0] == 8):
        pytest.skip("the plan takes the w4a16 path by default on Hopper (small M), Ampere and Ada only")
    with plan_override():
        assert plan_matmul(16, 160, 1024, fmt, BF16, "blocked", gpu).path == "w4a16"
        assert plan_matmul(16, 160, 1024, fmt, BF16, "blocked", gpu, bias_dtype=BF16).path == "w4a16"
        assert plan_matmul(16, 160, 1024, fmt, torch.float32, "blocked", gpu).path != "w4a16"
        assert plan_matmul(16, 160, 1024, fmt, BF16, "blocked", gpu, bias_dtype=torch.float32).path != "w4a16"
        assert plan_matmul(4096, 160, 1024, fmt, BF16, "blocked", gpu).path == ("sm90" if hopper else "w4a16")
        a, sa, ga, b, sb, gb = operands(16, 160, 1024, fmt, "blocked", seed)
        default, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "blocked", BF16)
    forced, _ = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "blocked", BF16)
    assert torch.equal(default, forced)
    check_against_reference(default, ref, TOL)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_forced_path_refuses_what_it_would_round_twice(fmt):
    a, sa, ga, b, sb, gb = to_cuda(*operands(16, 96, 256, fmt, "linear", 0))
    with pytest.raises(ValueError, match="plan override: .*bfloat16 only"):
        run_matmul(fmt, a, sa, ga, b, sb, gb, "linear", torch.float32, None)
    with pytest.raises(ValueError, match="plan override: .*bfloat16 bias"):
        run_matmul(fmt, a, sa, ga, b, sb, gb, "linear", BF16, torch.zeros(96, device="cuda"))
    with pytest.raises(ValueError, match="plan override: .*multiple of 32"):
        run_matmul(fmt, a, sa, ga, b[:80], sb[:80], gb, "linear", BF16, None)
