"""Layer-by-layer calibrated quantization of a model (GPTQ, MR-GPTQ, Hessian scale search).

The model's repeated blocks (a decoder's layers: the largest outermost ``nn.ModuleList`` whose modules hold
Linear layers) are quantized in order. The inputs of the first block are captured once from the calibration
samples with a forward pre-hook; then, for each block:

1. its Linear layers are grouped by the input they read (q / k / v share one, gate / up another) and the
   groups ordered as the forward calls them;
2. for each group in turn, the block is run on every sample with hooks that accumulate each layer's input
   Hessian H = mean of x x^T over tokens, and the group is quantized and replaced by FP4Linear, so that
   later groups see the outputs of the already quantized ones (``true_sequential``; otherwise one pass
   collects every Hessian of the block from the unquantized block);
3. the quantized block is run on every sample to give the next block's inputs.

So each layer is calibrated on the outputs of the already quantized layers before it. Memory: the block
inputs of the samples (samples x tokens x hidden floats) and one block at a time on ``device``; the rest of
the model stays where it is (``device`` different from the model's: CPU offload, each block moved there
and back; no ``device``: each block computed where it is, its inputs moved to it). Linear layers outside
the blocks are converted without calibration (round to nearest or ``mse``), as ``quantize_model`` does; so
are the layers of a block no calibration token reaches (an expert no token was routed to), with a warning
naming them. Static NVFP4 activation scales (W4A4, ``act_global_scale="static"`` without a value) are
calibrated on the way, from the calibration samples the block runs on.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import nn

from ..nn.config import FP4Config
from ..nn.convert import (ConversionSummary, ConvertedLayer, _nbytes, _Progress, begin_act_calibration,
                          end_act_calibration, linear_layers, warn_if_nothing_converted)
from ..nn.linear import FP4Linear
from ..nn.weight import QuantizedWeight
from .gptq import gptq_quantize


class CalibrationError(ValueError):
    """Calibration data or model structure that calibrated quantization cannot use."""


class _Captured(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks: the largest outermost nn.ModuleList whose modules hold nn.Linear layers."""
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) > 0
             and all(any(isinstance(m, nn.Linear) for m in block.modules()) for block in module)]
    # Not one inside another such list: a mixture-of-experts layer's experts outnumber the layers.
    outer = [(n, m) for n, m in found if not any(o != n and n.startswith(o + ".") for o, _ in found)]
    best: Optional[tuple[str, nn.ModuleList]] = None
    for name, module in outer:
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        done = sum(isinstance(m, FP4Linear) for m in model.modules())
        raise CalibrationError("calibrated quantization needs a model made of repeated blocks (an nn.ModuleList "
                               "of modules holding nn.Linear layers, e.g. a decoder's layers); none found"
                               + (f": the model already holds {done} FP4Linear layers (it was quantized before); "
                                  "start from a fresh copy of the unquantized model" if done else ""))
    return best


def _samples(calibration) -> list[torch.Tensor]:
    if calibration is None:
        raise CalibrationError("this configuration needs calibration data: pass calibration=... (token ids of "
                               "real text for a language model, e.g. windows of tokenized text)")
    if isinstance(calibration, Mapping):  # a tokenizer's output: iterating it gives its keys
        keys = ", ".join(repr(k) for k in list(calibration)[:4])
        raise CalibrationError(f"calibration is a mapping (keys {keys}): pass the token ids, e.g. "
                               "calibration=batch['input_ids']")
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() < 2:  # its items would be 0-d "samples" (a whole tokenized text, say)
            raise CalibrationError(f"calibration is one {calibration.dim()}-D tensor of {calibration.numel()} "
                                   "values: give [samples, tokens] (e.g. ids[: n * T].reshape(n, T)) or a list of "
                                   "1-D tensors")
        calibration = list(calibration)
    try:
        samples = list(calibration)
    except TypeError:
        raise CalibrationError("calibration must be a tensor [samples, ...] or a sequence of tensors, got "
                               f"{type(calibration).__name__}") from None
    if not samples:
        raise CalibrationError("the calibration data is empty")
    for s in samples:
        if not isinstance(s, torch.Tensor) or s.dim() < 1 or s.numel() == 0:
            raise CalibrationError(f"each calibration sample must be a non-empty tensor (e.g. 1-D token ids), got "
                                   f"{type(s).__name__} {list(s.shape) if isinstance(s, torch.Tensor) else ''}")
    return samples


