"""compressed-tensors' "nvfp4-pack-quantized" and "mxfp4-pack-quantized" formats (vLLM, llm-compressor).

Per layer: ``weight_packed`` uint8 [N, K/2] (element 2i in the low nibble), ``weight_scale``
(float8_e4m3fn [N, K/16] for NVFP4, E8M0 bits as uint8 [N, K/32] for MXFP4), NVFP4 ``weight_global_scale``
float32 [1] and, for W4A4 with calibrated activations, ``input_global_scale`` float32 [1]. Both global
scales are the encode multiplier (448·6/amax): compressed-tensors dequantizes code · (scale / global scale),
as we do. The format has no place for our rotations: rotated layers are refused on export.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..nn import FP4Config, FP4Linear, QuantizedWeight
from ._files import CheckpointError, matches, scalar, take
from ._layers import (META_KEY, LayerData, Plan, calibrated_act_scale, config_from_metadata, make_config,
                      metadata, names, section)

QUANT_METHOD = "compressed-tensors"
MARKER = "weight_packed"
FORMATS = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized"}
SCALE_DTYPE_NAMES = {"nvfp4": "torch.float8_e4m3fn", "mxfp4": "torch.uint8"}


def _args(format: str, dynamic) -> dict:
    nv = format == "nvfp4"
    return {"num_bits": 4, "type": "float", "symmetric": True, "group_size": 16 if nv else 32,
            "strategy": "tensor_group" if nv else "group", "dynamic": dynamic,
            "scale_dtype": SCALE_DTYPE_NAMES[format]}


# ---- writing ------------------------------------------------------------------------------------------

def export_config(config: FP4Config, layers: dict[str, FP4Linear], unconverted: list[str]) -> dict:
    for name, layer in layers.items():
        if layer.rotation_matrix is not None:
            raise ValueError(f"save_quantized: layer {name} is rotated ({layer.rotation_name}), and "
                             "compressed-tensors' pack-quantized formats hold unrotated weights; use "
                             "export='fp-quant' or a config with rotation='none'")
    fmt = FORMATS[config.format]
    inputs = None
    if config.mode == "w4a4":
        static = config.format == "nvfp4" and config.act_global_scale == "static"
        # "local": per-group scales from each input, the global one calibrated (input_global_scale).
        inputs = _args(config.format, "local" if static else True)
    return {
        "quant_method": QUANT_METHOD,
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": _args(config.format, False),
                                      "input_activations": inputs, "output_activations": None,
                                      "format": fmt}},
        "ignore": sorted(unconverted),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        META_KEY: metadata(config),
    }


def export_layer(name: str, data: LayerData, qc: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    w = data.weight
    if w.mx_global_scale:
        raise ValueError(f"save_quantized: layer {name} is an MXFP4 weight with a global scale (from an FP-Quant "
                         "abs_max checkpoint), which mxfp4-pack-quantized cannot hold; use export='fp-quant'")
    out = {f"{name}.weight_packed": w.codes}
    if w.format == "nvfp4":
        out[f"{name}.weight_scale"] = w.scales
        out[f"{name}.weight_global_scale"] = w.global_scale.to(torch.float32).reshape(1)
        inputs = qc["config_groups"]["group_0"]["input_activations"]
        if inputs is not None and inputs["dynamic"] == "local":
            out[f"{name}.input_global_scale"] = calibrated_act_scale(name, data).to(torch.float32).reshape(1)
    else:
        out[f"{name}.weight_scale"] = w.scales.view(torch.uint8)
    if data.bias is not None:
        out[f"{name}.bias"] = data.bias
    return out


# ---- reading ------------------------------------------------------------------------------------------

def _format_of(args: dict, where: str) -> str:
    def bad(what):
        return CheckpointError(f"quantization_config: {where}: {what}; fpquant_ext reads NVFP4 (float, 4 bits, "
                               "group 16, tensor_group) and MXFP4 (float, 4 bits, group 32, group)")
    if args.get("num_bits") != 4 or args.get("type") != "float":
        raise bad(f"num_bits={args.get('num_bits')!r} type={args.get('type')!r}")
    if not args.get("symmetric", True):
        raise bad("asymmetric quantization")
    key = (args.get("group_size"), args.get("strategy"))
    if key == (16, "tensor_group"):
        return "nvfp4"
    if key == (32, "group"):
        return "mxfp4"
    raise bad(f"group_size={key[0]!r} strategy={key[1]!r}")


def parse_config(qc: dict) -> Plan:
    groups = qc.get("config_groups")
    if not groups:
        raise CheckpointError("quantization_config: compressed-tensors config without config_groups")
    section(groups, "config_groups")
    names(qc, "ignore")
    found = set()
    for gname, group in groups.items():
        weights = section(group, f"config_groups.{gname}").get("weights")
        if weights is None:
            raise CheckpointError(f"quantization_config: config_groups.{gname} quantizes no weights")
        fmt = _format_of(section(weights, f"config_groups.{gname}.weights"), f"config_groups.{gname}.weights")
        declared = group.get("format") or qc.get("format")
        if declared != FORMATS[fmt]:
            raise CheckpointError(f"quantization_config: config_groups.{gname}: format {declared!r} does not "
                                  f"match its {fmt} weights (expected {FORMATS[fmt]!r})")
        inputs = group.get("input_activations")
        act = None
        if inputs is not None:
            where = f"config_groups.{gname}.input_activations"
            if _format_of(section(inputs, where), where) != fmt:
                raise CheckpointError(f"quantization_config: config_groups.{gname}: activations and weights "
                                      "in different formats")
            act = "static" if (fmt == "nvfp4" and inputs.get("dynamic") in (False, "local")) else "dynamic"
        found.add((fmt, act))
    if len(found) != 1:
        raise CheckpointError(f"quantization_config: config_groups mix schemes {sorted(found, key=str)}; "
                              "fpquant_ext loads one scheme per model")
    fmt, act = found.pop()
    meta = qc.get(META_KEY)
    if meta not in (None, {}):
        config = config_from_metadata(meta)
        if (config.format, config.mode == "w4a4") != (fmt, act is not None):
            raise CheckpointError(f"quantization_config: config_groups ({fmt}, activations {act}) disagree with "
                                  f"{META_KEY} ({config.format}, mode {config.mode})")
    else:
        config = make_config(format=fmt, mode="w4a4" if act else "w4a16",
                             act_global_scale="static" if act == "static" else "dynamic",
                             modules_to_not_convert=[])
    return Plan(config, "compressed-tensors", static_act_scale=act == "static")


def check_selection(plan: Plan, qc: dict, quantized: list[str]) -> None:
    ignore = names(qc, "ignore")
    for name in quantized:
        hit = matches(name, [p for p in ignore if p.startswith("re:")]) or (name if name in ignore else None)
        if hit:
            raise CheckpointError(f"tensor {name}.weight_packed: layer {name} is in the config's ignore list "
                                  f"({hit!r}) but the checkpoint holds it quantized")


def import_layer(name: str, tensors: dict, N: int, K: int, has_bias: bool, bias_dtype: torch.dtype,
                 plan: Plan) -> LayerData:
    cfg = plan.config
    g = cfg.group
    if K % g:
        raise CheckpointError(f"tensor {name}.weight_packed: layer {name} has K={K}, not a multiple of the "
                              f"{cfg.format} group {g}")
    why = f"{FORMATS[cfg.format]} in the config"
    if f"{name}.weight_zero_point" in tensors:
        raise CheckpointError(f"tensor {name}.weight_zero_point: asymmetric FP4 is not supported")
    codes = take(tensors, f"{name}.weight_packed", torch.uint8, [N, K // 2], why)
    if f"{name}.weight_shape" in tensors:  # written by older compressed-tensors releases
        shape = tensors.pop(f"{name}.weight_shape")
        if shape.tolist() != [N, K]:
            raise CheckpointError(f"tensor {name}.weight_shape: {shape.tolist()}, the layer is [{N}, {K}]")
    gs: Optional[torch.Tensor] = None
    if cfg.format == "nvfp4":
        scales = take(tensors, f"{name}.weight_scale", torch.float8_e4m3fn, [N, K // g], why)
        gs = scalar(tensors, f"{name}.weight_global_scale")
    else:
        scales = take(tensors, f"{name}.weight_scale", torch.uint8, [N, K // g], why).view(torch.float8_e8m0fnu)
    act = scalar(tensors, f"{name}.input_global_scale", why="static input activations") \
        if plan.static_act_scale else None
    weight = QuantizedWeight(codes, scales, gs, None, format=cfg.format, method=cfg.weight_method)
    bias = take(tensors, f"{name}.bias", bias_dtype, [N]) if has_bias else None
    return LayerData(weight, bias, act)
