"""Python entry points to the torch.ops.fpquant operators, and their fake (meta) implementations.

The schemas live in csrc/schema.cpp; kernels register per backend. The fake implementations here let
torch.compile (fullgraph) and FakeTensor tracing reason about shapes without running a kernel; they perform
the same shape checks as the kernels so errors surface at trace time too.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _C  # noqa: F401  (loads the library: registers schemas and kernels)
from .formats import MX_GROUP, NV_GROUP

__all__ = [
    "quantize_mxfp4",
    "quantize_nvfp4",
    "dequantize_mxfp4",
    "dequantize_nvfp4",
    "nvfp4_global_scale",
    "swizzle_scales",
    "unswizzle_scales",
    "as_float4",
    "linear_w4a16",
    "pack_w4a16",
    "unpack_w4a16",
]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _blocked_shape(rows: int, cols: int) -> tuple[int, int]:
    return (-(-rows // 128) * 128, -(-cols // 4) * 4)


# ---- shape/dtype checks for the fake implementations (mirror csrc/checks.h) -------------------------------


def _check_activation(op: str, x: torch.Tensor, group: int) -> None:
    torch._check(x.dtype in _FLOATS, lambda: f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have at least one dimension")
    torch._check(x.numel() > 0, lambda: f"{op}: x is empty (shape {list(x.shape)})")
    torch._check(
        x.shape[-1] % group == 0,
        lambda: f"{op}: x's last dimension ({x.shape[-1]}) must be a multiple of the group size {group}",
    )


def _check_rotation(op: str, rot: Optional[torch.Tensor], K: int, ref: torch.Tensor) -> None:
    if rot is None:
        return
    torch._check(rot.device == ref.device,
                 lambda: f"{op}: rotation is on {rot.device} but the input is on {ref.device}")
    torch._check(rot.dim() == 2 and rot.shape[0] == rot.shape[1],
                 lambda: f"{op}: rotation must be a square matrix, got shape {list(rot.shape)}")
    torch._check(rot.shape[0] in (16, 32, 64, 128),
                 lambda: f"{op}: rotation size must be 16, 32, 64 or 128, got {rot.shape[0]}")
    torch._check(K % rot.shape[0] == 0,
                 lambda: f"{op}: the last dimension ({K}) must be a multiple of the rotation size {rot.shape[0]}")


def _check_global_scale(op: str, g: torch.Tensor, ref: torch.Tensor) -> None:
    torch._check(g.dtype == torch.float32, lambda: f"{op}: global_scale must be float32, got {g.dtype}")
    torch._check(g.numel() == 1 and g.dim() <= 1,
                 lambda: f"{op}: global_scale must hold one value (shape [] or [1]), got shape {list(g.shape)}")
    torch._check(g.device == ref.device,
                 lambda: f"{op}: global_scale is on {g.device} but the input is on {ref.device}")


def _check_layout(op: str, layout: str) -> None:
    torch._check(layout in ("linear", "blocked"),
                 lambda: f"{op}: scale_layout must be 'linear' or 'blocked', got '{layout}'")


def _scales_like(x: torch.Tensor, groups: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    if layout == "linear":
        return x.new_empty((*x.shape[:-1], groups), dtype=dtype)
    rows = x.numel() // x.shape[-1]
    return x.new_empty(_blocked_shape(rows, groups), dtype=dtype)


@torch.library.register_fake("fpquant::quantize_mxfp4")
def _quantize_mxfp4_fake(x, rotation=None, method="floor", scale_layout="linear"):
    op = "fpquant.quantize_mxfp4"
    _check_activation(op, x, MX_GROUP)
    _check_rotation(op, rotation, x.shape[-1], x)
    torch._check(method in ("floor", "ceil", "quest"),
                 lambda: f"{op}: method must be one of 'floor', 'ceil', 'quest' for MXFP4, got '{method}'")
    _check_layout(op, scale_layout)
    codes = x.new_empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8)
    return codes, _scales_like(x, x.shape[-1] // MX_GROUP, torch.float8_e8m0fnu, scale_layout)


@torch.library.register_fake("fpquant::quantize_nvfp4")
def _quantize_nvfp4_fake(x, global_scale, rotation=None, scale_layout="linear"):
    op = "fpquant.quantize_nvfp4"
    _check_activation(op, x, NV_GROUP)
    _check_global_scale(op, global_scale, x)
    _check_rotation(op, rotation, x.shape[-1], x)
    _check_layout(op, scale_layout)
    codes = x.new_empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8)
    return codes, _scales_like(x, x.shape[-1] // NV_GROUP, torch.float8_e4m3fn, scale_layout)


def _dequantize_fake(op, codes, group, rotation, scale_layout, out_dtype):
    torch._check(codes.dim() >= 1 and codes.numel() > 0, lambda: f"{op}: codes is empty")
    torch._check((2 * codes.shape[-1]) % group == 0,
                 lambda: f"{op}: codes' last dimension must hold whole groups of {group}")
    _check_rotation(op, rotation, 2 * codes.shape[-1], codes)
    _check_layout(op, scale_layout)
    dtype = out_dtype if out_dtype is not None else torch.float32
    return codes.new_empty((*codes.shape[:-1], 2 * codes.shape[-1]), dtype=dtype)


@torch.library.register_fake("fpquant::dequantize_mxfp4")
def _dequantize_mxfp4_fake(codes, scales, rotation=None, scale_layout="linear", out_dtype=None):
    return _dequantize_fake("fpquant.dequantize_mxfp4", codes, MX_GROUP, rotation, scale_layout, out_dtype)


@torch.library.register_fake("fpquant::dequantize_nvfp4")
def _dequantize_nvfp4_fake(codes, scales, global_scale, rotation=None, scale_layout="linear", out_dtype=None):
    _check_global_scale("fpquant.dequantize_nvfp4", global_scale, codes)
    return _dequantize_fake("fpquant.dequantize_nvfp4", codes, NV_GROUP, rotation, scale_layout, out_dtype)


@torch.library.register_fake("fpquant::nvfp4_global_scale")
def _nvfp4_global_scale_fake(x, rotation=None):
    _check_activation("fpquant.nvfp4_global_scale", x, 1)
    _check_rotation("fpquant.nvfp4_global_scale", rotation, x.shape[-1], x)
    return x.new_empty((1,), dtype=torch.float32)


def _w4a16_group(op: str, format: str) -> int:
    torch._check(format in ("mxfp4", "nvfp4"), lambda: f"{op}: format must be 'mxfp4' or 'nvfp4', got '{format}'")
    return MX_GROUP if format == "mxfp4" else NV_GROUP


@torch.library.register_fake("fpquant::linear_w4a16")
def _linear_w4a16_fake(x, w_codes, w_scales, w_global_scale=None, bias=None, format="mxfp4"):
    op = "fpquant.linear_w4a16"
    _w4a16_group(op, format)
    torch._check(x.dtype in (torch.bfloat16, torch.float16), lambda: f"{op}: x must be bfloat16 or float16, got {x.dtype}")
    if w_codes.dim() == 3:  # packed [N/16, K/64, 512]
        torch._check(w_codes.shape[2] == 512, lambda: f"{op}: packed w_codes must be [N/16, K/64, 512]")
        N, K = 16 * w_codes.shape[0], 64 * w_codes.shape[1]
    else:
        torch._check(w_codes.dim() == 2, lambda: f"{op}: w_codes must be 2-D [N, K/2] or packed 3-D [N/16, K/64, 512]")
        N, K = w_codes.shape[0], 2 * w_codes.shape[1]
    torch._check(K == x.shape[-1], lambda: f"{op}: w_codes has {K} elements per row but x has K={x.shape[-1]}")
    return x.new_empty((*x.shape[:-1], N))


@torch.library.register_fake("fpquant::pack_w4a16")
def _pack_w4a16_fake(w_codes, w_scales, format="mxfp4"):
    group = _w4a16_group("fpquant.pack_w4a16", format)
    torch._check(w_codes.dim() == 2, lambda: "fpquant.pack_w4a16: w_codes must be the canonical 2-D [N, K/2]")
    N, K = w_codes.shape[0], 2 * w_codes.shape[1]
    torch._check(N % 16 == 0 and K % 64 == 0, lambda: "fpquant.pack_w4a16: N must be a multiple of 16 and K of 64")
    return (w_codes.new_empty((N // 16, K // 64, 512), dtype=torch.uint8),
            w_scales.new_empty((N // 16, K // 64, 16 * (64 // group))))


@torch.library.register_fake("fpquant::unpack_w4a16")
def _unpack_w4a16_fake(w_codes, w_scales, format="mxfp4"):
    group = _w4a16_group("fpquant.unpack_w4a16", format)
    torch._check(w_codes.dim() == 3, lambda: "fpquant.unpack_w4a16: w_codes must be the packed 3-D [N/16, K/64, 512]")
    N, K = 16 * w_codes.shape[0], 64 * w_codes.shape[1]
    return w_codes.new_empty((N, K // 2)), w_scales.new_empty((N, K // group))


@torch.library.register_fake("fpquant::swizzle_scales")
def _swizzle_scales_fake(scales):
    torch._check(scales.dim() >= 2, lambda: "fpquant.swizzle_scales: scales must be [..., rows, groups]")
    cols = scales.shape[-1]
    return scales.new_empty(_blocked_shape(scales.numel() // cols, cols))


@torch.library.register_fake("fpquant::unswizzle_scales")
def _unswizzle_scales_fake(scales, rows, cols):
    return scales.new_empty((rows, cols))


# ---- public wrappers ------------------------------------------------------------------------------------


def quantize_mxfp4(
    x: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    method: str = "floor",
    scale_layout: str = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to MXFP4 along the last dimension (groups of 32).

    Args:
        x: float32, bfloat16 or float16, contiguous, K a multiple of 32 (and of the rotation size).
        rotation: optional r x r matrix (r in 16, 32, 64, 128) applied block-diagonally before quantizing
            (see :mod:`fpquant_ext.rotations`).
        method: scale rule, ``"floor"`` (OCP), ``"ceil"`` (never saturates) or ``"quest"`` (Gaussian fit).
        scale_layout: ``"linear"`` ([..., K/32]) or ``"blocked"`` (128x4 tiles for tensor cores).

    Returns:
        ``(codes, scales)``: codes uint8 [..., K/2] (two E2M1 codes a byte, low nibble first; view them with
        :func:`as_float4`), scales float8_e8m0fnu.
    """
    return torch.ops.fpquant.quantize_mxfp4(x, rotation, method, scale_layout)


