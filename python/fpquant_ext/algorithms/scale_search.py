"""Scale search: per group, the scale among a few candidates that leaves the least error.

Round to nearest with the format's scale rule fixes each group's scale from its largest magnitude alone.
Here every group tries a small set of candidate scales around that rule's and keeps the one whose rounded
values leave the least error:

- ``"mse"``: the squared error of the group, sum_i (v_i - q_i)^2;
- ``"hessian"``: r^T H_g r with r = v - q over the group and H_g the group's diagonal block of a Hessian
  H = E[x x^T] of the layer's inputs, so errors along input directions with large activations weigh more
  (cross-group terms are left out: each group is chosen on its own).

Candidates, in preference order (the first of equal errors wins, so the rule's own scale wins ties):

- MXFP4: exponents e0, e0 + 1, e0 - 1, e0 - 2 around the OCP floor exponent e0 = floor(log2 amax) - 2
  (e0 + 1 is the no-saturation side, e0 - 1 and e0 - 2 saturate the largest values for finer steps);
- NVFP4: E4M3 scale codes c0 + d, |d| <= 8, around the absmax code c0 = e4m3(amax / 6 * g) (8 codes are a
  factor of 2), with the tensor's usual global scale g. Scales above the absmax one win often: mapping the
  group's largest value to 4 instead of 6 trades that value's error for finer steps everywhere else
  (on Gaussian weights d = +3 ... +6 is chosen for ~40% of the groups).

Given the chosen scale the codes are exactly what the quantize ops compute for that scale (MXFP4:
e2m1(v * 2^-e); NVFP4: e2m1(v / (s / g))), and the error is measured against the float32 value the
dequantize ops return. Errors are summed in float64 by a fixed pairwise tree and H r in a fixed order, all
elementwise, so the choice does not depend on the device. Non-finite groups get the NaN scale and zero
codes, as in the quantize ops.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import formats as F

OBJECTIVES = ("mse", "hessian")
MX_OFFSETS = (0, 1, -1, -2)
NV_OFFSETS = (0,) + tuple(x for d in range(1, 9) for x in (d, -d))  # 0, 1, -1, ..., 8, -8


def _tree_sum64(x: torch.Tensor) -> torch.Tensor:
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x[..., 0]


def hessian_group_blocks(hessian: torch.Tensor, group: int) -> torch.Tensor:
    """The diagonal [group, group] blocks of a [K, K] Hessian, [K / group, group, group] in float64."""
    K = hessian.shape[0]
    h = hessian.to(torch.float64).reshape(K // group, group, K // group, group)
    idx = torch.arange(K // group, device=hessian.device)
    return h[idx, :, idx, :]


def rotate_hessian(hessian: torch.Tensor, rotation: Optional[torch.Tensor]) -> torch.Tensor:
    """H of rotated inputs x' = x · blockdiag(R): blockdiag(R)^T H blockdiag(R), in float64."""
    h = hessian.to(torch.float64)
    if rotation is None:
        return h
    r, K = rotation.shape[0], h.shape[0]
    R = rotation.to(device=h.device, dtype=torch.float64)
    # (H R_bd): each r-column block of H times R; then R_bd^T (.) on the row blocks.
    h = (h.reshape(K, K // r, r) @ R).reshape(K, K)
    h = (R.t() @ h.reshape(K // r, r, K)).reshape(K, K)
    return (h + h.t()) * 0.5  # exactly symmetric


def _errors(r: torch.Tensor, hblocks: Optional[torch.Tensor]) -> torch.Tensor:
    """r [N, G, C, group] float64 -> the objective per candidate [N, G, C]."""
    if hblocks is None:
        return _tree_sum64(r * r)
    group = r.shape[-1]
    hr = torch.zeros_like(r)
    for j in range(group):  # (H r)_i = sum_j H_ij r_j, j in increasing order
        hr = hr + hblocks[:, None, :, j] * r[..., j : j + 1]
    return _tree_sum64(r * hr)


def _check(w: torch.Tensor, format: str, objective: str, hessian: Optional[torch.Tensor]) -> None:
    if format not in ("mxfp4", "nvfp4"):
        raise ValueError(f"scale search: format must be 'mxfp4' or 'nvfp4', got {format!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"scale search: objective must be one of {OBJECTIVES}, got {objective!r}")
    if w.dim() != 2 or not w.dtype.is_floating_point:
        raise ValueError(f"scale search: the weight must be a 2-D float tensor [N, K], got {w.dtype} "
                         f"{list(w.shape)}")
    group = F.MX_GROUP if format == "mxfp4" else F.NV_GROUP
    if w.shape[1] % group:
        raise ValueError(f"scale search: K={w.shape[1]} is not a multiple of the {format} group {group}")
    if objective == "hessian":
        if hessian is None:
            raise ValueError("scale search: objective 'hessian' needs the layer's input Hessian [K, K] "
                             "(from calibration data)")
        K = w.shape[1]
        if tuple(hessian.shape) != (K, K):
            raise ValueError(f"scale search: the Hessian must be [{K}, {K}] for a weight with K={K}, got "
                             f"{list(hessian.shape)}")
        if not bool(torch.isfinite(hessian).all()):
            raise ValueError("scale search: the Hessian holds NaN or inf")


def _check_semidefinite(hblocks: torch.Tensor) -> None:
    """r^T H_g r rewards error along a negative direction of H_g: the search would pick the worst scale.
    E[x x^T] has none; the tolerance lets through rounding (float32 sums, the rotation)."""
    if hblocks.numel() == 0:
        return
    ev = torch.linalg.eigvalsh(hblocks)  # [G, group], ascending
    trace = torch.diagonal(hblocks, dim1=-2, dim2=-1).sum(-1)
    tol = 1e-3 * trace.clamp(min=0) + 1e-6 * float(torch.diagonal(hblocks, dim1=-2, dim2=-1).amax())
    bad = ev[:, 0] < -tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        group = hblocks.shape[-1]
        raise ValueError(f"scale search: the Hessian is not positive semidefinite (its diagonal block {i} "
                         f"({group} x {group}) has the eigenvalue {float(ev[i, 0]):.4g}); a Hessian E[x x^T] "
                         "of the layer's inputs has none below zero")


def _mx_candidates(v: torch.Tensor, e0: torch.Tensor):
    """Codes [N, G, C, 32] and their dequantized float32 values for every candidate exponent."""
    cand = torch.stack([(e0 + d).clamp(-127, 127) for d in MX_OFFSETS], dim=-1)  # [N, G, C]
    codes = F.e2m1_encode(v[..., None, :] * F._pow2(-cand)[..., None])
    deq = F.e2m1_decode(codes) * F._pow2(cand)[..., None]
    return cand, codes, deq


def _nv_candidates(v: torch.Tensor, g: torch.Tensor):
    c0 = F.e4m3_encode_sat((v.abs().amax(dim=-1) / F.E2M1_MAX) * g).to(torch.int32)  # [N, G]
    # A group whose absmax scale rounds to zero stays at zero (all candidates the same code 0).
    cand = torch.stack([torch.where(c0 > 0, (c0 + d).clamp(1, 126), c0) for d in NV_OFFSETS], dim=-1)
    denom = F.e4m3_decode(cand.to(torch.uint8)) / g  # [N, G, C], the dequantization multiplier s / g
    ok = denom > 0
    q = v[..., None, :] / torch.where(ok, denom, torch.ones_like(denom))[..., None]
    codes = torch.where(ok[..., None], F.e2m1_encode(q), torch.zeros_like(q, dtype=torch.uint8))
    deq = F.e2m1_decode(codes) * denom[..., None]
    return cand, codes, deq


def search_group_scales(v: torch.Tensor, format: str, hblocks: Optional[torch.Tensor] = None,
                        global_scale: Optional[torch.Tensor] = None, rows_per_chunk: Optional[int] = None):
    """The search on already rotated float32 values v [N, K] (finite groups only are searched).

    Returns (codes [N, K] unpacked uint8, scale codes [N, K / group] uint8, dequantized float32 [N, K]).
    ``hblocks``: the Hessian's diagonal group blocks (``hessian_group_blocks``) or None for ``mse``;
    ``global_scale``: NVFP4's encode multiplier g (required for NVFP4).
    """
    N, K = v.shape
    group = F.MX_GROUP if format == "mxfp4" else F.NV_GROUP
    G = K // group
    C = len(MX_OFFSETS) if format == "mxfp4" else len(NV_OFFSETS)
    if rows_per_chunk is None:  # bound the [rows, G, C, group] float64 temporaries to ~64 MiB each
        rows_per_chunk = max(1, (64 << 20) // (8 * K * C))
    codes_out = torch.empty(N, K, dtype=torch.uint8, device=v.device)
    scales_out = torch.empty(N, G, dtype=torch.uint8, device=v.device)
    deq_out = torch.empty(N, K, dtype=torch.float32, device=v.device)
    g = None
    if format == "nvfp4":
        g = global_scale.reshape(()).to(device=v.device, dtype=torch.float32)
        g_ok = bool(torch.isfinite(g)) and float(g) > 0
    for r0 in range(0, N, rows_per_chunk):
        vb = v[r0 : r0 + rows_per_chunk].reshape(-1, G, group)
        finite = torch.isfinite(vb).all(dim=-1)
        if format == "nvfp4":
            finite = finite & g_ok
        safe = torch.where(finite[..., None], vb, torch.zeros_like(vb))
        if format == "mxfp4":
            cand, codes, deq = _mx_candidates(safe, F.mx_scale_exponent(safe, "floor"))
            cand = cand + 127
        else:
            cand, codes, deq = _nv_candidates(safe, g if g_ok else torch.ones((), device=v.device))
        err = _errors(safe.to(torch.float64)[..., None, :] - deq.to(torch.float64), hblocks)
        best = err.argmin(dim=-1, keepdim=True)  # the first of equal errors: the rule's own scale first
        sc = cand.gather(-1, best)[..., 0].to(torch.uint8)
        idx = best[..., None].expand(*best.shape[:-1], 1, group)
        c = codes.gather(-2, idx)[..., 0, :]
        d = deq.gather(-2, idx)[..., 0, :]
        nan_scale = F.E8M0_NAN if format == "mxfp4" else F.E4M3_NAN
        sc = torch.where(finite, sc, torch.full_like(sc, nan_scale))
        c = torch.where(finite[..., None], c, torch.zeros_like(c))
        d = torch.where(finite[..., None], d, torch.full_like(d, float("nan")))
        rows = vb.shape[0]
        codes_out[r0 : r0 + rows] = c.reshape(rows, K)
        scales_out[r0 : r0 + rows] = sc
        deq_out[r0 : r0 + rows] = d.reshape(rows, K)
    return codes_out, scales_out, deq_out


def checked_rotation(rotation: Optional[torch.Tensor], K: int, where: str) -> None:
    """The rotation the quantize ops would accept for K (square, a size they take, dividing K, orthogonal):
    their own checks, run on a zero row of K."""
    if rotation is None:
        return
    from .. import ops

    try:
        ops.nvfp4_global_scale(torch.zeros(1, K, device=rotation.device), rotation.to(torch.float32))
    except ValueError as e:
        raise ValueError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def search_scales(weight: torch.Tensor, format: str = "mxfp4", objective: str = "mse",
                  hessian: Optional[torch.Tensor] = None, rotation: Optional[torch.Tensor] = None,
                  global_scale: Optional[torch.Tensor] = None):
    """Quantize a weight [N, K] with searched group scales.

    Args:
        weight: float [N, K] (any float dtype; read as float32).
        format: ``"mxfp4"`` or ``"nvfp4"``.
        objective: ``"mse"`` or ``"hessian"`` (module docstring).
        hessian: [K, K], the layer's input second moment E[x x^T] (``"hessian"`` only), in the unrotated
            basis: it is rotated with ``rotation`` here.
        rotation: optional r x r matrix, applied to the weight first as the quantize ops do.
        global_scale: NVFP4's encode multiplier (default: 448 · 6 / amax of the rotated weight).

    Returns:
        (codes [N, K / 2] uint8, scales [N, K / group] float8_e8m0fnu or float8_e4m3fn in the linear layout,
        global scale float32 [1] for NVFP4 or None).
    """
    _check(weight, format, objective, hessian)
    checked_rotation(rotation, weight.shape[-1], "search_scales")
    v = F.rotate(weight.detach().to(torch.float32), None if rotation is None else rotation.to(weight.device))
    group = F.MX_GROUP if format == "mxfp4" else F.NV_GROUP
    hblocks = None
    if objective == "hessian":
        hblocks = hessian_group_blocks(rotate_hessian(hessian.to(weight.device), rotation), group)
        _check_semidefinite(hblocks)
    gs = None
    if format == "nvfp4":
        gs = (F.nvfp4_global_scale(v) if global_scale is None
              else torch.as_tensor(global_scale, dtype=torch.float32, device=v.device).reshape(1))
    codes, scales, _ = search_group_scales(v, format, hblocks, gs)
    scale_dtype = torch.float8_e8m0fnu if format == "mxfp4" else torch.float8_e4m3fn
    return F.pack_codes(codes), scales.view(scale_dtype), gs
