"""Reading and writing a checkpoint directory: model.safetensors (or shards) and config.json."""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional, Sequence, Union

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
FLOAT_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CheckpointError(ValueError):
    """A checkpoint that does not match the model or its own quantization config."""


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as e:  # an optional dependency: only checkpoint I/O needs it
        raise ImportError("fpquant_ext.io needs the safetensors package: pip install safetensors") from e
    return safetensors.torch


def _index_names(index: str) -> list[str]:
    """The shard file names a shard index lists (CheckpointError naming the index if it is malformed)."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{index}: not valid JSON, or not a JSON object ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: no weight_map (an object of tensor name -> shard file name)")
    return sorted(set(weight_map.values()))


def weight_files(ckpt_dir: str) -> list[str]:
    index = os.path.join(ckpt_dir, INDEX_NAME)
    if os.path.exists(index):
        paths = [os.path.join(ckpt_dir, s) for s in _index_names(index)]
        for p in paths:
            if not os.path.isfile(p):
                raise CheckpointError(f"{index} names {os.path.relpath(p, ckpt_dir)}, which is not in {ckpt_dir}")
        return paths
    single = os.path.join(ckpt_dir, WEIGHTS_NAME)
    if not os.path.exists(single):
        raise CheckpointError(f"{ckpt_dir}: no {WEIGHTS_NAME} (or {INDEX_NAME})")
    return [single]


def read_config(ckpt_dir: str) -> dict:
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: no such directory" if not os.path.exists(ckpt_dir)
                              else f"{ckpt_dir} is not a checkpoint directory")
    path = os.path.join(ckpt_dir, CONFIG_NAME)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_NAME}")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:  # json's message names no file
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a JSON object (a model config), got {type(cfg).__name__}")
    qc = cfg.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise CheckpointError(f"{path}: quantization_config is not a JSON object, got {type(qc).__name__}")
    return cfg


# safetensors' dtype names -> bytes per element
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor described by a safetensors header entry."""
    return DTYPE_SIZES.get(dtype, 1) * math.prod(shape)


def read_headers(ckpt_dir: str) -> dict[str, tuple[str, list[int]]]:
    """(dtype name, shape) of every tensor, from the files' headers, each checked against its file: a
    truncated or corrupt file raises CheckpointError naming it (safetensors' own error names no file)."""
    _safetensors()
    out = {}
    for path in weight_files(ckpt_dir):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise CheckpointError(f"{path}: not a safetensors file, or truncated (header of {n} bytes in a "
                                      f"file of {size})")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise CheckpointError(f"{path}: the safetensors header is not valid JSON (corrupt file)") from None
        data = size - 8 - n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {key} has a malformed header entry") from None
            if not 0 <= begin <= end <= data or end - begin != tensor_bytes(dtype, shape):
                raise CheckpointError(f"{path}: tensor {key} lies outside the file's {data} data bytes "
                                      f"({begin}..{end}): the file is truncated or corrupt")
            out[key] = (dtype, shape)
    return out


# The FP4 layers' global scales: float32 [1] whatever the model's dtype, so they do not tell it.
_GLOBAL_SCALES = ("weight_global_scale", "act_global_scale", "input_global_scale")


def checkpoint_dtype(ckpt_dir: str) -> Optional[torch.dtype]:
    """The model dtype of a checkpoint: the floating dtype holding most of its elements, global scales left
    out; without such tensors (every Linear converted, no biases), the dtype config.json records; else None."""
    counts: dict[str, int] = {}
    for key, (dtype, shape) in read_headers(ckpt_dir).items():
        if dtype in _FLOAT_DTYPES and key.rsplit(".", 1)[-1] not in _GLOBAL_SCALES:
            counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    if counts:
        return _FLOAT_DTYPES[max(counts, key=counts.get)]
    if not os.path.exists(os.path.join(ckpt_dir, CONFIG_NAME)):
        return None
    cfg = read_config(ckpt_dir)
    # transformers writes "dtype"; its earlier releases wrote "torch_dtype".
    recorded = cfg.get("dtype") or cfg.get("torch_dtype")
    return {str(d).removeprefix("torch."): d for d in _FLOAT_DTYPES.values()}.get(recorded) \
        if isinstance(recorded, str) else None


def read_tensors(ckpt_dir: str) -> dict[str, torch.Tensor]:
    st = _safetensors()
    read_headers(ckpt_dir)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(ckpt_dir):
        try:
            tensors.update(st.load_file(path, device="cpu"))
        except Exception as e:  # noqa: BLE001  (safetensors' errors are not one class; the file is what matters)
            raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    return tensors


