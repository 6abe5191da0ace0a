"""fpquant_ext: MXFP4 / NVFP4 quantization for PyTorch.

Operators live in ``torch.ops.fpquant`` (schemas: csrc/ops/schema.cpp; fake implementations and autograd
formulas: ``_fake`` and ``_autograd``, registered on import); :mod:`fpquant_ext.ops` wraps them,
:mod:`fpquant_ext.formats` is the pure-PyTorch reference that defines their exact results, and
:mod:`fpquant_ext.rotations` builds the rotation matrices, :mod:`fpquant_ext.nn` holds the FP4 Linear
modules and model conversion (``FP4Config``, ``quantize_model``), and :mod:`fpquant_ext.tuning` shows and
overrides which kernel runs.
"""

from __future__ import annotations

import torch

from . import _C, _autograd, _fake, formats, rotations  # noqa: F401  (_C registers the operators)
from .ops import (  # noqa: F401
    as_float4,
    dequantize,
    dequantize_mxfp4,
    dequantize_nvfp4,
    linear_w4a16,
    matmul_mxfp4,
    matmul_nvfp4,
    nvfp4_global_scale,
    pack_w4a16,
    quantize_mxfp4,
    quantize_nvfp4,
    swizzle_scales,
    unpack_w4a16,
    unswizzle_scales,
)
from . import io, nn, tuning  # noqa: F401
from .io import inspect_checkpoint, load_quantized, save_quantized  # noqa: F401
from .nn import FP4Config, FP4Linear, QuantizedWeight, quantize_model  # noqa: F401

__version__ = "0.1.0"


def backend_info() -> dict:
    """What this build can run: compiled CUDA targets and the device that would be used."""
    archs = [a for a in _C.cuda_archs.split(",") if a]
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "cuda_archs_compiled": archs,
        "cuda_device": None,
    }
    if archs and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info["cuda_device"] = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    return info
