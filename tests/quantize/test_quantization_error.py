"""Dequantize(quantize(x)) error on Gaussian data, in the range each format is expected to give.

Expected relative Frobenius error ||x - x_hat|| / ||x|| for x ~ N(0, 1) (measured, 2**20 elements):
  MXFP4 floor ~0.115, MXFP4 ceil ~0.115, MXFP4 quest ~0.16 (quest clips at 1.5-3 sigma by design),
  NVFP4 absmax ~0.095 (finer groups and finer E4M3 scales). A Hadamard rotation leaves Gaussian data
  Gaussian, so the error with a rotation is in the same range.
"""

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import rotations

RANGES = {
    "floor": (0.10, 0.13),
    "ceil": (0.10, 0.13),
    "quest": (0.14, 0.19),
    "nvfp4": (0.085, 0.105),
}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("rotation", [None, "hadamard"])
@pytest.mark.parametrize("fmt", sorted(RANGES))
def test_gaussian_error_range(fmt, rotation, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4096, generator=g)
    R = None if rotation is None else rotations.hadamard(128)
    if fmt == "nvfp4":
        gs = fq.nvfp4_global_scale(x, R)
        xh = fq.dequantize_nvfp4(*fq.quantize_nvfp4(x, gs, R), gs, R)
    else:
        xh = fq.dequantize_mxfp4(*fq.quantize_mxfp4(x, R, method=fmt), R)
    lo, hi = RANGES[fmt]
    assert lo <= rel_err(xh, x) <= hi, rel_err(xh, x)


def test_ceil_never_saturates(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 1024, generator=g) * torch.exp2(torch.randint(-10, 10, (512, 1), generator=g).float())
    codes, scales = fq.quantize_mxfp4(x, method="ceil")
    xh = fq.dequantize_mxfp4(codes, scales)
    scale = scales.float().reshape(-1, 1)
    bx, bh = x.reshape(-1, 32), xh.reshape(-1, 32)
    # no saturation: every |x| fits under 6 * 2^e, so each error is at most half the widest step (2^e)
    assert (bx.abs() <= 6 * scale).all()
    assert ((bh - bx).abs() <= scale).all()
    # and the scale is the smallest such power of two
    assert (bx.abs().amax(-1, keepdim=True) > 3 * scale).all()