def write_checkpoint(out_dir: str, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write model.safetensors and config.json into out_dir, replacing an earlier quantized checkpoint there
    (its shards and index too, which would otherwise be read instead of the new file). Refuses a directory
    that holds anything else a model is made of (an unquantized model, most likely the one being quantized).
    Each file is written beside its final name and renamed into place: an interrupted save leaves the
    earlier file whole."""
    st = _safetensors()
    _check_replaceable(out_dir)
    try:  # before any file is written: a failure half-way would leave the weights' .tmp file behind
        config_text = json.dumps(config, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_quantized: model_config cannot be written as JSON ({e}); pass plain values "
                         "(a transformers model: model.config.to_dict())") from None
    os.makedirs(out_dir, exist_ok=True)
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory (tied weights): each name gets its own copy.
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    weights, conf = os.path.join(out_dir, WEIGHTS_NAME), os.path.join(out_dir, CONFIG_NAME)
    st.save_file(out, weights + ".tmp", metadata={"format": "pt"})
    with open(conf + ".tmp", "w", encoding="utf-8") as f:
        f.write(config_text)
    stale = _index_shards(out_dir)
    os.replace(weights + ".tmp", weights)
    os.replace(conf + ".tmp", conf)
    for path in stale:
        if os.path.exists(path) and path != weights:
            os.remove(path)


def _index_shards(ckpt_dir: str) -> list[str]:
    """The shard index of ckpt_dir and the files it names (within ckpt_dir), if it has one."""
    index = os.path.join(ckpt_dir, INDEX_NAME)
    if not os.path.exists(index):
        return []
    try:
        shards = [os.path.join(ckpt_dir, s) for s in _index_names(index)]
    except CheckpointError:  # an unreadable index: only it goes
        shards = []
    return [p for p in shards if not os.path.dirname(os.path.relpath(p, ckpt_dir))] + [index]


def _check_replaceable(out_dir: str) -> None:
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise CheckpointError(f"{out_dir} exists and is not a directory")
    conf = os.path.join(out_dir, CONFIG_NAME)
    weights = [n for n in (WEIGHTS_NAME, INDEX_NAME) if os.path.exists(os.path.join(out_dir, n))]
    if not os.path.exists(conf):
        if weights:
            raise CheckpointError(f"{out_dir} holds {weights[0]} without a {CONFIG_NAME}: not overwriting it; "
                                  "save the quantized checkpoint to another directory")
        return
    try:
        with open(conf) as f:
            quantized = bool(json.load(f).get("quantization_config"))
    except (ValueError, AttributeError):
        quantized = False
    if not quantized:
        raise CheckpointError(f"{out_dir} holds a model that is not a quantized checkpoint ({CONFIG_NAME} has no "
                              "quantization_config): not overwriting it; save the quantized checkpoint to another "
                              "directory")


def take(tensors: dict[str, torch.Tensor], key: str, dtypes: Union[torch.dtype, Sequence[torch.dtype]],
         shape: Iterable[int], why: str = "") -> torch.Tensor:
    """The tensor ``key`` of a checkpoint, checked for presence, dtype and shape; removed from ``tensors``
    so that what remains at the end is unexpected."""
    dtypes = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    shape = list(shape)
    hint = f" ({why})" if why else ""
    if key not in tensors:
        raise CheckpointError(f"missing tensor {key}: expected {_dtypes(dtypes)} {shape}{hint}")
    t = tensors.pop(key)
    if t.dtype not in dtypes:
        raise CheckpointError(f"tensor {key}: expected dtype {_dtypes(dtypes)}, got {t.dtype}{hint}")
    if list(t.shape) != shape:
        raise CheckpointError(f"tensor {key}: expected shape {shape}, got {list(t.shape)}{hint}")
    return t


def scalar(tensors: dict[str, torch.Tensor], key: str, dtypes=(torch.float32,), why: str = "") -> torch.Tensor:
    """A one-element global scale: finite and positive, returned as float32 [1]."""
    t = take(tensors, key, dtypes, [1], why)
    v = float(t.float())
    if not (v > 0 and v != float("inf")):
        raise CheckpointError(f"tensor {key}: a global scale must be finite and positive, got {v}")
    return t.to(torch.float32).reshape(1)


def _dtypes(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d) for d in dtypes)


def matches(name: str, patterns: Optional[Iterable[str]]) -> Optional[str]:
    """The first of ``patterns`` naming module ``name``: an exact name, a dotted name component run (as
    FP4Config.modules_to_not_convert) or, with a "re:" prefix, a regular expression (compressed-tensors)."""
    import re

    for p in patterns or ():
        if p.startswith("re:"):
            if re.match(p[3:], name):
                return p
        elif f".{p}." in f".{name}.":
            return p
    return None