def _check_token_ids(model: nn.Module, samples: list[torch.Tensor]) -> list[torch.Tensor]:
    """A language model (one with input embeddings) takes 1-D token ids below its vocabulary size: a [1, T]
    sample would run as a batch of one batch (and some models compute garbage on it without an error).
    Returns the samples as int64 (nn.Embedding refuses uint8 or int16 ids)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        return samples
    for i, s in enumerate(samples):
        if s.dim() != 1 or s.dtype.is_floating_point or s.dtype.is_complex or s.dtype == torch.bool:
            raise CalibrationError(f"calibration sample {i}: a language model takes 1-D integer token ids per "
                                   f"sample ([samples, tokens] or a list of 1-D tensors), got {s.dtype} of shape "
                                   f"{list(s.shape)}")
        lo, hi = int(s.min()), int(s.max())
        if lo < 0 or hi >= emb.num_embeddings:
            raise CalibrationError(f"calibration sample {i}: token ids must lie in [0, {emb.num_embeddings}) (the "
                                   f"model's vocabulary), got [{lo}, {hi}]")
    return [s.long() for s in samples]


def _describe(samples: list[torch.Tensor]) -> str:
    """Token ids are counted in tokens; other samples (features) by their shapes."""
    if not any(s.dtype.is_floating_point or s.dtype.is_complex for s in samples):
        return f"{len(samples)} samples, {sum(s.numel() for s in samples)} tokens"
    shapes = {tuple(s.shape) for s in samples}
    return f"{len(samples)} samples" + (f" of shape {list(shapes.pop())}" if len(shapes) == 1 else "")


def _move(x, device):
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_move(v, device) for v in x)
    if isinstance(x, list):
        return [_move(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


def _capture_inputs(model: nn.Module, first: nn.Module, samples: list[torch.Tensor], store: torch.device):
    """(args, kwargs) of the first block's call for each sample."""
    captured: list[tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        captured.append((_move(args, store), _move(kwargs, store)))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for s in samples:
                try:
                    model(s[None].to(device), use_cache=False)
                except _Captured:
                    pass
                except TypeError:  # a model without use_cache
                    try:
                        model(s[None].to(device))
                    except _Captured:
                        pass
    finally:
        handle.remove()
    if len(captured) != len(samples):
        raise CalibrationError("the model never called its first block; calibrated quantization cannot find "
                               "the block inputs")
    return captured


def _device_of(module: nn.Module) -> Optional[torch.device]:
    p = next(module.parameters(), None)
    return None if p is None else p.device


def _run_block(block: nn.Module, inputs, device, store) -> list:
    """The block's outputs on the inputs, computed on ``device`` and kept on ``store``. ``device`` None: where
    the block is (the inputs move to it: a model spread over several GPUs stays as it is); ``store`` None: where
    they are computed."""
    if device is None:
        device = _device_of(block)
    outs = []
    with torch.no_grad():
        for args, kwargs in inputs:
            out = block(*_move(args, device), **_move(kwargs, device))
            outs.append(_move(out, store))
    return outs


def _check_chained(model: nn.Module, blocks: nn.ModuleList, sample: torch.Tensor, first_input, store) -> None:
    """Calibration feeds each block the previous block's output: true of a decoder's layers, not of any
    ModuleList (parallel heads, say). Checked once, before anything changes, on one sample: block 1's input in
    a real forward must be block 0's output."""
    if len(blocks) < 2:
        return
    seen = _capture_inputs(model, blocks[1], [sample], store)[0]
    chained = _next_inputs([first_input], _run_block(blocks[0], [first_input], None, store))[0]

    def hidden(inp):
        args, kwargs = inp
        return args[0] if args else kwargs.get("hidden_states")

    a, b = hidden(seen), hidden(chained)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float().to(a.device), rtol=1e-3, atol=1e-5)):
        raise CalibrationError("calibrated quantization runs the model's blocks one after the other, each on the "
                               "previous one's output, but the second block of the largest nn.ModuleList does not "
                               "take the first one's output (not a stack of decoder layers?)")


