"""Orthogonal r x r matrices for block rotations before quantization.

Each function returns a float32 tensor R (rows orthonormal) to pass as ``rotation=`` to the quantizers; the
rotation is applied as ``y_block = x_block @ R``. They are plain tensors, so any of them (or a learned
orthogonal matrix) can be saved and loaded.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hadamard", "random_hadamard", "dct", "dst", "gsr", "identity", "get_rotation", "ROTATIONS"]


def _check_size(r: int) -> None:
    if r < 1 or r & (r - 1):
        raise ValueError(f"rotation size must be a power of two, got {r}")


def _sylvester(r: int) -> torch.Tensor:
    _check_size(r)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < r:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(r: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix H_r / sqrt(r) (symmetric, entries +-1/sqrt(r))."""
    return (_sylvester(r) / math.sqrt(r)).to(torch.float32)


def random_hadamard(r: int, seed: int = 0) -> torch.Tensor:
    """diag(s) @ H_r / sqrt(r) with random signs s drawn from a torch.Generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (r,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    return (signs[:, None] * _sylvester(r) / math.sqrt(r)).to(torch.float32)


def dct(r: int) -> torch.Tensor:
    """Orthonormal DCT-II: y = x @ R gives y_k = sqrt(2/r) c_k sum_n x_n cos(pi (n + 1/2) k / r)."""
    n = torch.arange(r, dtype=torch.float64)
    c = torch.cos(math.pi * (n[None, :] + 0.5) * n[:, None] / r) * math.sqrt(2.0 / r)
    c[0] /= math.sqrt(2.0)
    return c.t().contiguous().to(torch.float32)


def dst(r: int) -> torch.Tensor:
    """Orthonormal DST-II: y_k = sqrt(2/r) d_k sum_n x_n sin(pi (n + 1/2) (k + 1) / r), d_{r-1} = 1/sqrt(2)."""
    n = torch.arange(r, dtype=torch.float64)
    s = torch.sin(math.pi * (n[None, :] + 0.5) * (n[:, None] + 1) / r) * math.sqrt(2.0 / r)
    s[-1] /= math.sqrt(2.0)
    return s.t().contiguous().to(torch.float32)


def _walsh(g: int) -> torch.Tensor:
    """Sylvester Hadamard rows sorted by sequency (number of sign changes), normalized."""
    h = _sylvester(g)
    changes = (h[:, 1:] != h[:, :-1]).sum(dim=1)
    return h[torch.argsort(changes)] / math.sqrt(g)


def gsr(r: int, group_size: int = 32) -> torch.Tensor:
    """Grouped sequency-arranged rotation (GSR, as used by FP-Quant / MR-GPTQ).

    Block-diagonal of r / g sequency-ordered Walsh-Hadamard matrices of size g = min(group_size, r), so
    each quantization group is transformed by a Walsh basis ordered from low to high sequency. Applied as
    y = x @ R (R^T is the Walsh matrix block: y_k = <x, w_k>)."""
    _check_size(r)
    g = min(group_size, r)
    _check_size(g)
    w = _walsh(g).t()
    return torch.block_diag(*([w] * (r // g))).to(torch.float32)


def identity(r: int) -> torch.Tensor:
    return torch.eye(r, dtype=torch.float32)


ROTATIONS = {
    "hadamard": hadamard,
    "random_hadamard": random_hadamard,
    "dct": dct,
    "dst": dst,
    "gsr": gsr,
    "identity": identity,
}


def get_rotation(name: str, r: int, **kwargs) -> torch.Tensor:
    """Look a rotation up by name (``ROTATIONS``); ``"none"`` returns None."""
    if name == "none":
        return None
    if name not in ROTATIONS:
        raise ValueError(f"unknown rotation {name!r}; choose one of {sorted(ROTATIONS)} or 'none'")
    return ROTATIONS[name](r, **kwargs)
