"""save_quantized / load_quantized: a model with FP4Linear layers <-> safetensors + config.json."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from ..nn import FP4Config, FP4Linear
from ..nn.convert import linear_places
from . import compressed_tensors, fp_quant
from ._files import CONFIG_NAME, CheckpointError, read_config, read_tensors, take, write_checkpoint
from ._layers import LayerData, layer_data, loadable

EXPORTS = {"fp-quant": fp_quant, "compressed-tensors": compressed_tensors}
BY_QUANT_METHOD = {fp_quant.QUANT_METHOD: fp_quant, compressed_tensors.QUANT_METHOD: compressed_tensors}


def format_module(qc: dict):
    method = qc.get("quant_method")
    if not isinstance(method, str) or method not in BY_QUANT_METHOD:
        raise CheckpointError(f"quantization_config: quant_method {method!r} is not one fpquant_ext reads "
                              f"({sorted(BY_QUANT_METHOD)})")
    return BY_QUANT_METHOD[method]


@contextmanager
def config_named(ckpt_dir: str):
    """Errors in quantization_config name the file too: the readers see only the dict, and name the field."""
    try:
        yield
    except CheckpointError as e:
        raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_NAME)}: {e}") from None


def _under(key: str, prefixes: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(1, len(parts)))


def _model_dtype(model: nn.Module) -> torch.dtype:
    # The dtype FP-Quant stores rotations in: the model's most common floating parameter dtype, FP4 layers'
    # biases included (a model whose every Linear is converted may have no other parameters).
    counts = Counter(p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return counts.most_common(1)[0][0] if counts else torch.float32


def save_quantized(model: nn.Module, out_dir: str, export: str = "fp-quant", config: Optional[FP4Config] = None,
                   model_config: Optional[dict] = None) -> None:
    """Write ``model`` (converted by :func:`fpquant_ext.quantize_model`) to ``out_dir``: ``model.safetensors``
    with every tensor of the model, its FP4Linear layers in the ``export`` format ("fp-quant" or
    "compressed-tensors"), and ``config.json``: ``model_config`` with a ``quantization_config``.

    ``config`` is the FP4Config the model was converted with (its settings are recorded so that
    :func:`load_quantized` rebuilds the same modules); every FP4Linear must agree with it."""
    if export not in EXPORTS:
        raise ValueError(f"save_quantized: export must be one of {list(EXPORTS)}, got {export!r}")
    if config is None:
        raise ValueError("save_quantized: config (the FP4Config the model was converted with) is required")
    fmt = EXPORTS[export]
    # A layer under several names is written once, under its first name: load_quantized converts a shared
    # module under that name only, and copies under the others would be unexpected tensors there. Every
    # name of an FP4 layer (fp4_names) keeps its tensors out of the plain ones.
    names, fp4_names, unconverted, seen = {}, set(), [], set()
    for name, m in model.named_modules(remove_duplicate=False):
        first = id(m) not in seen
        seen.add(id(m))
        if isinstance(m, FP4Linear):
            fp4_names.add(name)
            if first:
                names[name] = m
        elif isinstance(m, nn.Linear) and first:
            unconverted.append(name)
    if not names:
        raise ValueError("save_quantized: the model has no FP4Linear layers; convert it with "
                         "fpquant_ext.quantize_model(model, config) first")
    for name, layer in names.items():
        for what, has, says in _disagreements(layer, config):
            raise ValueError(f"save_quantized: layer {name} has {what} {has!r}, the config says {says!r}: pass "
                             "the FP4Config the model was converted with (it is what load_quantized rebuilds)")
    qc = fmt.export_config(config, names, sorted(unconverted))
    dtype = _model_dtype(model)
    # Tied parameters once, under their first name (as transformers saves them; load_quantized and
    # transformers tie them again).
    tensors = {keys[0]: t.detach() for keys, t in _tied_groups(model, fp4_names)}
    for name, layer in names.items():
        tensors.update(fmt.export_layer(name, layer_data(layer), qc, dtype))
    out_config = dict(model_config or {})
    out_config["quantization_config"] = qc
    write_checkpoint(out_dir, tensors, out_config)


def _tied_groups(model: nn.Module, skip: set[str]) -> list[tuple[list[str], torch.Tensor]]:
    """The model's state-dict entries outside the FP4 layers ``skip``, grouped by tensor identity: (names,
    tensor), names in state-dict order; a group of more than one name is a tied parameter."""
    groups: dict[int, tuple[list[str], torch.Tensor]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if not _under(key, skip):
            groups.setdefault(id(t), ([], t))[0].append(key)
    return list(groups.values())


def _disagreements(layer: FP4Linear, config: FP4Config) -> list[tuple[str, object, object]]:
    """What the layer computes differently from the config's modules: format, mode, activation rule and
    global-scale policy, rotation kind. (Scale rules of the weight are not compared: its codes are stored,
    and calibrated conversion legitimately uses another rule outside the blocks.)"""
    out = []
    if layer.format != config.format:
        out.append(("format", layer.format, config.format))
    if layer.mode != config.mode:
        out.append(("mode", layer.mode, config.mode))
    elif layer.quantize_acts:
        if layer.act_method != config.act_method:
            out.append(("act_method", layer.act_method, config.act_method))
        if layer.format == "nvfp4" and layer.act_global_scale_policy != config.act_global_scale:
            out.append(("act_global_scale", layer.act_global_scale_policy, config.act_global_scale))
    if layer.rotation_matrix is not None and layer.rotation_name != config.rotation:
        out.append(("rotation", layer.rotation_name, config.rotation))
    return out


def load_quantized(model: nn.Module, ckpt_dir: str, mode: Optional[str] = None) -> nn.Module:
    """Load a quantized checkpoint (FP-Quant or compressed-tensors, ours or another tool's) into ``model``,
    the unconverted architecture (any nn.Module; on the CPU or the meta device): the Linear layers the
    checkpoint holds quantized become FP4Linear, every tensor is checked (name, dtype, shape) and loaded.

    ``mode``: "w4a16" or "w4a4"; by default the one recorded by :func:`save_quantized`, else "w4a16".
    Raises :class:`CheckpointError` naming the tensor for a missing, unexpected or mis-shaped tensor, a
    wrong dtype, or a config that disagrees with the tensors. Returns ``model``."""
    done = [n for n, m in model.named_modules() if isinstance(m, FP4Linear)]
    if done:
        # Otherwise their tensors read as unexpected ones, as if the checkpoint were at fault.
        raise ValueError(f"load_quantized: the model already has FP4Linear layers ({', '.join(done[:3])}"
                         f"{', ...' if len(done) > 3 else ''}); pass the unconverted architecture (nn.Linear "
                         "layers), e.g. a fresh model built from the same config")
    cfg = read_config(ckpt_dir)
    qc = cfg.get("quantization_config")
    if not qc:
        raise CheckpointError(f"{ckpt_dir}/config.json has no quantization_config")
    with config_named(ckpt_dir):
        fmt = format_module(qc)
        plan = fmt.parse_config(qc)
    plan.config = loadable(plan.config, mode)
    tensors = read_tensors(ckpt_dir)

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    quantized = [(n, m) for n, m in linears if f"{n}.{fmt.MARKER}" in tensors]
    stored = sorted(k[: -len(fmt.MARKER) - 1] for k in tensors if k.endswith("." + fmt.MARKER))
    if stored and not quantized:
        # Otherwise the first plain tensor is reported missing, as if the checkpoint lacked just that one.
        raise CheckpointError(
            f"none of the model's Linear layers is quantized in the checkpoint (it quantizes {_some(stored)}; the "
            f"model has {_some([n for n, _ in linears]) or 'no nn.Linear'}): load it into the architecture it was "
            "saved from (names may differ by a prefix, e.g. a base model against a ...ForCausalLM checkpoint)")
    fmt.check_selection(plan, qc, [n for n, _ in quantized])

    places = linear_places(model)
    for name, lin in quantized:
        data = fmt.import_layer(name, tensors, lin.out_features, lin.in_features, lin.bias is not None,
                                lin.bias.dtype if lin.bias is not None else lin.weight.dtype, plan)
        layer = _build(lin, data, plan)
        for parent, attr in places[id(lin)]:
            setattr(parent, attr, layer)

    fp4_names = {n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, FP4Linear)}
    any_meta = any(t.is_meta for t in model.state_dict().values())
    state = {}
    for keys, t in _tied_groups(model, fp4_names):
        # One tensor under several names (tied weights: lm_head and the embedding): the checkpoint may hold
        # any of the names (save_quantized and transformers keep the first).
        present = [k for k in keys if k in tensors] or keys[:1]
        value = take(tensors, present[0], t.dtype, t.shape)
        for k in present[1:]:
            if not torch.equal(take(tensors, k, t.dtype, t.shape), value):
                raise CheckpointError(f"tensors {present[0]} and {k} differ in the checkpoint, but the model ties "
                                      "them (one parameter)")
        if any_meta and len(keys) > 1 and isinstance(t, nn.Parameter):
            # Assigned, a plain tensor becomes a new Parameter under each name: one Parameter keeps them tied.
            value = nn.Parameter(value, requires_grad=t.requires_grad)
        state.update({k: value for k in keys})
    if tensors:
        extra = sorted(tensors)
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise CheckpointError(f"unexpected tensor(s) in the checkpoint: {', '.join(extra[:5])}{more} (no such "
                              "parameter or buffer in the model, or a layer the config does not quantize)")
    model.load_state_dict(state, strict=False, assign=any_meta)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{', '.join(left[:5])}: still on the meta device after loading (not in the "
                              "checkpoint, e.g. a non-persistent buffer); build the model on a real device")
    return model


def _some(names: list[str]) -> str:
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def _build(lin: nn.Linear, data: LayerData, plan) -> FP4Linear:
    config = plan.config
    weight = data.weight
    device = torch.device("cpu") if lin.weight.is_meta else lin.weight.device
    # The rotation comes with the stored weight (exact matrix or the checkpoint's own): build without one.
    plain = config if config.rotation == "none" else _without_rotation(config)
    layer = FP4Linear(lin.in_features, lin.out_features, lin.bias is not None, device=device,
                      dtype=lin.weight.dtype, config=plain)
    layer.qweight = weight.to(device)
    layer.rotation_name = weight.rotation_name if weight.rotation is not None else None
    with torch.no_grad():
        if data.bias is not None:
            layer.bias = nn.Parameter(data.bias.to(device), requires_grad=lin.bias.requires_grad)
        if layer.act_global_scale is not None and data.act_global_scale is not None:
            layer.act_global_scale.copy_(data.act_global_scale.reshape(1))
    return layer


def _without_rotation(config: FP4Config) -> FP4Config:
    import dataclasses
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataclasses.replace(config, rotation="none")
