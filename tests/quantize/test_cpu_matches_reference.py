"""The C++ CPU kernels against the pure-PyTorch reference (fpquant_ext.formats): zero mismatches."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations

from conftest import diverse_tensor

MX_METHODS = ["floor", "ceil", "quest"]


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    ua, ub = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    mism = (ua != ub).sum().item()
    assert mism == 0, f"{what}: {mism} mismatching bytes of {ua.numel()}"


# ---- >= 1e7 random elements per format and rule ------------------------------------------------------------
BIG_ROWS, BIG_COLS = 2448, 4096  # 10,027,008 elements


@pytest.mark.parametrize("method", MX_METHODS)
def test_mxfp4_cpu_bit_identical_1e7(method, seed):
    x = diverse_tensor(BIG_ROWS, BIG_COLS, seed=seed)
    assert x.numel() >= 10_000_000
    codes, scales = fq.quantize_mxfp4(x, method=method)
    rc, rs = ref.quantize_mxfp4(x, method=method)
    assert_same_bits(codes, rc, "codes")
    assert_same_bits(scales, rs, "scales")
    out = fq.dequantize_mxfp4(codes, scales)
    assert_same_bits(out, ref.dequantize_mxfp4(rc, rs), "dequantized")


def test_nvfp4_cpu_bit_identical_1e7(seed):
    # NVFP4 has one global scale per tensor: use per-tensor magnitudes that vary by chunk.
    x = diverse_tensor(BIG_ROWS, BIG_COLS, seed=seed)
    assert x.numel() >= 10_000_000
    total = 0
    for chunk in x.split(306):
        g = fq.nvfp4_global_scale(chunk)
        assert_same_bits(g, ref.nvfp4_global_scale(chunk), "global scale")
        codes, scales = fq.quantize_nvfp4(chunk, g)
        rc, rs = ref.quantize_nvfp4(chunk, g)
        assert_same_bits(codes, rc, "codes")
        assert_same_bits(scales, rs, "scales")
        assert_same_bits(fq.dequantize_nvfp4(codes, scales, g), ref.dequantize_nvfp4(rc, rs, g), "dequantized")
        total += chunk.numel()
    assert total >= 10_000_000


def test_nvfp4_fixed_global_scales_cover_the_e4m3_range(seed):
    # A global scale that is not the tensor's own makes block scales sweep all of E4M3, subnormals and
    # saturation included.
    x = diverse_tensor(512, 1024, seed=seed)
    for g in [1e-12, 1e-6, 3.0e-3, 1.0, 17.0, 1e5, 1e12]:
        gs = torch.tensor([g], dtype=torch.float32)
        codes, scales = fq.quantize_nvfp4(x, gs)
        rc, rs = ref.quantize_nvfp4(x, gs)
        assert_same_bits(codes, rc, f"codes g={g}")
        assert_same_bits(scales, rs, f"scales g={g}")


# ---- hypothesis: shapes, dtypes, layouts, rotations ---------------------------------------------------------
@st.composite
def cases(draw, group):
    lead = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    k = group * draw(st.integers(1, 8))
    rot = draw(st.sampled_from([None, "hadamard", "random_hadamard", "dct", "dst", "gsr"]))
    r = draw(st.sampled_from([r for r in (16, 32, 64, 128) if k % r == 0]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    layout = draw(st.sampled_from(["linear", "blocked"]))
    log_scale = draw(st.integers(-20, 20))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, k, generator=g) * 2.0**log_scale).to(dtype)
    if dtype == torch.float16:
        x = x.clamp(-60000, 60000)
    return x, (None if rot is None else rotations.get_rotation(rot, r)), layout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(32), method=st.sampled_from(MX_METHODS))
def test_mxfp4_hypothesis(case, method):
    x, rot, layout = case
    codes, scales = fq.quantize_mxfp4(x, rot, method=method, scale_layout=layout)
    rc, rs = ref.quantize_mxfp4(x, rot, method=method, scale_layout=layout)
    assert_same_bits(codes, rc, "codes")
    assert_same_bits(scales, rs, "scales")
    for dt in (torch.float32, torch.bfloat16):
        out = fq.dequantize_mxfp4(codes, scales, rot, scale_layout=layout, out_dtype=dt)
        assert_same_bits(out, ref.dequantize_mxfp4(rc, rs, rot, scale_layout=layout, out_dtype=dt), "dequant")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(16))
def test_nvfp4_hypothesis(case):
    x, rot, layout = case
    g = fq.nvfp4_global_scale(x, rot)
    assert_same_bits(g, ref.nvfp4_global_scale(x, rot), "global scale")
    codes, scales = fq.quantize_nvfp4(x, g, rot, scale_layout=layout)
    rc, rs = ref.quantize_nvfp4(x, g, rot, scale_layout=layout)
    assert_same_bits(codes, rc, "codes")
    assert_same_bits(scales, rs, "scales")
    out = fq.dequantize_nvfp4(codes, scales, g, rot, scale_layout=layout, out_dtype=torch.float16)
    assert_same_bits(out, ref.dequantize_nvfp4(rc, rs, g, rot, scale_layout=layout, out_dtype=torch.float16), "deq")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 40), seed=st.integers(0, 1000))
def test_swizzle_roundtrip_and_reference(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 255, (rows, cols), generator=g, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    b = fq.swizzle_scales(s)
    assert_same_bits(b, ref.swizzle_scales(s), "swizzle")
    assert_same_bits(fq.unswizzle_scales(b, rows, cols), s, "unswizzle")
    # padding is zero
    mask = torch.ones(rows, cols, dtype=torch.uint8)
    assert int(fq.swizzle_scales(mask.view(torch.float8_e8m0fnu)).view(torch.uint8).sum()) == rows * cols


def test_quest_uses_the_correctly_rounded_sqrt():
    # A block whose QuEST s lands within an ulp of 2^-13: with the IEEE float32 sqrt s is just below it
    # (E8M0 113); torch's float32 CPU sqrt, 1 ulp high here, pushed the reference to 114 (found by a random
    # seed of the 1e7 test).
    block = torch.tensor([
        -0.0003066565841436386, -0.00023673742543905973, 6.591147393919528e-05, 0.00011508168972795829,
        -0.0002033981290878728, 4.9032307288143784e-05, -0.0001818305318010971, 9.457159467274323e-05,
        0.00031248535378836095, 1.2106852409488056e-05, -0.0003836272226180881, -0.00014476009528152645,
        0.0005682450137101114, -0.0004135518684051931, 0.00019765993056353182, 0.0001804890634957701,
        9.610467532183975e-05, 0.0003166061651427299, 0.0004274235980119556, -6.769277388229966e-05,
        0.0003434646932873875, -5.171726115804631e-06, 0.00012473649985622615, -6.629333802266046e-05,
        -0.00021657826437149197, 0.0002320345665793866, -0.00019758380949497223, 0.000143083103466779,
        0.0006114960415288806, -6.817209941800684e-05, 0.0001564350095577538, -1.870966298156418e-05,
    ], dtype=torch.float32)[None]
    _, scales = fq.quantize_mxfp4(block, method="quest")
    _, ref_scales = ref.quantize_mxfp4(block, method="quest")
    assert scales.view(torch.uint8).item() == 113
    assert ref_scales.view(torch.uint8).item() == 113
