"""Perplexity of a causal language model over non-overlapping windows of a token sequence.

Each window is scored on its own (no context carried over): a window of L tokens predicts its last L - 1
tokens, and perplexity = exp(sum of their negative log-likelihoods / their count), with log-softmax in float32.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float          # summed over predicted tokens
    predicted: int      # tokens predicted (window length - 1 per window)
    windows: int
    window: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.windows * self.window / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "nll": self.nll, "predicted": self.predicted,
                "windows": self.windows, "window": self.window, "seconds": self.seconds,
                "tokens_per_s": self.tokens_per_s}


def windows(ids: torch.Tensor, window: int, max_windows: Optional[int] = None) -> list[torch.Tensor]:
    """Non-overlapping windows of ``window`` tokens from a 1-D sequence; a shorter tail is dropped (so every
    configuration is scored on the same tokens), unless no full window exists."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if max_windows is not None and max_windows < 1:  # no window: no perplexity (was a ZeroDivisionError)
        raise ValueError(f"max_windows must be at least 1 (or None: all), got {max_windows}")
    ids = ids.reshape(-1)
    if ids.numel() < 2:
        raise ValueError(f"the text has {ids.numel()} tokens; perplexity needs at least 2")
    n = ids.numel() // window
    out = [ids[i * window:(i + 1) * window] for i in range(n)] or [ids]
    return out[:max_windows] if max_windows is not None else out


def _logits(model, batch: torch.Tensor) -> torch.Tensor:
    out = model(batch)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, window: int = 512, max_windows: Optional[int] = None,
               progress: bool = False, desc: str = "perplexity") -> PerplexityResult:
    """Perplexity of ``model`` (returns logits, or an object with ``.logits``, for input ids [1, L]) over
    non-overlapping windows of ``ids``."""
    chunks = windows(ids, window, max_windows)
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if hasattr(model, "parameters") else "cpu"
    bar = _bar(len(chunks), desc) if progress else None
    nll, predicted = 0.0, 0
    start = time.perf_counter()
    for chunk in chunks:
        logits = _logits(model, chunk[None].to(device))[0, :-1].float()
        targets = chunk[1:].to(logits.device)
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        predicted += targets.numel()
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"ppl {math.exp(nll / predicted):.3f}", refresh=False)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return PerplexityResult(math.exp(nll / predicted), nll, predicted, len(chunks), chunks[0].numel(), seconds)


def _bar(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="window", file=sys.stderr, leave=False)
