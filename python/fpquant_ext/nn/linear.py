"""FP4Linear: a drop-in nn.Linear with FP4 weights (and optionally FP4 activations)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ._buffers import FixedDtypeBuffers
from .config import FP4Config
from .fake_quant import fake_quantize
from .functional import fp4_matmul, linear_w4a16, quantize_activations, rotate_blocks
from .weight import QuantizedWeight


_UNCALIBRATED = ("FP4Linear: act_global_scale='static' but this layer has no calibrated value; set "
                 "FP4Config.act_global_scale_value or run calibrate_activations(model)")


class FP4Linear(FixedDtypeBuffers):
    """y = x @ W^T + b with W in MXFP4 or NVFP4; modes as in :class:`FP4Config`:

    - ``"w4a16"``: ``self.qweight`` (:class:`QuantizedWeight`); activations rotated (if configured) and kept
      in their dtype; :func:`fpquant_ext.nn.functional.linear_w4a16` (CUDA kernels with the weight packed
      once; the reference on the CPU).
    - ``"w4a4"``: activations rotated and quantized every forward, the product by
      :func:`fpquant_ext.nn.functional.fp4_matmul`: the block-scaled GEMM op (matmul_mxfp4 / matmul_nvfp4)
      where the GPU has a native kernel for it (Hopper, Blackwell), else dequantize-then-matmul emulation.
    - ``"pseudo"`` / ``"qat"``: a float master ``self.weight`` fake-quantized every forward
      (``fpquant::fake_quantize``; straight-through gradients), frozen in ``"pseudo"``, trainable in
      ``"qat"``; activations too with ``fake_quantize_activations``.

    The output has the input's dtype; the bias is cast to it. ``.to(dtype)`` converts the bias (and a master
    weight) and never the FP4 buffers.
    """

    _FIXED_DTYPE_BUFFERS = ("rotation", "act_global_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 config: Optional[FP4Config] = None, rotation_size: Optional[int] = None):
        super().__init__()
        config = config if config is not None else FP4Config()
        if in_features % config.group:
            raise ValueError(f"FP4Linear: in_features={in_features} is not a multiple of the "
                             f"{config.format} group {config.group}")
        if rotation_size is None:
            rotation_size, reason = config.rotation_size_for(in_features)
            if reason:
                raise ValueError(f"FP4Linear: {reason}")
        elif in_features % rotation_size:
            raise ValueError(f"FP4Linear: in_features={in_features} is not a multiple of rotation_size={rotation_size}")
        self.in_features, self.out_features = in_features, out_features
        self.format, self.mode = config.format, config.mode
        self.weight_method, self.act_method = config.weight_method, config.act_method
        self.quantize_acts = config.quantizes_activations
        self.act_global_scale_policy = config.act_global_scale
        self.mask_saturated = config.mask_saturated_gradients
        self.rotation_name = config.rotation if rotation_size else None
        self._calibrating = False
        self._calibrated_gs: Optional[torch.Tensor] = None
        factory = {"device": device, "dtype": dtype}
        rotation = config.rotation_matrix(rotation_size)
        if self.mode in ("w4a16", "w4a4"):
            self.qweight = QuantizedWeight.empty(out_features, in_features, config.format, rotation,
                                                 self.rotation_name, device=device, method=self.weight_method)
            self.register_buffer("rotation", None)
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory),
                                       requires_grad=self.mode == "qat")
            self.register_buffer("rotation", None if rotation is None else rotation.to(device))
            self.qweight = None
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        static = self.quantize_acts and config.format == "nvfp4" and config.act_global_scale == "static"
        value = config.act_global_scale_value
        self.register_buffer("act_global_scale", None if not static else torch.full(
            (1,), float("nan") if value is None else value, dtype=torch.float32, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's initialization, for layers built directly rather than converted.
        if self.weight is not None and not self.weight.is_meta:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None and not self.bias.is_meta:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Optional[FP4Config] = None,
                    rotation_size: Optional[int] = None, qweight: Optional[QuantizedWeight] = None) -> "FP4Linear":
        """An FP4Linear computing what ``linear`` computes, with its weight quantized (or, in ``"pseudo"`` /
        ``"qat"``, kept as the master weight). Same device and dtype; works on the meta device.
        ``qweight``: the already quantized weight (e.g. from GPTQ) instead of quantizing ``linear.weight``."""
        config = config if config is not None else FP4Config()
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                    dtype=w.dtype, config=config, rotation_size=rotation_size)
        with torch.no_grad():
            if layer.qweight is not None and qweight is not None:
                if qweight.format != config.format or qweight.shape != w.shape or (
                        qweight.rotation_size != layer.qweight.rotation_size):
                    raise ValueError(f"FP4Linear.from_linear: qweight ({qweight.extra_repr()}) does not match "
                                     f"the layer ({config.format}, shape {tuple(w.shape)}, rotation size "
                                     f"{layer.qweight.rotation_size})")
                layer.qweight = qweight
            elif layer.qweight is not None:
                layer.qweight = QuantizedWeight.quantize(w, config.format, layer.weight_method,
                                                         layer.qweight.rotation, layer.rotation_name)
            elif qweight is not None:
                raise ValueError(f"FP4Linear.from_linear: qweight applies to modes 'w4a16' and 'w4a4', not "
                                 f"'{config.mode}'")
            else:
                layer.weight.copy_(w)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
                # A frozen model stays frozen: a trainable bias would build autograd graphs in inference.
                layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer

    # ---- forward ----------------------------------------------------------------------------------------

    @property
    def rotation_matrix(self) -> Optional[torch.Tensor]:
        return self.qweight.rotation if self.qweight is not None else self.rotation

    def _act_global_scale(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The NVFP4 activation global scale of this call: None means dynamic (from x itself)."""
        if self.format != "nvfp4" or self.act_global_scale is None:
            return None
        if self._calibrating:
            if x.numel() == 0:  # nothing to record
                return None
            gs = torch.ops.fpquant.nvfp4_global_scale(x.detach().contiguous(), self.rotation_matrix)
            self._calibrated_gs = gs if self._calibrated_gs is None else torch.minimum(self._calibrated_gs, gs)
            return None
        if torch.compiler.is_compiling():  # no data-dependent branch in a graph: an assertion op instead
            torch._assert_async(~torch.isnan(self.act_global_scale).any(), _UNCALIBRATED)
        elif torch.isnan(self.act_global_scale).any():
            raise RuntimeError(_UNCALIBRATED)
        return self.act_global_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            # The output takes x's dtype: an integer input would silently truncate the product.
            raise TypeError(f"FP4Linear: the input must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"FP4Linear: expected an input [..., in_features={self.in_features}], got shape "
                             f"{list(x.shape)}")
        if x.numel() == 0 and self.weight is None:
            # No rows (the quantize and matmul ops refuse empty tensors): what nn.Linear gives, in x's dtype.
            # pseudo / qat take the general path (fake_quantize passes no rows through): the master weight
            # stays in the graph and gets a zero gradient, as nn.Linear's does, not None.
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, x.new_zeros(self.out_features, self.in_features), bias)
        R = self.rotation_matrix
        if self.mode == "w4a16":
            return linear_w4a16(rotate_blocks(x, R), self.qweight, self.bias)
        if self.mode == "w4a4":
            codes, scales, gs = quantize_activations(x, self.format, self.act_method, R, self._act_global_scale(x))
            return fp4_matmul(codes, scales, self.qweight, gs, self.bias, out_dtype=x.dtype)
        w = fake_quantize(self.weight, self.format, self.weight_method, R, None, self.mask_saturated)
        if self.quantize_acts:
            x = fake_quantize(x, self.format, self.act_method, R, self._act_global_scale(x), self.mask_saturated)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, w.to(x.dtype), bias)

    # ---- conversion -------------------------------------------------------------------------------------

    def quantized_weight(self) -> QuantizedWeight:
        """The FP4 weight: ``self.qweight``, or, in ``"pseudo"`` / ``"qat"``, the master weight quantized
        (what a trained layer exports)."""
        if self.qweight is not None:
            return self.qweight
        return QuantizedWeight.quantize(self.weight, self.format, self.weight_method, self.rotation,
                                        self.rotation_name)

    @property
    def nbytes(self) -> int:
        tensors = list(self.parameters()) + list(self.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"format={self.format}", f"mode={self.mode}",
                 f"group={32 if self.format == 'mxfp4' else 16}", f"weight_method={self.weight_method}"]
        if self.quantize_acts:
            parts.append(f"act_method={self.act_method}")
            if self.format == "nvfp4":
                parts.append(f"act_global_scale={self.act_global_scale_policy}")
        R = self.rotation_matrix
        parts.append("rotation=none" if R is None else f"rotation={self.rotation_name}({R.shape[0]})")
        return ", ".join(parts)
