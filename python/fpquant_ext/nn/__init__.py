"""FP4 modules: :class:`FP4Linear`, :class:`QuantizedWeight`, :class:`FP4Config` and :func:`quantize_model`
(docs/nn.md)."""

from . import functional  # noqa: F401
from .config import FP4Config
from .convert import ConversionSummary, calibrate_activations, quantize_model
from .fake_quant import fake_quantize
from .linear import FP4Linear
from .weight import QuantizedWeight

__all__ = ["FP4Config", "FP4Linear", "QuantizedWeight", "quantize_model", "calibrate_activations",
           "ConversionSummary", "fake_quantize", "functional"]
