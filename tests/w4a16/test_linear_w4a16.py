"""linear_w4a16: x @ dequantize(W)^T + bias with FP4 weights."""

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.tuning import plan_override, plan_w4a16

from conftest import make_weight, opcheck, replay_matches

cuda = pytest.mark.cuda
FORMATS = ["mxfp4", "nvfp4"]


def rel_err(out, ref):
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 5, 64])
def test_cpu_matches_float64(fmt, dtype, M, seed):
    codes, scales, gs, w = make_weight(96, 256, fmt, seed)
    x = torch.randn(M, 256, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    bias = torch.randn(96).to(dtype)
    out = fq.linear_w4a16(x, codes, scales, gs, bias, format=fmt)
    assert out.shape == (M, 96) and out.dtype == dtype
    ref = x.double() @ w.T + bias.double()
    assert rel_err(out, ref) < 1e-2


def test_leading_dimensions_and_float4_view():
    codes, scales, _, w = make_weight(64, 128, "mxfp4", 0)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    out = fq.linear_w4a16(x, fq.as_float4(codes), scales)
    assert out.shape == (2, 3, 64)
    assert rel_err(out, x.double() @ w.T) < 1e-2


def _mx_divided(N, K, seed, device="cpu"):
    # FP-Quant's MXFP4 abs_max weights: codes of 3 x W over a power-of-two scale, global scale 3 (a divisor).
    codes, scales, _, w = make_weight(N, K, "mxfp4", seed, device)
    return codes, scales, torch.tensor([3.0], device=device), w.to(device) / 3


def test_cpu_mxfp4_global_scale_divides_the_weight(seed):
    codes, scales, g, w = _mx_divided(64, 256, seed)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(seed)).bfloat16()
    bias = torch.randn(64).bfloat16()
    out = fq.linear_w4a16(x, codes, scales, g, bias)
    # the reference order: dequantize, divide (float32), float32 matmul, bias, one cast
    w32 = fq.dequantize_mxfp4(codes, scales) / g
    assert torch.equal(out, (x.float() @ w32.t() + bias.float()).bfloat16())
    assert torch.equal(fq.linear_w4a16(x, codes, scales, 3.0, bias), out)  # a Python float too
    opcheck(torch.ops.fpquant.linear_w4a16.default, (x, codes, scales, g, bias, "mxfp4"))


@cuda
@pytest.mark.parametrize("path,config,splits,rows", [("decode", 0, 1, (1, 16)), ("decode", 1, 4, (3, 9)),
                                                     ("mma", None, None, (17, 64)), ("wgmma", 0, 1, (17, 70)),
                                                     ("wgmma", 1, 2, (33, 70)), ("slab", None, None, (1, 70))])
def test_cuda_mxfp4_global_scale_on_every_path(path, config, splits, rows, seed):
    codes, scales, g, w = _mx_divided(256, 1024, seed, "cuda")
    packed = fq.pack_w4a16(codes, scales, "mxfp4")
    with plan_override(w4a16_path=path, w4a16_config=config, w4a16_splits=splits):
        for M in rows:
            x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
            bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
            out = fq.linear_w4a16(x, *packed, g, bias)
            ref = fq.linear_w4a16(x.cpu(), codes.cpu(), scales.cpu(), g.cpu(), bias.cpu())
            assert rel_err(out, ref.double()) < 1e-2, (M, rel_err(out, ref.double()))
            without = fq.linear_w4a16(x, *packed, None, bias)  # 3x the product: the divisor was applied
            assert rel_err(out.double() * 3 - bias.double() * 2, without.double().cpu()) < 2e-2


@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck_cpu(fmt):
    codes, scales, gs, _ = make_weight(64, 256, fmt, 3)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    bias = torch.randn(64, dtype=torch.bfloat16)
    opcheck(torch.ops.fpquant.linear_w4a16.default, (x, codes, scales, gs, bias, fmt))


