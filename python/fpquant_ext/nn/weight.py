"""QuantizedWeight: an FP4 weight [N, K] as codes, scales, global scale and optional rotation."""

from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from ._buffers import FixedDtypeBuffers
from .config import FORMATS, group_of
from .fake_quant import rotate_blocks

# linear_w4a16's CUDA kernels need N and K multiples of these (csrc/cuda/w4a16/w4a16_plan.h).
KERNEL_N, KERNEL_K = 32, 128



def dequantize_operand(codes: torch.Tensor, scales: torch.Tensor, format: str,
                       global_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """An unrotated FP4 operand in float32. An MXFP4 operand may carry FP-Quant's global scale (abs_max
    checkpoints, docs/checkpoints.md): a divisor, as NVFP4's is."""
    if format == "mxfp4" and global_scale is not None:
        return ops.dequantize_mxfp4(codes, scales) / global_scale
    return ops.dequantize(codes, scales, format, global_scale)

class QuantizedWeight(FixedDtypeBuffers):
    """An FP4 weight: what modules, checkpoint I/O and algorithms pass around.

    Buffers (in the state dict): ``codes`` uint8 [N, K/2] (element 2i in the low nibble), ``scales`` in the
    linear layout (float8_e8m0fnu [N, K/32] for MXFP4, float8_e4m3fn [N, K/16] for NVFP4), ``global_scale``
    float32 [1] and ``rotation`` float32 [r, r] (optional).

    The global scale g divides every dequantized value: code · scale / g. NVFP4 weights always have one
    (the encode multiplier). MXFP4 weights normally have none; FP-Quant's MXFP4 ``abs_max`` checkpoints
    need g = 3 (their codes are the values times 3 over a power-of-two scale), which no E8M0 scale can
    express, so such a weight keeps it (docs/checkpoints.md) and is multiplied by the reference product.

    With a rotation R the weight is stored rotated, W' = W · blockdiag(R), as FP-Quant stores it, so that
    (x · blockdiag(R)) @ W'^T approximates x @ W^T. :meth:`dequantize` returns the stored W' (what the
    product uses); :meth:`dequantize_unrotated` applies R^T and approximates W.

    It is an ``nn.Module`` so it moves with its parent and its buffers round-trip through ``state_dict``;
    ``.to(dtype)`` leaves it unchanged (scales, global scale and rotation keep their dtype). On CUDA the
    layout that ``linear_w4a16``'s kernels read is made once (:meth:`packed`) and cached until the weight
    moves or is loaded again.
    """

    _FIXED_DTYPE_BUFFERS = ("codes", "scales", "global_scale", "rotation")

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor] = None,
                 rotation: Optional[torch.Tensor] = None, *, format: str, method: Optional[str] = None,
                 rotation_name: Optional[str] = None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"QuantizedWeight: format must be 'mxfp4' or 'nvfp4', got {format!r}")
        group = group_of(format)
        scale_dtype = torch.float8_e8m0fnu if format == "mxfp4" else torch.float8_e4m3fn
        codes = codes.view(torch.uint8) if codes.dtype == torch.float4_e2m1fn_x2 else codes
        if codes.dtype != torch.uint8 or codes.dim() != 2:
            raise ValueError(f"QuantizedWeight: codes must be uint8 [N, K/2], got {codes.dtype} {list(codes.shape)}")
        N, K = codes.shape[0], 2 * codes.shape[1]
        if K % group:
            raise ValueError(f"QuantizedWeight: K={K} is not a multiple of the {format} group {group}")
        if scales.dtype != scale_dtype or tuple(scales.shape) != (N, K // group):
            raise ValueError(f"QuantizedWeight: {format} scales must be {scale_dtype} [{N}, {K // group}] "
                             f"(linear layout), got {scales.dtype} {list(scales.shape)}")
        if format == "nvfp4" and global_scale is None:
            raise ValueError("QuantizedWeight: an NVFP4 weight needs a global scale")
        if global_scale is not None and (global_scale.dtype != torch.float32 or global_scale.numel() != 1):
            raise ValueError("QuantizedWeight: global_scale must be float32 with one element")
        if rotation is not None and (rotation.dim() != 2 or rotation.shape[0] != rotation.shape[1]
                                     or K % rotation.shape[0]):
            raise ValueError(f"QuantizedWeight: rotation must be r x r with r dividing K={K}, "
                             f"got {list(rotation.shape)}")
        self.format = format
        self.method = method
        self.rotation_name = rotation_name
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("global_scale", None if global_scale is None else global_scale.reshape(1))
        self.register_buffer("rotation", None if rotation is None else rotation.to(torch.float32))
        self._packed: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.native_gemm = False  # set where the weight lives: see _settle_on_device
        self._settle_on_device()

    # ---- construction -----------------------------------------------------------------------------------

    @classmethod
    def quantize(cls, weight: torch.Tensor, format: str = "mxfp4", method: Optional[str] = None,
                 rotation: Optional[torch.Tensor] = None, rotation_name: Optional[str] = None,
                 hessian: Optional[torch.Tensor] = None) -> "QuantizedWeight":
        """Quantize a float weight [N, K] (rotated by ``rotation`` first, if given). ``method``: the format's
        rule of the quantize ops, or a scale search, ``"mse"`` or ``"hessian"`` (with ``hessian``, the
        layer's input second moment [K, K]; fpquant_ext.algorithms.scale_search). Works on the meta device
        (shapes only) for the quantize ops' rules."""
        if method in ("mse", "hessian") and not weight.is_meta:
            from ..algorithms.scale_search import search_scales
            rot = None if rotation is None else rotation.to(device=weight.device, dtype=torch.float32)
            codes, scales, gs = search_scales(weight, format, method, hessian, rot)
            return cls(codes, scales, gs, rot, format=format, method=method, rotation_name=rotation_name)
        w = weight.detach()
        if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            w = w.to(torch.float32)
        w = w.contiguous()
        rot = None if rotation is None else rotation.to(device=w.device, dtype=torch.float32)
        if format == "mxfp4":
            method = method or "floor"
            codes, scales = ops.quantize_mxfp4(w, rot, "floor" if method in ("mse", "hessian") else method)
            gs = None
        elif format == "nvfp4":
            method = method or "absmax"
            if method not in ("absmax", "mse", "hessian"):
                raise ValueError(f"QuantizedWeight: NVFP4 has one scale rule, 'absmax'; got {method!r}")
            gs = ops.nvfp4_global_scale(w, rot)
            codes, scales = ops.quantize_nvfp4(w, gs, rot)
        else:
            raise ValueError(f"QuantizedWeight: format must be 'mxfp4' or 'nvfp4', got {format!r}")
        return cls(codes, scales, gs, rot, format=format, method=method, rotation_name=rotation_name)

    @classmethod
    def empty(cls, out_features: int, in_features: int, format: str = "mxfp4",
              rotation: Optional[torch.Tensor] = None, rotation_name: Optional[str] = None,
              device=None, method: Optional[str] = None) -> "QuantizedWeight":
        """A zero weight of the given shape, to load a state dict into (any device, meta included)."""
        group = group_of(format)
        scale_dtype = torch.float8_e8m0fnu if format == "mxfp4" else torch.float8_e4m3fn
        codes = torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
        scales = torch.zeros(out_features, in_features // group, dtype=torch.uint8, device=device).view(scale_dtype)
        gs = torch.ones(1, dtype=torch.float32, device=device) if format == "nvfp4" else None
        rot = None if rotation is None else rotation.to(device=device, dtype=torch.float32)
        return cls(codes, scales, gs, rot, format=format, method=method, rotation_name=rotation_name)

    # ---- properties -------------------------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.codes.shape[0], 2 * self.codes.shape[1]))

    @property
    def group(self) -> int:
        return group_of(self.format)

    @property
    def rotation_size(self) -> Optional[int]:
        return None if self.rotation is None else self.rotation.shape[0]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values() if b is not None)

    # ---- values -----------------------------------------------------------------------------------------

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored weight, dequantized: W' = W · blockdiag(R) with a rotation (the operand of the product
        with rotated activations), W without one."""
        return self._dequantize(None, dtype)

    def dequantize_unrotated(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The approximation of the original W: the stored weight dequantized, then rotated back by R^T."""
        return self._dequantize(self.rotation, dtype)

    def _dequantize(self, rotation, dtype):
        if self.mx_global_scale:
            w = dequantize_operand(self.codes, self.scales, self.format, self.global_scale)
            if rotation is not None:
                w = rotate_blocks(w, rotation, inverse=True)
            return w.to(dtype)
        return ops.dequantize(self.codes, self.scales, self.format, self.global_scale, rotation, out_dtype=dtype)

    @property
    def mx_global_scale(self) -> bool:
        """An MXFP4 weight with a global scale (FP-Quant ``abs_max``): a divisor, which linear_w4a16 takes but
        the quantize and dequantize ops do not."""
        return self.format == "mxfp4" and self.global_scale is not None

    @property
    def kernel_compatible(self) -> bool:
        """Whether linear_w4a16's CUDA kernels take this shape."""
        N, K = self.shape
        return N % KERNEL_N == 0 and K % KERNEL_K == 0

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scales) in the layout of :func:`fpquant_ext.pack_w4a16`, made on first use and cached."""
        if self._packed is None:
            self._packed = ops.pack_w4a16(self.codes, self.scales, self.format)
        return self._packed

    def invalidate_packed(self) -> None:
        """Drop the cached packed layout (call after writing into ``codes`` or ``scales`` in place)."""
        self._packed = None

    # ---- module plumbing --------------------------------------------------------------------------------

    def _after_apply(self) -> None:
        self._packed = None
        self._settle_on_device()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None
        self._settle_on_device()

    def _settle_on_device(self) -> None:
        # Packing when the weight arrives on the GPU keeps the forward free of it, compiled or not; so does
        # deciding here, as a plain bool that torch.compile treats as a constant, whether W4A4 products run
        # the block-scaled GEMM op (a native kernel for this GPU, not the float64 generic path, and no
        # MXFP4 divisor, which the op does not take).
        self.native_gemm = False
        if self.codes.is_cuda:
            if self.kernel_compatible:
                self.packed()
            if not self.mx_global_scale:
                from ..tuning import GpuSpec, plan_matmul
                N, K = self.shape
                # A bf16 product with a bf16 bias, as LLM layers run: on Ampere / Ada the op then takes its
                # w4a16 path (other output dtypes stay correct there, on the op's slower generic path).
                plan = plan_matmul(1, N, K, self.format, torch.bfloat16, "linear",
                                   GpuSpec.current(self.codes.device), torch.bfloat16)
                self.native_gemm = plan.path != "generic"

    def extra_repr(self) -> str:
        N, K = self.shape
        parts = [f"{self.format}", f"shape=({N}, {K})", f"group={self.group}"]
        if self.method:
            parts.append(f"method={self.method}")
        if self.mx_global_scale:
            parts.append(f"global_scale={float(self.global_scale):g}")
        if self.rotation is not None:
            parts.append(f"rotation={self.rotation_name or 'custom'}({self.rotation_size})")
        return ", ".join(parts)
