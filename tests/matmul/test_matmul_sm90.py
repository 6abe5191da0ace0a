"""The Hopper block-scaled GEMMs (csrc/cuda/matmul/matmul_sm90.cu) through torch.ops.fpquant.matmul_mxfp4 /
matmul_nvfp4 on CUDA tensors, against the CPU operator (the float64 reference, csrc/ops/matmul_cpu.cpp).

Accuracy targets (issue 21): float32 output relative Frobenius error <= 2e-4 up to K = 16384, bf16 / fp16 output
within 2.5e-3; NaN exactly where the reference has NaN. Every test forces the sm90 path with plan_override.
Marked `cuda`: skipped without a GPU; skipped off sm_90 (these kernels
exist only there)."""

from __future__ import annotations

import pytest
import torch

import fpquant_ext as fq

from conftest import diverse_tensor, replay_matches
from matmul_helpers import check_against_reference as check
from matmul_helpers import (add_nan_groups_and_a_zero_row, gpu_and_reference, poison_allocator, random_operand,
                            run_matmul, to_cuda)
from matmul_helpers import quantize_operand as quantized

pytestmark = pytest.mark.cuda

OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOL = {torch.float32: 2e-4, torch.bfloat16: 2.5e-3, torch.float16: 2.5e-3}


@pytest.fixture(autouse=True)
def _hopper_only():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm_90a kernels need a Hopper GPU")
    # Forced, so that every test here runs these kernels whatever the plan would pick.
    with fq.tuning.plan_override(matmul_path="sm90"):
        yield


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16])
def test_quantized_data_all_dtypes_layouts(fmt, layout, out_dtype, bias_dtype, seed):
    # M, N not multiples of any tile; K = 1056 ends in a partial 128-K block (MXFP4) and a partial stage.
    M, N, K = 259, 333, 1056
    x = diverse_tensor(M, K, seed)
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed + 1)) * 0.02
    a, sa, ga = quantized(x, fmt, layout)
    b, sb, gb = quantized(w, fmt, layout)
    bias = None if bias_dtype is None else torch.randn(N, generator=torch.Generator().manual_seed(seed + 2)).to(bias_dtype)
    got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias)
    check(got, ref, TOL[out_dtype])


# Tile configurations of matmul_sm90_tiles.h (kMatmulSm90MxTileCount, kMatmulSm90NvTileCount).
SM90_TILES = {"mxfp4": 4, "nvfp4": 8}


@pytest.mark.parametrize("fmt,config", [(f, c) for f, n in SM90_TILES.items() for c in range(n)])
def test_every_tile_walks_several_tiles_per_cta(fmt, config, seed):
    # More output tiles than SMs (18 row tiles x 9-13 column tiles), so each persistent CTA walks several
    # and the ring's phase carries from one tile to the next; N and K end in partial tiles / blocks.
    M, N, K = 2304, 1600, 416
    x = diverse_tensor(M, K, seed)
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed + 1)) * 0.02
    a, sa, ga = quantized(x, fmt, "linear")
    b, sb, gb = quantized(w, fmt, "linear")
    with fq.tuning.plan_override(matmul_path="sm90", matmul_config=config):
        for out_dtype in (torch.float32, torch.bfloat16):
            got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "linear", out_dtype)
            check(got, ref, TOL[out_dtype])


def test_tile_config_out_of_range_is_refused():
    with fq.tuning.plan_override(matmul_path="sm90", matmul_config=SM90_TILES["mxfp4"]), \
            pytest.raises(ValueError, match="plan override"):
        fq.matmul_mxfp4(*(t.cuda() for t in random_operand(4, 64, "mxfp4", torch.Generator().manual_seed(0))),
                        *(t.cuda() for t in random_operand(8, 64, "mxfp4", torch.Generator().manual_seed(1))))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("K", [4096, 16384])
def test_long_k(fmt, K, seed):
    M, N = 256, 320
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen)
    x[:, torch.randperm(K, generator=gen)[:8]] *= 300.0  # a few outlier channels, as in LLM activations
    w = torch.randn(N, K, generator=gen) * 0.02
    a, sa, ga = quantized(x, fmt, "linear")
    b, sb, gb = quantized(w, fmt, "linear")
    got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "linear", torch.float32)
    err = check(got, ref, TOL[torch.float32])
    print(f"{fmt} K={K}: rel. Frobenius error {err:.2e}")


