"""Quantized checkpoints: FP-Quant's format and compressed-tensors' pack-quantized formats, safetensors +
config.json (docs/checkpoints.md)."""

from ._files import CheckpointError, checkpoint_dtype
from .checkpoint import load_quantized, save_quantized
from .inspect import inspect_checkpoint

__all__ = ["save_quantized", "load_quantized", "inspect_checkpoint", "checkpoint_dtype", "CheckpointError"]
