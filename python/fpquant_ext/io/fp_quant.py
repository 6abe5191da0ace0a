"""FP-Quant's checkpoint format, as transformers' FPQuantConfig and vLLM read it.

Per layer: ``qweight`` uint8 [N, K/2], ``scales`` uint8 [N, K/g] (E8M0 bits for MXFP4, E4M3 bits for
NVFP4), ``weight_global_scale`` and ``act_global_scale`` [1], ``forward_hadamard_matrix`` and
``backward_hadamard_matrix`` [G, G]; weights stored rotated. The mapping onto our rules, including FP-Quant's
MXFP4 global scale of 3, is in docs/checkpoints.md.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from .. import rotations
from ..nn import FP4Config, FP4Linear, QuantizedWeight
from ._files import FLOAT_SCALE_DTYPES, CheckpointError, matches, scalar, take
from ._layers import (META_KEY, LayerData, Plan, calibrated_act_scale, config_from_metadata, make_config,
                      metadata, names)

QUANT_METHOD = "fp_quant"
MARKER = "qweight"
HADAMARD_SIZES = {"mxfp4": (32, 64, 128), "nvfp4": (16, 32, 64, 128)}
TRANSFORM_INITS = ("hadamard", "identity", "gsr")


def act_global_scale_default(format: str, forward_method: str) -> float:
    # What FP-Quant's own modules start with: quest 1.0, abs_max 3.0 (MXFP4 abs_max codes carry a factor 3).
    return 1.0 if (format == "mxfp4" and forward_method == "quest") else 3.0


def forward_method(config: FP4Config) -> str:
    return "quest" if config.weight_method == "quest" else "abs_max"


# ---- writing ------------------------------------------------------------------------------------------

def _fp_quant_skips(name: str, entry: str) -> bool:
    try:
        return re.search(entry, name) is not None or name.endswith(entry)
    except re.error:
        return entry in name


def export_config(config: FP4Config, layers: dict[str, FP4Linear], unconverted: list[str]) -> dict:
    sizes = {name: layer.rotation_matrix.shape[0] if layer.rotation_matrix is not None else None
             for name, layer in layers.items()}
    distinct = set(sizes.values())
    if len(distinct) > 1:
        detail = ", ".join(f"{n}: {s}" for n, s in sorted(sizes.items(), key=lambda kv: str(kv[1]))[:6])
        raise ValueError("save_quantized: FP-Quant's format has one hadamard_group_size per model, but the "
                         f"layers use rotation sizes {sorted(distinct, key=str)} ({detail}); use "
                         "rotation_fallback='skip' or the compressed-tensors export")
    not_convert = sorted(set(config.modules_to_not_convert) | set(unconverted))
    for name in layers:
        # FP-Quant leaves unconverted every Linear in whose name an entry is found (re.search; when it
        # quantizes: a name suffix), and load_quantized matches entries as name components: an entry that
        # also names a converted layer would load that layer as a float one there, and not load here.
        hit = next((e for e in not_convert if _fp_quant_skips(name, e) or matches(name, [e])), None)
        if hit is not None:
            raise ValueError(f"save_quantized: FP-Quant's modules_to_not_convert entry {hit!r} (left unconverted) "
                             f"also names {name}, which is converted: FP-Quant searches names for the entries "
                             "and would load it as a float layer; convert both or neither, or use the "
                             "compressed-tensors export (exact names)")
    size = distinct.pop() if distinct else None
    G = size if size is not None else config.group
    if G not in HADAMARD_SIZES[config.format]:
        raise ValueError(f"save_quantized: FP-Quant's {config.format} takes hadamard_group_size in "
                         f"{list(HADAMARD_SIZES[config.format])}, the layers rotate by {G}")
    if size is None or config.rotation == "identity":
        transform_init = "identity"
    elif config.rotation in TRANSFORM_INITS:
        transform_init = config.rotation
    else:
        # FP-Quant names three matrices; with prequantized weights it applies the stored ones, so the
        # name only matters when it quantizes master weights, which this checkpoint has none of.
        transform_init = "hadamard"
    return {
        "quant_method": QUANT_METHOD,
        "forward_dtype": config.format,
        "forward_method": forward_method(config),
        "backward_dtype": "bf16",
        "hadamard_group_size": G,
        "modules_to_not_convert": not_convert,
        "store_master_weights": False,
        "pseudoquantization": False,
        "transform_init": transform_init,
        META_KEY: metadata(config),
    }


def export_layer(name: str, data: LayerData, qc: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    w = data.weight
    G = qc["hadamard_group_size"]
    R = w.rotation if w.rotation is not None else torch.eye(G, device=w.device)
    one = torch.ones(1, dtype=torch.float32)
    wgs = w.global_scale if w.global_scale is not None else one
    act = data.act_global_scale
    meta = qc[META_KEY]
    if w.format == "nvfp4" and meta["mode"] == "w4a4" and meta["act_global_scale"] == "static":
        calibrated_act_scale(name, data)  # FP-Quant's default below would load back as a calibrated scale
    if act is None:
        act = one * act_global_scale_default(w.format, qc["forward_method"])
    out = {
        f"{name}.qweight": w.codes,
        f"{name}.scales": w.scales.view(torch.uint8),
        f"{name}.weight_global_scale": wgs.to(torch.float32).reshape(1),
        f"{name}.act_global_scale": act.to(torch.float32).reshape(1),
        f"{name}.forward_hadamard_matrix": R.to(dtype),
        f"{name}.backward_hadamard_matrix": R.to(dtype),
    }
    if data.bias is not None:
        out[f"{name}.bias"] = data.bias
    return out


# ---- reading ------------------------------------------------------------------------------------------

def parse_config(qc: dict) -> Plan:
    def get(key):
        if key not in qc:
            raise CheckpointError(f"quantization_config: FP-Quant config without {key!r}")
        return qc[key]

    fmt, method = get("forward_dtype"), get("forward_method")
    if not isinstance(fmt, str) or fmt not in HADAMARD_SIZES:
        raise CheckpointError(f"quantization_config: forward_dtype must be 'mxfp4' or 'nvfp4', got {fmt!r}")
    if method not in ("abs_max", "quest") or (fmt == "nvfp4" and method != "abs_max"):
        raise CheckpointError(f"quantization_config: forward_method {method!r} is not one FP-Quant takes "
                              f"for {fmt}")
    for key in ("store_master_weights", "pseudoquantization"):
        if type(qc.get(key, False)) is not bool:  # the string "false" is true
            raise CheckpointError(f"quantization_config: {key} must be true or false, got {qc[key]!r}")
    if qc.get("store_master_weights") or qc.get("pseudoquantization"):
        raise CheckpointError("quantization_config: store_master_weights / pseudoquantization checkpoints hold "
                              "float weights, not FP4 ones; load them as a float model and quantize it")
    G = get("hadamard_group_size")
    if type(G) is not int or G not in HADAMARD_SIZES[fmt]:
        raise CheckpointError(f"quantization_config: hadamard_group_size {G!r} is not one FP-Quant takes for "
                              f"{fmt} (an integer in {list(HADAMARD_SIZES[fmt])})")
    transform = qc.get("transform_init", "hadamard")
    if transform not in TRANSFORM_INITS:
        raise CheckpointError(f"quantization_config: transform_init must be one of {list(TRANSFORM_INITS)}, "
                              f"got {transform!r}")
    not_convert = list(names(qc, "modules_to_not_convert"))
    meta = qc.get(META_KEY)
    if meta not in (None, {}):
        config = config_from_metadata(meta)
        if config.format != fmt:
            raise CheckpointError(f"quantization_config: forward_dtype {fmt!r} disagrees with "
                                  f"{META_KEY}.format {config.format!r}")
    else:
        rule = "quest" if method == "quest" else ("floor" if fmt == "mxfp4" else "absmax")
        rotation = "hadamard" if transform == "hadamard" else "none"
        config = make_config(format=fmt, mode="w4a16", weight_method=rule, act_method=rule, rotation=rotation,
                             rotation_size=G if G in (16, 32, 64, 128) else 128,
                             modules_to_not_convert=not_convert)
    return Plan(config, "fp-quant", rotation_size=G, transform_init=transform)


def check_selection(plan: Plan, qc: dict, quantized: list[str]) -> None:
    for name in quantized:
        hit = matches(name, qc.get("modules_to_not_convert"))
        if hit:
            raise CheckpointError(f"tensor {name}.qweight: layer {name} is in the config's "
                                  f"modules_to_not_convert ({hit!r}) but the checkpoint holds it quantized")


def _rotation(name: str, tensors: dict, plan: Plan) -> tuple[Optional[torch.Tensor], Optional[str]]:
    G = plan.rotation_size
    fkey, bkey = f"{name}.forward_hadamard_matrix", f"{name}.backward_hadamard_matrix"
    why = f"hadamard_group_size {G}"
    fwd = take(tensors, fkey, FLOAT_SCALE_DTYPES, [G, G], why)
    take(tensors, bkey, fwd.dtype, [G, G], f"as {fkey}")
    stored = fwd.to(torch.float32)
    err = (stored.double() @ stored.double().t() - torch.eye(G, dtype=torch.float64)).abs().max()
    if not err <= 1e-2:
        raise CheckpointError(f"tensor {fkey}: not orthogonal (max |R R^T - I| = {float(err):.3g})")
    if torch.equal(stored, torch.eye(G)):
        return None, None
    cfg = plan.config
    candidates = []
    if cfg.rotation != "none":
        candidates.append((cfg.rotation, cfg.rotation_matrix(G)))
    if plan.transform_init in ("hadamard", "gsr"):
        candidates.append((plan.transform_init, rotations.get_rotation(plan.transform_init, G)))
    for rot_name, ours in candidates:
        # Stored at the model's precision: the matrix it names is our exact float32 one.
        if torch.equal(ours.to(fwd.dtype), fwd):
            return ours.to(torch.float32), rot_name
    return stored, "stored"


def import_layer(name: str, tensors: dict, N: int, K: int, has_bias: bool, bias_dtype: torch.dtype,
                 plan: Plan) -> LayerData:
    cfg = plan.config
    g = cfg.group
    if K % g or K % plan.rotation_size:
        raise CheckpointError(f"tensor {name}.qweight: layer {name} has K={K}, not a multiple of the {cfg.format} "
                              f"group {g} and hadamard_group_size {plan.rotation_size}")
    why = f"{cfg.format}, forward_dtype in the config"
    codes = take(tensors, f"{name}.qweight", torch.uint8, [N, K // 2], why)
    scales = take(tensors, f"{name}.scales", torch.uint8, [N, K // g], why)
    wgs = scalar(tensors, f"{name}.weight_global_scale", FLOAT_SCALE_DTYPES)
    act = scalar(tensors, f"{name}.act_global_scale", FLOAT_SCALE_DTYPES)
    R, rot_name = _rotation(name, tensors, plan)
    if cfg.format == "mxfp4":
        scales = scales.view(torch.float8_e8m0fnu)
        # Dequantized value = code * 2^e / weight_global_scale; 1.0 is the plain MXFP4 value.
        gs = None if float(wgs) == 1.0 else wgs
    else:
        scales = scales.view(torch.float8_e4m3fn)
        gs = wgs
    weight = QuantizedWeight(codes, scales, gs, R, format=cfg.format, method=cfg.weight_method,
                             rotation_name=rot_name)
    bias = take(tensors, f"{name}.bias", bias_dtype, [N]) if has_bias else None
    return LayerData(weight, bias, act)
