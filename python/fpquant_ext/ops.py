"""Python entry points to the torch.ops.fpquant operators.

The schemas live in csrc/ops/schema.cpp; kernels register per backend, the fake implementations in
:mod:`fpquant_ext._fake` and the autograd formulas in :mod:`fpquant_ext._autograd`. These wrappers only add
conveniences: float4 views of the codes, a Python number as the NVFP4 global scale, clear errors for a
missing one.
"""

from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from . import _C  # noqa: F401  (loads the library: registers schemas and kernels)

__all__ = [
    "quantize_mxfp4",
    "quantize_nvfp4",
    "dequantize_mxfp4",
    "dequantize_nvfp4",
    "dequantize",
    "nvfp4_global_scale",
    "swizzle_scales",
    "unswizzle_scales",
    "as_float4",
    "linear_w4a16",
    "pack_w4a16",
    "unpack_w4a16",
    "matmul_mxfp4",
    "matmul_nvfp4",
]

GlobalScale = Union[torch.Tensor, float]


def _global_scale(op: str, name: str, g, ref: torch.Tensor) -> torch.Tensor:
    """A Python number becomes the float32 [1] tensor the operators take, on ``ref``'s device."""
    if g is None:
        raise TypeError(f"{op}: {name} is required for NVFP4 (the float32 global scale the weight or tensor was "
                        f"quantized with, e.g. nvfp4_global_scale(x)), got None")
    if isinstance(g, numbers.Real) and not isinstance(g, bool):  # numpy scalars too
        return torch.tensor([float(g)], dtype=torch.float32, device=ref.device)
    return g


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
            Near float32's top, ``ceil`` can round a group's largest value up to 4 * 2^126 = 2^128: exact
            codes and scale, but that element dequantizes to inf in float32 (``floor`` saturates instead).
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
    global_scale: Optional[GlobalScale] = None,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to NVFP4 (groups of 16, E4M3 scales, float32 global scale).

    Args:
        global_scale: float32 tensor with one element (or a Python float), the encode multiplier; ``None``
            computes it with :func:`nvfp4_global_scale` (keep it: dequantization needs the same value).

    Returns:
        ``(codes, scales)`` with scales float8_e4m3fn.
    """
    if global_scale is None:
        global_scale = nvfp4_global_scale(x, rotation)
    else:
        global_scale = _global_scale("fpquant.quantize_nvfp4", "global_scale", global_scale, x)
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
    global_scale: GlobalScale,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize_nvfp4`: code * (scale / global_scale), then the inverse rotation.
    ``global_scale`` (a float32 tensor with one element, or a Python float) is required."""
    global_scale = _global_scale("fpquant.dequantize_nvfp4", "global_scale", global_scale, codes)
    return torch.ops.fpquant.dequantize_nvfp4(
        _as_uint8(codes), scales, global_scale, rotation, scale_layout, out_dtype
    )


def dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    format: str,
    global_scale: Optional[GlobalScale] = None,
    rotation: Optional[torch.Tensor] = None,
    scale_layout: str = "linear",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`dequantize_mxfp4` or :func:`dequantize_nvfp4` by ``format`` ("mxfp4" or "nvfp4"; NVFP4 needs
    ``global_scale``), for callers that carry the format as a value."""
    if format == "mxfp4":
        return dequantize_mxfp4(codes, scales, rotation, scale_layout, out_dtype)
    if format == "nvfp4":
        return dequantize_nvfp4(codes, scales, global_scale, rotation, scale_layout, out_dtype)
    raise ValueError(f"fpquant_ext.dequantize: format must be 'mxfp4' or 'nvfp4', got {format!r}")


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
    w_global_scale: Optional[GlobalScale] = None,
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
        w_global_scale: the weight's global scale, a float32 tensor with one element or a Python float:
            required for ``format="nvfp4"``; for MXFP4 optional, a divisor of the dequantized weight (FP-Quant's
            ``abs_max`` checkpoints store codes of 3 x the weight and a global scale of 3).
        bias: optional [N] in x's dtype.

    On CUDA the weight is dequantized in registers inside the GEMM kernels (no bf16 copy of the weight): up to
    16 rows of x a decode kernel; from 17 to 2048 rows a wgmma kernel on Hopper (sm_90), elsewhere an mma.sync
    kernel up to 64 rows; above that it is dequantized in slabs of at most 32 MiB and multiplied by cuBLAS.
    N must be a multiple of 32 and K of 128 there. With float16 activations the dequantized weights must lie
    in float16's range. The CPU implementation is the reference: dequantize to float32, then matmul.
    """
    codes = w_codes if w_codes.dim() == 3 else _as_uint8(w_codes)
    if format == "nvfp4" or w_global_scale is not None:
        w_global_scale = _global_scale("fpquant.linear_w4a16", "w_global_scale", w_global_scale, x)
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


