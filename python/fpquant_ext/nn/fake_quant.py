"""``fpquant::fake_quantize``: quantize then dequantize, with a straight-through-estimator backward.

A Python custom op (torch.library.custom_op) so torch.compile treats it as one opaque node with a fake
implementation and an autograd formula, instead of tracing into the quantizers.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .. import ops
from .._fake import _check_groups, _check_rotation
from ..formats import E2M1_MAX, MX_GROUP, NV_GROUP

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def rotate_blocks(x: torch.Tensor, rotation: Optional[torch.Tensor], inverse: bool = False) -> torch.Tensor:
    """x · blockdiag(R) (or R^T) along the last dimension as one plain 2-D matmul, [M·K/r, r] @ [r, r],
    in float32 (float64 for float64 input), returned in x's dtype."""
    if rotation is None:
        return x
    r = rotation.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    R = rotation.to(device=x.device, dtype=acc)
    if inverse:
        R = R.t()
    # 2-D rather than batched [..., K/r, r] @ R: torch's CPU batched matmul takes milliseconds on some
    # small shapes (e.g. [64, 4, 32]) where the 2-D product takes microseconds.
    blocks = x.to(acc).reshape(-1, r)
    return (blocks @ R).reshape(x.shape).to(x.dtype)


@torch.library.custom_op("fpquant::fake_quantize", mutates_args=())
def _fake_quantize(x: torch.Tensor, format: str, method: str, rotation: Optional[torch.Tensor],
                   global_scale: Optional[torch.Tensor], saturation_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dtype not in _FLOATS:
        raise TypeError(f"fpquant.fake_quantize: x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if format not in ("mxfp4", "nvfp4"):
        raise ValueError(f"fpquant.fake_quantize: format must be 'mxfp4' or 'nvfp4', got '{format}'")
    if format == "nvfp4" and method != "absmax":
        raise ValueError(f"fpquant.fake_quantize: NVFP4's scale rule is 'absmax', got '{method}'")
    mask_shape = x.shape if saturation_mask else (0,)
    rot = None if rotation is None else rotation.to(device=x.device, dtype=torch.float32).contiguous()
    if x.numel() == 0 and x.dim() >= 1:
        # The quantize ops refuse empty tensors; with no values there is nothing to quantize or clip, but a
        # K or rotation they would refuse is still refused, by their own checks.
        _check_groups("fpquant.fake_quantize", x, MX_GROUP if format == "mxfp4" else NV_GROUP)
        _check_rotation("fpquant.fake_quantize", rot, x, x.shape[-1])
        return x.clone(memory_format=torch.contiguous_format), x.new_empty(mask_shape, dtype=torch.bool)
    # float64 is quantized as float32, as QuantizedWeight.quantize and FP4Linear's W4A4 activations are
    # (the quantize ops take no float64), so a layer's forward and its exported weight agree.
    xc = (x.to(torch.float32) if x.dtype == torch.float64 else x).contiguous()
    if format == "mxfp4":
        codes, scales = ops.quantize_mxfp4(xc, rot, method)
        out = ops.dequantize_mxfp4(codes, scales, rot, out_dtype=xc.dtype)
        multiplier, group = scales.to(torch.float32), MX_GROUP
    else:
        gs = ops.nvfp4_global_scale(xc, rot) if global_scale is None else global_scale.to(torch.float32)
        codes, scales = ops.quantize_nvfp4(xc, gs, rot)
        out = ops.dequantize_nvfp4(codes, scales, gs, rot, out_dtype=xc.dtype)
        multiplier, group = scales.to(torch.float32) / gs, NV_GROUP
    out = out.to(x.dtype)
    if not saturation_mask:
        return out, x.new_empty((0,), dtype=torch.bool)
    # In the rotated space, where quantization happened: a value whose scaled magnitude |v| / multiplier
    # exceeds 6 was clipped. The division is the quantizer's own (|v| <= 6 * multiplier can differ by an ulp).
    # The quantizers round a float64 accumulation to float32; a float32 matmul would be an ulp off exactly
    # where it matters (a group's largest value, which lands on 6).
    v = rotate_blocks(xc.to(torch.float64), rot).to(torch.float32)
    m = multiplier.repeat_interleave(group, dim=-1)
    scaled = v.abs() / torch.where(m > 0, m, torch.ones_like(m))
    return out, torch.where(m > 0, scaled <= E2M1_MAX, v == 0)


@_fake_quantize.register_fake
def _(x, format, method, rotation, global_scale, saturation_mask):
    torch._check(x.dtype in _FLOATS, lambda: f"fpquant.fake_quantize: x must be float32, bfloat16, float16 or "
                                             f"float64, got {x.dtype}")
    torch._check(format in ("mxfp4", "nvfp4"), lambda: f"fpquant.fake_quantize: bad format '{format}'")
    mask_shape = x.shape if saturation_mask else (0,)
    return x.new_empty(x.shape), x.new_empty(mask_shape, dtype=torch.bool)


def _setup_context(ctx, inputs, output):
    _, _, _, rotation, _, saturation_mask = inputs
    ctx.masked = saturation_mask
    if saturation_mask:
        ctx.save_for_backward(output[1], rotation)


def _backward(ctx, grad_out, _grad_mask):
    if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
        # The straight-through estimator defines a gradient for x only; None for a trainable rotation or
        # global scale would leave it silently untrained.
        raise RuntimeError("fpquant.fake_quantize: no gradient for rotation or global_scale (the straight-through "
                           "estimator passes the gradient to x only); detach them or keep them frozen")
    grad = grad_out
    if ctx.masked:
        mask, rotation = ctx.saved_tensors
        if rotation is None:
            grad = torch.where(mask, grad, torch.zeros_like(grad))
        else:
            # The clipped part of the rotated gradient, rotated back and subtracted, in float32 with one
            # rounding: where nothing clipped the gradient passes bit for bit, as it does unmasked
            # (rotating there and back would round twice in bfloat16).
            acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
            g = rotate_blocks(grad.to(acc), rotation)
            clipped = torch.where(mask, torch.zeros_like(g), g)
            grad = (grad.to(acc) - rotate_blocks(clipped, rotation, inverse=True)).to(grad.dtype)
    return grad, None, None, None, None, None


_fake_quantize.register_autograd(_backward, setup_context=_setup_context)


def fake_quantize(x: torch.Tensor, format: str = "mxfp4", method: Optional[str] = None,
                  rotation: Optional[torch.Tensor] = None,
                  global_scale: Union[torch.Tensor, float, None] = None,
                  mask_saturated: bool = False) -> torch.Tensor:
    """Quantize ``x`` [..., K] to FP4 and dequantize it back (same dtype and shape). float64 is quantized
    as float32; an input of no rows gives an empty output.

    With a rotation R the values are quantized in the rotated space and rotated back (R^T), so the result
    approximates x itself. NVFP4 without ``global_scale`` uses the tensor's own (dynamic) global scale.
    Backward: the straight-through estimator (the gradient passes unchanged); with ``mask_saturated`` it is
    zeroed where a value was clipped (in the rotated space). There is no gradient for the rotation or the
    global scale: backward raises if one of them requires grad. ``global_scale`` may be a tensor of one
    element or a number, as in :func:`fpquant_ext.ops.quantize_nvfp4`.
    """
    method = method or ("floor" if format == "mxfp4" else "absmax")
    if global_scale is not None:
        global_scale = ops._global_scale("fpquant.fake_quantize", "global_scale", global_scale, x)
    return torch.ops.fpquant.fake_quantize(x, format, method, rotation, global_scale, mask_saturated)[0]