@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("K", [512, 16384])
def test_mxfp4_scales_far_beyond_the_window(layout, K, seed):
    # Group exponents over 2^-60 .. 2^60 within each row: most 128-K blocks hold groups more than 16 binades
    # under their largest element (rounded to 2^-18 of it, matmul_sm90.cu), and zero groups.
    gen = torch.Generator().manual_seed(seed)
    M, N = 200, 136
    a, sa = random_operand(M, K, "mxfp4", gen, layout=layout)
    b, sb = random_operand(N, K, "mxfp4", gen, layout=layout)
    got, ref = gpu_and_reference("mxfp4", a, sa, None, b, sb, None, layout, torch.float32)
    err = check(got, ref, TOL[torch.float32])
    print(f"K={K} {layout}: rel. Frobenius error {err:.2e}")


@pytest.mark.parametrize("config", range(SM90_TILES["mxfp4"]))
def test_mxfp4_b_rows_with_one_factor_and_per_block(config, seed):
    # Weight rows whose group scales fit one window take one factor over all of K (applied in the epilogue);
    # a few rows get a group 20 binades under the rest, so they and the column tiles holding them go per block
    # (fold_mx_rows_kernel); a NaN scale in another row. Tiles of both kinds in one call, every tile config.
    gen = torch.Generator().manual_seed(seed)
    M, N, K = 300, 1000, 640
    x = diverse_tensor(M, K, seed)
    w = torch.randn(N, K, generator=gen) * 0.02
    a, sa, _ = quantized(x, "mxfp4", "linear")
    b, sb, _ = quantized(w, "mxfp4", "linear")
    su = sb.view(torch.uint8)
    for r in (5, 390, 999):
        su[r, 11] = int(su[r].max()) - 20
    su[700, 2] = 0xFF
    with fq.tuning.plan_override(matmul_path="sm90", matmul_config=config):
        for out_dtype in (torch.float32, torch.bfloat16):
            got, ref = gpu_and_reference("mxfp4", a, sa, None, b, sb, None, "linear", out_dtype)
            assert ref[:, 700].isnan().all()
            check(got, ref, TOL[out_dtype])


def test_nvfp4_random_scales(seed):
    gen = torch.Generator().manual_seed(seed)
    M, N, K = 200, 136, 2048
    a, sa = random_operand(M, K, "nvfp4", gen)
    b, sb = random_operand(N, K, "nvfp4", gen)
    ga, gb = torch.tensor([3.5]), torch.tensor([0.25])
    got, ref = gpu_and_reference("nvfp4", a, sa, ga, b, sb, gb, "linear", torch.float32)
    check(got, ref, TOL[torch.float32])


def off_by(t, offset):
    """A CUDA copy of t whose data starts `offset` bytes past a 16-byte boundary."""
    raw = t.contiguous().view(torch.uint8).reshape(-1)
    buf = torch.zeros(raw.numel() + 16, dtype=torch.uint8, device="cuda")
    out = buf[offset:offset + raw.numel()]
    out.copy_(raw)
    return out.view(t.dtype).view(t.shape)


@pytest.mark.parametrize("config", range(SM90_TILES["nvfp4"]))
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("K,scale_offset", [(1024, 0), (1024, 1), (1040, 0)])
def test_nvfp4_every_tile_layout_and_load_width(config, layout, K, scale_offset, seed):
    # Tiles 4-7 read the packed operands inside the GEMM: K % 64 == 0 with 4-byte aligned scales takes 16-byte
    # code and 4-byte scale loads per row and stage; scales one byte off, or K = 1040 (a last stage of one
    # group), take 8-byte and byte loads. Random E4M3 scales, zero groups, NaN groups (one in a row's last
    # group), an all-zero row, rows and columns past the last tile; tiles 0-3 take the operand pass.
    gen = torch.Generator().manual_seed(seed)
    M, N = 200, 300
    a, sa = random_operand(M, K, "nvfp4", gen)
    b, sb = random_operand(N, K, "nvfp4", gen)
    add_nan_groups_and_a_zero_row(a, sa, sb, "nvfp4")
    if layout == "blocked":
        sa, sb = fq.swizzle_scales(sa), fq.swizzle_scales(sb)
    ga, gb = torch.tensor([3.5]), torch.tensor([0.25])
    ref = run_matmul("nvfp4", a, sa, ga, b, sb, gb, layout, torch.float32, None)
    with fq.tuning.plan_override(matmul_path="sm90", matmul_config=config):
        got = run_matmul("nvfp4", a.cuda(), off_by(sa, scale_offset), ga.cuda(), b.cuda(), off_by(sb, scale_offset),
                         gb.cuda(), layout, torch.float32, None)
    assert ref[3].isnan().all() and ref[:, 7].isnan().all()
    check(got.cpu(), ref, TOL[torch.float32])


