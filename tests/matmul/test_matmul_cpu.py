"""matmul_mxfp4 / matmul_nvfp4 on the CPU against a float64 reference built from fpquant_ext.formats: operand
values from formats' dequantization, products and sums in float64 in increasing k, NVFP4 divided by
gA * gB, bias added, one rounding to out_dtype. The CPU operator must match it bit for bit."""

from __future__ import annotations

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import formats

from matmul_helpers import quantize_operand as _quantize, run_matmul as _run
from conftest import diverse_tensor, opcheck

ops = torch.ops.fpquant
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _round_once(d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 -> dtype rounded once to nearest even: through float32 rounded to odd for bf16 / fp16."""
    if dtype == torch.float32:
        return d.float()
    f = d.float()
    inexact = (f.double() != d) & ~d.isnan()
    toward_zero = torch.nextafter(f, torch.zeros_like(f))
    f = torch.where(inexact & (f.double().abs() > d.abs()), toward_zero, f)
    bits = f.view(torch.int32)
    f = torch.where(inexact, bits | 1, bits).view(torch.float32)
    return f.to(dtype)


def _operand(codes, scales, fmt, layout):
    """Operand values in float64, before any global scale (exact: formats' float32 dequantization with a
    global scale of 1 is exact for these inputs)."""
    if fmt == "mxfp4":
        v = formats.dequantize_mxfp4(codes, scales, None, layout)
    else:
        v = formats.dequantize_nvfp4(codes, scales, torch.ones(1), None, layout)
    return v.double()


def reference(a, sa, b, sb, fmt, layout, out_dtype, bias=None, ga=None, gb=None):
    A = _operand(a, sa, fmt, layout).reshape(-1, 2 * a.shape[-1])
    B = _operand(b, sb, fmt, layout)
    acc = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64)
    for k in range(A.shape[1]):  # the documented order
        acc += A[:, k, None] * B[None, :, k]
    if fmt == "nvfp4":
        acc = acc / (ga.double().reshape(()) * gb.double().reshape(()))
    if bias is not None:
        acc = acc + bias.double()
    return _round_once(acc, out_dtype).reshape(*a.shape[:-1], B.shape[0])


def _same(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(out.isnan(), ref.isnan())
    ok = ~ref.isnan()
    assert torch.equal(out[ok], ref[ok]), (out[ok] - ref[ok]).abs().max()


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_reference(fmt, layout, out_dtype, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    M, N, K = 7, 13, 128  # odd M and N: the 4-column blocks and their tail
    x = torch.randn(M, K, generator=g) * 3
    w = torch.randn(N, K, generator=g) * 0.05
    a, sa, ga = _quantize(x, fmt, layout)
    b, sb, gb = _quantize(w, fmt, layout)
    bias = torch.randn(N, generator=g).to(out_dtype) if with_bias else None
    out = _run(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias)
    _same(out, reference(a, sa, b, sb, fmt, layout, out_dtype, bias, ga, gb))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_batch_dims_and_diverse_magnitudes(fmt, layout, seed):
    x = diverse_tensor(2 * 3 * 5, 256, seed=seed).reshape(2, 3, 5, 256)
    w = diverse_tensor(9, 256, seed=seed + 1)
    a, sa, ga = _quantize(x, fmt, layout)
    b, sb, gb = _quantize(w, fmt, layout)
    for out_dtype in OUT_DTYPES:
        out = _run(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, None)
        assert out.shape == (2, 3, 5, 9)
        _same(out, reference(a, sa, b, sb, fmt, layout, out_dtype, None, ga, gb))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_matches_dequantize_then_matmul_without_float32_overflow(fmt, seed):
    x, w = torch.randn(5, 64), torch.randn(6, 64)
    a, sa, ga = _quantize(x, fmt, "linear")
    b, sb, gb = _quantize(w, fmt, "linear")
    if fmt == "mxfp4":
        A, B = fq.dequantize_mxfp4(a, sa), fq.dequantize_mxfp4(b, sb)
        out = fq.matmul_mxfp4(a, sa, b, sb)
    else:
        A, B = fq.dequantize_nvfp4(a, sa, 1.0), fq.dequantize_nvfp4(b, sb, 1.0)
        out = fq.matmul_nvfp4(a, sa, ga, b, sb, gb)
        A, B = A / ga.double(), B / gb.double()
    torch.testing.assert_close(out.double(), A.double() @ B.double().T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_nan_groups_propagate(fmt, layout):
    x, w = torch.randn(6, 64), torch.randn(5, 64)
    x[2, 32:48] = float("nan")  # one group of row 2 (a whole MXFP4 group, one NVFP4 group)
    a, sa, ga = _quantize(x, fmt, layout)
    if fmt == "nvfp4":
        ga = torch.ones(1)  # the NaN would make nvfp4_global_scale NaN too
        a, sa = fq.quantize_nvfp4(x, ga, None, layout)
    b, sb, gb = _quantize(w, fmt, layout)
    for out_dtype in OUT_DTYPES:
        out = _run(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, None)
        assert out[2].isnan().all() and not out[[0, 1, 3, 4, 5]].isnan().any()
        _same(out, reference(a, sa, b, sb, fmt, layout, out_dtype, None, ga, gb))


def test_nan_times_zero_is_nan():
    a = torch.zeros(1, 16, dtype=torch.uint8)
    sa = torch.full((1, 1), 0xFF, dtype=torch.uint8).view(torch.float8_e8m0fnu)  # NaN scale
    b = torch.zeros(2, 16, dtype=torch.uint8)  # all-zero B
    sb = torch.full((2, 1), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    assert fq.matmul_mxfp4(a, sa, b, sb).isnan().all()


def test_beyond_float32_range_mxfp4():
    # 6 * 2^127 overflows float32 but not the float64 products: (6 * 2^127) * (0.5 * 2^-127) = 3.
    a = torch.full((1, 16), 0x07, dtype=torch.uint8)  # low nibble 7 = 6.0, high nibble 0
    sa = torch.full((1, 1), 254, dtype=torch.uint8).view(torch.float8_e8m0fnu)  # 2^127
    b = torch.full((1, 16), 0x01, dtype=torch.uint8)  # 0.5
    sb = torch.full((1, 1), 0, dtype=torch.uint8).view(torch.float8_e8m0fnu)  # 2^-127
    assert fq.matmul_mxfp4(a, sa, b, sb).item() == 3.0 * 16


def test_one_rounding_to_bfloat16():
    # A = [1, 1, 1] and B = [1, 2^-8, 2^-30], one element per group: acc = 1 + 2^-8 + 2^-30, just above the
    # tie between the bfloat16 values 1 and 1 + 2^-7, so it rounds up. Rounding to float32 first would give
    # the tie 1 + 2^-8, which rounds to even: 1.
    a = torch.zeros(1, 48, dtype=torch.uint8)
    a[0, 0] = a[0, 16] = a[0, 32] = 0x02  # E2M1 code 2 = 1.0 in the first element of each group
    sa = torch.full((1, 3), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    sb = torch.tensor([[127, 127 - 8, 127 - 30]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    assert fq.matmul_mxfp4(a, sa, a, sb, out_dtype=torch.float32).item() == 1.0 + 2.0 ** -8
    assert fq.matmul_mxfp4(a, sa, a, sb, out_dtype=torch.bfloat16).item() == 1.0 + 2.0 ** -7
    assert torch.tensor(1.0 + 2.0 ** -8 + 2.0 ** -30, dtype=torch.float64).float().bfloat16().item() == 1.0


def test_independent_of_thread_count(seed):
    g = torch.Generator().manual_seed(seed)
    a, sa, _ = _quantize(torch.randn(64, 512, generator=g), "mxfp4", "linear")
    b, sb, _ = _quantize(torch.randn(48, 512, generator=g), "mxfp4", "linear")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fq.matmul_mxfp4(a, sa, b, sb)
        torch.set_num_threads(max(2, threads))
        many = fq.matmul_mxfp4(a, sa, b, sb)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_default_out_dtype_is_float32_and_float4_codes_are_accepted():
    a, sa, _ = _quantize(torch.randn(3, 64), "mxfp4", "linear")
    b, sb, _ = _quantize(torch.randn(4, 64), "mxfp4", "linear")
    out = fq.matmul_mxfp4(fq.as_float4(a), sa, fq.as_float4(b), sb)
    assert out.dtype == torch.float32 and torch.equal(out, fq.matmul_mxfp4(a, sa, b, sb))


def test_python_float_global_scales():
    x, w = torch.randn(3, 64), torch.randn(4, 64)
    a, sa, ga = _quantize(x, "nvfp4", "linear")
    b, sb, gb = _quantize(w, "nvfp4", "linear")
    assert torch.equal(fq.matmul_nvfp4(a, sa, ga.item(), b, sb, gb.item()), fq.matmul_nvfp4(a, sa, ga, b, sb, gb))
    with pytest.raises(TypeError, match="fpquant.matmul_nvfp4: b_global_scale is required"):
        fq.matmul_nvfp4(a, sa, ga, b, sb, None)


def _opcheck_args():
    x, w = torch.randn(2, 3, 64), torch.randn(5, 64)
    out = []
    for layout in ("linear", "blocked"):
        a, sa, _ = _quantize(x, "mxfp4", layout)
        b, sb, _ = _quantize(w, "mxfp4", layout)
        out.append((ops.matmul_mxfp4.default, (a, sa, b, sb, layout, None, None)))
        out.append((ops.matmul_mxfp4.default, (a, sa, b, sb, layout, torch.bfloat16, torch.randn(5))))
        a, sa, ga = _quantize(x, "nvfp4", layout)
        b, sb, gb = _quantize(w, "nvfp4", layout)
        out.append((ops.matmul_nvfp4.default, (a, sa, ga, b, sb, gb, layout, torch.float16, None)))
        out.append((ops.matmul_nvfp4.default,
                    (a, sa, ga, b, sb, gb, layout, None, torch.randn(5, dtype=torch.bfloat16).requires_grad_())))
    return out


@pytest.mark.parametrize("op,args", _opcheck_args())
def test_opcheck(op, args):
    opcheck(op, args)


def test_gradients():
    a, sa, ga = _quantize(torch.randn(2, 3, 32), "nvfp4", "linear")
    b, sb, gb = _quantize(torch.randn(4, 32), "nvfp4", "linear")
    bias = torch.randn(4, requires_grad=True)
    fq.matmul_nvfp4(a, sa, ga, b, sb, gb, bias=bias).sum().backward()
    assert torch.equal(bias.grad, torch.full((4,), 6.0))
    with pytest.raises(RuntimeError, match="fpquant.matmul_nvfp4: no gradient for codes, scales or global scales"):
        fq.matmul_nvfp4(a, sa, ga.clone().requires_grad_(), b, sb, gb).sum().backward()


def _both(a, sa, ga, b, sb, gb, bias):
    y = torch.ops.fpquant.matmul_mxfp4(a, sa, b, sb, "blocked", torch.bfloat16, bias)
    return y, y.float() * 2


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    x, w = torch.randn(2, 5, 64), torch.randn(6, 64)
    a, sa, _ = _quantize(x, "mxfp4", "blocked")
    b, sb, _ = _quantize(w, "mxfp4", "blocked")
    bias = torch.randn(6)
    eager = _both(a, sa, None, b, sb, None, bias)
    compiled = torch.compile(_both, fullgraph=True, backend="aot_eager")(a, sa, None, b, sb, None, bias)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)


def test_torch_compile_inductor_nvfp4_dynamic():
    torch._dynamo.reset()

    def fn(x, b, sb, gb):
        g = fq.nvfp4_global_scale(x)
        a, sa = fq.quantize_nvfp4(x, g)
        return fq.matmul_nvfp4(a, sa, g, b, sb, gb, out_dtype=torch.bfloat16)

    b, sb, gb = _quantize(torch.randn(8, 64), "nvfp4", "linear")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for rows in (3, 5):
        x = torch.randn(rows, 64)
        assert torch.equal(compiled(x, b, sb, gb), fn(x, b, sb, gb))
