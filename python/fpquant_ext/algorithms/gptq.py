"""GPTQ for MXFP4 and NVFP4 weights (and, with a block rotation, MR-GPTQ).

GPTQ (Frantar et al., 2022) quantizes the columns of W [N, K] one at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse of the layer's input Hessian
H = E[x x^T], which minimizes ||X W^T - X Q^T|| far better than rounding each weight on its own.

FP4 specifics, decided here:

- **Group scales are chosen during GPTQ** (default): when the sweep reaches the first column of a group, the
  group's scale is computed from the group's current weights (which already carry the error of earlier
  columns) with the configured scale rule: the format's round-to-nearest rule, or ``"mse"`` (scale search).
  With ``act_order`` the columns are visited by decreasing H_ii, groups are no longer visited contiguously, so
  the scales are **fixed before** GPTQ from the original weights ("static groups").
- NVFP4's global scale is fixed before GPTQ from the (rotated) weight.
- Every quantized value is exactly code · scale as ``dequantize`` computes it, so the codes and scales
  returned are the weight GPTQ optimized (tested).
- **Damping**: H + damp · mean(diag H) · I (damp = 0.01 by default). If the Cholesky factorization of the
  damped H (or of its inverse) fails, damp is multiplied by 10 and GPTQ retries, with a warning, up to
  ``max_retries`` times; then it raises :class:`GPTQError`. It never falls back to an identity Hessian.
- Inputs that are always zero in the calibration data (H_ii = 0) get H_ii = the mean of the other diagonal
  entries (1 if all are zero), before any rotation: their weights are rounded to nearest and no error flows
  through them (with a rotation, they stay about as close as round to nearest's). Their weights are kept
  (not zeroed), since other text may use them.
- **MR-GPTQ**: with a rotation R the weight is rotated first (W' = W · blockdiag(R), as stored) and GPTQ runs
  on W' with the Hessian of the rotated inputs, blockdiag(R)^T H blockdiag(R).

Deterministic: no randomness; the same inputs give the same codes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .. import formats as F
from .scale_search import checked_rotation, rotate_hessian, search_group_scales

SCALE_RULES = {"mxfp4": ("floor", "ceil", "quest", "mse"), "nvfp4": ("absmax", "mse")}


class GPTQError(RuntimeError):
    """GPTQ could not factorize the damped Hessian."""


@dataclass
class GPTQResult:
    codes: torch.Tensor          # [N, K / 2] uint8
    scales: torch.Tensor         # [N, K / group], linear layout
    global_scale: Optional[torch.Tensor]  # NVFP4: [1] float32
    damp: float                  # the damping that factorized
    proxy_error: float           # tr(E H E^T) / tr(W H W^T) with E = W - Q, in the quantized (rotated) basis
    rtn_proxy_error: float       # the same for round to nearest with the same scale rule


def _inverse_cholesky(H: torch.Tensor, damp: float, max_retries: int, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + d I)^-1 with d = damp · mean(diag H), retrying with 10x damp."""
    K = H.shape[0]
    mean_diag = float(torch.diagonal(H).mean())
    if not math.isfinite(mean_diag) or mean_diag <= 0:
        raise GPTQError(f"GPTQ{name}: the Hessian's mean diagonal is {mean_diag} (not positive): the calibration "
                        "inputs are all zero, or this is not a Hessian")
    eye = torch.eye(K, dtype=H.dtype, device=H.device)
    d = damp
    for attempt in range(max_retries + 1):
        L, info = torch.linalg.cholesky_ex(H + (d * mean_diag) * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                if attempt:
                    warnings.warn(f"GPTQ{name}: the Hessian was not positive definite with damp={damp}; "
                                  f"factorized with damp={d:g}", RuntimeWarning, stacklevel=3)
                return U, d
        d *= 10.0
    raise GPTQError(f"GPTQ{name}: Cholesky factorization failed with damp up to {d / 10:g} "
                    f"({max_retries} retries): the Hessian is not positive definite (too few calibration "
                    "tokens for K, or bad inputs)")


class _Scales:
    """Per-row scale of each group: fixed from a block of weights, then used to round columns."""

    def __init__(self, format: str, rule: str, g: Optional[torch.Tensor]):
        self.format, self.rule, self.g = format, rule, g
        self.group = F.MX_GROUP if format == "mxfp4" else F.NV_GROUP

    def fit(self, w: torch.Tensor) -> torch.Tensor:
        """Scale codes [N, groups] (uint8) for columns w [N, groups · group]."""
        if self.rule == "mse":
            return search_group_scales(w, self.format, None, self.g)[1]
        if self.format == "mxfp4":
            return F.quantize_mxfp4(w, None, self.rule)[1].view(torch.uint8)
        return F.quantize_nvfp4(w, self.g)[1].view(torch.uint8)

    def multiplier(self, scale_codes: torch.Tensor) -> torch.Tensor:
        """float32 dequantization multiplier (NaN for the NaN scale; 0 for NVFP4 zero scales)."""
        if self.format == "mxfp4":
            return F.e8m0_decode(scale_codes)
        return F.e4m3_decode(scale_codes) / self.g

    def round(self, col: torch.Tensor, scale_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, dequantized values) of one column [N] with per-row scale codes [N], as the quantize ops
        round: MXFP4 e2m1(v * 2^-e), NVFP4 e2m1(v / (s / g)) (zero codes for a zero scale)."""
        m = self.multiplier(scale_codes)
        finite = torch.isfinite(m)
        if self.format == "mxfp4":
            e = scale_codes.to(torch.int32) - 127
            codes = F.e2m1_encode(col * F._pow2(-e.clamp(-127, 127)))
        else:
            ok = finite & (m > 0)
            codes = torch.where(ok, F.e2m1_encode(col / torch.where(ok, m, torch.ones_like(m))),
                                torch.zeros_like(col, dtype=torch.uint8))
        codes = torch.where(finite, codes, torch.zeros_like(codes))
        return codes, F.e2m1_decode(codes) * m


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, format: str = "mxfp4",
                  scale_rule: Optional[str] = None, rotation: Optional[torch.Tensor] = None,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False, max_retries: int = 4,
                  name: str = "") -> GPTQResult:
    """GPTQ-quantize a weight [N, K] given its layer's input Hessian [K, K] (unrotated basis).

    Args:
        scale_rule: how each group's scale is chosen: MXFP4 ``floor`` (default), ``ceil``, ``quest`` or
            ``mse``; NVFP4 ``absmax`` (default) or ``mse``.
        rotation: optional r x r block rotation (MR-GPTQ); the codes are of the rotated weight.
        damp: relative damping (fraction of the mean of diag H).
        block_size: columns per lazy-update block (a multiple of the group).
        act_order: visit columns by decreasing H_ii (then scales are fixed before GPTQ).
        max_retries: damping increases (x10 each) after a failed factorization before GPTQError.
        name: the layer's name, for messages.
    """
    if format not in SCALE_RULES:
        raise ValueError(f"GPTQ: format must be 'mxfp4' or 'nvfp4', got {format!r}")
    scale_rule = scale_rule or SCALE_RULES[format][0]
    if scale_rule not in SCALE_RULES[format]:
        raise ValueError(f"GPTQ: scale_rule for {format} must be one of {SCALE_RULES[format]}, got {scale_rule!r}"
                         + (" (GPTQ already weighs the error by the Hessian; use 'mse')" if scale_rule == "hessian"
                            else ""))
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(f"GPTQ: the weight must be a 2-D float tensor [N, K], got {weight.dtype} {list(weight.shape)}")
    N, K = weight.shape
    group = F.MX_GROUP if format == "mxfp4" else F.NV_GROUP
    if K % group:
        raise ValueError(f"GPTQ: K={K} is not a multiple of the {format} group {group}")
    if tuple(hessian.shape) != (K, K):
        raise ValueError(f"GPTQ{name and ' ' + name}: the Hessian must be [{K}, {K}], got {list(hessian.shape)}")
    if not bool(torch.isfinite(hessian).all()):
        raise GPTQError(f"GPTQ{name and ' ' + name}: the Hessian holds NaN or inf (non-finite calibration inputs)")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"GPTQ{name and ' ' + name}: the weight holds NaN or inf")
    if block_size <= 0 or block_size % group:
        raise ValueError(f"GPTQ: block_size must be a positive multiple of the group {group}, got {block_size}")
    if not damp > 0:
        raise ValueError(f"GPTQ: damp must be positive, got {damp}")
    checked_rotation(rotation, K, f"GPTQ{name and ' ' + name}")
    label = f" ({name})" if name else ""

    device = weight.device
    W0 = F.rotate(weight.detach().to(torch.float32), None if rotation is None else rotation.to(device))
    if not bool(torch.isfinite(W0).all()):  # float64 values beyond float32: inf here, then NaN along the row
        raise ValueError(f"GPTQ{name and ' ' + name}: the weight holds values beyond float32's range")
    W = W0.clone()
    hu = hessian.to(device=device, dtype=torch.float64)  # unrotated: dead inputs are its zero diagonal entries
    H64 = rotate_hessian(hu, rotation)
    g = F.nvfp4_global_scale(W) if format == "nvfp4" else None
    scales = _Scales(format, scale_rule, None if g is None else g.reshape(()))
    rtn_scales = scales.fit(W)
    rtn_q = scales.round(W, rtn_scales.repeat_interleave(group, dim=1))[1]

    diag = torch.diagonal(hu)
    dead = diag == 0
    live = diag[~dead]
    scale = float(live.mean()) if live.numel() else 1.0
    if not scale > 0:
        raise GPTQError(f"GPTQ{label}: the Hessian's mean diagonal is {scale} (not positive): this is not a Hessian")
    # A dead input's H_ii becomes the live mean, not 1: the damping is a fraction of mean(diag H), and a fixed
    # 1 with small activations swamped the Hessian (GPTQ silently became round to nearest). Filled before the
    # rotation: after it a dead input is a direction, not a column, and GPTQ moved error freely along it.
    # Without dead inputs the filled Hessian is H64 itself (rotated once).
    if bool(dead.any()):
        hu = hu.clone()
        hu[dead, dead] = scale
        H64_filled = rotate_hessian(hu, rotation)
    else:
        H64_filled = H64
    # GPTQ does not depend on the scale of H: divided by it, float32 holds a Hessian of any scale.
    H = (H64_filled / scale).to(torch.float32)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else None
    static = rtn_scales if act_order else None  # [N, G], fixed before from the original weight
    # The original column of each visited column, on the host once (not one device read per column).
    order = perm.tolist() if act_order else range(K)
    if act_order:
        W, H = W[:, perm], H[perm][:, perm]
    U, used_damp = _inverse_cholesky(H, damp, max_retries, label)

    Q = torch.zeros_like(W)
    codes = torch.zeros(N, K, dtype=torch.uint8, device=device)
    scale_codes = static.clone() if act_order else torch.zeros(N, K // group, dtype=torch.uint8, device=device)
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            orig = order[col]
            if not act_order and col % group == 0:
                scale_codes[:, col // group] = scales.fit(W1[:, i : i + group])[:, 0]
            w = W1[:, i]
            c, q = scales.round(w, scale_codes[:, orig // group])
            codes[:, col], Q[:, col] = c, q
            err = (w - torch.nan_to_num(q)) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if act_order:
        inv = torch.argsort(perm)
        codes, Q = codes[:, inv], Q[:, inv]

    Wr = W0.double()
    scale_dtype = torch.float8_e8m0fnu if format == "mxfp4" else torch.float8_e4m3fn
    return GPTQResult(F.pack_codes(codes), scale_codes.view(scale_dtype), g, used_damp,
                      _proxy(Wr, Q.double(), H64), _proxy(Wr, rtn_q.double(), H64))


def _proxy(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    E = torch.nan_to_num(W - Q)
    den = float(((W @ H) * W).sum())
    return float(((E @ H) * E).sum()) / den if den > 0 else float("nan")
