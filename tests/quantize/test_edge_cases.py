"""Hand-made edge cases with expected results written out by hand (not taken from the reference), run on
both the C++ CPU kernels and the reference: ties, zeros, subnormals, saturation, +-inf, NaN."""

import math

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref

NAN = float("nan")
INF = float("inf")
BACKENDS = {
    "cpu_kernel": (fq.quantize_mxfp4, fq.quantize_nvfp4, fq.dequantize_mxfp4, fq.dequantize_nvfp4),
    "reference": (ref.quantize_mxfp4, ref.quantize_nvfp4, ref.dequantize_mxfp4, ref.dequantize_nvfp4),
}


def unpack(codes):
    return ref.unpack_codes(codes).flatten().tolist()


def mx_block(values, pad=0.0):
    vals = list(values) + [pad] * (32 - len(values))
    return torch.tensor([vals], dtype=torch.float32)


# E2M1 codes: 0:0 1:0.5 2:1 3:1.5 4:2 5:3 6:4 7:6, +8 for negative.
# With amax = 4 (exponent field 2), floor gives e = 0, so q = v exactly.
TIE_VALUES = [4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0]
TIE_CODES = [6, 0, 2, 2, 4, 4, 6, 6, 8, 10, 10, 12, 12, 14, 14]
NEAR_VALUES = [0.2500001, 0.7499999, 1.2500001, 1.7499999, 2.5000002, 3.4999998, 5.0000005, 0.4, 2.9, 6.0]
NEAR_CODES = [1, 1, 3, 3, 5, 5, 7, 1, 5, 7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mxfp4_ties_round_to_even(backend):
    quant = BACKENDS[backend][0]
    codes, scales = quant(mx_block(TIE_VALUES + NEAR_VALUES), method="floor")
    assert scales.view(torch.uint8).item() == 127  # 2^0
    assert unpack(codes)[: len(TIE_CODES) + len(NEAR_CODES)] == TIE_CODES + NEAR_CODES


@pytest.mark.parametrize("backend", BACKENDS)
def test_mxfp4_negative_zero_keeps_sign(backend):
    quant = BACKENDS[backend][0]
    codes, _ = quant(mx_block([4.0, -0.0, -0.1, 0.1, 0.0]), method="floor")
    assert unpack(codes)[:5] == [6, 8, 8, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mxfp4_floor_saturates_and_ceil_does_not(backend):
    quant, _, deq, _ = BACKENDS[backend]
    # amax = 7.9: floor -> e = 0, 7.5 saturates to 6; ceil -> e = ceil(log2(7.9/6)) = 1, values halve.
    x = mx_block([7.5, 6.5, -7.9, 1.0])
    codes, scales = quant(x, method="floor")
    assert scales.view(torch.uint8).item() == 127
    assert unpack(codes)[:4] == [7, 7, 15, 2]
    codes, scales = quant(x, method="ceil")
    assert scales.view(torch.uint8).item() == 128
    assert unpack(codes)[:4] == [6, 5, 14, 1]  # 3.75 -> 4, 3.25 -> 3, -3.95 -> -4, 0.5
    # exactly 6 * 2^k: ceil keeps e = k (no saturation, no wasted range)
    codes, scales = quant(mx_block([6.0 * 2.0**-10]), method="ceil")
    assert scales.view(torch.uint8).item() == 127 - 10 and unpack(codes)[0] == 7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,zero_scale_code", [("floor", 0), ("ceil", 0), ("quest", 127 - 27)])
def test_mxfp4_zero_block(backend, method, zero_scale_code):
    quant, _, deq, _ = BACKENDS[backend]
    codes, scales = quant(torch.zeros(2, 64), method=method)
    assert codes.view(torch.uint8).eq(0).all()
    # floor/ceil: e = -127; quest: s = 1e-8, floor(log2 1e-8) = -27
    assert scales.view(torch.uint8).eq(zero_scale_code).all()
    assert deq(codes, scales).eq(0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mxfp4_subnormal_inputs(backend):
    quant, _, deq, _ = BACKENDS[backend]
    tiny = 2.0**-140  # subnormal float32
    x = mx_block([tiny, -3 * tiny, 1e-45])
    codes, scales = quant(x, method="floor")
    assert scales.view(torch.uint8).item() == 0  # clamped to 2^-127
    # q = v * 2^127: 2^-13 etc. -> all round to (signed) zero
    assert unpack(codes)[:3] == [0, 8, 0]
    # a block of normals next to subnormals keeps its own scale
    codes, scales = quant(torch.tensor([[tiny] * 32 + [1.0] * 32]), method="floor")
    assert scales.view(torch.uint8).tolist() == [[0, 125]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["floor", "ceil", "quest"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_mxfp4_non_finite_block_is_nan(backend, method, bad):
    quant, _, deq, _ = BACKENDS[backend]
    x = torch.randn(1, 96)
    x[0, 40] = bad
    codes, scales = quant(x, method=method)
    s = scales.view(torch.uint8)[0].tolist()
    assert s[1] == 0xFF and s[0] != 0xFF and s[2] != 0xFF
    assert all(c == 0 for c in unpack(codes)[32:64])
    out = deq(codes, scales)
    assert out[0, 32:64].isnan().all() and out[0, :32].isfinite().all() and out[0, 64:].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mxfp4_extreme_magnitudes(backend):
    quant, _, deq, _ = BACKENDS[backend]
    big = torch.finfo(torch.float32).max
    codes, scales = quant(mx_block([big, -big, 1.0]), method="floor")
    assert scales.view(torch.uint8).item() == 127 + 125  # floor(log2 max) - 2
    assert unpack(codes)[:3] == [7, 15, 0]
    out = deq(codes, scales)
    assert out[0, 0].item() == 6.0 * 2.0**125
    # quest with sums that overflow float32: largest scale, no NaN
    codes, scales = quant(mx_block([1e30] * 32), method="quest")
    assert scales.view(torch.uint8).item() == 254


# ---- NVFP4 -----------------------------------------------------------------------------------------------
def nv_block(values, pad=0.0):
    vals = list(values) + [pad] * (16 - len(values))
    return torch.tensor([vals], dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_ties_and_scale(backend):
    _, quant, _, deq = BACKENDS[backend]
    # amax = 6 and g = 1: block scale = 6/6 * 1 = 1.0 (E4M3 0x38), q = v.
    g = torch.tensor([1.0])
    codes, scales = quant(nv_block([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 2.9]), g)
    assert scales.view(torch.uint8).item() == 0x38
    assert unpack(codes)[:11] == [7, 0, 2, 2, 4, 4, 6, 6, 8, 14, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_scale_rounding_saturation_and_subnormals(backend):
    _, quant, _, deq = BACKENDS[backend]
    # amax * g / 6 = 1000 > 448 -> saturates to 448 (0x7E); elements then clip at 6 * 448 / g.
    codes, scales = quant(nv_block([6000.0, 3000.0]), torch.tensor([1.0]))
    assert scales.view(torch.uint8).item() == 0x7E
    assert unpack(codes)[:2] == [7, 7]
    # amax * g / 6 = 3 * 2^-9 -> E4M3 subnormal code 3
    codes, scales = quant(nv_block([6 * 3 * 2.0**-9]), torch.tensor([1.0]))
    assert scales.view(torch.uint8).item() == 3 and unpack(codes)[0] == 7
    # 2.5 * 2^-9 ties to even -> 2 * 2^-9
    codes, scales = quant(nv_block([6 * 2.5 * 2.0**-9]), torch.tensor([1.0]))
    assert scales.view(torch.uint8).item() == 2
    # below half the smallest subnormal -> scale 0 -> zero codes
    codes, scales = quant(nv_block([6 * 2.0**-11, -1e-30]), torch.tensor([1.0]))
    assert scales.view(torch.uint8).item() == 0 and unpack(codes)[:2] == [0, 0]
    assert deq(codes, scales, torch.tensor([1.0])).eq(0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nvfp4_non_finite_block_is_nan(backend, bad):
    _, quant, _, deq = BACKENDS[backend]
    x = torch.randn(1, 48)
    x[0, 20] = bad
    g = torch.tensor([100.0])
    codes, scales = quant(x, g)
    assert scales.view(torch.uint8)[0].tolist()[1] == 0x7F
    assert all(c == 0 for c in unpack(codes)[16:32])
    out = deq(codes, scales, g)
    assert out[0, 16:32].isnan().all() and out[0, :16].isfinite().all() and out[0, 32:].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("g", [0.0, -1.0, NAN, INF])
def test_nvfp4_bad_global_scale_gives_nan_everywhere(backend, g):
    _, quant, _, deq = BACKENDS[backend]
    codes, scales = quant(torch.randn(2, 32), torch.tensor([g]))
    assert scales.view(torch.uint8).eq(0x7F).all()
    assert deq(codes, scales, torch.tensor([1.0])).isnan().all()


@pytest.mark.parametrize("gs", [fq.nvfp4_global_scale, ref.nvfp4_global_scale])
def test_nvfp4_global_scale_values(gs):
    assert gs(torch.tensor([[1.0, -2.0] * 8])).item() == 448 * 6 / 2.0
    assert gs(torch.zeros(1, 16)).item() == 1.0
    assert math.isnan(gs(torch.tensor([[1.0, NAN] * 8])).item())
    assert math.isnan(gs(torch.tensor([[1.0, INF] * 8])).item())
    assert gs(torch.full((1, 16), 1e-44)).item() == torch.finfo(torch.float32).max
    assert gs(torch.ones(3, 16, dtype=torch.bfloat16)).shape == (1,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_e8m0_and_e4m3_decoding_is_exact(backend):
    _, _, deq_mx, deq_nv = BACKENDS[backend]
    # one code of value 1.0 (0x2) per group, every scale code
    codes = torch.full((256, 16), 0x22, dtype=torch.uint8)
    scales = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(256, 1).view(torch.float8_e8m0fnu)
    out = deq_mx(codes, scales)
    expected = torch.tensor([2.0 ** (c - 127) for c in range(255)] + [NAN])
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=0, equal_nan=True)
    # torch's own float8_e8m0fnu conversion agrees (an independent decoder)
    torch.testing.assert_close(out[:255, 0], scales[:255].float().flatten(), rtol=0, atol=0)
    codes = torch.full((256, 8), 0x22, dtype=torch.uint8)
    s4 = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(256, 1).view(torch.float8_e4m3fn)
    out = deq_nv(codes, s4, torch.tensor([1.0]))
    torch.testing.assert_close(out[:, 0], s4.float().flatten(), rtol=0, atol=0, equal_nan=True)


def test_e2m1_rounding_near_every_threshold():
    # The kernels round with a float addition trick (csrc/core/fp_formats.h); the reference uses a threshold
    # table. Compare them on every float within 3000 ULPs of each threshold, grid point and range boundary,
    # both signs, plus a dense sweep of [0, 8). A block anchored by 7.99 has scale 2^0 (floor rule), so the
    # codes are the E2M1 rounding of the values themselves.
    points = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 7.98]
    bits = torch.tensor(points, dtype=torch.float32).view(torch.int32)
    offsets = torch.arange(-3000, 3001, dtype=torch.int32)
    near = (bits[:, None] + offsets[None, :]).flatten().view(torch.float32)
    sweep = torch.linspace(0, 7.99, 400_000)
    tiny = torch.tensor([0.0, 1e-45, 1e-38, 2.0**-126, 1e-10], dtype=torch.float32)
    vals = torch.cat([near, sweep, tiny])
    vals = torch.cat([vals, -vals])
    vals = vals[(vals.abs() < 7.99)]
    pad = (-vals.numel()) % 31
    vals = torch.cat([vals, torch.zeros(pad)]).reshape(-1, 31)
    x = torch.cat([torch.full((vals.shape[0], 1), 7.99), vals], dim=1)
    codes, scales = fq.quantize_mxfp4(x, method="floor")
    assert scales.view(torch.uint8).eq(127).all()
    got = ref.unpack_codes(codes)[:, 1:]
    assert torch.equal(got, ref.e2m1_encode(vals))
