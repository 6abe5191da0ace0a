"""GPTQ / MR-GPTQ: lower output error than round to nearest, codes that are the weight GPTQ optimized,
the Cholesky-failure path, determinism and clear errors."""

import warnings

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import rotations
from fpquant_ext.algorithms import GPTQError, gptq_quantize

FORMATS = ("mxfp4", "nvfp4")


def _problem(seed: int, n=96, k=256, tokens=1024):
    """Correlated inputs with uneven channel scales (as an LLM layer sees), and a weight."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = (torch.randn(tokens, k, generator=g) @ mix) * torch.exp(0.5 * torch.randn(k, generator=g))
    w = torch.randn(n, k, generator=g)
    return x, w, (x.t().double() @ x.double()) / tokens


def _out_err(x, w, q):
    return float((x @ (w - q).t()).norm() / (x @ w.t()).norm())


def _rtn(w, fmt):
    return fq.QuantizedWeight.quantize(w, fmt).dequantize()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", ["plain", "mse", "act_order", "hadamard"])
def test_gptq_lowers_the_output_error(fmt, variant, seed):
    x, w, H = _problem(seed)
    kwargs = {"mse": dict(scale_rule="mse"), "act_order": dict(act_order=True),
              "hadamard": dict(rotation=rotations.get_rotation("hadamard", 64))}.get(variant, {})
    res = gptq_quantize(w, H, fmt, **kwargs)
    R = kwargs.get("rotation")
    q = fq.QuantizedWeight(res.codes, res.scales, res.global_scale, R, format=fmt).dequantize_unrotated()
    rtn = _rtn(w, fmt)
    assert _out_err(x, w, q) < 0.85 * _out_err(x, w, rtn)
    assert res.proxy_error < 0.8 * res.rtn_proxy_error


@pytest.mark.parametrize("fmt", FORMATS)
def test_codes_are_the_optimized_weight(fmt, seed):
    """proxy_error is computed from the Q GPTQ built column by column; the returned codes and scales must
    dequantize to exactly that Q (no re-rounding)."""
    x, w, H = _problem(seed, n=32, k=128)
    res = gptq_quantize(w, H, fmt)
    q = fq.dequantize(res.codes, res.scales, fmt, res.global_scale).double()
    E = w.double() - q
    proxy = float(((E @ H) * E).sum() / ((w.double() @ H) * w.double()).sum())
    assert proxy == pytest.approx(res.proxy_error, rel=1e-9)


def test_same_input_same_codes(seed):
    x, w, H = _problem(seed, n=32, k=128)
    a = gptq_quantize(w, H, "nvfp4", act_order=True)
    b = gptq_quantize(w.clone(), H.clone(), "nvfp4", act_order=True)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))


def test_indefinite_hessian_retries_with_more_damping_and_warns():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(128, 1, generator=g, dtype=torch.float64)
    v /= v.norm()
    H = torch.eye(128, dtype=torch.float64) - (1 + 1e-4) * (v @ v.t())  # one eigenvalue -1e-4
    w = torch.randn(8, 128, generator=g)
    with pytest.warns(RuntimeWarning, match="factorized with damp="):
        res = gptq_quantize(w, H, "mxfp4", damp=1e-6)
    assert res.damp > 1e-6


def test_cholesky_failure_raises_after_retries():
    H = -torch.eye(64, dtype=torch.float64)  # negative definite: no damping rescues it (mean diag < 0)
    with pytest.raises(GPTQError, match="mean diagonal"):
        gptq_quantize(torch.randn(4, 64), H, "mxfp4")
    H = torch.eye(64, dtype=torch.float64)
    H[0, 0] = -10.0  # mean diagonal positive, but far from PSD even with damp x 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it must raise, not warn and fall back
        with pytest.raises(GPTQError, match="Cholesky factorization failed"):
            gptq_quantize(torch.randn(4, 64), H, "mxfp4", max_retries=2)


def test_dead_inputs_keep_their_weights():
    x, w, H = _problem(1, n=16, k=64)
    H[:, 5] = 0.0
    H[5, :] = 0.0
    res = gptq_quantize(w, H, "mxfp4")
    q = fq.dequantize(res.codes, res.scales, "mxfp4")
    assert torch.count_nonzero(q[:, 5]) > 0


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((torch.randn(4, 64), torch.eye(32)), {}, ValueError, r"must be \[64, 64\]"),
    ((torch.randn(4, 64), torch.eye(64)), {"format": "int4"}, ValueError, "format"),
    ((torch.randn(4, 48), torch.eye(48)), {}, ValueError, "multiple of the mxfp4 group"),
    ((torch.randn(4, 64), torch.eye(64)), {"scale_rule": "hessian"}, ValueError, "weighs the error by the Hessian"),
    ((torch.randn(4, 64), torch.eye(64)), {"format": "nvfp4", "scale_rule": "floor"}, ValueError, "scale_rule"),
    ((torch.randn(4, 64), torch.eye(64)), {"block_size": 40}, ValueError, "block_size"),
    ((torch.randn(4, 64), torch.eye(64) * float("nan")), {}, GPTQError, "NaN or inf"),
    ((torch.full((4, 64), float("inf")), torch.eye(64)), {}, ValueError, "weight holds NaN or inf"),
])
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gptq_quantize(*args, **kwargs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dead_inputs_do_not_change_the_damping(fmt, seed):
    """GPTQ is invariant to scaling H (damping is relative to it). Dead inputs (H_ii = 0) used to be filled
    with H_ii = 1 whatever the scale of H: with small activations and many dead inputs the damping, a
    fraction of mean(diag H), then dwarfed the live diagonal and GPTQ silently became round to nearest."""
    x, w, _ = _problem(seed, n=16, k=128)
    x[:, ::2] = 0.0  # half the inputs never fire (ReLU MLPs have many such)
    H = (x.t().double() @ x.double()) / x.shape[0]
    a = gptq_quantize(w, H, fmt)
    b = gptq_quantize(w, H * 2.0 ** -10, fmt)  # a power of two: every step scales exactly
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))
    assert a.proxy_error == pytest.approx(b.proxy_error, rel=1e-9)


@pytest.mark.parametrize("scale", [2.0 ** -140, 2.0 ** 140])
def test_a_float64_hessian_of_any_scale(scale, seed):
    """GPTQ computes in float32: a float64 Hessian of tiny or huge inputs used to underflow (Cholesky
    'failed' after every retry) or overflow (a misleading 'mean diagonal is inf') in the cast."""
    _, w, H = _problem(seed, n=16, k=128)
    a = gptq_quantize(w, H, "mxfp4")
    b = gptq_quantize(w, H * scale, "mxfp4")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))


def test_a_float64_weight_beyond_float32_is_refused():
    """It used to become inf in the float32 cast, and GPTQ fed that inf into the row: a silently NaN row."""
    w = torch.randn(4, 64, dtype=torch.float64)
    w[0, 0] = 1e39
    with pytest.raises(ValueError, match="beyond float32"):
        gptq_quantize(w, torch.eye(64), "mxfp4")


@pytest.mark.parametrize("fmt", FORMATS)
def test_mr_gptq_keeps_dead_inputs_near_their_weights(fmt, seed):
    """With a rotation a dead input is a direction of the rotated Hessian, not a column: its diagonal was
    filled after rotating (where nothing is zero), so GPTQ moved error freely along it, and the weights of
    inputs that never fired in calibration ended about twice as far from the original as round to nearest."""
    x, w, _ = _problem(seed, n=64, k=256, tokens=2048)
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::4] = True
    x[:, dead] = 0.0
    H = (x.t().double() @ x.double()) / x.shape[0]
    R = rotations.get_rotation("hadamard", 32)
    res = gptq_quantize(w, H, fmt, rotation=R)
    q = fq.QuantizedWeight(res.codes, res.scales, res.global_scale, R, format=fmt).dequantize_unrotated()
    rtn = fq.QuantizedWeight.quantize(w, fmt, None, R).dequantize_unrotated()
    assert (q - w)[:, dead].norm() < 1.3 * (rtn - w)[:, dead].norm()
    assert res.proxy_error < 0.8 * res.rtn_proxy_error
