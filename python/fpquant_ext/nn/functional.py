"""The products FP4Linear computes, as functions of tensors.

``fp4_matmul`` is the one place where a W4A4 product is formed: the block-scaled FP4 GEMM op
(matmul_mxfp4 / matmul_nvfp4) where this GPU has a native kernel for it, else ``fp4_matmul_emulated``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from .fake_quant import fake_quantize, rotate_blocks
from .weight import QuantizedWeight, dequantize_operand

__all__ = ["rotate_blocks", "quantize_activations", "fp4_matmul", "fp4_matmul_emulated", "linear_w4a16",
           "fake_quantize"]


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reference_product(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                       out_dtype: torch.dtype) -> torch.Tensor:
    # The order of linear_w4a16's CPU reference: float matmul, then the bias, then one cast.
    acc = _accumulator(out_dtype)
    out = torch.matmul(x.to(acc), w.to(acc).t())
    if bias is not None:
        out = out + bias.to(out_dtype).to(acc)
    return out.to(out_dtype)


def linear_w4a16(x: torch.Tensor, weight: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ W^T + bias for an FP4 weight and activations in their own dtype (x already rotated when the
    weight is stored rotated). The output has x's dtype; the bias is cast to it first.

    bfloat16 / float16 input goes to :func:`fpquant_ext.linear_w4a16`: on CUDA the kernels, with the weight
    packed once (:meth:`QuantizedWeight.packed`); on the CPU the reference (dequantize, float32 matmul).
    Other input (float32, float64), and CUDA shapes the kernels do not take: that same reference product in
    float32 (float64 for float64 input).
    """
    b = None if bias is None else bias.to(x.dtype)
    if x.dtype in (torch.bfloat16, torch.float16) and (not x.is_cuda or weight.kernel_compatible):
        codes, scales = weight.packed() if x.is_cuda else (weight.codes, weight.scales)
        return ops.linear_w4a16(x.contiguous(), codes, scales, weight.global_scale, b, weight.format)
    # The dequantize ops' widest output is float32; float64 input widens it in the product.
    return _reference_product(x, weight.dequantize(torch.float32), b, x.dtype)


def quantize_activations(x: torch.Tensor, format: str, method: str, rotation: Optional[torch.Tensor],
                         global_scale: Optional[torch.Tensor] = None):
    """Rotate and quantize activations [..., K]: (codes, scales, global scale or None). NVFP4 without
    ``global_scale`` computes it from x (dynamic). No gradient flows through (x is detached: codes and
    scales have none)."""
    xc = x.detach().contiguous()
    if xc.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        xc = xc.to(torch.float32)
    rot = None if rotation is None else rotation.to(device=x.device, dtype=torch.float32)
    if format == "mxfp4":
        codes, scales = ops.quantize_mxfp4(xc, rot, method)
        return codes, scales, None
    gs = ops.nvfp4_global_scale(xc, rot) if global_scale is None else global_scale
    codes, scales = ops.quantize_nvfp4(xc, gs, rot)
    return codes, scales, gs


def fp4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, weight: QuantizedWeight,
               a_global_scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A [..., K] (FP4 codes and linear scales of the weight's format) times the FP4 weight, plus bias.

    On a GPU where matmul_mxfp4 / matmul_nvfp4 has a fast path for the weight (``weight.native_gemm``: the
    Hopper or Blackwell kernels, or the W4A16 kernels on Ampere / Ada) the op, with exact products and one
    rounding; elsewhere (the CPU, older GPUs, MXFP4 weights with FP-Quant's divisor, a float64 output, which
    the op does not produce)
    :func:`fp4_matmul_emulated`, whose float32 sums differ from the op's only by their rounding."""
    if weight.native_gemm and a_codes.is_cuda and out_dtype in (torch.float32, torch.bfloat16, torch.float16):
        b = None if bias is None else bias.to(out_dtype)
        if weight.format == "mxfp4":
            return ops.matmul_mxfp4(a_codes, a_scales, weight.codes, weight.scales, "linear", out_dtype, b)
        return ops.matmul_nvfp4(a_codes, a_scales, a_global_scale, weight.codes, weight.scales, weight.global_scale,
                                "linear", out_dtype, b)
    return fp4_matmul_emulated(a_codes, a_scales, weight.codes, weight.scales, weight.format, a_global_scale,
                               weight.global_scale, bias, out_dtype)


def fp4_matmul_emulated(a_codes: torch.Tensor, a_scales: torch.Tensor, b_codes: torch.Tensor,
                        b_scales: torch.Tensor, format: str, a_global_scale: Optional[torch.Tensor] = None,
                        b_global_scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A [..., K] times B [N, K]^T, both FP4 (codes and linear-layout scales of ``format``), plus bias:
    both operands dequantized exactly to float32, a float32 matmul, the bias (cast to ``out_dtype``, then
    float32) added, one rounding to ``out_dtype``. What a block-scaled FP4 GEMM computes, up to its
    accumulation order."""
    a = dequantize_operand(a_codes, a_scales, format, a_global_scale)
    b = dequantize_operand(b_codes, b_scales, format, b_global_scale)
    return _reference_product(a, b, bias, out_dtype)