def nvfp4_global_scale(x: torch.Tensor, rotation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The NVFP4 per-tensor global scale of ``x`` (after rotation): ``448 * 6 / amax(|x|)``, float32 [1].

    It is the encode multiplier (FP-Quant / compressed-tensors convention); 1.0 for an all-zero tensor and
    NaN if ``x`` holds NaN or inf."""
    return torch.ops.fpquant.nvfp4_global_scale(x, rotation)


def quantize_nvfp4(
    x: torch.Tensor,
    global_scale: Optional[torch.Tensor] = None,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to NVFP4 (groups of 16, E4M3 scales, float32 global scale).

    Args:
        global_scale: float32 tensor with one element, the encode multiplier; ``None`` computes it with
            :func:`nvfp4_global_scale` (keep it: dequantization needs the same value).

    Returns:
        ``(codes, scales)`` with scales float8_e4m3fn.
    """
    if global_scale is None:
        global_scale = nvfp4_global_scale(x, rotation)
    return torch.ops.fpquant.quantize_nvfp4(x, global_scale, rotation, scale_layout)


def dequantize_mxfp4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize_mxfp4`: code * 2^e per group, then the inverse rotation if given."""
    return torch.ops.fpquant.dequantize_mxfp4(_as_uint8(codes), scales, rotation, scale_layout, out_dtype)


def dequantize_nvfp4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize_nvfp4`: code * (scale / global_scale), then the inverse rotation."""
    return torch.ops.fpquant.dequantize_nvfp4(
        _as_uint8(codes), scales, global_scale, rotation, scale_layout, out_dtype
    )


def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """Linear [..., rows, groups] scales -> the blocked 128x4 layout [ceil128(rows), ceil4(groups)]."""
    return torch.ops.fpquant.swizzle_scales(scales)


def unswizzle_scales(scales: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Blocked scales -> linear [rows, cols] (padding dropped)."""
    return torch.ops.fpquant.unswizzle_scales(scales, rows, cols)


def linear_w4a16(
    x: torch.Tensor,
    w_codes: torch.Tensor,
    w_scales: torch.Tensor,
    w_global_scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    format: str = "mxfp4",
) -> torch.Tensor:
    """Weight-only FP4 linear layer: ``x @ dequantize(w).T + bias``.

    Args:
        x: [..., K] bfloat16 or float16 activations.
        w_codes, w_scales: the weight [N, K], either as returned by :func:`quantize_mxfp4` /
            :func:`quantize_nvfp4` with ``scale_layout="linear"`` (codes [N, K/2], scales [N, K/group]) or,
            for speed, packed once by :func:`pack_w4a16` (codes [N/16, K/64, 512]). On CUDA a canonical
            weight is packed on every call (an extra pass over the weight): pack it once, at load.
        w_global_scale: the NVFP4 global scale (required for ``format="nvfp4"``).
        bias: optional [N] in x's dtype.

    On CUDA the weight is dequantized in registers inside the GEMM kernels (no bf16 copy of the weight): up to
    16 rows of x a decode kernel; from 17 to 2048 rows a wgmma kernel on Hopper (sm_90), elsewhere an mma.sync
    kernel up to 64 rows; above that it is dequantized in slabs of at most 32 MiB and multiplied by cuBLAS.
    N must be a multiple of 32 and K of 128 there. With float16 activations the dequantized weights must lie
    in float16's range. The CPU implementation is the reference: dequantize to float32, then matmul.
    """
    codes = w_codes if w_codes.dim() == 3 else _as_uint8(w_codes)
    return torch.ops.fpquant.linear_w4a16(x, codes, w_scales, w_global_scale, bias, format)


def pack_w4a16(
    w_codes: torch.Tensor, w_scales: torch.Tensor, format: str = "mxfp4"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical W4A16 weight (codes [N, K/2], linear scales [N, K/group]) -> the packed layout that the CUDA
    kernels read (codes uint8 [N/16, K/64, 512], scales [N/16, K/64, 16 * 64/group]; csrc/core/w4a16_layout.h).
    N must be a multiple of 16 and K of 64. Exact: :func:`unpack_w4a16` gives the input back."""
    return torch.ops.fpquant.pack_w4a16(_as_uint8(w_codes), w_scales, format)


def unpack_w4a16(
    w_codes: torch.Tensor, w_scales: torch.Tensor, format: str = "mxfp4"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed W4A16 weight -> canonical codes [N, K/2] (uint8) and linear scales [N, K/group]."""
    return torch.ops.fpquant.unpack_w4a16(w_codes, w_scales, format)


def as_float4(codes: torch.Tensor) -> torch.Tensor:
    """View packed uint8 codes as torch.float4_e2m1fn_x2 (same bytes)."""
    return codes.view(torch.float4_e2m1fn_x2)


def _as_uint8(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.uint8) if codes.dtype == torch.float4_e2m1fn_x2 else codes
