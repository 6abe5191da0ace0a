"""Autograd: dequantization is differentiable in the rotation and the NVFP4 global scale, linear_w4a16 in x
and the bias; every other gradient that is asked for raises a clear error instead of coming back as None."""

import warnings

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations

from conftest import make_weight

ops = torch.ops.fpquant


def leaf(t):
    return t.detach().clone().requires_grad_()


def gradcheck32(fn, inputs):
    """torch.autograd.gradcheck for operators that take float32 only: central differences of float32
    outputs, so tolerances are those of float32, not float64."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a double precision.*")
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-3, atol=2e-3, rtol=2e-2, fast_mode=True)


def nv_codes(x, layout="linear", g=1.0):
    # g = 1 keeps d(out)/dg of the same size as out, which float32 finite differences resolve.
    g = torch.tensor([g])
    return (*fq.quantize_nvfp4(x, g, scale_layout=layout), g)


# ---- dequantize: rotation and global scale ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_dequantize_mxfp4_rotation_gradcheck(layout, seed):
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed))
    codes, scales = fq.quantize_mxfp4(x, scale_layout=layout)
    R = leaf(rotations.random_hadamard(32, seed=seed))
    gradcheck32(lambda R: ops.dequantize_mxfp4(codes, scales, R, layout, None), (R,))


def test_dequantize_nvfp4_rotation_and_global_scale_gradcheck(seed):
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(seed))
    codes, scales, g = nv_codes(x, "blocked")
    R, g = leaf(rotations.dct(16)), leaf(g)
    gradcheck32(lambda R, g: ops.dequantize_nvfp4(codes, scales, g, R, "blocked", None), (R, g))
    codes, scales, g = nv_codes(x)
    gradcheck32(lambda g: ops.dequantize_nvfp4(codes, scales, g, None, "linear", None), (leaf(g.reshape(())),))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_dequantize_gradients_match_the_reference(fmt, out_dtype, seed):
    """Against autograd through fpquant_ext.formats (the float64-accumulating reference)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 128, generator=gen)
    R0 = rotations.random_hadamard(64, seed=seed)
    G = torch.randn(4, 3, 128, generator=gen)
    R, R_ref = leaf(R0), leaf(R0)
    if fmt == "mxfp4":
        codes, scales = fq.quantize_mxfp4(x, R0)
        out = fq.dequantize_mxfp4(codes, scales, R, out_dtype=out_dtype)
        want = ref.dequantize_mxfp4(codes, scales, R_ref, out_dtype=out_dtype)
        (out.float() * G).sum().backward()
        (want.float() * G).sum().backward()
    else:
        g0 = fq.nvfp4_global_scale(x, R0)
        codes, scales = fq.quantize_nvfp4(x, g0, R0)
        g, g_ref = leaf(g0), leaf(g0)
        out = fq.dequantize_nvfp4(codes, scales, g, R, out_dtype=out_dtype)
        want = ref.dequantize_nvfp4(codes, scales, g_ref, R_ref, out_dtype=out_dtype)
        (out.float() * G).sum().backward()
        (want.float() * G).sum().backward()
        assert g.grad.shape == g.shape and g.grad.dtype == torch.float32
        torch.testing.assert_close(g.grad, g_ref.grad, rtol=1e-4, atol=0)
    assert R.grad.dtype == R.dtype
    torch.testing.assert_close(R.grad, R_ref.grad, rtol=1e-4, atol=1e-4)


def test_dequantize_rotation_gradient_in_its_dtype():
    x = torch.randn(2, 64)
    codes, scales = fq.quantize_mxfp4(x)
    R = leaf(rotations.hadamard(32).to(torch.bfloat16))
    fq.dequantize_mxfp4(codes, scales, R).sum().backward()
    assert R.grad.dtype == torch.bfloat16 and R.grad.shape == (32, 32)


def test_dequantize_rejects_gradients_for_codes_and_scales():
    x = torch.randn(2, 64, requires_grad=True)
    codes, scales = fq.quantize_mxfp4(x.detach())
    scales.requires_grad_()
    with pytest.raises(RuntimeError, match=r"fpquant.dequantize_mxfp4: no gradient for codes or scales"):
        fq.dequantize_mxfp4(codes, scales).sum().backward()
    codes, scales, g = nv_codes(x.detach())
    scales.requires_grad_()
    with pytest.raises(RuntimeError, match=r"fpquant.dequantize_nvfp4: no gradient for codes or scales"):
        fq.dequantize_nvfp4(codes, scales, leaf(g)).sum().backward()


# ---- quantize: no gradient ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["quantize_mxfp4", "quantize_nvfp4", "nvfp4_global_scale"])
def test_quantize_backward_raises_naming_the_op(op):
    x = torch.randn(2, 64, requires_grad=True)
    if op == "quantize_mxfp4":
        codes, scales = fq.quantize_mxfp4(x)
        out = scales
    elif op == "quantize_nvfp4":
        codes, scales = fq.quantize_nvfp4(x, torch.tensor([1.0]))
        out = scales
    else:
        out = fq.nvfp4_global_scale(x)
    if op != "nvfp4_global_scale":
        assert not codes.requires_grad  # uint8
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=rf"fpquant.{op}: no gradient: rounding to FP4 is piecewise constant"):
        out.float().sum().backward()


def test_quantize_global_scale_requiring_grad_raises_at_backward():
    x = torch.randn(2, 64)
    g = torch.tensor([1.0], requires_grad=True)
    codes, scales = fq.quantize_nvfp4(x, g)
    with pytest.raises(RuntimeError, match="fpquant.quantize_nvfp4: no gradient"):
        scales.float().sum().backward()