_MATMUL_SEMANTICS = """
    Exact semantics (the CPU implementation is the reference): every operand value ``e2m1(code) * scale`` is
    formed exactly in float64; ``acc[m, n]`` sums ``a[m, k] * b[n, k]`` over ``k = 0 .. K-1`` in that order in
    float64 (each product is exact, each addition rounds to nearest even); NVFP4 then divides by
    ``a_global_scale * b_global_scale`` (that product is exact in float64); the bias is added in float64;
    the result is rounded once to ``out_dtype`` (round to nearest even; no double rounding for bf16 / fp16).
    Each output element is computed by one thread in that order, so the result does not depend on the thread
    count. A NaN scale makes its group NaN and the NaN reaches every output it touches (even through a zero).
"""


def matmul_mxfp4(
    a_codes: torch.Tensor,
    a_scales: torch.Tensor,
    b_codes: torch.Tensor,
    b_scales: torch.Tensor,
    scale_layout: str = "linear",
    out_dtype: Optional[torch.dtype] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MXFP4 x MXFP4 GEMM: ``dequantize(A) @ dequantize(B).T + bias`` -> [..., M, N].

    Args:
        a_codes, a_scales: A [..., M, K] as returned by :func:`quantize_mxfp4` (codes [..., M, K/2]); with
            ``scale_layout="blocked"`` the scales are the 2-D blocked tensor of all of A's rows.
        b_codes, b_scales: B [N, K] (codes [N, K/2]), e.g. a weight; both operands use ``scale_layout``.
        out_dtype: float32 (the default, ``None``), bfloat16 or float16.
        bias: optional [N], float32, bfloat16 or float16.
    """
    return torch.ops.fpquant.matmul_mxfp4(_as_uint8(a_codes), a_scales, _as_uint8(b_codes), b_scales, scale_layout,
                                          out_dtype, bias)


def matmul_nvfp4(
    a_codes: torch.Tensor,
    a_scales: torch.Tensor,
    a_global_scale: GlobalScale,
    b_codes: torch.Tensor,
    b_scales: torch.Tensor,
    b_global_scale: GlobalScale,
    scale_layout: str = "linear",
    out_dtype: Optional[torch.dtype] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """NVFP4 x NVFP4 GEMM: ``dequantize(A) @ dequantize(B).T + bias`` -> [..., M, N].

    As :func:`matmul_mxfp4`, with the encode global scales each operand was quantized with (float32 tensors
    with one element, or Python floats; e.g. from :func:`nvfp4_global_scale`): the operator divides by their
    product itself, so nobody computes the alpha by hand.
    """
    a_global_scale = _global_scale("fpquant.matmul_nvfp4", "a_global_scale", a_global_scale, a_codes)
    b_global_scale = _global_scale("fpquant.matmul_nvfp4", "b_global_scale", b_global_scale, a_codes)
    return torch.ops.fpquant.matmul_nvfp4(_as_uint8(a_codes), a_scales, a_global_scale, _as_uint8(b_codes), b_scales,
                                          b_global_scale, scale_layout, out_dtype, bias)


for _fn in (matmul_mxfp4, matmul_nvfp4):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ = _fn.__doc__.rstrip() + "\n" + _MATMUL_SEMANTICS


def as_float4(codes: torch.Tensor) -> torch.Tensor:
    """View packed uint8 codes as torch.float4_e2m1fn_x2 (same bytes)."""
    return codes.view(torch.float4_e2m1fn_x2)


def _as_uint8(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.uint8) if codes.dtype == torch.float4_e2m1fn_x2 else codes
