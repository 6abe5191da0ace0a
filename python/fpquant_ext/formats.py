"""The format reference: MXFP4 and NVFP4 stated in plain PyTorch.

This module is the oracle. Every kernel (the C++ CPU kernels, the CUDA kernels) must produce the same bits
as these functions for the same float32 input. Each rule is written as the exact sequence of float32 (or
integer) operations that defines it; a kernel that changes that order changes the result.

Elements (both formats): E2M1, magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}, code = sign << 3 | index. Round to
nearest, ties to the even index, saturate at 6. The sign bit is the input's, so -0.0 and negatives that round
to zero give code 0x8. Two codes a byte: element 2i in the low nibble, 2i+1 in the high nibble (the layout of
torch.float4_e2m1fn_x2).

MXFP4: groups of 32 along the last dimension, one E8M0 scale 2^e (code e + 127; 0xFF is NaN) per group,
element q = v / 2^e (computed as v * 2^-e, the same rounding). Scale rules (`method`):
  floor  e = floor(log2 amax) - 2                         (OCP MX v1.0; values in (6, 8) * 2^e saturate)
  ceil   e = ceil(log2(amax / 6))                         (smallest e with 6 * 2^e >= amax: no saturation)
  quest  e = floor(log2(sigma * 2.92247856 / 6 + 1e-8))  (FP-Quant: Gaussian fit, sigma = population std)
e is clamped to [-127, 127]; zero blocks get e = -127. floor and ceil are computed exactly from the bits of
amax. quest uses float32: sum and sum of squares by the pairwise tree of `tree_sum`, mean = sum * 2^-5,
var = sumsq * 2^-5 - mean * mean (negative -> 0; overflowed sums -> e = 127), sigma = sqrt(var) (IEEE),
s = sigma * float32(2.92247856 / 6) + 1e-8, e = floor(log2 s) from the exponent bits.

NVFP4: groups of 16, one E4M3 scale per group and one float32 global scale g per tensor, the *encode*
multiplier (the FP-Quant / compressed-tensors convention; `nvfp4_global_scale` gives 448 * 6 / amax):
  s = e4m3(amax / 6 * g)       float32 division then multiplication, rounded to E4M3 (nearest even,
                               saturating at 448)
  q = v / (float(s) / g)        float32 division, then the division of v
  dequantized value = code * (float(s) / g)

Non-finite input: a group holding NaN or +-inf gets the NaN scale (E8M0 0xFF, E4M3 0x7F) and zero codes, so it
dequantizes to NaN: NaN never becomes a finite value. An NVFP4 global scale that is not finite and positive
makes every scale NaN. An NVFP4 group whose E4M3 scale rounds to zero (amax * g / 6 < 2^-10) gets zero codes.

Rotation: an optional r x r matrix R applied to consecutive blocks of r elements along the last dimension
before quantization, y = x_block @ R, accumulated in float64 in increasing index order, rounded to float32.
Dequantization with R applies the inverse, x = y_block @ R^T, the same way.

Scale layouts: `linear`, shape [..., K / group]; `blocked`, the 128x4 tiling of Blackwell tensor cores and
cuBLAS, shape [ceil(rows / 128) * 128, ceil(groups / 4) * 4] with zero padding (see `swizzle_scales`).
"""

from __future__ import annotations

from typing import Optional

import torch

MX_GROUP = 32
NV_GROUP = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E8M0_NAN = 0xFF
E4M3_NAN = 0x7F
QUEST_FACTOR = float(torch.tensor(2.92247856 / 6.0, dtype=torch.float32))  # the float32 constant
QUEST_EPS = float(torch.tensor(1e-8, dtype=torch.float32))
MX_METHODS = ("floor", "ceil", "quest")
SCALE_LAYOUTS = ("linear", "blocked")
ROTATION_SIZES = (16, 32, 64, 128)

