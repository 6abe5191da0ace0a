"""Agreement with implementations we did not write: torchao's MX and NVFP4 references (OCP floor rule, the
blocked scale layout, two-level NVFP4 scaling) and torch's own float8 / float4 dtypes."""

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref

from conftest import diverse_tensor

torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
torchao_utils = pytest.importorskip("torchao.prototype.mx_formats.utils")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_floor_matches_torchao_to_mx(dtype, seed):
    x = diverse_tensor(1024, 2048, seed=seed, dtype=dtype)
    scale, data = torchao_mx.to_mx(x, torch.float4_e2m1fn_x2, 32)
    codes, scales = fq.quantize_mxfp4(x, method="floor")
    assert torch.equal(scales.view(torch.uint8), scale.view(torch.uint8).reshape(scales.shape))
    assert torch.equal(codes, data.view(torch.uint8).reshape(codes.shape))


def _near_midpoint(v: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
    """|v| within a relative 2^-20 of one of the midpoints (float64)."""
    d = (v.abs()[..., None] - midpoints).abs()
    return (d <= midpoints * 2.0 ** -20).any(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_matches_torchao_nvfp4_quantize(dtype, seed):
    # torchao computes the same rule in another order: the scale as (amax/6) / (1/g), the codes as
    # x * ((1/(1/g)) / s). Exact quotients land an ulp apart there, which only matters at a rounding tie,
    # and bf16 inputs make ties common (x / (s/g) = 2.5 exactly). torchao also clamps block scales below the
    # smallest normal E4M3 value (2^-6) up to it, where ours keep E4M3 subnormals and zero.
    torchao_nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    x = diverse_tensor(512, 2048, seed=seed, dtype=dtype)
    g = fq.nvfp4_global_scale(x)
    their_scales, their_codes = torchao_nv.nvfp4_quantize(x, block_size=16, per_tensor_scale=(1 / g).reshape(()))
    codes, scales = fq.quantize_nvfp4(x, g)
    ours, theirs = scales.view(torch.uint8).flatten(), their_scales.view(torch.uint8).flatten()
    same = (ours == theirs) & (codes.reshape(-1, 8) == their_codes.view(torch.uint8).reshape(-1, 8)).all(1)
    normal = (ours & 0x7F) >= 0x08
    assert bool((theirs[~normal] == 0x08).all())  # the clamp, not some other difference

    groups = x.double().reshape(-1, 16)
    gd = float(g)
    u = groups.abs().amax(1) / 6 * gd  # the scale before E4M3 rounding
    step = torch.exp2(torch.floor(torch.log2(u.clamp_min(2.0 ** -6))) - 3)  # E4M3 spacing at u (normal range)
    scale_tie = (u - (torch.floor(u / step) + 0.5) * step).abs() <= u * 2.0 ** -20
    s = ours.view(torch.float8_e4m3fn).double()
    e2m1_midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
    code_tie = _near_midpoint(groups / (s / gd)[:, None], e2m1_midpoints).any(1)
    ties = scale_tie | code_tie
    assert int(normal.sum()) > 1000
    assert bool(same[normal & ~ties].all()), int((~same & normal & ~ties).sum())
    assert int((normal & ties).sum()) < int(normal.sum()) // (4 if dtype == torch.bfloat16 else 100)


def test_blocked_layout_matches_torchao_to_blocked(seed):
    g = torch.Generator().manual_seed(seed)
    for rows, cols in [(128, 4), (300, 7), (1, 1), (513, 64)]:
        s = torch.randint(0, 255, (rows, cols), generator=g, dtype=torch.uint8)
        theirs = torchao_utils.to_blocked(s)
        ours = fq.swizzle_scales(s.view(torch.float8_e8m0fnu)).view(torch.uint8)
        assert torch.equal(ours.flatten(), theirs.flatten()), (rows, cols)


def test_e2m1_decode_matches_torch_float4_dtype():
    # torch.float4_e2m1fn_x2 has no arithmetic on CPU, but the unpacked torch.float8_e4m3fn values of each
    # code can be checked against the E2M1 definition: sign, 2 exponent bits (bias 1), 1 mantissa bit.
    for code in range(16):
        s, e, m = code >> 3, (code >> 1) & 3, code & 1
        value = (m * 0.5) if e == 0 else (1 + m * 0.5) * 2.0 ** (e - 1)
        value = -value if s else value
        assert ref.E2M1_VALUES[code].item() == value
        packed = torch.tensor([[code | (code << 4)] * 16], dtype=torch.uint8)
        out = fq.dequantize_mxfp4(fq.as_float4(packed), torch.tensor([[127]], dtype=torch.uint8).view(torch.float8_e8m0fnu))
        assert out[0, 0].item() == value and out[0, 1].item() == value


def test_e4m3_encoder_matches_torch_cast_on_all_floats_near_codes():
    # The C++ E4M3 encoder (used for NVFP4 block scales) against torch's float8_e4m3fn cast, through the
    # quantizer: amax = 6 * s with g = 1 makes the block scale exactly round(s).
    vals = torch.cat([
        torch.linspace(0, 480, 200_003),
        torch.exp2(torch.linspace(-12, 9.5, 200_003)),
        ref.e4m3_decode(torch.arange(0, 127, dtype=torch.uint8)),  # every code value exactly
    ])
    mids = ref.e4m3_decode(torch.arange(0, 126, dtype=torch.uint8))
    mids = (mids[:-1].double() + mids[1:].double()) / 2  # exact ties
    vals = torch.cat([vals, mids.float()]).clamp(min=0)
    x = torch.zeros(vals.numel(), 16)
    x[:, 0] = vals.float() * 6
    ok = (x[:, 0] / 6) == vals  # keep only values where *6 / 6 round-trips exactly
    x = x[ok]
    _, scales = fq.quantize_nvfp4(x, torch.tensor([1.0]))
    expected = (x[:, 0] / 6).clamp(max=448).to(torch.float8_e4m3fn)
    assert torch.equal(scales.view(torch.uint8).flatten(), expected.view(torch.uint8))
