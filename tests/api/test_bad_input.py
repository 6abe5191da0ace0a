"""Bad input is rejected the same way by the kernels (csrc/ops/checks.h) and by the fake implementations
(fpquant_ext._fake): every case below runs against the CPU operator, under FakeTensorMode (what
torch.compile traces with) and on meta tensors, and each must raise the same exception type (TypeError for a
dtype, ValueError for anything else) with a message naming the same argument; the CPU and FakeTensor
messages must be identical."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

import fpquant_ext as fq
from fpquant_ext import rotations

ops = torch.ops.fpquant
E8M0, E4M3 = torch.float8_e8m0fnu, torch.float8_e4m3fn


def x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def u8(*shape):
    return torch.zeros(*shape, dtype=torch.uint8)


def sc(*shape, dtype=E8M0):
    return torch.zeros(*shape, dtype=torch.uint8).view(dtype)


def g1(*shape, dtype=torch.float32):
    return torch.ones(*(shape or (1,)), dtype=dtype)


def meta(*shape, dtype=torch.float32):
    """A tensor on another device than the rest (the only other device on a CPU-only machine)."""
    return torch.empty(*shape, dtype=dtype, device="meta")


H32 = rotations.hadamard(32)


def weight(N=64, K=256, fmt="nvfp4"):
    w = torch.randn(N, K) * 0.02
    if fmt == "mxfp4":
        return (*fq.quantize_mxfp4(w), None)
    g = fq.nvfp4_global_scale(w)
    return (*fq.quantize_nvfp4(w, g), g)


def packed(N=32, K=128):
    return fq.pack_w4a16(*fq.quantize_mxfp4(torch.randn(N, K)), "mxfp4")


def xb(*shape):
    return x(*shape, dtype=torch.bfloat16)


@dataclass
class Case:
    id: str
    op: object
    args: Callable[[], tuple]
    exc: type
    arg: str  # the argument the message must name
    msg: Optional[str] = None  # a fragment the CPU message must hold
    fake: bool = True  # False: a check on values, which the fake implementations cannot see


Q_MX, Q_NV, D_MX, D_NV = ops.quantize_mxfp4, ops.quantize_nvfp4, ops.dequantize_mxfp4, ops.dequantize_nvfp4
GS, LIN, PACK, UNPACK = ops.nvfp4_global_scale, ops.linear_w4a16, ops.pack_w4a16, ops.unpack_w4a16
SWZ, UNSWZ = ops.swizzle_scales, ops.unswizzle_scales
MM_MX, MM_NV = ops.matmul_mxfp4, ops.matmul_nvfp4


def mm_mx(M=4, N=8, K=64, layout="linear"):
    """Valid matmul_mxfp4 arguments (a_codes, a_scales, b_codes, b_scales, layout), to be spoiled one at a time."""
    a, sa = fq.quantize_mxfp4(x(M, K), None, "floor", layout)
    b, sb = fq.quantize_mxfp4(x(N, K), None, "floor", layout)
    return a, sa, b, sb, layout


def mm_nv(M=4, N=8, K=64, layout="linear"):
    """Valid matmul_nvfp4 arguments up to the layout."""
    a, sa = fq.quantize_nvfp4(x(M, K), g1(), None, layout)
    b, sb = fq.quantize_nvfp4(x(N, K), g1(), None, layout)
    return a, sa, g1(), b, sb, g1(), layout

CASES = [
    # ---- quantize_mxfp4 / quantize_nvfp4 / nvfp4_global_scale: x
    Case("q int dtype", Q_MX, lambda: (torch.ones(4, 32, dtype=torch.int32),), TypeError, "x", "x must be float32, bfloat16 or float16"),
    Case("q float64", Q_NV, lambda: (x(4, 32, dtype=torch.float64), g1()), TypeError, "x", "x must be float32"),
    Case("q non-contiguous", Q_MX, lambda: (x(64, 64).t(),), ValueError, "x", "x must be contiguous"),
    Case("q K % 32", Q_MX, lambda: (x(4, 48),), ValueError, "x", "last dimension (48) must be a multiple of the group size 32"),
    Case("q K % 16", Q_NV, lambda: (x(4, 40), g1()), ValueError, "x", "multiple of the group size 16"),
    Case("q empty", Q_MX, lambda: (x(0, 32),), ValueError, "x", "x is empty"),
    Case("q 0-dim", Q_MX, lambda: (torch.tensor(1.0),), ValueError, "x", "at least one dimension"),
    Case("gs int dtype", GS, lambda: (torch.ones(4, 32, dtype=torch.int32),), TypeError, "x"),
    Case("gs non-contiguous", GS, lambda: (x(64, 64).t(),), ValueError, "x"),
    Case("gs empty", GS, lambda: (x(3, 0),), ValueError, "x"),
    # ---- rotation (every op that takes one)
    Case("rot non-square", Q_MX, lambda: (x(4, 64), torch.randn(32, 16)), ValueError, "rotation", "rotation must be a square matrix"),
    Case("rot size 24", Q_MX, lambda: (x(4, 96), torch.eye(24)), ValueError, "rotation", "rotation size must be 16, 32, 64 or 128"),
    Case("rot does not divide K", Q_MX, lambda: (x(4, 96), torch.eye(64)), ValueError, "rotation", "multiple of the rotation size 64"),
    Case("rot dtype", Q_MX, lambda: (x(4, 64), torch.eye(32, dtype=torch.float64)), TypeError, "rotation", "rotation must be float32"),
    Case("rot non-contiguous", Q_MX, lambda: (x(4, 64), rotations.dct(32).t()), ValueError, "rotation", "rotation must be contiguous"),
    Case("rot device", Q_MX, lambda: (x(4, 64), meta(32, 32)), ValueError, "rotation", "rotation is on meta but the input is on cpu"),
    Case("nv rot non-square", Q_NV, lambda: (x(4, 64), g1(), torch.randn(32, 16)), ValueError, "rotation"),
    Case("nv rot dtype", Q_NV, lambda: (x(4, 64), g1(), torch.eye(32, dtype=torch.int32)), TypeError, "rotation"),
    Case("gs rot does not divide K", GS, lambda: (x(4, 48), torch.eye(32)), ValueError, "rotation"),
    Case("gs rot device", GS, lambda: (x(4, 64), meta(32, 32)), ValueError, "rotation"),
    Case("dq rot does not divide K", D_MX, lambda: (u8(4, 48), sc(4, 3), torch.eye(64)), ValueError, "rotation"),
    Case("dq rot non-contiguous", D_MX, lambda: (u8(4, 32), sc(4, 2), rotations.dct(32).t()), ValueError, "rotation"),
    Case("dq nv rot size", D_NV, lambda: (u8(4, 48), sc(4, 6, dtype=E4M3), g1(), torch.eye(48)), ValueError, "rotation"),
    Case("dq nv rot device", D_NV, lambda: (u8(4, 32), sc(4, 4, dtype=E4M3), g1(), meta(32, 32)), ValueError, "rotation"),
    # ---- method / scale_layout
    Case("bad method", Q_MX, lambda: (x(4, 32), None, "round"), ValueError, "method", "method must be one of 'floor', 'ceil', 'quest'"),
    Case("bad layout", Q_MX, lambda: (x(4, 32), None, "floor", "swizzled"), ValueError, "scale_layout", "scale_layout must be 'linear' or 'blocked'"),
    Case("nv bad layout", Q_NV, lambda: (x(4, 32), g1(), None, "tiles"), ValueError, "scale_layout"),
    Case("dq bad layout", D_MX, lambda: (u8(4, 16), sc(4, 1), None, "tiles"), ValueError, "scale_layout"),
    # ---- global_scale
    Case("gscale shape", Q_NV, lambda: (x(4, 32), torch.ones(2)), ValueError, "global_scale", "global_scale must hold one value"),
    Case("gscale 2-d", Q_NV, lambda: (x(4, 32), torch.ones(1, 1)), ValueError, "global_scale", "global_scale must hold one value"),
    Case("gscale dtype", Q_NV, lambda: (x(4, 32), g1(dtype=torch.float64)), TypeError, "global_scale", "global_scale must be float32"),
    Case("gscale device", Q_NV, lambda: (x(4, 64), meta(1)), ValueError, "global_scale", "global_scale is on meta but the input is on cpu"),
    Case("dq gscale numel", D_NV, lambda: (u8(4, 8), sc(4, 1, dtype=E4M3), torch.ones(3)), ValueError, "global_scale", "global_scale must hold one value"),
    Case("dq gscale dtype", D_NV, lambda: (u8(4, 8), sc(4, 1, dtype=E4M3), g1(dtype=torch.float16)), TypeError, "global_scale"),
    Case("dq gscale device", D_NV, lambda: (u8(4, 8), sc(4, 1, dtype=E4M3), meta(1)), ValueError, "global_scale"),
    # ---- dequantize: codes, scales, out_dtype
    Case("codes dtype", D_MX, lambda: (torch.zeros(4, 16, dtype=torch.int8), sc(4, 1)), TypeError, "codes", "codes must be uint8"),
    Case("codes width", D_MX, lambda: (u8(4, 8), sc(4, 1)), ValueError, "codes", "whole groups of 32"),
    Case("codes empty", D_MX, lambda: (u8(0, 16), sc(0, 1)), ValueError, "codes", "codes is empty"),
    Case("codes non-contiguous", D_MX, lambda: (u8(32, 32).t(), sc(32, 2)), ValueError, "codes", "codes must be contiguous"),
    Case("scales dtype", D_MX, lambda: (u8(4, 16), u8(4, 1)), TypeError, "scales", "scales must be Float8_e8m0fnu"),
    Case("scales shape", D_MX, lambda: (u8(4, 16), sc(4, 2)), ValueError, "scales", "scales must have shape [4, 1]"),
    Case("scales shape blocked", D_MX, lambda: (u8(4, 16), sc(4, 1), None, "blocked"), ValueError, "scales", "scales must have shape [128, 4] for the blocked layout"),
    Case("scales non-contiguous", D_MX, lambda: (u8(4, 64), sc(4, 4).t().contiguous().t()), ValueError, "scales", "scales must be contiguous"),
    Case("scales device", D_MX, lambda: (u8(4, 16), meta(4, 1, dtype=E8M0)), ValueError, "scales", "scales is on meta but codes is on cpu"),
    Case("nv scales dtype", D_NV, lambda: (u8(4, 8), sc(4, 1), g1()), TypeError, "scales", "scales must be Float8_e4m3fn"),
    Case("nv scales shape", D_NV, lambda: (u8(2, 3, 16), sc(2, 3, 1, dtype=E4M3), g1()), ValueError, "scales", "scales must have shape [2, 3, 2]"),
    Case("nv scales shape blocked", D_NV, lambda: (u8(130, 16), sc(130, 2, dtype=E4M3), g1(), None, "blocked"), ValueError, "scales", "[256, 4] for the blocked layout of 130 rows x 2 groups"),
    Case("nv scales non-contiguous", D_NV, lambda: (u8(4, 32), sc(4, 8, dtype=E4M3)[:, ::2], g1()), ValueError, "scales"),
    Case("out dtype", D_MX, lambda: (u8(4, 16), sc(4, 1), None, "linear", torch.int32), TypeError, "out_dtype", "out_dtype must be float32, bfloat16 or float16"),
    Case("nv out dtype", D_NV, lambda: (u8(4, 8), sc(4, 1, dtype=E4M3), g1(), None, "linear", torch.float64), TypeError, "out_dtype"),
    # ---- linear_w4a16
    Case("lin x dtype", LIN, lambda: (x(4, 256), *weight(), None, "nvfp4"), TypeError, "x", "x must be bfloat16 or float16"),
    Case("lin x empty", LIN, lambda: (xb(0, 256), *weight(), None, "nvfp4"), ValueError, "x", "x is empty"),
    Case("lin x non-contiguous", LIN, lambda: (xb(512, 4)[::2].t(), *weight(), None, "nvfp4"), ValueError, "x", "x must be contiguous"),
    Case("lin K mismatch", LIN, lambda: (xb(4, 128), *weight(), None, "nvfp4"), ValueError, "x", "but x has K=128"),
    Case("lin format", LIN, lambda: (xb(4, 256), *weight(), None, "int4"), ValueError, "format", "format must be 'mxfp4' or 'nvfp4'"),
    Case("lin no gscale", LIN, lambda: (xb(4, 256), *weight()[:2], None, None, "nvfp4"), ValueError, "w_global_scale", "needs w_global_scale"),
    Case("lin gscale 2-D", LIN, lambda: (xb(4, 256), *weight(fmt="mxfp4")[:2], g1().reshape(1, 1), None, "mxfp4"), ValueError, "global_scale", "must hold one value"),
    Case("lin gscale shape", LIN, lambda: (xb(4, 256), *weight()[:2], torch.ones(2), None, "nvfp4"), ValueError, "global_scale"),
    Case("lin gscale dtype", LIN, lambda: (xb(4, 256), *weight()[:2], g1(dtype=torch.bfloat16), None, "nvfp4"), TypeError, "global_scale"),
    Case("lin gscale device", LIN, lambda: (xb(4, 256), *weight()[:2], meta(1), None, "nvfp4"), ValueError, "global_scale"),
    Case("lin bias shape", LIN, lambda: (xb(4, 256), *weight(), torch.zeros(63, dtype=torch.bfloat16), "nvfp4"), ValueError, "bias", "bias must have shape [64]"),
    Case("lin bias dtype", LIN, lambda: (xb(4, 256), *weight(), torch.zeros(64), "nvfp4"), TypeError, "bias", "bias must have x's dtype"),
    Case("lin bias device", LIN, lambda: (xb(4, 256), *weight(), meta(64, dtype=torch.bfloat16), "nvfp4"), ValueError, "bias"),
    Case("lin scales dtype", LIN, lambda: (xb(4, 256), *weight(), None, "mxfp4"), TypeError, "scales", "scales must be Float8_e8m0fnu"),
    Case("lin scales shape", LIN, lambda: (xb(4, 256), weight()[0], sc(64, 8, dtype=E4M3), g1(), None, "nvfp4"), ValueError, "scales"),
    Case("lin codes dtype", LIN, lambda: (xb(4, 256), weight()[0].view(torch.int8), *weight()[1:], None, "nvfp4"), TypeError, "codes"),
    Case("lin codes device", LIN, lambda: (xb(4, 256), meta(64, 128, dtype=torch.uint8), meta(64, 16, dtype=E4M3), g1(), None, "nvfp4"), ValueError, "w_codes"),
    Case("lin packed shape", LIN, lambda: (xb(4, 256), weight()[0].unsqueeze(0), *weight()[1:], None, "nvfp4"), ValueError, "w_codes", "packed w_codes must have shape"),
    Case("lin codes 4-d", LIN, lambda: (xb(4, 256), weight()[0][None, None], *weight()[1:], None, "nvfp4"), ValueError, "w_codes", "w_codes must be 2-D"),
    Case("lin packed dtype", LIN, lambda: (xb(2, 128), packed()[0].view(torch.int8), packed()[1], None, None, "mxfp4"), TypeError, "w_codes", "packed w_codes must be uint8"),
    Case("lin packed K", LIN, lambda: (xb(2, 64), *packed(), None, None, "mxfp4"), ValueError, "x", "but x has K=64"),
    Case("lin packed scales dtype", LIN, lambda: (xb(2, 128), packed()[0], packed()[1].view(torch.uint8), None, None, "mxfp4"), TypeError, "scales", "scales must be Float8_e8m0fnu"),
    Case("lin packed scales shape", LIN, lambda: (xb(2, 128), packed()[0], packed()[1][:, :1].contiguous(), None, None, "mxfp4"), ValueError, "scales", "packed scales must have shape [2, 2, 32]"),
    Case("lin packed codes 4-d", LIN, lambda: (xb(2, 128), packed()[0].unsqueeze(0), packed()[1], None, None, "mxfp4"), ValueError, "w_codes", "w_codes must be 2-D [N, K/2] (canonical) or 3-D"),
    # ---- matmul_mxfp4 / matmul_nvfp4
    Case("mm layout", MM_MX, lambda: (*mm_mx()[:4], "tiles"), ValueError, "scale_layout", "scale_layout must be 'linear' or 'blocked'"),
    Case("mm a dtype", MM_MX, lambda: (mm_mx()[0].view(torch.int8), *mm_mx()[1:]), TypeError, "a_codes", "a_codes must be uint8 or float4_e2m1fn_x2"),
    Case("mm b dtype", MM_NV, lambda: (*mm_nv()[:3], mm_nv()[3].view(torch.int8), *mm_nv()[4:]), TypeError, "b_codes", "b_codes must be uint8"),
    Case("mm a empty", MM_MX, lambda: (u8(0, 32), sc(0, 2), *mm_mx()[2:]), ValueError, "a_codes", "a_codes is empty"),
    Case("mm a K % 32", MM_MX, lambda: (u8(4, 24), sc(4, 1), u8(8, 24), sc(8, 1)), ValueError, "a_codes", "must hold whole groups of 32"),
    Case("mm nv K % 16", MM_NV, lambda: (u8(4, 12), sc(4, 1, dtype=E4M3), g1(), u8(8, 12), sc(8, 1, dtype=E4M3), g1()), ValueError, "a_codes", "whole groups of 16"),
    Case("mm a non-contiguous", MM_MX, lambda: (u8(32, 32).t(), sc(32, 2), u8(8, 32), sc(8, 2)), ValueError, "a_codes", "a_codes must be contiguous"),
    Case("mm b non-contiguous", MM_MX, lambda: (u8(4, 32), sc(4, 2), u8(32, 16).t(), sc(16, 2)), ValueError, "b_codes", "b_codes must be contiguous"),
    Case("mm b rank", MM_MX, lambda: (u8(4, 32), sc(4, 2), u8(2, 8, 32), sc(2, 8, 2)), ValueError, "b_codes", "b_codes must be 2-D [N, K/2]"),
    Case("mm b device", MM_MX, lambda: (u8(4, 32), sc(4, 2), meta(8, 32, dtype=torch.uint8), meta(8, 2, dtype=E8M0)), ValueError, "b_codes", "b_codes is on meta but a_codes is on cpu"),
    Case("mm K mismatch", MM_MX, lambda: (*mm_mx(K=64)[:2], *mm_mx(K=128)[2:]), ValueError, "a_codes", "a_codes has K=64 but b_codes has K=128"),
    Case("mm nv K mismatch", MM_NV, lambda: (*mm_nv(K=32)[:3], *mm_nv(K=64)[3:]), ValueError, "b_codes", "has K=32 but b_codes has K=64"),
    Case("mm a scales dtype", MM_MX, lambda: (*mm_nv()[:2], *mm_mx()[2:]), TypeError, "a_scales", "a_scales must be Float8_e8m0fnu, got Float8_e4m3fn"),
    Case("mm b scales dtype", MM_NV, lambda: (*mm_nv()[:4], mm_mx()[3], *mm_nv()[5:]), TypeError, "b_scales", "b_scales must be Float8_e4m3fn"),
    Case("mm a scales shape", MM_MX, lambda: (u8(2, 3, 32), sc(6, 2), u8(8, 32), sc(8, 2)), ValueError, "a_scales", "a_scales must have shape [2, 3, 2] for the linear layout"),
    Case("mm b scales shape", MM_NV, lambda: (*mm_nv()[:4], sc(8, 3, dtype=E4M3), g1()), ValueError, "b_scales", "b_scales must have shape [8, 4]"),
    Case("mm a scales blocked", MM_MX, lambda: (*mm_mx()[:4], "blocked"), ValueError, "a_scales", "a_scales must have shape [128, 4] for the blocked layout of 4 rows x 2 groups"),
    Case("mm b scales blocked", MM_NV, lambda: (*mm_nv(layout="blocked")[:4], sc(8, 4, dtype=E4M3), g1(), "blocked"), ValueError, "b_scales", "b_scales must have shape [128, 4] for the blocked layout of 8 rows x 4 groups"),
    Case("mm a scales non-contiguous", MM_MX, lambda: (u8(4, 64), sc(4, 4).t().contiguous().t(), u8(8, 64), sc(8, 4)), ValueError, "a_scales", "a_scales must be contiguous"),
    Case("mm b scales device", MM_MX, lambda: (*mm_mx()[:3], meta(8, 2, dtype=E8M0)), ValueError, "b_scales", "b_scales is on meta but b_codes is on cpu"),
    Case("mm gscale a shape", MM_NV, lambda: (*mm_nv()[:2], torch.ones(2), *mm_nv()[3:]), ValueError, "a_global_scale", "a_global_scale must hold one value"),
    Case("mm gscale b dtype", MM_NV, lambda: (*mm_nv()[:5], g1(dtype=torch.float64)), TypeError, "b_global_scale", "b_global_scale must be float32, got Double"),
    Case("mm gscale b device", MM_NV, lambda: (*mm_nv()[:5], meta(1)), ValueError, "b_global_scale", "b_global_scale is on meta but a_codes is on cpu"),
    Case("mm out dtype", MM_MX, lambda: (*mm_mx(), torch.float64), TypeError, "out_dtype", "out_dtype must be float32, bfloat16 or float16, got Double"),
    Case("mm nv out dtype", MM_NV, lambda: (*mm_nv(), torch.int32), TypeError, "out_dtype"),
    Case("mm bias shape", MM_MX, lambda: (*mm_mx(), None, torch.zeros(7)), ValueError, "bias", "bias must have shape [8], got [7]"),
    Case("mm bias 2-d", MM_NV, lambda: (*mm_nv(), None, torch.zeros(1, 8)), ValueError, "bias", "bias must have shape [8]"),
    Case("mm bias dtype", MM_MX, lambda: (*mm_mx(), None, torch.zeros(8, dtype=torch.float64)), TypeError, "bias", "bias must be float32, bfloat16 or float16"),
    Case("mm bias device", MM_MX, lambda: (*mm_mx(), None, meta(8)), ValueError, "bias", "bias is on meta but a_codes is on cpu"),
    Case("mm bias non-contiguous", MM_NV, lambda: (*mm_nv(), None, torch.zeros(16)[::2]), ValueError, "bias", "bias must be contiguous"),
    # ---- pack_w4a16 / unpack_w4a16
    Case("pack N % 16", PACK, lambda: (*fq.quantize_mxfp4(x(40, 128)), "mxfp4"), ValueError, "N", "N a multiple of 16 and K a multiple of 64"),
    Case("pack K % 64", PACK, lambda: (*fq.quantize_mxfp4(x(32, 96)), "mxfp4"), ValueError, "K", "N a multiple of 16 and K a multiple of 64"),
    Case("pack scales dtype", PACK, lambda: (*fq.quantize_mxfp4(x(32, 128)), "nvfp4"), TypeError, "scales", "scales must be Float8_e4m3fn"),
    Case("pack scales shape", PACK, lambda: (u8(32, 64), sc(32, 2), "mxfp4"), ValueError, "scales"),
    Case("pack format", PACK, lambda: (*fq.quantize_mxfp4(x(32, 128)), "int4"), ValueError, "format", "format must be 'mxfp4' or 'nvfp4'"),
    Case("pack packed input", PACK, lambda: (*packed(), "mxfp4"), ValueError, "w_codes", "must be the canonical 2-D"),
    Case("pack codes dtype", PACK, lambda: (torch.zeros(32, 64, dtype=torch.int8), sc(32, 4), "mxfp4"), TypeError, "codes"),
    Case("pack codes non-contiguous", PACK, lambda: (u8(64, 32).t(), sc(32, 4), "mxfp4"), ValueError, "codes"),
    Case("unpack canonical input", UNPACK, lambda: (*fq.quantize_mxfp4(x(32, 128)), "mxfp4"), ValueError, "w_codes", "must be the packed 3-D"),
    Case("unpack scales shape", UNPACK, lambda: (packed()[0], packed()[1][:, :1].contiguous(), "mxfp4"), ValueError, "scales", "packed scales must have shape [2, 2, 32]"),
    Case("unpack codes shape", UNPACK, lambda: (packed()[0][:, :, :256], packed()[1], "mxfp4"), ValueError, "w_codes", "[N/16, K/64, 512]"),
    Case("unpack codes dtype", UNPACK, lambda: (packed()[0].view(torch.int8), packed()[1], "mxfp4"), TypeError, "w_codes"),
    Case("unpack scales dtype", UNPACK, lambda: (*packed(), "nvfp4"), TypeError, "scales"),
    Case("unpack scales non-contiguous", UNPACK, lambda: (packed()[0], packed()[1].transpose(0, 1).contiguous().transpose(0, 1), "mxfp4"), ValueError, "scales"),
    Case("unpack format", UNPACK, lambda: (*packed(), "fp4"), ValueError, "format"),
    # ---- swizzle_scales / unswizzle_scales
    Case("swizzle dtype", SWZ, lambda: (torch.zeros(4, 4),), TypeError, "scales", "one-byte dtype"),
    Case("swizzle 1-d", SWZ, lambda: (sc(8),), ValueError, "scales", "non-empty [..., rows, groups]"),
    Case("swizzle empty", SWZ, lambda: (sc(0, 4),), ValueError, "scales"),
    Case("unswizzle shape", UNSWZ, lambda: (sc(128, 4), 129, 4), ValueError, "scales", "must have shape [256, 4]"),
    Case("unswizzle dtype", UNSWZ, lambda: (torch.zeros(128, 4, dtype=torch.int16), 4, 4), TypeError, "scales"),
    Case("unswizzle rows", UNSWZ, lambda: (sc(128, 4), 0, 4), ValueError, "rows", "rows and cols must be positive"),
]

# Orthogonality reads the rotation's values: no fake counterpart (the fakes accept these; see
# test_fake_cannot_see_rotation_values), so they run on the CPU kernels only.
_NOT_ORTHOGONAL = {"2H": lambda r: 2 * rotations.hadamard(r), "H/2": lambda r: 0.5 * rotations.hadamard(r),
                   "gaussian": lambda r: torch.randn(r, r, generator=torch.Generator().manual_seed(r))}
for _name, _make in _NOT_ORTHOGONAL.items():
    CASES += [
        Case(f"q mx {_name}", Q_MX, lambda m=_make: (x(4, 64), m(32)), ValueError, "rotation", "rotation must be orthogonal", fake=False),
        Case(f"q nv {_name}", Q_NV, lambda m=_make: (x(4, 64), g1(), m(64)), ValueError, "rotation", "rotation must be orthogonal", fake=False),
        Case(f"dq mx {_name}", D_MX, lambda m=_make: (u8(4, 64), sc(4, 4), m(128)), ValueError, "rotation", "rotation must be orthogonal", fake=False),
        Case(f"dq nv {_name}", D_NV, lambda m=_make: (u8(4, 16), sc(4, 2, dtype=E4M3), g1(), m(16)), ValueError, "rotation", "rotation must be orthogonal", fake=False),
        Case(f"gs {_name}", GS, lambda m=_make: (x(4, 64), m(32)), ValueError, "rotation", "rotation must be orthogonal", fake=False),
    ]

_ids = [c.id for c in CASES]
assert len(set(_ids)) == len(_ids), "case ids must be unique"


def _raises(case: Case, call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    err = info.value
    assert type(err) is case.exc, f"{type(err).__name__} (expected {case.exc.__name__}): {err}"
    msg = str(err)
    assert re.search(rf"\b{re.escape(case.arg)}\b", msg), f"message does not name {case.arg!r}: {msg}"
    assert msg.startswith(case.op._qualified_op_name.replace("::", ".") + ": "), msg
    return err


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cpu(case):
    err = _raises(case, lambda: case.op(*case.args()))
    if case.msg is not None:
        assert case.msg in str(err), str(err)


@pytest.mark.parametrize("case", [c for c in CASES if c.fake], ids=[c.id for c in CASES if c.fake])
def test_fake_tensor_mode_matches_cpu(case):
    args = case.args()
    with pytest.raises(Exception) as info:
        case.op(*args)
    with FakeTensorMode() as mode:
        fake_args = tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)
        err = _raises(case, lambda: case.op(*fake_args))
    assert str(err) == str(info.value)


def _to_meta(a):
    """CPU tensors become meta tensors of the same sizes and strides; a tensor that stood for "another
    device" (meta) becomes a CPU one, so device mismatches stay mismatches."""
    if not isinstance(a, torch.Tensor):
        return a
    device = "cpu" if a.is_meta else "meta"
    return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=device)


