"""Autograd for the torch.ops.fpquant operators, registered with torch.library.register_autograd (so it also
holds under torch.compile).

Differentiable: what dequantization and the weight-only linear layer are smooth in (a rotation, the NVFP4
global scale, the activations, the bias). Everything else is an encoding (uint8 codes, float8 scales) or a
rounding step whose derivative is zero almost everywhere; there a gradient that is asked for raises instead
of silently coming back as None.
"""

from __future__ import annotations

import torch

from . import _fake  # noqa: F401  (the fake implementations must exist before backward formulas are traced)
from .ops import dequantize

ops = torch.ops.fpquant

_ROUNDING = (
    "rounding to FP4 is piecewise constant, so it has no useful gradient. For training use straight-through "
    "fake quantization; to quantize a tensor that requires grad, pass x.detach() or call it under "
    "torch.no_grad()"
)
_ENCODED = "they are quantized encodings (uint8 codes, float8 scales), not differentiable values; detach them"


def _needs(ctx, n: int) -> tuple:
    """ctx.needs_input_grad over all n schema arguments: the dispatcher drops trailing arguments left at
    their defaults, and those need no gradient."""
    needs = tuple(ctx.needs_input_grad)
    return needs + (False,) * (n - len(needs))


def _grads(ctx, *grads) -> tuple:
    """One gradient per argument that was passed (see _needs)."""
    return grads[: len(ctx.needs_input_grad)]


def _quantize_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: no gradient: {_ROUNDING}")

    return backward


for _name in ("quantize_mxfp4", "quantize_nvfp4", "nvfp4_global_scale"):
    torch.library.register_autograd(f"fpquant::{_name}", _quantize_backward(f"fpquant.{_name}"))


def _layout_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: no gradient for its inputs: {_ENCODED}")

    return backward


for _name in ("pack_w4a16", "unpack_w4a16", "swizzle_scales", "unswizzle_scales"):
    torch.library.register_autograd(f"fpquant::{_name}", _layout_backward(f"fpquant.{_name}"))


# ---- dequantize: out_block = v_block @ R^T, v = code * multiplier (NVFP4: s / g) ---------------------------


def _deq_setup(ctx, inputs, output, nv: bool):
    if nv:
        codes, scales, g, rotation, layout, _ = inputs
    else:
        (codes, scales, rotation, layout, _), g = inputs, None
    ctx.nv, ctx.layout = nv, layout
    ctx.save_for_backward(codes, scales, g, rotation)


def _deq_backward(ctx, grad):
    op = "fpquant.dequantize_nvfp4" if ctx.nv else "fpquant.dequantize_mxfp4"
    needs = _needs(ctx, 6 if ctx.nv else 5)
    if needs[0] or needs[1]:
        raise RuntimeError(f"{op}: no gradient for codes or scales: {_ENCODED}")
    g_index, r_index = (2, 3) if ctx.nv else (None, 2)
    want_g = ctx.nv and needs[g_index]
    want_r = needs[r_index]
    codes, scales, g, R = ctx.saved_tensors
    grad_g = grad_r = None
    if want_g or want_r:
        # The unrotated values, recomputed rather than kept from the forward (they are as large as the output).
        if ctx.nv:
            v = ops.dequantize_nvfp4(codes, scales, g, None, ctx.layout, torch.float32)
        else:
            v = ops.dequantize_mxfp4(codes, scales, None, ctx.layout, torch.float32)
        G = grad.float()
        if want_r:
            r = R.shape[0]
            grad_r = (G.reshape(-1, r).t() @ v.reshape(-1, r)).to(R.dtype)
        if want_g:
            out = v if R is None else (v.reshape(-1, R.shape[0]) @ R.float().t()).reshape(v.shape)
            grad_g = (-(G * out).sum() / g).to(g.dtype)  # out is proportional to 1/g
    if ctx.nv:
        return _grads(ctx, None, None, grad_g, grad_r, None, None)
    return _grads(ctx, None, None, grad_r, None, None)


torch.library.register_autograd(
    "fpquant::dequantize_mxfp4", _deq_backward,
    setup_context=lambda ctx, inputs, output: _deq_setup(ctx, inputs, output, nv=False))
torch.library.register_autograd(
    "fpquant::dequantize_nvfp4", _deq_backward,
    setup_context=lambda ctx, inputs, output: _deq_setup(ctx, inputs, output, nv=True))


# ---- linear_w4a16: out = x @ W^T + bias -------------------------------------------------------------------


def _linear_setup(ctx, inputs, output):
    x, w_codes, w_scales, w_global_scale, bias, format = inputs
    ctx.format, ctx.x_dtype = format, x.dtype
    ctx.save_for_backward(w_codes, w_scales, w_global_scale)


def _dequantized_weight(codes, scales, g, format: str, dtype: torch.dtype) -> torch.Tensor:
    if codes.dim() == 3:
        codes, scales = ops.unpack_w4a16(codes, scales, format)
    return dequantize(codes, scales, format, g, out_dtype=dtype)


def _linear_backward(ctx, grad):
    needs = _needs(ctx, 6)
    if needs[1] or needs[2] or needs[3]:
        raise RuntimeError(f"fpquant.linear_w4a16: no gradient for w_codes, w_scales or w_global_scale: the weight "
                           f"is quantized; {_ENCODED}")
    codes, scales, g = ctx.saved_tensors
    grad_x = grad_bias = None
    if needs[0]:
        grad_x = grad @ _dequantized_weight(codes, scales, g, ctx.format, ctx.x_dtype)
    if needs[4]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).float().sum(0).to(grad.dtype)
    return _grads(ctx, grad_x, None, None, None, grad_bias, None)


torch.library.register_autograd("fpquant::linear_w4a16", _linear_backward, setup_context=_linear_setup)


# ---- matmul_mxfp4 / matmul_nvfp4: out = dequantize(A) @ dequantize(B)^T / (gA gB) + bias --------------------


def _matmul_setup(ctx, inputs, output):
    ctx.nv = len(inputs) == 9
    bias = inputs[-1]
    ctx.bias_dtype = None if bias is None else bias.dtype


def _matmul_backward(ctx, grad):
    op = "fpquant.matmul_nvfp4" if ctx.nv else "fpquant.matmul_mxfp4"
    n = 9 if ctx.nv else 7
    needs = _needs(ctx, n)
    if any(needs[: n - 3]):
        raise RuntimeError(f"{op}: no gradient for codes, scales or global scales: {_ENCODED} (for training, "
                           f"multiply dequantized operands instead)")
    grad_bias = grad.reshape(-1, grad.shape[-1]).double().sum(0).to(ctx.bias_dtype) if needs[n - 1] else None
    grads = [None] * n
    grads[n - 1] = grad_bias
    return _grads(ctx, *grads)


for _name in ("matmul_mxfp4", "matmul_nvfp4"):
    torch.library.register_autograd(f"fpquant::{_name}", _matmul_backward, setup_context=_matmul_setup)