def _next_inputs(inputs, outputs):
    nxt = []
    for (args, kwargs), out in zip(inputs, outputs):
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        if args:
            nxt.append(((hidden, *args[1:]), kwargs))
        else:
            nxt.append(((), {**kwargs, "hidden_states": hidden}))
    return nxt


class _Hessians:
    """Forward hooks accumulating sum x x^T and the token count of each Linear's input."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.order: list[str] = []
        self.first_inputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            if name not in self.sums:
                self.sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
                self.tokens[name] = 0
                self.order.append(name)
                self.first_inputs[name] = args[0]  # held (not its id) so no later tensor can share it
            self.sums[name].addmm_(x.t(), x)
            self.tokens[name] += x.shape[0]
        return hook

    def hessian(self, name: str) -> Optional[torch.Tensor]:
        """H, or None where no calibration token reached the layer (not called, called on an empty batch, or
        on zeros only): a mixture-of-experts expert no token was routed to."""
        if not self.tokens.get(name):
            return None
        h = self.sums[name] / self.tokens[name]
        if not bool(torch.isfinite(h).all()):  # the algorithms' own message cannot say which layer
            raise CalibrationError(f"{name}: its inputs on the calibration data hold NaN or inf (or overflow "
                                   "float32 when squared): the model overflows on these samples, or is broken")
        return h if bool(h.any()) else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _groups(hooks: _Hessians) -> list[list[str]]:
    """Layers in call order, consecutive layers reading the same input tensor grouped."""
    groups: list[list[str]] = []
    for name in hooks.order:
        if groups and hooks.first_inputs[groups[-1][0]] is hooks.first_inputs[name]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def quantize_linear(linear: nn.Linear, config: FP4Config, rotation_size: Optional[int],
                    hessian: Optional[torch.Tensor] = None, name: str = "") -> tuple[FP4Linear, dict]:
    """One Linear layer to FP4Linear with the configured algorithm; returns the layer and GPTQ facts."""
    rotation = config.rotation_matrix(rotation_size)
    rotation = None if rotation is None else rotation.to(linear.weight.device)
    info: dict = {}
    rotation_name = config.rotation if rotation_size else None
    if config.algorithm == "gptq":
        res = gptq_quantize(linear.weight, hessian, config.format, config.weight_method, rotation,
                            damp=config.gptq_damp, block_size=config.gptq_block_size,
                            act_order=config.gptq_act_order, name=name)
        info = {"damp": res.damp, "proxy_error": res.proxy_error, "rtn_proxy_error": res.rtn_proxy_error}
        qweight = QuantizedWeight(res.codes, res.scales, res.global_scale, rotation, format=config.format,
                                  method=config.weight_method, rotation_name=rotation_name)
    else:  # the format's rule or a scale search (with the Hessian for 'hessian')
        qweight = QuantizedWeight.quantize(linear.weight, config.format, config.weight_method, rotation,
                                           rotation_name, hessian=hessian)
    return FP4Linear.from_linear(linear, config, rotation_size=rotation_size, qweight=qweight), info


def quantize_model_calibrated(model: nn.Module, config: FP4Config, calibration, *,
                              device: Optional[Union[str, torch.device]] = None, true_sequential: bool = True,
                              progress: bool = True) -> ConversionSummary:
    """Quantize ``model``'s Linear layers in place, block by block on calibration data (module docstring).

    Args:
        calibration: the samples: a tensor [samples, ...] or a sequence of tensors, each given to the model
            with a batch dimension of 1 (for a language model: token ids [samples, tokens] or a list of 1-D
            id tensors).
        device: where each block is computed, moved there and back (a GPU here with the model on the CPU
            quantizes a model larger than the GPU, one block at a time); default: each block where it is, so a
            model spread over several GPUs stays as it is.
        true_sequential: re-collect the Hessians of each group of layers after quantizing the groups before
            it in the same block (more accurate; one block forward per group).
    """
    samples = _samples(calibration)
    samples = _check_token_ids(model, samples)
    block_list_name, blocks = find_blocks(model)
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "meta":
        raise CalibrationError("calibrated quantization computes on real tensors: device= must not be the meta "
                               "device")
    # Every tensor, not the first: accelerate's disk offload leaves some parts on meta, and GPTQ would fail on
    # them half-way through, with the blocks before already quantized.
    on_meta = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if on_meta is not None:
        raise CalibrationError(f"calibrated quantization computes on real tensors, but {on_meta} is on the meta "
                               "device (a model loaded with weights offloaded to disk? load them into memory)")
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout off: the same model and data give the same codes
    try:
        return _quantize_blocks(model, config, samples, blocks, block_list_name, device, true_sequential,
                                progress)
    finally:
        # Module by module (model.train(mode) would put a part the user froze in eval mode back in training);
        # a new FP4Linear takes its parent's mode.
        for parent in model.modules():
            if parent in modes:
                parent.training = modes[parent]
            for child in parent.children():
                if child not in modes:
                    child.train(parent.training)


def _quantize_blocks(model: nn.Module, config: FP4Config, samples: list[torch.Tensor], blocks: nn.ModuleList,
                     block_list_name: str, device: Optional[torch.device], true_sequential: bool,
                     progress: bool) -> ConversionSummary:
    store = device
    summary = ConversionSummary(config)
    summary.notes.append(f"calibrated on {_describe(samples)}; blocks: {block_list_name} ({len(blocks)})")

    places, eligible = linear_layers(model, config, summary)
    block_prefix = {id(b): f"{block_list_name}.{i}" for i, b in enumerate(blocks)}
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    todo = {name: m for name, m in eligible if id(m) in in_blocks}
    outside = [(name, m) for name, m in eligible if id(m) not in in_blocks]

    # Outside the blocks no Hessian is collected: GPTQ becomes round to nearest, 'hessian' becomes 'mse'.
    uncalibrated = dataclasses.replace(
        config, algorithm="rtn", weight_method="mse" if config.weight_method == "hessian" else config.weight_method)

    def replace(name: str, linear: nn.Linear, hessian: Optional[torch.Tensor], cfg: FP4Config = config) -> None:
        rotation_size, _ = cfg.rotation_size_for(linear.in_features)
        layer, info = quantize_linear(linear, cfg, rotation_size, hessian, name)
        for parent, attr in places[id(linear)]:
            setattr(parent, attr, layer)
        replaced.append(linear)
        if layer.act_global_scale is not None and bool(torch.isnan(layer.act_global_scale).any()):
            # Static NVFP4 activation scales not given: recorded while the rest of its block and the block
            # outputs run on the calibration samples (later blocks need them to run at all).
            begin_act_calibration([layer])
            static[layer] = name
        summary.converted.append(ConvertedLayer(name, linear.in_features, linear.out_features, rotation_size,
                                                _nbytes([linear.weight, linear.bias]), layer.nbytes))
        if info:
            summary.gptq[name] = info

    def replace_calibrated(name: str, linear: nn.Linear, hessian: Optional[torch.Tensor]) -> None:
        if hessian is None:
            no_tokens.append(name)
            replace(name, linear, None, uncalibrated)
        else:
            replace(name, linear, hessian)
        bar.update(name)

    no_tokens: list[str] = []
    static: dict[FP4Linear, str] = {}  # layers whose static activation scale is recorded on the way, by name
    replaced: list[nn.Linear] = []  # put back if anything fails: a half-quantized model passes for a whole one
    home = {id(m): m.weight.device for _, m in eligible}  # offloaded blocks move their layers with them
    # A block on `device` while it is calibrated, and where it was: moved back on any exit.
    moved: list[tuple[nn.Module, Optional[torch.device]]] = []
    bar = _Progress(len(todo) + len(outside), progress)
    try:
        inputs = _capture_inputs(model, blocks[0], samples, store)
        _check_chained(model, blocks, samples[0], inputs[0], store)
        for block in blocks:
            prefix = block_prefix[id(block)]
            layers = {n: m for n, m in todo.items() if n.startswith(prefix + ".")}
            if device is not None:
                moved.append((block, _device_of(block)))
                block.to(device)
            hooks = _Hessians(layers)
            try:
                _run_block(block, inputs, device, store)
            finally:
                hooks.remove()
            pending = _groups(hooks)
            hooks.first_inputs.clear()
            # Not called at all: an expert the router sent no calibration token to (other text may reach it).
            missing = [n for n in layers if n not in hooks.tokens]
            for gi, group in enumerate(pending):
                if gi > 0 and true_sequential:
                    hooks = _Hessians({n: layers[n] for n in group})
                    try:
                        _run_block(block, inputs, device, store)
                    finally:
                        hooks.remove()
                for name in group:
                    replace_calibrated(name, layers[name], hooks.hessian(name))
            for name in missing:
                replace_calibrated(name, layers[name], None)
            inputs = _next_inputs(inputs, _run_block(block, inputs, device, store))
            if device is not None:
                block.to(moved.pop()[1])
        if no_tokens:
            # An expert rounded to nearest may cost accuracy on text that reaches it: the user should know
            # which, and that more (or more varied) calibration text would calibrate it.
            msg = (f"{len(no_tokens)} Linear layers saw no calibration token, or zeros only (experts no token was "
                   f"routed to?), and were rounded to nearest ({uncalibrated.weight_method}): " + ", ".join(no_tokens))
            summary.notes.append(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        if outside and config.needs_calibration:
            summary.notes.append(f"{len(outside)} Linear layers outside the blocks converted without calibration "
                                 f"({uncalibrated.weight_method}): {', '.join(n for n, _ in outside)}")
        for name, linear in outside:
            replace(name, linear, None, uncalibrated)
            bar.update(name)
    except BaseException:
        for linear in reversed(replaced):
            for parent, attr in places[id(linear)]:
                setattr(parent, attr, linear.to(home[id(linear)]))
        raise
    finally:
        for block, where in moved:
            block.to(where)
        bar.close()
        end_act_calibration(list(static))
    fix = ("run calibrate_activations(model) on calibration data that reaches them, or set "
           "FP4Config.act_global_scale_value")
    # Layers that did not run after their conversion: those outside the blocks, experts no token reached.
    unscaled = [name for m, name in static.items() if bool(torch.isnan(m.act_global_scale).any())]
    if unscaled:
        summary.notes.append(f"{len(unscaled)} layers have no static activation scale yet: {', '.join(unscaled)}; "
                             + fix)
    # An expert called on zeros (routing weight 0) gets the all-zero input's scale, 1: usable, but not fitted
    # to any token that will reach it.
    from_zeros = [name for name in static.values() if name in no_tokens and name not in unscaled]
    if from_zeros:
        summary.notes.append(f"{len(from_zeros)} layers took their static activation scale from zero inputs only "
                             f"(no calibration token reached them): {', '.join(from_zeros)}; " + fix)
    warn_if_nothing_converted(summary)
    return summary