# E2M1 values by code (0..15).
E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32
)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as exact float32 for integer e in [-149, 127]."""
    e = e.to(torch.int32)
    normal = (e + 127).clamp(min=0) << 23
    sub = torch.ones_like(e) << (e + 149).clamp(min=0, max=22)
    return torch.where(e >= -126, normal, sub).view(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Elements


def e2m1_encode(q: torch.Tensor) -> torch.Tensor:
    """float32 -> unpacked E2M1 codes (uint8 in 0..15), nearest-even, saturating."""
    a = q.abs()
    idx = (
        (a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int()
        + (a > 2.5).int() + (a >= 3.5).int() + (a > 5.0).int()
    )
    sign = ((_bits(q) >> 31) & 1) << 3
    return (idx | sign).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    return E2M1_VALUES.to(codes.device)[codes.long()]


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes 0..15 -> [..., K/2] uint8, element 2i in the low nibble."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    p = packed.view(torch.uint8) if packed.dtype != torch.uint8 else packed
    return torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------------------
# Scales


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    c = codes.view(torch.uint8).to(torch.int32)
    return torch.where(c == E8M0_NAN, torch.tensor(float("nan")), _pow2(c - 127))


def e4m3_encode_sat(s: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 -> E4M3 codes (uint8): nearest even, saturating at 448, NaN -> 0x7F.

    Uses torch's own float8_e4m3fn conversion (an independent implementation from csrc/core)."""
    return s.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.float8_e4m3fn).to(torch.float32)


def tree_sum(v: torch.Tensor) -> torch.Tensor:
    """Pairwise float32 sum over the last dimension (a power of two): adjacent pairs first."""
    while v.shape[-1] > 1:
        v = v[..., 0::2] + v[..., 1::2]
    return v[..., 0]


def _exp_field(x: torch.Tensor) -> torch.Tensor:
    return (_bits(x) >> 23) & 0xFF


def mx_scale_exponent(blocks: torch.Tensor, method: str) -> torch.Tensor:
    """Scale exponent e (int32) of finite float32 blocks [..., 32]."""
    if method not in MX_METHODS:
        raise ValueError(f"method must be one of {MX_METHODS} for MXFP4, got {method!r}")
    if method == "quest":
        mean = tree_sum(blocks) * 0.03125
        meansq = tree_sum(blocks * blocks) * 0.03125
        var = meansq - mean * mean
        overflow = ~torch.isfinite(var)
        var = torch.where(var > 0, var, torch.zeros_like(var))
        # torch's float32 CPU sqrt is not always correctly rounded (seen 1 ulp high); float64 sqrt rounded
        # once to float32 is the IEEE float32 square root the rule specifies.
        sigma = torch.sqrt(var.double()).float()
        s = sigma * QUEST_FACTOR + QUEST_EPS
        e = _exp_field(s) - 127
        e = torch.where(overflow, torch.full_like(e, 127), e)
    else:
        amax = blocks.abs().amax(dim=-1)
        biased = _exp_field(amax)
        e = biased - 129
        if method == "ceil":
            e = e + ((_bits(amax) & 0x7FFFFF) > 0x400000).int()
        e = torch.where(biased == 0, torch.full_like(e, -127), e)
    return e.clamp(-127, 127)


# ---------------------------------------------------------------------------------------------------------
# Rotation and layouts


