"""inspect_checkpoint: a human summary of a quantized checkpoint, read from file headers only."""

from __future__ import annotations

import json
import os
from collections import defaultdict

from ._files import read_config, read_headers, tensor_bytes, weight_files
from .checkpoint import config_named, format_module


def inspect_checkpoint(ckpt_dir: str) -> str:
    """Format, quantization config, quantized layers (shape) and bytes of a checkpoint directory."""
    cfg = read_config(ckpt_dir)
    qc = cfg.get("quantization_config") or {}
    headers = read_headers(ckpt_dir)
    lines = [f"checkpoint {ckpt_dir}"]
    if not qc:
        lines.append("format: not quantized (no quantization_config)")
        fmt = None
    else:
        with config_named(ckpt_dir):
            fmt = format_module(qc)
        lines.append(f"format: {qc.get('quant_method')}" + (f" ({qc['format']})" if qc.get("format") else ""))
        groups = qc.get("config_groups")
        # A hand-edited config that load_quantized refuses is still shown, as it is.
        groups = groups if isinstance(groups, dict) and all(isinstance(g, dict) for g in groups.values()) else {}
        shown = {k: v for k, v in qc.items() if k != "fpquant_ext" and not (k == "config_groups" and groups)}
        lines.append("quantization_config: " + json.dumps(shown, sort_keys=True, default=str))
        for gname, group in groups.items():
            lines.append(f"  {gname}: weights {json.dumps(group.get('weights'), sort_keys=True)}; activations "
                         f"{json.dumps(group.get('input_activations'), sort_keys=True)}")
        if qc.get("fpquant_ext"):
            lines.append("written by fpquant_ext: " + json.dumps(qc["fpquant_ext"], sort_keys=True))
    layers = defaultdict(int)
    qbytes = obytes = 0
    shapes = {}
    marker = fmt.MARKER if fmt else None
    qprefixes = {k[: -len(marker) - 1] for k in headers if marker and k.endswith("." + marker)}
    for key, (dtype, shape) in headers.items():
        n = tensor_bytes(dtype, shape)
        prefix = key.rsplit(".", 1)[0]
        if prefix in qprefixes:
            layers[prefix] += n
            qbytes += n
            if key.endswith("." + marker):
                shapes[prefix] = (shape[0], shape[1] * 2)
        else:
            obytes += n
    lines.append(f"quantized layers: {len(qprefixes)} ({qbytes / 2**20:.2f} MiB); other tensors: "
                 f"{len(headers) - sum(1 for k in headers if k.rsplit('.', 1)[0] in qprefixes)} "
                 f"({obytes / 2**20:.2f} MiB)")
    for prefix in sorted(qprefixes):
        N, K = shapes[prefix]
        lines.append(f"  {prefix}: [{N}, {K}] {layers[prefix]} bytes")
    total = sum(os.path.getsize(p) for p in weight_files(ckpt_dir))
    lines.append(f"files: {total / 2**20:.2f} MiB")
    return "\n".join(lines)
