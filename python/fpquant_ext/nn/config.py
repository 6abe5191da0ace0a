"""FP4Config: what quantize_model and FP4Linear.from_linear do to each nn.Linear."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import rotations
from ..formats import MX_GROUP, MX_METHODS, NV_GROUP, ROTATION_SIZES

FORMATS = ("mxfp4", "nvfp4")
MODES = ("w4a16", "w4a4", "pseudo", "qat")
# The modes that keep float weights and fake-quantize in the forward (their own flags apply only to them).
FLOAT_WEIGHT_MODES = ("pseudo", "qat")
NV_METHODS = ("absmax",)
ROTATION_FALLBACKS = ("shrink", "skip")
ACT_GLOBAL_SCALES = ("dynamic", "static")
ALGORITHMS = ("rtn", "gptq")
# Weight-only scale rules: a search per group (fpquant_ext.algorithms.scale_search); 'hessian' needs
# calibration data.
SEARCH_METHODS = ("mse", "hessian")


def group_of(format: str) -> int:
    return MX_GROUP if format == "mxfp4" else NV_GROUP


def methods_of(format: str) -> tuple[str, ...]:
    """The scale rules of the quantize ops (weights and activations)."""
    return MX_METHODS if format == "mxfp4" else NV_METHODS


def weight_methods_of(format: str) -> tuple[str, ...]:
    """Scale rules for weights: the quantize ops' rules and the searches."""
    return methods_of(format) + SEARCH_METHODS


