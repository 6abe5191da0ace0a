"""Quantized checkpoints: FP-Quant's format and compressed-tensors' pack-quantized formats, safetensors +
config.json (docs/checkpoints.md)."""

from ._files import CheckpointError
from .checkpoint import load_quantized, save_quantized
from .inspect import inspect_checkpoint

__all__ = ["save_quantized", "load_quantized", "inspect_checkpoint", "CheckpointError"]