def test_bad_input():
    codes, scales, gs, _ = make_weight(64, 256, "nvfp4", 0)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    lin = torch.ops.fpquant.linear_w4a16
    cases = [
        (lambda: lin(x.float(), codes, scales, gs, None, "nvfp4"), TypeError, "x must be bfloat16 or float16"),
        (lambda: lin(x, codes, scales, None, None, "nvfp4"), ValueError, "needs w_global_scale"),
        (lambda: lin(x, codes, scales, gs, None, "int4"), ValueError, "format must be 'mxfp4' or 'nvfp4'"),
        (lambda: lin(x[:, :128].contiguous(), codes, scales, gs, None, "nvfp4"), ValueError, "but x has K=128"),
        (lambda: lin(x, codes, scales, gs, torch.zeros(63, dtype=torch.bfloat16), "nvfp4"), ValueError, "bias must have shape [64]"),
        (lambda: lin(x, codes, scales, gs, torch.zeros(64), "nvfp4"), TypeError, "bias must have x's dtype"),
        (lambda: lin(x, codes, scales, gs, None, "mxfp4"), TypeError, "scales must be Float8_e8m0fnu"),
        (lambda: lin(x, codes.unsqueeze(0), scales, gs, None, "nvfp4"), ValueError, "packed w_codes must have shape"),
        (lambda: lin(x, codes[None, None], scales, gs, None, "nvfp4"), ValueError, "w_codes must be 2-D"),
        (lambda: lin(x[:0], codes, scales, gs, None, "nvfp4"), ValueError, "x is empty"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc) as info:
            fn()
        assert msg in str(info.value), str(info.value)


# ---- CUDA ----------------------------------------------------------------------------------------------------
BENCH_NK = [(8192, 8192), (28672, 8192), (8192, 28672), (4096, 4096)]
BENCH_M = [1, 4, 16, 64, 128, 512, 2048, 8192]


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N,K", BENCH_NK)
def test_cuda_every_benchmarked_shape(fmt, N, K, seed):
    codes, scales, gs, w = make_weight(N, K, fmt, seed, "cuda")
    codes, scales = fq.pack_w4a16(codes, scales, fmt)  # as the benchmark runs it
    w = w.cuda()
    for M in BENCH_M:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        torch.full((64 << 20,), 0x7F, dtype=torch.uint8, device="cuda")  # poison what the allocator hands out
        out = fq.linear_w4a16(x, codes, scales, gs, format=fmt)
        ref = x.double() @ w.T
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (M, err)
        assert torch.isfinite(out).all()


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_odd_m_bias_and_dtypes(fmt, dtype, seed):
    codes, scales, gs, w = make_weight(256, 512, fmt, seed, "cuda")
    for M in (1, 3, 17, 33, 100):
        x = torch.randn(M, 512, device="cuda", dtype=dtype)
        bias = torch.randn(256, device="cuda", dtype=dtype)
        out = fq.linear_w4a16(x, codes, scales, gs, bias, format=fmt)
        ref = x.double() @ w.cuda().T + bias.double()
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@cuda
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("M", [8, 128])  # mma.sync decode kernel; wgmma kernel with split-K
def test_cuda_compile_graph_and_opcheck(M, packed):
    codes, scales, gs, _ = make_weight(512, 1024, "nvfp4", 0, "cuda")
    if packed:
        codes, scales = fq.pack_w4a16(codes, scales, "nvfp4")
    x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
    f = lambda t: torch.ops.fpquant.linear_w4a16(t, codes, scales, gs, None, "nvfp4")  # noqa: E731
    eager = f(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(x), eager)
    replayed, eager_new = replay_matches(f, x)
    assert torch.equal(replayed, eager_new)
    opcheck(torch.ops.fpquant.linear_w4a16.default, (x, codes, scales, gs, None, "nvfp4"))


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_packed_equals_canonical(fmt, seed):
    # Every path (decode, mma.sync, wgmma, slab) on a weight packed once gives the canonical call's bits.
    codes, scales, gs, _ = make_weight(256, 1024, fmt, seed, "cuda")
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    for M in (1, 16, 40, 128, 1100, 2100):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
        bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(fq.linear_w4a16(x, pc, ps, gs, bias, fmt), fq.linear_w4a16(x, codes, scales, gs, bias, fmt))


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_slab_exact_on_every_code_and_scale(fmt, dtype):
    # The slab path (w4a16_dequantize_rows + cuBLAS), forced: the dequantized slab must round every weight as
    # dequantize_mxfp4 / dequantize_nvfp4 do, so one-hot rows read it back bit for bit.
    with plan_override(w4a16_path="slab"):
        for M in (1, 65, 100):
            _check_exact(fmt, dtype, M, 7 * M, wgmma=True)


@cuda
def test_cuda_tile_requirements_are_clear_errors():
    codes, scales, gs, _ = make_weight(48, 256, "mxfp4", 0, "cuda")
    with pytest.raises(ValueError, match="N a multiple of 32 and K a multiple of 128"):
        fq.linear_w4a16(torch.randn(2, 256, device="cuda", dtype=torch.bfloat16), codes, scales)


def _random_scales(fmt, dtype, shape, g, fp16_min_e8m0=96):
    """Scale codes over the whole range where every dequantized weight is finite in `dtype` (MXFP4: E8M0
    0..252 for bfloat16, 96..140 for float16, so fp16 subnormal weights and the two-multiply path above
    E8M0 128 both occur; NVFP4: every non-NaN E4M3 code, negative ones included)."""
    if fmt == "mxfp4":
        lo, hi = (0, 252) if dtype == torch.bfloat16 else (fp16_min_e8m0, 140)
        return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    s = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    s[(s & 0x7F) == 0x7F] = 0x38  # NaN codes -> 1.0
    return s.view(torch.float8_e4m3fn)


def _check_close(fmt, dtype, M, N, K, seed, bias=True):
    # Random weight, activations (and bias) against the float64 reference of the dequantized weight.
    codes, scales, gs, w = make_weight(N, K, fmt, seed, "cuda")
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    b = torch.randn(N, device="cuda", dtype=dtype) if bias else None
    out = fq.linear_w4a16(x, codes, scales, gs, b, format=fmt)
    ref = x.double() @ w.cuda().T + (b.double() if bias else 0)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


def _check_exact(fmt, dtype, M, seed, wgmma=False, N=96, K=640):
    # One-hot activation rows read single dequantized weights back through the kernel: every E2M1 code (the
    # subnormal 0.5 and -0 included) under scales across the whole range must come out as the reference's
    # dequantized weight rounded to the activation dtype, bit for bit.
    # Default 96 x 640: 5 chunks of 128, odd chunk counts and split-K remainders.
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (N, K // 2), generator=g, dtype=torch.uint8)
    group = 32 if fmt == "mxfp4" else 16
    # Above 16 rows the kernel multiplies codes by the fp16 scale itself, which underflows below 2^-24.
    scales = _random_scales(fmt, dtype, (N, K // group), g, 96 if M <= 16 and not wgmma else 103)
    if fmt == "mxfp4":
        gs, w = None, fq.dequantize_mxfp4(codes, scales)
    else:
        gs = torch.ones(1)
        w = fq.dequantize_nvfp4(codes, scales, gs)
    cols = torch.randperm(K, generator=g)[:M]
    x = torch.zeros(M, K, dtype=dtype)
    x[torch.arange(M), cols] = 1
    out = fq.linear_w4a16(x.cuda(), codes.cuda(), scales.cuda(), None if gs is None else gs.cuda(), format=fmt)
    expected = w[:, cols].T.to(dtype)
    assert torch.isfinite(expected).all()
    mismatch = (out.cpu() != expected).nonzero()
    assert len(mismatch) == 0, (len(mismatch), mismatch[:5].tolist())


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 7, 16, 40])
def test_cuda_exact_on_every_code_and_scale(fmt, dtype, M):
    _check_exact(fmt, dtype, M, 11 + M)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_mma_sync_kernel_exact_and_bias(fmt, dtype, seed):
    # The mma.sync kernel for 17-64 rows (the path on GPUs without wgmma; forced here, since sm_90 takes the
    # wgmma kernel from 17 rows), with its split-K.
    with plan_override(w4a16_path="mma"):
        for M in (17, 40, 64):
            _check_exact(fmt, dtype, M, seed + M)
        _check_close(fmt, dtype, 33, 256, 1024, seed)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("config", [0, 1, 2])
@pytest.mark.parametrize("splits", [1, 2, 5])
def test_cuda_every_decode_config_and_split(fmt, config, splits, seed):
    # The plan picks one decode shape per problem; the override reaches the others (4 or 8 warps per CTA, 1,
    # 4 or 8 warps taking turns along K, warps left without chunks, the cluster shape) under split-K.
    with plan_override(w4a16_path="decode", w4a16_config=config, w4a16_splits=splits):
        for M in (1, 9, 16):
            _check_exact(fmt, torch.bfloat16, M, seed + M)
        _check_close(fmt, torch.float16, 3, 256, 1024, seed)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_decode_cluster_splits_beyond_a_cluster_are_capped(fmt, seed):
    # The cluster decode configuration sums split-K partials inside a thread block cluster (at most 8 CTAs): a
    # larger override is capped, and the result stays right (16 chunks of 128 k).
    with plan_override(w4a16_config=2, w4a16_splits=12):
        assert plan_w4a16(13, 160, 2048, fmt).splits == 8
        _check_close(fmt, torch.bfloat16, 13, 160, 2048, seed)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_decode_cluster_config_by_default_on_wide_layers(fmt, seed):
    # Above 8 rows, layers with at least one 128-feature CTA per SM take the cluster configuration by default
    # (from compute capability 9.0, where thread block clusters exist; older GPUs keep a plain shape).
    n = 128 * (torch.cuda.get_device_properties(0).multi_processor_count + 4)
    assert plan_w4a16(16, n, 512, fmt).cluster == (torch.cuda.get_device_capability()[0] >= 9)
    _check_close(fmt, torch.bfloat16, 16, n, 512, seed, bias=False)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 5])