def rotate(x: torch.Tensor, rotation: Optional[torch.Tensor], inverse: bool = False) -> torch.Tensor:
    """Block-diagonal rotation along the last dimension, float64 accumulation in index order -> float32.

    forward: y_block = x_block @ R; inverse: x_block = y_block @ R^T."""
    x = x.to(torch.float32)
    if rotation is None:
        return x
    r = rotation.shape[0]
    R = rotation.to(torch.float32).to(torch.float64)
    if inverse:
        R = R.t()
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // r, r).to(torch.float64)
    acc = torch.zeros_like(xb)
    for i in range(r):
        acc = acc + xb[..., i : i + 1] * R[i]
    return acc.to(torch.float32).reshape(x.shape)


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """[..., rows, groups] linear scales -> the blocked 128x4 layout (zero padded), same dtype."""
    cols = scales.shape[-1]
    s = scales.reshape(-1, cols).view(torch.uint8)
    rows = s.shape[0]
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    padded = torch.zeros(pr, pc, dtype=torch.uint8, device=s.device)
    padded[:rows, :cols] = s
    # row = tile_r * 128 + a * 32 + b, col = tile_c * 4 + c  ->  ((tile_r, tile_c), b, a, c)
    tiles = padded.view(pr // 128, 4, 32, pc // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(pr, pc).view(scales.dtype)


def unswizzle_scales(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    b = blocked.view(torch.uint8).reshape(pr // 128, pc // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return b.reshape(pr, pc)[:rows, :cols].contiguous().view(blocked.dtype)


def _layout(scales: torch.Tensor, layout: str) -> torch.Tensor:
    if layout not in SCALE_LAYOUTS:
        raise ValueError(f"scale_layout must be 'linear' or 'blocked', got {layout!r}")
    return scales if layout == "linear" else swizzle_scales(scales)


def _linear_scales(scales: torch.Tensor, codes: torch.Tensor, group: int, layout: str) -> torch.Tensor:
    groups = codes.shape[-1] * 2 // group
    if layout == "linear":
        return scales
    rows = codes.numel() // codes.shape[-1]
    return unswizzle_scales(scales, rows, groups).reshape(*codes.shape[:-1], groups)


# ---------------------------------------------------------------------------------------------------------
# Quantize / dequantize


def quantize_mxfp4(
    x: torch.Tensor, rotation: Optional[torch.Tensor] = None, method: str = "floor", scale_layout: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    v = rotate(x, rotation)
    blocks = v.reshape(*v.shape[:-1], v.shape[-1] // MX_GROUP, MX_GROUP)
    finite = torch.isfinite(blocks).all(dim=-1)
    safe = torch.where(finite[..., None], blocks, torch.zeros_like(blocks))
    e = mx_scale_exponent(safe, method)
    codes = e2m1_encode(safe * _pow2(-e)[..., None])
    codes = torch.where(finite[..., None], codes, torch.zeros_like(codes))
    scales = torch.where(finite, e + 127, torch.full_like(e, E8M0_NAN)).to(torch.uint8)
    codes = pack_codes(codes.reshape(v.shape))
    return codes, _layout(scales.view(torch.float8_e8m0fnu), scale_layout)


def nvfp4_global_scale(x: torch.Tensor, rotation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """448 * 6 / amax of the (rotated) tensor as a float32 tensor of shape [1] (see module docs)."""
    v = rotate(x, rotation)
    if not bool(torch.isfinite(v).all()):
        return torch.full((1,), float("nan"), dtype=torch.float32, device=x.device)
    amax = v.abs().amax().reshape(1)
    if float(amax) == 0.0:
        return torch.ones(1, dtype=torch.float32, device=x.device)
    g = torch.tensor(E4M3_MAX * E2M1_MAX, dtype=torch.float32, device=x.device) / amax
    return torch.where(torch.isinf(g), torch.tensor(torch.finfo(torch.float32).max, device=x.device), g)


def quantize_nvfp4(
    x: torch.Tensor,
    global_scale: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    v = rotate(x, rotation)
    g = global_scale.reshape(()).to(torch.float32)
    blocks = v.reshape(*v.shape[:-1], v.shape[-1] // NV_GROUP, NV_GROUP)
    finite = torch.isfinite(blocks).all(dim=-1) & torch.isfinite(g) & (g > 0)
    safe = torch.where(finite[..., None], blocks, torch.zeros_like(blocks))
    s = (safe.abs().amax(dim=-1) / E2M1_MAX) * g
    sc = torch.where(finite, e4m3_encode_sat(s), torch.full_like(s, E4M3_NAN, dtype=torch.uint8))
    denom = e4m3_decode(sc) / g
    ok = finite & (denom > 0)
    q = safe / torch.where(ok, denom, torch.ones_like(denom))[..., None]
    codes = torch.where(ok[..., None], e2m1_encode(q), torch.zeros_like(q, dtype=torch.uint8))
    codes = pack_codes(codes.reshape(v.shape))
    return codes, _layout(sc.view(torch.float8_e4m3fn), scale_layout)


def _dequantize(codes, multiplier, group, rotation, out_dtype):
    vals = e2m1_decode(unpack_codes(codes))
    vals = vals.reshape(*vals.shape[:-1], vals.shape[-1] // group, group) * multiplier[..., None]
    return rotate(vals.reshape(*codes.shape[:-1], codes.shape[-1] * 2), rotation, inverse=True).to(out_dtype)


def dequantize_mxfp4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    mult = e8m0_decode(_linear_scales(scales, codes, MX_GROUP, scale_layout))
    return _dequantize(codes, mult, MX_GROUP, rotation, out_dtype)


def dequantize_nvfp4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    g = global_scale.reshape(()).to(torch.float32)
    mult = e4m3_decode(_linear_scales(scales, codes, NV_GROUP, scale_layout)) / g
    return _dequantize(codes, mult, NV_GROUP, rotation, out_dtype)
