"""inspect_checkpoint: a human summary of a quantized checkpoint, read from file headers only."""

from __future__ import annotations

import json
import os
from collections import defaultdict

from ._files import _safetensors, read_config, weight_files
from .checkpoint import format_module

# safetensors' dtype names -> bytes per element
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


def _headers(ckpt_dir: str) -> dict[str, tuple[str, list[int]]]:
    _safetensors()
    out = {}
    for path in weight_files(ckpt_dir):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key != "__metadata__":
                out[key] = (info["dtype"], info["shape"])
    return out


def inspect_checkpoint(ckpt_dir: str) -> str:
    """Format, quantization config, quantized layers (shape) and bytes of a checkpoint directory."""
    cfg = read_config(ckpt_dir)
    qc = cfg.get("quantization_config") or {}
    headers = _headers(ckpt_dir)
    lines = [f"checkpoint {ckpt_dir}"]
    if not qc:
        lines.append("format: not quantized (no quantization_config)")
        fmt = None
    else:
        fmt = format_module(qc)
        lines.append(f"format: {qc.get('quant_method')}" + (f" ({qc['format']})" if qc.get("format") else ""))
        shown = {k: v for k, v in qc.items() if k not in ("fpquant_ext", "config_groups")}
        lines.append("quantization_config: " + json.dumps(shown, sort_keys=True, default=str))
        for gname, group in (qc.get("config_groups") or {}).items():
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
        n = _SIZES.get(dtype, 1)
        for d in shape:
            n *= d
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