@pytest.mark.parametrize("tile", [0, 1, 2, 3])
def test_cuda_wgmma_exact_on_every_code_and_scale(fmt, dtype, splits, tile):
    # The Hopper wgmma kernel (default from 65 rows), forced for every M and each tile configuration: partial
    # row tiles (17, 65, 200 rows of 128- or 256-row tiles), a partial feature tile (96 of 128 or 256), 24
    # chunks of 64 k split unevenly (5 splits: chunks 0, 4, 9, 14, 19).
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel runs on compute capability 9.0 only")
    with plan_override(w4a16_path="wgmma", w4a16_config=tile, w4a16_splits=splits):
        for M in (17, 65, 200):
            _check_exact(fmt, dtype, M, 5 * M + splits + 100 * tile, wgmma=True, K=1536)


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("splits", [0, 1, 2, 5])
def test_cuda_wgmma_bias_fp16_and_partial_tiles(fmt, splits, seed):
    # The default path from 65 rows on sm_90 (splits 0: the heuristic's choice), with bias, both dtypes, N not a
    # multiple of the 128-feature tile and M not a multiple of the 128-row tile.
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel runs on compute capability 9.0 only")
    codes, scales, gs, w = make_weight(416, 1536, fmt, seed, "cuda")
    with plan_override(w4a16_splits=splits or None):
        for dtype in (torch.bfloat16, torch.float16):
            for M in (65, 129, 300):
                assert plan_w4a16(M, 416, 1536, fmt).path == "wgmma"
                x = torch.randn(M, 1536, device="cuda", dtype=dtype)
                bias = torch.randn(416, device="cuda", dtype=dtype)
                torch.full((16 << 20,), 0x7F, dtype=torch.uint8, device="cuda")  # poison what the allocator hands out
                out = fq.linear_w4a16(x, codes, scales, gs, bias, format=fmt)
                ref = x.double() @ w.cuda().T + bias.double()
                assert torch.isfinite(out).all()
                assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2, (dtype, M)
    # The slab path gives the same result to rounding.
    x = torch.randn(130, 1536, device="cuda", dtype=torch.bfloat16)
    fast = fq.linear_w4a16(x, codes, scales, gs, format=fmt)
    with plan_override(w4a16_path="slab"):
        slab = fq.linear_w4a16(x, codes, scales, gs, format=fmt)
    assert ((fast.double() - slab.double()).norm() / slab.double().norm()).item() < 1e-2


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [4, 100])
def test_cuda_nan_scale_poisons_its_features_only(dtype, M):
    N, K = 64, 512  # M = 100 takes the wgmma kernel on sm_90
    codes, scales, gs, w = make_weight(N, K, "mxfp4", 3)
    scales = scales.clone()
    scales.view(torch.uint8)[5, 3] = 0xFF  # E8M0 NaN: feature 5
    x = torch.randn(M, K, dtype=dtype)
    out = fq.linear_w4a16(x.cuda(), codes.cuda(), scales.cuda(), format="mxfp4").cpu()
    assert torch.isnan(out[:, 5]).all()
    others = torch.cat([out[:, :5], out[:, 6:]], 1)
    assert torch.isfinite(others).all()