def test_roundtrip_through_quantize_raises_instead_of_a_silent_none():
    x = torch.randn(2, 64, requires_grad=True)
    y = fq.dequantize_mxfp4(*fq.quantize_mxfp4(x))
    with pytest.raises(RuntimeError, match="no gradient"):
        y.sum().backward()


def test_quantize_detached_or_no_grad_needs_no_gradient():
    x = torch.randn(2, 64, requires_grad=True)
    codes, scales = fq.quantize_mxfp4(x.detach())
    assert not scales.requires_grad
    with torch.no_grad():
        codes, scales = fq.quantize_nvfp4(x, fq.nvfp4_global_scale(x))
    assert not scales.requires_grad


# ---- linear_w4a16 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed", [False, True])
def test_linear_gradients_match_the_float32_reference(fmt, dtype, packed, seed):
    codes, scales, gs, w = make_weight(32, 128, fmt, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x0 = torch.randn(2, 3, 128, generator=gen).to(dtype)
    b0 = torch.randn(32, generator=gen).to(dtype)
    G = torch.randn(2, 3, 32, generator=gen).to(dtype)
    wc, ws = fq.pack_w4a16(codes, scales, fmt) if packed else (codes, scales)
    x, b = leaf(x0), leaf(b0)
    out = fq.linear_w4a16(x, wc, ws, gs, b, format=fmt)
    out.backward(G)
    xr, br = leaf(x0.float()), leaf(b0.float())
    (xr @ w.float().T + br).backward(G.float())
    assert x.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), xr.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(b.grad.float(), br.grad, rtol=1e-2, atol=1e-2)


def test_linear_x_gradient_finite_differences(seed):
    """d/dx of <G, linear(x)> in float64 from the float32-dequantized weight, against central differences of
    the float16 operator along a random direction (the operator is linear in x, so only rounding remains)."""
    codes, scales, _, w = make_weight(16, 64, "mxfp4", seed)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    d = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    G = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    x = leaf(x0.half())
    fq.linear_w4a16(x, codes, scales).backward(G.half())
    eps = 0.25
    f = lambda t: (fq.linear_w4a16(t.half(), codes, scales).double() * G).sum()  # noqa: E731
    numeric = (f(x0 + eps * d) - f(x0 - eps * d)) / (2 * eps)
    analytic = (x.grad.double() * d).sum()
    assert abs(numeric - analytic) <= 2e-2 * abs(numeric) + 1e-1, (numeric, analytic)


@pytest.mark.parametrize("which", ["w_scales", "w_global_scale"])
def test_linear_rejects_weight_gradients(which):
    codes, scales, gs, _ = make_weight(32, 128, "nvfp4", 0)
    if which == "w_scales":
        scales = scales.clone().requires_grad_()
    else:
        gs = leaf(gs)
    out = fq.linear_w4a16(torch.randn(2, 128, dtype=torch.bfloat16), codes, scales, gs, format="nvfp4")
    with pytest.raises(RuntimeError, match=r"fpquant.linear_w4a16: no gradient for w_codes, w_scales or w_global_scale"):
        out.sum().backward()


def test_linear_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    codes, scales, gs, _ = make_weight(32, 128, "nvfp4", 1)
    x0 = torch.randn(4, 128, dtype=torch.bfloat16)
    b0 = torch.randn(32, dtype=torch.bfloat16)

    def f(x, b):
        return torch.ops.fpquant.linear_w4a16(x, codes, scales, gs, b, "nvfp4").float().square().sum()

    x, b, xe, be = leaf(x0), leaf(b0), leaf(x0), leaf(b0)
    torch.compile(f, fullgraph=True)(x, b).backward()
    f(xe, be).backward()
    torch.testing.assert_close(x.grad, xe.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(b.grad, be.grad, rtol=2e-2, atol=2e-2)


# ---- layout operators -------------------------------------------------------------------------------------


def _layout_cases():
    codes, scales = fq.quantize_mxfp4(torch.randn(32, 128))
    pc, ps = fq.pack_w4a16(codes, scales)
    return [
        ("pack_w4a16", lambda s: ops.pack_w4a16(codes, s, "mxfp4")[1], scales),
        ("unpack_w4a16", lambda s: ops.unpack_w4a16(pc, s, "mxfp4")[1], ps),
        ("swizzle_scales", lambda s: ops.swizzle_scales(s), scales),
        ("unswizzle_scales", lambda s: ops.unswizzle_scales(s, 32, 4), fq.swizzle_scales(scales)),
    ]


@pytest.mark.parametrize("name,fn,scales", _layout_cases(), ids=[c[0] for c in _layout_cases()])
def test_layout_ops_reject_gradients(name, fn, scales):
    out = fn(scales.clone().requires_grad_())
    with pytest.raises(RuntimeError, match=rf"fpquant.{name}: no gradient for its inputs"):
        out.float().sum().backward()


def test_dequantize_by_format_matches_the_format_ops():
    # fpquant_ext.dequantize picks the format's op; the backward formulas and the nn modules go through it.
    import fpquant_ext as fq

    x = torch.randn(4, 64)
    c, s = fq.quantize_mxfp4(x)
    assert torch.equal(fq.dequantize(c, s, "mxfp4"), fq.dequantize_mxfp4(c, s))
    g = fq.nvfp4_global_scale(x)
    c, s = fq.quantize_nvfp4(x, g)
    assert torch.equal(fq.dequantize(c, s, "nvfp4", g, out_dtype=torch.bfloat16),
                       fq.dequantize_nvfp4(c, s, g, out_dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="format"):
        fq.dequantize(c, s, "fp4")
