"""quantize_model: replace the nn.Linear layers of any model by FP4Linear, in place."""

from __future__ import annotations

import contextlib
import fnmatch
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from .config import FLOAT_WEIGHT_MODES, FP4Config
from .linear import FP4Linear


@dataclass
class ConvertedLayer:
    name: str
    in_features: int
    out_features: int
    rotation_size: Optional[int]
    bytes_before: int
    bytes_after: int


@dataclass
class ConversionSummary:
    """What :func:`quantize_model` did: converted layers, skipped layers with the reason, and bytes of the
    converted layers (weights, biases and quantization buffers) before and after."""

    config: FP4Config
    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gptq: dict[str, dict] = field(default_factory=dict)  # per layer: damping used, proxy errors (GPTQ only)

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.converted)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.converted)

    @property
    def rotation_sizes(self) -> Counter:
        return Counter(c.rotation_size for c in self.converted)

    def __str__(self) -> str:
        cfg = self.config
        head = f"{cfg.format} {cfg.mode}, weights '{cfg.weight_method}'"
        if cfg.algorithm != "rtn":
            head += f" + {cfg.algorithm}"
        if cfg.quantizes_activations:
            head += f", activations '{cfg.act_method}'"
        lines = [f"quantize_model: {head}, rotation {cfg.rotation}"
                 + ("" if cfg.rotation == "none" else f" ({cfg.rotation_size})")]
        if self.converted:
            before, after = self.bytes_before, self.bytes_after
            # pseudo / qat keep the float master weight (and a rotation per layer): no smaller at all.
            size = (f"{before / after:.2f}x smaller" if after < before else
                    f"{after / before:.2f}x larger: the float weights are kept" if cfg.mode in FLOAT_WEIGHT_MODES
                    else f"{after / before:.2f}x larger")
            lines.append(f"converted {len(self.converted)} Linear layers: {_mib(before)} -> {_mib(after)} ({size})")
        else:
            lines.append("converted no Linear layer")
        if cfg.rotation != "none":
            for size, n in sorted(self.rotation_sizes.items(), key=lambda kv: -(kv[0] or 0)):
                if size != cfg.rotation_size:
                    Ks = sorted({c.in_features for c in self.converted if c.rotation_size == size})
                    lines.append(f"  rotation size {size} (not {cfg.rotation_size}) for {n} layers with "
                                 f"K in {Ks}: the largest power of two >= 16 dividing K")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines.extend(f"  {name}: {reason}" for name, reason in self.skipped)
        lines.extend(f"note: {n}" for n in self.notes)
        if self.gptq:
            ratios = [v["proxy_error"] / v["rtn_proxy_error"] for v in self.gptq.values() if v["rtn_proxy_error"] > 0]
            raised = sorted({v["damp"] for v in self.gptq.values() if v["damp"] > cfg.gptq_damp})
            lines.append(f"GPTQ: output error (squared, calibration inputs) {sum(ratios) / max(1, len(ratios)):.3f}x "
                         f"of round to nearest on average over {len(self.gptq)} layers"
                         + (f"; damping raised to {raised} on some layers" if raised else ""))
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _nbytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _name_matches(name: str, target: str) -> bool:
    # A dotted component run: "lm_head" matches "lm_head" and "model.lm_head", not "lm_head_norm".
    return f".{target}." in f".{name}."


def _skip_reason(name: str, module: nn.Linear, config: FP4Config) -> Optional[str]:
    if type(module) is not nn.Linear:
        return f"{type(module).__name__} is a subclass of nn.Linear (its owner may read .weight directly)"
    for target in config.modules_to_not_convert:
        if _name_matches(name, target):
            return f"in modules_to_not_convert ({target!r})"
    if config.include is not None and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
        return "matches no include pattern"
    for pattern in config.exclude:
        if fnmatch.fnmatchcase(name, pattern):
            return f"excluded by pattern {pattern!r}"
    if not module.weight.dtype.is_floating_point:
        return f"weight dtype {module.weight.dtype} is not floating point"
    K = module.in_features
    if K % config.group:
        return f"K={K} is not a multiple of the group {config.group}"
    return config.rotation_size_for(K)[1]


