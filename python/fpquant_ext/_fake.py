"""Fake (meta) implementations of the torch.ops.fpquant operators.

They let FakeTensor tracing and torch.compile (fullgraph) reason about shapes without running a kernel, and
they reject bad input exactly as the C++ backends do (csrc/ops/checks.h, csrc/ops/layout.cpp): the same
checks in the same order, the same exception type (TypeError for a dtype, ValueError for anything else) and
the same message, so an error is the same whether it surfaces at trace time or at run time. Keep the two in
step; tests/api/test_bad_input.py runs every bad-input case against both.

torch._check_type / torch._check_value accept symbolic conditions, so dynamic shapes become guards rather
than errors. The one check that reads values, the orthogonality of a rotation, has no counterpart here.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _C  # noqa: F401  (loads the library: the schemas must exist before registering)
from .formats import MX_GROUP, NV_GROUP

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_ROTATION_SIZES = (16, 32, 64, 128)
_PACK_ROWS, _PACK_K, _PACK_ATOM_BYTES = 16, 64, 512  # csrc/core/w4a16_layout.h

# c10's names, which the C++ messages print.
_DTYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
    torch.bool: "Bool", torch.float8_e8m0fnu: "Float8_e8m0fnu", torch.float8_e4m3fn: "Float8_e4m3fn",
    torch.float8_e5m2: "Float8_e5m2", torch.float4_e2m1fn_x2: "Float4_e2m1fn_x2",
}


def _dt(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _shape(t: torch.Tensor) -> list:
    return list(t.shape)


def _blocked_rows(rows):
    return (rows + 127) // 128 * 128


def _blocked_cols(cols):
    return (cols + 3) // 4 * 4


def _type(cond, msg) -> None:
    torch._check_type(cond, msg)


def _value(cond, msg) -> None:
    torch._check_value(cond, msg)


# ---- checks.h, function for function ----------------------------------------------------------------------


def _parse_layout(op: str, layout: str) -> str:
    _value(layout in ("linear", "blocked"), lambda: f"{op}: scale_layout must be 'linear' or 'blocked', got '{layout}'")
    return layout


def _parse_mx_method(op: str, method: str) -> None:
    _value(method in ("floor", "ceil", "quest"),
           lambda: f"{op}: method must be one of 'floor', 'ceil', 'quest' for MXFP4, got '{method}'")


def _check_groups(op: str, x: torch.Tensor, group: int) -> None:
    _value(x.shape[-1] % group == 0,
           lambda: f"{op}: x's last dimension ({x.shape[-1]}) must be a multiple of the group size {group}")


def _check_activation(op: str, x: torch.Tensor, group: int) -> None:
    _type(x.dtype in _FLOATS, lambda: f"{op}: x must be float32, bfloat16 or float16, got {_dt(x.dtype)}")
    _value(x.dim() >= 1, lambda: f"{op}: x must have at least one dimension")
    _value(x.numel() > 0, lambda: f"{op}: x is empty (shape {_shape(x)})")
    _check_groups(op, x, group)
    _value(x.is_contiguous(), lambda: f"{op}: x must be contiguous")


def _check_rotation(op: str, R: Optional[torch.Tensor], ref: torch.Tensor, K) -> None:
    if R is None:
        return
    _value(R.dim() == 2 and R.shape[0] == R.shape[1],
           lambda: f"{op}: rotation must be a square matrix, got shape {_shape(R)}")
    r = R.shape[0]
    _value(r in _ROTATION_SIZES, lambda: f"{op}: rotation size must be 16, 32, 64 or 128, got {r}")
    _type(R.dtype in _FLOATS, lambda: f"{op}: rotation must be float32, bfloat16 or float16, got {_dt(R.dtype)}")
    _value(R.device == ref.device, lambda: f"{op}: rotation is on {R.device} but the input is on {ref.device}")
    _value(R.is_contiguous(), lambda: f"{op}: rotation must be contiguous")
    _value(K % r == 0, lambda: f"{op}: the last dimension ({K}) must be a multiple of the rotation size {r}")
    # Orthogonality (max|R R^T - I| <= 1e-2) reads values: checked by the kernels only.


def _check_global_scale(op: str, g: torch.Tensor, ref: torch.Tensor, name: str = "global_scale",
                        ref_name: str = "the input") -> None:
    _type(g.dtype == torch.float32, lambda: f"{op}: {name} must be float32, got {_dt(g.dtype)}")
    _value(g.numel() == 1 and g.dim() <= 1,
           lambda: f"{op}: {name} must hold one value (shape [] or [1]), got shape {_shape(g)}")
    _value(g.device == ref.device, lambda: f"{op}: {name} is on {g.device} but {ref_name} is on {ref.device}")


def _check_codes(op: str, codes: torch.Tensor, group: int, name: str = "codes") -> None:
    _type(codes.dtype in (torch.uint8, torch.float4_e2m1fn_x2),
          lambda: f"{op}: {name} must be uint8 or float4_e2m1fn_x2, got {_dt(codes.dtype)}")
    _value(codes.dim() >= 1 and codes.numel() > 0, lambda: f"{op}: {name} is empty (shape {_shape(codes)})")
    _value((2 * codes.shape[-1]) % group == 0,
           lambda: f"{op}: {name}' last dimension ({codes.shape[-1]} bytes = {2 * codes.shape[-1]} elements) must "
           f"hold whole groups of {group}")
    _value(codes.is_contiguous(), lambda: f"{op}: {name} must be contiguous")


def _check_scale_tensor(op: str, scales: torch.Tensor, codes: torch.Tensor, dtype: torch.dtype,
                        name: str = "scales", codes_name: str = "codes") -> None:
    _type(scales.dtype == dtype, lambda: f"{op}: {name} must be {_dt(dtype)}, got {_dt(scales.dtype)}")
    _value(scales.device == codes.device,
           lambda: f"{op}: {name} is on {scales.device} but {codes_name} is on {codes.device}")
    _value(scales.is_contiguous(), lambda: f"{op}: {name} must be contiguous")


def _check_scales(op, scales, codes, group, dtype, layout, name="scales", codes_name="codes") -> None:
    _check_scale_tensor(op, scales, codes, dtype, name, codes_name)
    groups = 2 * codes.shape[-1] // group
    rows = codes.numel() // codes.shape[-1]
    if layout == "linear":
        expected = [*codes.shape[:-1], groups]
        _value(list(scales.shape) == expected,
               lambda: f"{op}: {name} must have shape {expected} for the linear layout, got {_shape(scales)}")
    else:
        pr, pc = _blocked_rows(rows), _blocked_cols(groups)
        _value(scales.dim() == 2 and scales.shape[0] == pr and scales.shape[1] == pc,
               lambda: f"{op}: {name} must have shape [{pr}, {pc}] for the blocked layout of {rows} rows x {groups} "
               f"groups, got {_shape(scales)}")


def _parse_out_dtype(op: str, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    d = torch.float32 if out_dtype is None else out_dtype
    _type(d in _FLOATS, lambda: f"{op}: out_dtype must be float32, bfloat16 or float16, got {_dt(d)}")
    return d


def _parse_format(op: str, format: str) -> int:
    _value(format in ("mxfp4", "nvfp4"), lambda: f"{op}: format must be 'mxfp4' or 'nvfp4', got '{format}'")
    return MX_GROUP if format == "mxfp4" else NV_GROUP


def _scale_dtype(group: int) -> torch.dtype:
    return torch.float8_e8m0fnu if group == MX_GROUP else torch.float8_e4m3fn


def _check_w4a16_weight(op: str, codes: torch.Tensor, scales: torch.Tensor, group: int):
    """-> (packed, N, K), as check_w4a16_weight."""
    sdt = _scale_dtype(group)
    if codes.dim() == 2:
        _check_codes(op, codes, group)
        _check_scales(op, scales, codes, group, sdt, "linear")
        return False, codes.shape[0], 2 * codes.shape[1]
    _value(codes.dim() == 3,
           lambda: f"{op}: w_codes must be 2-D [N, K/2] (canonical) or 3-D [N/16, K/64, 512] (packed by pack_w4a16), "
           f"got shape {_shape(codes)}")
    _type(codes.dtype == torch.uint8, lambda: f"{op}: packed w_codes must be uint8, got {_dt(codes.dtype)}")
    _value(codes.numel() > 0 and codes.shape[2] == _PACK_ATOM_BYTES,
           lambda: f"{op}: packed w_codes must have shape [N/16, K/64, 512], got {_shape(codes)}")
    _value(codes.is_contiguous(), lambda: f"{op}: w_codes must be contiguous")
    _check_scale_tensor(op, scales, codes, sdt)
    sb = _PACK_ROWS * (_PACK_K // group)
    _value(scales.dim() == 3 and scales.shape[0] == codes.shape[0] and scales.shape[1] == codes.shape[1]
           and scales.shape[2] == sb,
           lambda: f"{op}: packed scales must have shape [{codes.shape[0]}, {codes.shape[1]}, {sb}], got "
           f"{_shape(scales)}")
    return True, _PACK_ROWS * codes.shape[0], _PACK_K * codes.shape[1]


# ---- outputs (ops/outputs.h) -----------------------------------------------------------------------------


def _codes_like(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2), dtype=torch.uint8)


def _scales_like(x: torch.Tensor, groups, dtype: torch.dtype, layout: str) -> torch.Tensor:
    if layout == "linear":
        return x.new_empty((*x.shape[:-1], groups), dtype=dtype)
    rows = x.numel() // x.shape[-1]
    return x.new_empty((_blocked_rows(rows), _blocked_cols(groups)), dtype=dtype)


# ---- the operators ----------------------------------------------------------------------------------------


@torch.library.register_fake("fpquant::quantize_mxfp4")
def _quantize_mxfp4(x, rotation=None, method="floor", scale_layout="linear"):
    op = "fpquant.quantize_mxfp4"
    _check_activation(op, x, MX_GROUP)
    _check_rotation(op, rotation, x, x.shape[-1])
    _parse_mx_method(op, method)
    _parse_layout(op, scale_layout)
    return _codes_like(x), _scales_like(x, x.shape[-1] // MX_GROUP, torch.float8_e8m0fnu, scale_layout)


@torch.library.register_fake("fpquant::quantize_nvfp4")
def _quantize_nvfp4(x, global_scale, rotation=None, scale_layout="linear"):
    op = "fpquant.quantize_nvfp4"
    _check_activation(op, x, NV_GROUP)
    _check_global_scale(op, global_scale, x)
    _check_rotation(op, rotation, x, x.shape[-1])
    _parse_layout(op, scale_layout)
    return _codes_like(x), _scales_like(x, x.shape[-1] // NV_GROUP, torch.float8_e4m3fn, scale_layout)


def _dequantize(op, group, codes, scales, global_scale, rotation, scale_layout, out_dtype):
    layout = _parse_layout(op, scale_layout)
    _check_codes(op, codes, group)
    _check_scales(op, scales, codes, group, _scale_dtype(group), layout)
    if global_scale is not None:
        _check_global_scale(op, global_scale, codes)
    _check_rotation(op, rotation, codes, 2 * codes.shape[-1])
    dtype = _parse_out_dtype(op, out_dtype)
    return codes.new_empty((*codes.shape[:-1], 2 * codes.shape[-1]), dtype=dtype)


@torch.library.register_fake("fpquant::dequantize_mxfp4")
def _dequantize_mxfp4(codes, scales, rotation=None, scale_layout="linear", out_dtype=None):
    return _dequantize("fpquant.dequantize_mxfp4", MX_GROUP, codes, scales, None, rotation, scale_layout, out_dtype)


@torch.library.register_fake("fpquant::dequantize_nvfp4")
def _dequantize_nvfp4(codes, scales, global_scale, rotation=None, scale_layout="linear", out_dtype=None):
    return _dequantize("fpquant.dequantize_nvfp4", NV_GROUP, codes, scales, global_scale, rotation, scale_layout,
                       out_dtype)


@torch.library.register_fake("fpquant::nvfp4_global_scale")
def _nvfp4_global_scale(x, rotation=None):
    op = "fpquant.nvfp4_global_scale"
    _check_activation(op, x, 1)
    _check_rotation(op, rotation, x, x.shape[-1])
    return x.new_empty((1,), dtype=torch.float32)


@torch.library.register_fake("fpquant::linear_w4a16")
def _linear_w4a16(x, w_codes, w_scales, w_global_scale=None, bias=None, format="mxfp4"):
    op = "fpquant.linear_w4a16"
    group = _parse_format(op, format)
    _type(x.dtype in (torch.bfloat16, torch.float16), lambda: f"{op}: x must be bfloat16 or float16, got {_dt(x.dtype)}")
    _value(x.dim() >= 1 and x.numel() > 0, lambda: f"{op}: x is empty (shape {_shape(x)})")
    _value(x.is_contiguous(), lambda: f"{op}: x must be contiguous")
    _, N, K = _check_w4a16_weight(op, w_codes, w_scales, group)
    _value(K == x.shape[-1], lambda: f"{op}: w_codes has {K} elements per row but x has K={x.shape[-1]}")
    _value(w_codes.device == x.device, lambda: f"{op}: w_codes is on {w_codes.device} but x is on {x.device}")
    _value(group == MX_GROUP or w_global_scale is not None, lambda: f"{op}: format='nvfp4' needs w_global_scale")
    if w_global_scale is not None:
        _check_global_scale(op, w_global_scale, x)
    if bias is not None:
        _type(bias.dtype == x.dtype, lambda: f"{op}: bias must have x's dtype {_dt(x.dtype)}, got {_dt(bias.dtype)}")
        _value(bias.dim() == 1 and bias.shape[0] == N, lambda: f"{op}: bias must have shape [{N}], got {_shape(bias)}")
        _value(bias.device == x.device, lambda: f"{op}: bias is on {bias.device} but x is on {x.device}")
    return x.new_empty((*x.shape[:-1], N))


# ---- matmul_mxfp4 / matmul_nvfp4 (check_matmul) ----------------------------------------------------------


def _matmul(op, group, a, a_scales, a_global, b, b_scales, b_global, scale_layout, out_dtype, bias):
    layout = _parse_layout(op, scale_layout)
    _check_codes(op, a, group, "a_codes")
    _check_codes(op, b, group, "b_codes")
    _value(b.dim() == 2, lambda: f"{op}: b_codes must be 2-D [N, K/2], got shape {_shape(b)}")
    _value(b.device == a.device, lambda: f"{op}: b_codes is on {b.device} but a_codes is on {a.device}")
    _value(a.shape[-1] == b.shape[1],
           lambda: f"{op}: a_codes has K={2 * a.shape[-1]} but b_codes has K={2 * b.shape[1]}")
    sdt = _scale_dtype(group)
    _check_scales(op, a_scales, a, group, sdt, layout, "a_scales", "a_codes")
    _check_scales(op, b_scales, b, group, sdt, layout, "b_scales", "b_codes")
    if a_global is not None:
        _check_global_scale(op, a_global, a, "a_global_scale", "a_codes")
    if b_global is not None:
        _check_global_scale(op, b_global, a, "b_global_scale", "a_codes")
    dtype = _parse_out_dtype(op, out_dtype)
    N = b.shape[0]
    if bias is not None:
        _type(bias.dtype in _FLOATS, lambda: f"{op}: bias must be float32, bfloat16 or float16, got {_dt(bias.dtype)}")
        _value(bias.dim() == 1 and bias.shape[0] == N, lambda: f"{op}: bias must have shape [{N}], got {_shape(bias)}")
        _value(bias.device == a.device, lambda: f"{op}: bias is on {bias.device} but a_codes is on {a.device}")
        _value(bias.is_contiguous(), lambda: f"{op}: bias must be contiguous")
    return a.new_empty((*a.shape[:-1], N), dtype=dtype)


@torch.library.register_fake("fpquant::matmul_mxfp4")
def _matmul_mxfp4(a_codes, a_scales, b_codes, b_scales, scale_layout="linear", out_dtype=None, bias=None):
    return _matmul("fpquant.matmul_mxfp4", MX_GROUP, a_codes, a_scales, None, b_codes, b_scales, None, scale_layout,
                   out_dtype, bias)


@torch.library.register_fake("fpquant::matmul_nvfp4")
def _matmul_nvfp4(a_codes, a_scales, a_global_scale, b_codes, b_scales, b_global_scale, scale_layout="linear",
                  out_dtype=None, bias=None):
    return _matmul("fpquant.matmul_nvfp4", NV_GROUP, a_codes, a_scales, a_global_scale, b_codes, b_scales,
                   b_global_scale, scale_layout, out_dtype, bias)


# ---- layout.cpp -------------------------------------------------------------------------------------------


@torch.library.register_fake("fpquant::pack_w4a16")
def _pack_w4a16(w_codes, w_scales, format="mxfp4"):
    op = "fpquant.pack_w4a16"
    group = _parse_format(op, format)
    _value(w_codes.dim() == 2, lambda: f"{op}: w_codes must be the canonical 2-D [N, K/2], got shape {_shape(w_codes)}")
    _, N, K = _check_w4a16_weight(op, w_codes, w_scales, group)
    _value(N % _PACK_ROWS == 0 and K % _PACK_K == 0,
           lambda: f"{op}: the packed layout needs N a multiple of {_PACK_ROWS} and K a multiple of {_PACK_K}, got "
           f"N={N}, K={K}")
    T, A = N // _PACK_ROWS, K // _PACK_K
    return (w_codes.new_empty((T, A, _PACK_ATOM_BYTES), dtype=torch.uint8),
            w_scales.new_empty((T, A, _PACK_ROWS * (_PACK_K // group))))


@torch.library.register_fake("fpquant::unpack_w4a16")
def _unpack_w4a16(w_codes, w_scales, format="mxfp4"):
    op = "fpquant.unpack_w4a16"
    group = _parse_format(op, format)
    _value(w_codes.dim() == 3,
           lambda: f"{op}: w_codes must be the packed 3-D [N/16, K/64, 512], got shape {_shape(w_codes)}")
    _, N, K = _check_w4a16_weight(op, w_codes, w_scales, group)
    return w_codes.new_empty((N, K // 2)), w_scales.new_empty((N, K // group))


def _check_scale_bytes(op: str, t: torch.Tensor) -> None:
    _type((t.element_size() == 1 and t.dtype.is_floating_point) or t.dtype == torch.uint8,
          lambda: f"{op}: scales must be a one-byte dtype (float8_e8m0fnu, float8_e4m3fn or uint8), got {_dt(t.dtype)}")


@torch.library.register_fake("fpquant::swizzle_scales")
def _swizzle_scales(scales):
    op = "fpquant.swizzle_scales"
    _check_scale_bytes(op, scales)
    _value(scales.dim() >= 2 and scales.numel() > 0,
           lambda: f"{op}: scales must be a non-empty [..., rows, groups] tensor, got shape {_shape(scales)}")
    cols = scales.shape[-1]
    return scales.new_empty((_blocked_rows(scales.numel() // cols), _blocked_cols(cols)))


@torch.library.register_fake("fpquant::unswizzle_scales")
def _unswizzle_scales(scales, rows, cols):
    op = "fpquant.unswizzle_scales"
    _check_scale_bytes(op, scales)
    _value(rows > 0 and cols > 0, lambda: f"{op}: rows and cols must be positive, got {rows} and {cols}")
    pr, pc = _blocked_rows(rows), _blocked_cols(cols)
    _value(scales.dim() == 2 and scales.shape[0] == pr and scales.shape[1] == pc,
           lambda: f"{op}: blocked scales for {rows} x {cols} must have shape [{pr}, {pc}], got {_shape(scales)}")
    return scales.new_empty((rows, cols))
