"""Quantization algorithms beyond round to nearest (docs/algorithms.md): scale search (``mse``,
``hessian``), GPTQ and MR-GPTQ, and the layer-by-layer calibration that feeds them."""

from .gptq import GPTQError, GPTQResult, gptq_quantize
from .scale_search import search_scales

__all__ = ["search_scales", "gptq_quantize", "GPTQError", "GPTQResult"]