class _Progress:
    """tqdm when it is installed (it is not a dependency), else a counter on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled and total > 0
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc="quantizing", unit="layer")
            except ImportError:
                pass

    def update(self, name: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)
        else:
            sys.stderr.write(f"\rquantizing {self.done}/{self.total} {name[:60]:<60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def linear_places(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (parent, attribute) holding each nn.Linear, by id: a module may be reachable under several
    names, even two attributes of one parent, and all of them are replaced together."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for _, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in parent._modules.items():  # named_children() yields one name per module
            if isinstance(child, nn.Linear):
                places.setdefault(id(child), []).append((parent, child_name))
    return places


def linear_layers(model: nn.Module, config: FP4Config, summary: ConversionSummary):
    """(places, todo): :func:`linear_places`, and the (name, module) pairs to convert; the skipped ones go to
    ``summary.skipped``."""
    places = linear_places(model)
    todo: list[tuple[str, nn.Linear]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        reason = _skip_reason(name, module, config)
        if reason:
            summary.skipped.append((name, reason))
        else:
            todo.append((name, module))
    return places, todo


def quantize_model(model: nn.Module, config: Optional[FP4Config] = None, progress: bool = True,
                   calibration=None, device=None, true_sequential: bool = True) -> ConversionSummary:
    """Replace every eligible ``nn.Linear`` of ``model`` by an :class:`FP4Linear`, in place.

    Configurations that need calibration data (``config.needs_calibration``: ``algorithm="gptq"`` or
    ``weight_method="hessian"``) take it as ``calibration`` (token ids: [samples, tokens] or a list of 1-D
    tensors) and quantize the model block by block
    (:func:`fpquant_ext.algorithms.calibrate.quantize_model_calibrated`, where ``device`` and
    ``true_sequential`` are described); others ignore those arguments.

    A layer is skipped, with the reason in the returned summary, when it is excluded by name
    (``modules_to_not_convert``, ``include``, ``exclude``), is a subclass of nn.Linear, has K not a multiple
    of the group, or (with ``rotation_fallback="skip"``) K not a multiple of the rotation size. A module
    reachable under several names is converted once and replaced everywhere. Works on a model on the meta
    device (then ``to_empty`` and ``load_state_dict``).
    """
    config = config if config is not None else FP4Config()
    if config.needs_calibration:
        from ..algorithms.calibrate import quantize_model_calibrated
        return quantize_model_calibrated(model, config, calibration, device=device,
                                         true_sequential=true_sequential, progress=progress)
    summary = ConversionSummary(config)
    places, todo = linear_layers(model, config, summary)
    # Modules holding each parameter, every module once (one reachable under two names is one owner).
    param_owners = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)

    bar = _Progress(len(todo), progress)
    try:
        for name, linear in todo:
            rotation_size, _ = config.rotation_size_for(linear.in_features)
            layer = FP4Linear.from_linear(linear, config, rotation_size=rotation_size)
            for parent, attr in places[id(linear)]:
                setattr(parent, attr, layer)
            summary.converted.append(ConvertedLayer(
                name, linear.in_features, linear.out_features, rotation_size,
                _nbytes([linear.weight, linear.bias]), layer.nbytes))
            if param_owners[id(linear.weight)] > 1:
                summary.notes.append(f"{name}: its weight was shared with another module; the copy in "
                                     f"{name} is now FP4 and the tie is broken")
            bar.update(name)
    finally:
        bar.close()
    warn_if_nothing_converted(summary)
    return summary


def warn_if_nothing_converted(summary: ConversionSummary) -> None:
    """A model left as it was is almost always a mistake (a wrong ``include`` pattern, every K off the
    group), and the summary alone is easy to miss."""
    if not summary.converted:
        reasons = "; ".join(sorted({reason for _, reason in summary.skipped})[:3]) or "the model has no nn.Linear"
        warnings.warn(f"quantize_model converted no Linear layer ({reasons})", stacklevel=3)


@contextlib.contextmanager
def calibrate_activations(model: nn.Module) -> Iterator[None]:
    """Calibrate the static NVFP4 activation global scales of ``model``'s FP4Linear layers: inside the
    block, forwards run with dynamic scales and record each layer's smallest (that is, the one of the
    largest rotated amax); on exit it becomes the layer's ``act_global_scale``.

    >>> with calibrate_activations(model):
    ...     for batch in calibration_batches: model(batch)
    """
    layers = [m for m in model.modules() if isinstance(m, FP4Linear) and m.act_global_scale is not None]
    begin_act_calibration(layers)
    try:
        with torch.no_grad():
            yield
    finally:
        end_act_calibration(layers)


def begin_act_calibration(layers: list[FP4Linear]) -> None:
    """From now on, forwards of these layers use dynamic activation scales and record the smallest."""
    for m in layers:
        m._calibrating, m._calibrated_gs = True, None


def end_act_calibration(layers: list[FP4Linear]) -> None:
    """The recorded scale becomes each layer's static ``act_global_scale`` (unchanged if it never ran)."""
    for m in layers:
        m._calibrating = False
        if m._calibrated_gs is not None:
            m.act_global_scale.copy_(m._calibrated_gs.reshape(1))
        m._calibrated_gs = None
