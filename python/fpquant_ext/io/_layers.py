"""What both checkpoint formats share: the FP4 layer a format reads or writes, and FP4Config <-> metadata."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from ..nn import FP4Config, FP4Linear, QuantizedWeight
from ..nn.config import FLOAT_WEIGHT_MODES
from ._files import CheckpointError

# Our own settings ride along in quantization_config under this key, so that a checkpoint we wrote loads
# back to the same modules (mode, scale rules, rotation name); other tools ignore it.
META_KEY = "fpquant_ext"
LOADABLE_MODES = ("w4a16", "w4a4")


@dataclass
class LayerData:
    """One quantized Linear as stored: weight, bias and (NVFP4 static W4A4) activation global scale."""

    weight: QuantizedWeight
    bias: Optional[torch.Tensor]
    act_global_scale: Optional[torch.Tensor] = None


@dataclass
class Plan:
    """What a checkpoint's quantization_config says: the FP4Config of its layers and format details."""

    config: FP4Config
    format_name: str
    rotation_size: Optional[int] = None   # FP-Quant: hadamard_group_size when a rotation is applied
    transform_init: Optional[str] = None  # FP-Quant: the name of its rotation
    static_act_scale: bool = False        # compressed-tensors NVFP4 W4A4: input_global_scale per layer


def metadata(config: FP4Config) -> dict:
    d = dataclasses.asdict(config)
    from .. import __version__
    d["version"] = __version__
    return d


# FP4Config's field annotations -> the JSON values a hand-edited config must give (true is no integer here).
# A string is one name to FP4Config, and versions before it normalized the names wrote one as given.
_FIELD_TYPES = {"str": ((str,), "a string"), "bool": ((bool,), "true or false"), "int": ((int,), "an integer"),
                "float": ((int, float), "a number"), "list[str]": ((list, str), "a list of strings")}


def section(value, where: str) -> dict:
    """A part of quantization_config that must be a JSON object."""
    if not isinstance(value, dict):
        raise CheckpointError(f"quantization_config: {where} must be a JSON object, got {type(value).__name__}")
    return value


def names(qc: dict, key: str) -> list[str]:
    """A list of module names (absent or null: none); a string would be iterated as its characters."""
    value = qc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"quantization_config: {key} must be a list of module names (strings), got {value!r}")
    return value


def config_from_metadata(meta) -> FP4Config:
    section(meta, META_KEY)
    fields = {f.name: f.type for f in dataclasses.fields(FP4Config)}
    kwargs = {k: v for k, v in meta.items() if k in fields}
    for key, value in kwargs.items():
        optional = fields[key].startswith("Optional[")
        types, expected = _FIELD_TYPES[fields[key][9:-1] if optional else fields[key]]
        if not ((value is None and optional) or (isinstance(value, types) and
                                                 (bool in types or not isinstance(value, bool)))):
            raise CheckpointError(f"quantization_config: {META_KEY}.{key} must be {expected}"
                                  f"{' or null' if optional else ''}, got {value!r}")
    if kwargs.get("mode") not in FLOAT_WEIGHT_MODES:
        # Earlier versions accepted (and ignored) the flag in the other modes; it must not stop such a
        # checkpoint from loading.
        kwargs.pop("mask_saturated_gradients", None)
    try:
        return make_config(**kwargs)
    except (TypeError, ValueError) as e:  # FP4Config's messages name the field
        raise CheckpointError(f"quantization_config: {META_KEY}.{str(e).removeprefix('FP4Config: ')}") from None


def make_config(**kwargs) -> FP4Config:
    # The checkpoint decides; FP4Config's advice (e.g. on quest without a rotation) is for users choosing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FP4Config(**kwargs)


def loadable(config: FP4Config, mode: Optional[str]) -> FP4Config:
    """The config to build modules with: ``mode`` if given; a pseudo / qat export (its quantized weight)
    loads as w4a16."""
    mode = mode or (config.mode if config.mode in LOADABLE_MODES else "w4a16")
    if mode not in LOADABLE_MODES:
        raise ValueError(f"load_quantized: mode must be one of {list(LOADABLE_MODES)} (a checkpoint holds FP4 "
                         f"weights, not master weights), got {mode!r}")
    if mode == config.mode and not (config.fake_quantize_activations or config.mask_saturated_gradients):
        return config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataclasses.replace(config, mode=mode, fake_quantize_activations=False, mask_saturated_gradients=False)


def calibrated_act_scale(name: str, data: LayerData) -> torch.Tensor:
    """The layer's static activation global scale, for an export that stores one: refused if it was never
    calibrated (a default written in its place would load back as a calibrated value)."""
    if data.act_global_scale is None:
        raise ValueError(f"save_quantized: layer {name} has act_global_scale='static' but no calibrated value; run "
                         "calibrate_activations(model) first")
    return data.act_global_scale


def layer_data(layer: FP4Linear) -> LayerData:
    act = layer.act_global_scale
    if act is not None and torch.isnan(act).any():
        act = None
    return LayerData(layer.quantized_weight(), layer.bias, act)
