"""torch.library.opcheck for every operator (schema, fake tensor, AOT dispatch), and torch.compile."""

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import rotations

from conftest import diverse_tensor, make_weight, opcheck

ops = torch.ops.fpquant


def _mx_args(device="cpu"):
    x = diverse_tensor(6, 128, seed=1).to(device=device, dtype=torch.bfloat16)
    r = rotations.hadamard(32).to(device)
    out = []
    for method in ("floor", "ceil", "quest"):
        for layout in ("linear", "blocked"):
            out.append((ops.quantize_mxfp4.default, (x, None, method, layout)))
            out.append((ops.quantize_mxfp4.default, (x, r, method, layout)))
            codes, scales = fq.quantize_mxfp4(x, r, method, layout)
            out.append((ops.dequantize_mxfp4.default, (codes, scales, r, layout, torch.bfloat16)))
            out.append((ops.dequantize_mxfp4.default, (codes, scales, r, layout, None)))
            if method == "floor":
                wc, ws = fq.quantize_mxfp4(x[:5], None, method, layout)
                out.append((ops.matmul_mxfp4.default, (codes, scales, wc, ws, layout, torch.bfloat16, None)))
    return out


def _nv_args(device="cpu"):
    x = torch.randn(2, 3, 64).to(device)
    r = rotations.dct(64).to(device)
    g = fq.nvfp4_global_scale(x, r)
    out = [(ops.nvfp4_global_scale.default, (x, None)), (ops.nvfp4_global_scale.default, (x, r))]
    for layout in ("linear", "blocked"):
        out.append((ops.quantize_nvfp4.default, (x, g, r, layout)))
        codes, scales = fq.quantize_nvfp4(x, g, r, layout)
        out.append((ops.dequantize_nvfp4.default, (codes, scales, g, r, layout, torch.float16)))
        wc, ws = fq.quantize_nvfp4(x[0], g, None, layout)
        out.append((ops.matmul_nvfp4.default, (codes, scales, g, wc, ws, g, layout, torch.float16, x[0, :, 0].contiguous())))
    # no NaN codes: opcheck compares outputs with assert_close, where NaN != NaN
    s = torch.randint(0, 0x7F, (130, 9), dtype=torch.uint8).view(torch.float8_e4m3fn)
    out.append((ops.swizzle_scales.default, (s,)))
    out.append((ops.unswizzle_scales.default, (fq.swizzle_scales(s), 130, 9)))
    return out


@pytest.mark.parametrize("op,args", _mx_args() + _nv_args())
def test_opcheck_cpu(op, args):
    opcheck(op, args)


def _grad_args():
    # Inputs that require grad: opcheck then also checks the autograd registrations (fpquant_ext._autograd).
    x = torch.randn(4, 128)
    r = rotations.hadamard(64)
    codes, scales = fq.quantize_mxfp4(x, r)
    g = fq.nvfp4_global_scale(x, r)
    nc, ns = fq.quantize_nvfp4(x, g, r, "blocked")
    wc, ws, wg, _ = make_weight(32, 128, "nvfp4", 2)
    a = torch.randn(3, 128, dtype=torch.bfloat16)
    bias = torch.randn(32, dtype=torch.bfloat16)
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        (ops.dequantize_mxfp4.default, (codes, scales, grad(r), "linear", None)),
        (ops.dequantize_nvfp4.default, (nc, ns, grad(g), grad(r), "blocked", torch.bfloat16)),
        (ops.linear_w4a16.default, (grad(a), wc, ws, wg, grad(bias), "nvfp4")),
        (ops.linear_w4a16.default, (grad(a), *fq.pack_w4a16(wc, ws, "nvfp4"), wg, None, "nvfp4")),
        (ops.matmul_nvfp4.default, (nc, ns, g, nc, ns, g, "blocked", torch.bfloat16, grad(x[:, 0]))),
    ]


@pytest.mark.parametrize("op,args", _grad_args())
def test_opcheck_cpu_requires_grad(op, args):
    opcheck(op, args)


def _roundtrip(x, r, g):
    c, s = torch.ops.fpquant.quantize_mxfp4(x, r, "quest", "blocked")
    y = torch.ops.fpquant.dequantize_mxfp4(c, s, r, "blocked", torch.bfloat16)
    c2, s2 = torch.ops.fpquant.quantize_nvfp4(x, g, None, "linear")
    z = torch.ops.fpquant.dequantize_nvfp4(c2, s2, g, None, "linear", torch.float32)
    return y, z, c, s


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    r = rotations.gsr(64)
    g = fq.nvfp4_global_scale(x)
    eager = _roundtrip(x, r, g)
    compiled = torch.compile(_roundtrip, fullgraph=True, backend="aot_eager")(x, r, g)
    for a, b in zip(eager, compiled):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_torch_compile_inductor_dynamic_shapes():
    torch._dynamo.reset()
    fn = torch.compile(lambda t: fq.dequantize_mxfp4(*fq.quantize_mxfp4(t)) * 2, fullgraph=True, dynamic=True)
    for rows in (3, 5, 9):
        t = torch.randn(rows, 64)
        assert torch.equal(fn(t), fq.dequantize_mxfp4(*fq.quantize_mxfp4(t)) * 2)