@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("M,N,K", [(300, 520, 1024), (129, 257, 1040), (1024, 768, 4096)])
def test_nvfp4_decoding_tiles_equal_the_pass_tiles_bit_for_bit(layout, M, N, K, seed):
    # A decoding tile (4-7) fills the shared-memory ring with the same bf16 values that the operand pass
    # and TMA put there for tile c - 4, and its consumers are the same code: the outputs must be identical.
    gen = torch.Generator().manual_seed(seed)
    a, sa = random_operand(M, K, "nvfp4", gen)
    b, sb = random_operand(N, K, "nvfp4", gen)
    if layout == "blocked":
        sa, sb = fq.swizzle_scales(sa), fq.swizzle_scales(sb)
    args = [t.cuda() for t in (a, sa, torch.tensor([2.0]), b, sb, torch.tensor([0.5]))]
    for config in range(4):
        outs = []
        for c in (config, config + 4):
            with fq.tuning.plan_override(matmul_path="sm90", matmul_config=c):
                outs.append(fq.matmul_nvfp4(*args, layout, torch.float32))
        assert torch.equal(outs[0], outs[1]), (config, (outs[0] - outs[1]).abs().max().item())


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_nan_groups_and_zero_rows(fmt, seed):
    gen = torch.Generator().manual_seed(seed)
    M, N, K = 200, 136, 1024
    a, sa = random_operand(M, K, fmt, gen, span=20)
    b, sb = random_operand(N, K, fmt, gen, span=20)
    add_nan_groups_and_a_zero_row(a, sa, sb, fmt)  # NaN rows 3 and 100, columns 7 and 135; zero row 10
    ga = gb = None if fmt == "mxfp4" else torch.tensor([1.0])
    got, ref = gpu_and_reference(fmt, a, sa, ga, b, sb, gb, "linear", torch.float32)
    assert ref[3].isnan().all() and ref[:, 7].isnan().all()
    check(got, ref, TOL[torch.float32])
    assert (got[10][~ref[10].isnan()] == 0).all()


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_poisoned_output_is_fully_written(fmt, out_dtype, seed):
    # The glue allocates the output with empty: every element, partial tiles included, must be written.
    M, N, K = 333, 517, 256
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed + 1))
    a, sa, ga = quantized(x, fmt, "linear")
    b, sb, gb = quantized(w, fmt, "linear")
    args = to_cuda(a, sa, ga, b, sb, gb)
    poison_allocator()
    got = run_matmul(fmt, *args, "linear", out_dtype, None)
    torch.cuda.synchronize()
    assert not got.isnan().any()
    check(got.cpu(), run_matmul(fmt, a, sa, ga, b, sb, gb, "linear", out_dtype, None), TOL[out_dtype])


def test_batched_a_and_cuda_graph(seed):
    M, N, K = 2 * 160, 256, 512
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed + 1))
    a, sa, _ = quantized(x, "mxfp4", "linear")
    b, sb, _ = quantized(w, "mxfp4", "linear")
    got = fq.matmul_mxfp4(a.cuda().view(2, 160, K // 2), sa.cuda().view(2, 160, K // 32), b.cuda(), sb.cuda())
    ref = fq.matmul_mxfp4(a, sa, b, sb)
    check(got.cpu().reshape(M, N), ref, 2e-4)
    bc, sbc = b.cuda(), sb.cuda()

    def fn(xx):
        c, s = fq.quantize_mxfp4(xx)
        return fq.matmul_mxfp4(c, s, bc, sbc)

    out, eager = replay_matches(fn, x.cuda())
    assert torch.equal(out, eager)