@pytest.mark.parametrize("case", [c for c in CASES if c.fake], ids=[c.id for c in CASES if c.fake])
def test_meta_tensors(case):
    args = tree_map(_to_meta, case.args())
    _raises(case, lambda: case.op(*args))


@pytest.mark.parametrize("case", [c for c in CASES if not c.fake], ids=[c.id for c in CASES if not c.fake])
def test_fake_cannot_see_rotation_values(case):
    with FakeTensorMode() as mode:
        case.op(*tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, case.args()))


# ---- the Python wrappers ----------------------------------------------------------------------------------


def test_wrapper_missing_global_scale_is_a_type_error():
    w = torch.randn(64, 128)
    g = fq.nvfp4_global_scale(w)
    codes, scales = fq.quantize_nvfp4(w, g)
    with pytest.raises(TypeError, match=r"fpquant.dequantize_nvfp4: global_scale is required"):
        fq.dequantize_nvfp4(codes, scales, None)
    with pytest.raises(TypeError, match=r"fpquant.linear_w4a16: w_global_scale is required"):
        fq.linear_w4a16(xb(2, 128), codes, scales, None, format="nvfp4")


def test_wrapper_accepts_a_python_float_global_scale():
    w = torch.randn(64, 128)
    g = fq.nvfp4_global_scale(w)
    value = g.item()
    codes, scales = fq.quantize_nvfp4(w, g)
    c2, s2 = fq.quantize_nvfp4(w, value)
    assert torch.equal(codes, c2) and torch.equal(scales.view(torch.uint8), s2.view(torch.uint8))
    assert torch.equal(fq.dequantize_nvfp4(codes, scales, value), fq.dequantize_nvfp4(codes, scales, g))
    a = xb(3, 128)
    assert torch.equal(fq.linear_w4a16(a, codes, scales, value, format="nvfp4"),
                       fq.linear_w4a16(a, codes, scales, g, format="nvfp4"))
    assert torch.equal(fq.dequantize_nvfp4(codes, scales, 2), fq.dequantize_nvfp4(codes, scales, torch.tensor([2.0])))
    np = pytest.importorskip("numpy")
    c3, s3 = fq.quantize_nvfp4(w, np.float32(value))  # numpy scalars are numbers too
    assert torch.equal(codes, c3) and torch.equal(scales.view(torch.uint8), s3.view(torch.uint8))


def test_wrapper_passes_bad_global_scale_tensors_to_the_operator_checks():
    w = torch.randn(4, 32)
    with pytest.raises(ValueError, match="global_scale must hold one value"):
        fq.quantize_nvfp4(w, torch.ones(2))
    with pytest.raises(TypeError, match="global_scale must be float32"):
        fq.quantize_nvfp4(w, torch.ones(1, dtype=torch.float64))