@dataclass
class FP4Config:
    """How to quantize the Linear layers of a model.

    Attributes:
        format: ``"mxfp4"`` (groups of 32, E8M0 scales) or ``"nvfp4"`` (groups of 16, E4M3 scales and a
            float32 global scale).
        mode: ``"w4a16"`` weight-only FP4 (activations stay in their dtype); ``"w4a4"`` weights and
            activations in FP4 (activations quantized every forward, product emulated exactly);
            ``"pseudo"`` a float master weight fake-quantized every forward, frozen; ``"qat"`` the same with
            a trainable master weight (straight-through estimator).
        weight_method: weight scale rule. MXFP4: ``"floor"`` (default, OCP), ``"ceil"`` or ``"quest"``
            (only sensible with a rotation: a warning without one). NVFP4: ``"absmax"``. Both formats, modes
            ``"w4a16"`` / ``"w4a4"``: ``"mse"`` (per group, the candidate scale with the least squared
            error) or ``"hessian"`` (the least error weighted by the layer's input Hessian; needs
            calibration data). With ``algorithm="gptq"``: the rule that sets each group's scale during GPTQ
            (not ``"hessian"``: GPTQ weighs by the Hessian itself).
        act_method: activation scale rule: the quantize ops' rules of the format (used by ``"w4a4"`` and by
            fake-quantized activations).
        algorithm: ``"rtn"`` (round to nearest with ``weight_method``'s scales) or ``"gptq"`` (GPTQ with
            calibration data, docs/algorithms.md; with a rotation this is MR-GPTQ).
        gptq_damp: GPTQ's relative damping of the Hessian (raised x10 with a warning if it does not factor).
        gptq_block_size: GPTQ's lazy-update block (a multiple of the group).
        gptq_act_order: GPTQ visits columns by decreasing Hessian diagonal (scales then fixed before GPTQ).
        fake_quantize_activations: ``"pseudo"`` / ``"qat"`` only: fake-quantize the activations too
            (W4A4 emulation in float).
        rotation: a name of :data:`fpquant_ext.rotations.ROTATIONS` or ``"none"``. Weights are stored rotated
            (W' = W · blockdiag(R)) and activations rotated the same way, so x' @ W'^T approximates x @ W^T.
        rotation_size: r in 16, 32, 64, 128.
        rotation_seed: the seed of ``"random_hadamard"``.
        rotation_fallback: when r does not divide a layer's K: ``"shrink"`` (default) uses the largest power
            of two >= 16 that divides K and is below r (reported in the summary); ``"skip"`` leaves the layer
            unconverted, with the reason in the summary.
        act_global_scale: NVFP4 activations: ``"dynamic"`` (computed from each input) or ``"static"``
            (a calibrated value: ``act_global_scale_value``, or per layer by :func:`calibrate_activations`).
        act_global_scale_value: the static global scale (the encode multiplier 448·6/amax) for every layer.
        mask_saturated_gradients: ``"pseudo"`` / ``"qat"``: the straight-through estimator passes no gradient
            where a value was clipped by quantization.
        modules_to_not_convert: module names (or dotted name components) never converted.
        include: fnmatch patterns of module names to convert (None: all).
        exclude: fnmatch patterns of module names never converted.
        (Each of the last three takes a list of strings; a single string is one name or pattern.)
    """

    format: str = "mxfp4"
    mode: str = "w4a16"
    weight_method: Optional[str] = None
    act_method: Optional[str] = None
    fake_quantize_activations: bool = False
    rotation: str = "none"
    rotation_size: int = 128
    rotation_seed: int = 0
    rotation_fallback: str = "shrink"
    act_global_scale: str = "dynamic"
    act_global_scale_value: Optional[float] = None
    mask_saturated_gradients: bool = False
    algorithm: str = "rtn"
    gptq_damp: float = 0.01
    gptq_block_size: int = 128
    gptq_act_order: bool = False
    modules_to_not_convert: list[str] = field(default_factory=lambda: ["lm_head"])
    include: Optional[list[str]] = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.modules_to_not_convert = _names("modules_to_not_convert", self.modules_to_not_convert)
        self.include = None if self.include is None else _names("include", self.include)
        self.exclude = _names("exclude", self.exclude)
        _choice("format", self.format, FORMATS)
        _choice("mode", self.mode, MODES)
        default = "floor" if self.format == "mxfp4" else "absmax"
        self.weight_method = self.weight_method or default
        self.act_method = self.act_method or default
        _choice("weight_method", self.weight_method, weight_methods_of(self.format))
        _choice("algorithm", self.algorithm, ALGORITHMS)
        if (self.algorithm == "gptq" or self.weight_method in SEARCH_METHODS) and self.mode not in ("w4a16", "w4a4"):
            what = "algorithm='gptq'" if self.algorithm == "gptq" else f"weight_method='{self.weight_method}'"
            raise ValueError(f"FP4Config: {what} quantizes the weight once; it applies to modes 'w4a16' and "
                             f"'w4a4', not '{self.mode}' (which re-quantizes a master weight every forward)")
        if self.algorithm == "gptq" and self.weight_method == "hessian":
            raise ValueError("FP4Config: algorithm='gptq' weighs errors by the Hessian itself; use "
                             "weight_method='mse' or the format's rule for the group scales")
        if not (math.isfinite(self.gptq_damp) and self.gptq_damp > 0):
            raise ValueError(f"FP4Config: gptq_damp must be finite and positive, got {self.gptq_damp}")
        if self.gptq_block_size <= 0 or self.gptq_block_size % self.group:
            raise ValueError(f"FP4Config: gptq_block_size must be a positive multiple of the group {self.group}, "
                             f"got {self.gptq_block_size}")
        _choice("act_method", self.act_method, methods_of(self.format))
        if self.rotation != "none":
            _choice("rotation", self.rotation, tuple(sorted(rotations.ROTATIONS)))
        _choice("rotation_size", self.rotation_size, ROTATION_SIZES)
        _choice("rotation_fallback", self.rotation_fallback, ROTATION_FALLBACKS)
        _choice("act_global_scale", self.act_global_scale, ACT_GLOBAL_SCALES)
        if self.act_global_scale_value is not None:
            v = float(self.act_global_scale_value)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"FP4Config: act_global_scale_value must be finite and positive, got {v}")
            if self.act_global_scale != "static":
                raise ValueError("FP4Config: act_global_scale_value needs act_global_scale='static'")
        if self.fake_quantize_activations and self.mode not in FLOAT_WEIGHT_MODES:
            raise ValueError("FP4Config: fake_quantize_activations applies to modes 'pseudo' and 'qat' "
                             f"('w4a4' always quantizes activations, 'w4a16' never), got mode '{self.mode}'")
        if self.mask_saturated_gradients and self.mode not in FLOAT_WEIGHT_MODES:
            raise ValueError("FP4Config: mask_saturated_gradients applies to modes 'pseudo' and 'qat' (the modes "
                             f"with a straight-through gradient), got mode '{self.mode}'")
        if self.rotation == "none":
            asked = [name for name, used in (("weight_method", True), ("act_method", self.quantizes_activations))
                     if used and getattr(self, name) == "quest"]
            if asked:
                warnings.warn(
                    f"FP4Config: {' and '.join(asked)}='quest' without a rotation: the Gaussian-fit scale clips "
                    "heavy-tailed groups and collapses constant ones (a real model's perplexity rose 67x); "
                    "use it with a rotation (e.g. rotation='hadamard') or use 'floor' / 'ceil'",
                    UserWarning, stacklevel=3)

    @property
    def group(self) -> int:
        return group_of(self.format)

    @property
    def needs_calibration(self) -> bool:
        """GPTQ and the Hessian scale search need calibration data (quantize_model(..., calibration=))."""
        return self.algorithm == "gptq" or self.weight_method == "hessian"

    @property
    def quantizes_activations(self) -> bool:
        return self.mode == "w4a4" or self.fake_quantize_activations

    def rotation_size_for(self, K: int) -> tuple[Optional[int], Optional[str]]:
        """The rotation size used for a layer with K inputs: ``(size, None)``, ``(None, None)`` without a
        rotation, or ``(None, reason)`` when the layer must be skipped."""
        if self.rotation == "none":
            return None, None
        if K % self.rotation_size == 0:
            return self.rotation_size, None
        if self.rotation_fallback == "shrink":
            for r in sorted(ROTATION_SIZES, reverse=True):
                if r < self.rotation_size and K % r == 0:
                    return r, None
        why = "no rotation size >= 16 divides it" if self.rotation_fallback == "shrink" else "rotation_fallback='skip'"
        return None, f"K={K} is not a multiple of the rotation size {self.rotation_size} ({why})"

    def rotation_matrix(self, size: Optional[int]) -> Optional[torch.Tensor]:
        if size is None:
            return None
        if self.rotation == "random_hadamard":
            return rotations.random_hadamard(size, seed=self.rotation_seed)
        if self.rotation == "gsr":
            return rotations.gsr(size, group_size=self.group)
        return rotations.get_rotation(self.rotation, size)


def _names(name: str, value) -> list[str]:
    """A list of names or patterns; one string is one name (iterated, it would be its characters)."""
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        raise TypeError(f"FP4Config: {name} must be a list of strings, got {value!r}") from None
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"FP4Config: {name} must be a list of strings, got {value!r}")
    return names


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"FP4Config: {name} must be one of {list(allowed)}, got {value!r}")
