"""pack_w4a16 / unpack_w4a16: the packed W4A16 weight layout (csrc/core/w4a16_layout.h), and linear_w4a16 on
packed weights. Where each code lands is checked nibble by nibble in test_kernel_layouts.py."""

import pytest
import torch

import fpquant_ext as fq

from conftest import make_weight, opcheck

FORMATS = ["mxfp4", "nvfp4"]


def random_weight(N, K, fmt, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    group = 32 if fmt == "mxfp4" else 16
    codes = torch.randint(0, 256, (N, K // 2), generator=g, dtype=torch.uint8)
    # every scale code but NaN (opcheck compares outputs with assert_close, where NaN != NaN)
    s = torch.randint(0, 255, (N, K // group), generator=g, dtype=torch.uint8)
    if fmt == "nvfp4":
        s[(s & 0x7F) == 0x7F] = 0x38
    dt = torch.float8_e8m0fnu if fmt == "mxfp4" else torch.float8_e4m3fn
    return codes.to(device), s.view(dt).to(device)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N,K", [(16, 64), (48, 192), (96, 640)])
def test_round_trip_and_shapes(fmt, N, K, seed):
    codes, scales = random_weight(N, K, fmt, seed)
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    group = 32 if fmt == "mxfp4" else 16
    assert pc.shape == (N // 16, K // 64, 512) and pc.dtype == torch.uint8
    assert ps.shape == (N // 16, K // 64, 16 * 64 // group) and ps.dtype == scales.dtype
    assert not torch.equal(pc.reshape(-1), codes.reshape(-1))  # a real reordering
    c2, s2 = fq.unpack_w4a16(pc, ps, fmt)
    assert torch.equal(c2, codes)
    assert torch.equal(s2.view(torch.uint8), scales.view(torch.uint8))
    # float4_e2m1fn_x2 codes are the same bytes
    assert torch.equal(fq.pack_w4a16(fq.as_float4(codes), scales, fmt)[0], pc)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("K", [64, 128])  # K = 64: one atom per row, the scale permutation is the identity
def test_opcheck_cpu(fmt, K):
    codes, scales = random_weight(32, K, fmt, 1)
    opcheck(torch.ops.fpquant.pack_w4a16.default, (codes, scales, fmt))
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    opcheck(torch.ops.fpquant.unpack_w4a16.default, (pc, ps, fmt))
    c2, s2 = fq.unpack_w4a16(pc, ps, fmt)
    for out, inp in [(pc, codes), (ps, scales), (c2, pc), (s2, ps)]:  # outputs never alias inputs
        assert out.untyped_storage().data_ptr() != inp.untyped_storage().data_ptr()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [1, 33])
def test_linear_cpu_packed_equals_canonical(fmt, M, seed):
    codes, scales, gs, _ = make_weight(64, 256, fmt, seed)
    g = torch.Generator().manual_seed(seed + 1)
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    x = torch.randn(M, 256, generator=g).to(torch.bfloat16)
    bias = torch.randn(64, generator=g).to(torch.bfloat16)
    assert torch.equal(fq.linear_w4a16(x, pc, ps, gs, bias, fmt), fq.linear_w4a16(x, codes, scales, gs, bias, fmt))
    opcheck(torch.ops.fpquant.linear_w4a16.default, (x, pc, ps, gs, bias, fmt))


def test_compile_fullgraph_cpu():
    codes, scales = random_weight(32, 128, "mxfp4", 2)
    scales = scales.view(torch.uint8).clamp(110, 130).view(torch.float8_e8m0fnu)  # finite weights
    x = torch.randn(3, 128, dtype=torch.bfloat16)

    def f(c, s, t):
        pc, ps = torch.ops.fpquant.pack_w4a16(c, s, "mxfp4")
        return torch.ops.fpquant.linear_w4a16(t, pc, ps, None, None, "mxfp4")

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(codes, scales, x), f(codes, scales, x))


def test_bad_input():
    codes, scales = random_weight(32, 128, "mxfp4", 0)
    pc, ps = fq.pack_w4a16(codes, scales, "mxfp4")
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    c40, s40 = random_weight(40, 128, "mxfp4", 0)
    c96, s96 = random_weight(32, 96, "mxfp4", 0)
    cases = [
        (lambda: fq.pack_w4a16(c40, s40, "mxfp4"), ValueError, "N a multiple of 16 and K a multiple of 64"),
        (lambda: fq.pack_w4a16(c96, s96, "mxfp4"), ValueError, "N a multiple of 16 and K a multiple of 64"),
        (lambda: fq.pack_w4a16(codes, scales, "nvfp4"), TypeError, "scales must be Float8_e4m3fn"),
        (lambda: fq.pack_w4a16(codes, scales, "int4"), ValueError, "format must be 'mxfp4' or 'nvfp4'"),
        (lambda: fq.pack_w4a16(pc, ps, "mxfp4"), ValueError, "must be the canonical 2-D"),
        (lambda: fq.unpack_w4a16(codes, scales, "mxfp4"), ValueError, "must be the packed 3-D"),
        (lambda: fq.unpack_w4a16(pc, ps[:, :1].contiguous(), "mxfp4"), ValueError, "packed scales must have shape [2, 2, 32]"),
        (lambda: fq.unpack_w4a16(pc[:, :, :256], ps, "mxfp4"), ValueError, "[N/16, K/64, 512]"),
        (lambda: fq.linear_w4a16(x, pc.view(torch.int8), ps), TypeError, "packed w_codes must be uint8"),
        (lambda: fq.linear_w4a16(x[:, :64].contiguous(), pc, ps), ValueError, "but x has K=64"),
        (lambda: fq.linear_w4a16(x, pc, ps.view(torch.uint8)), TypeError, "scales must be Float8_e8m0fnu"),
        (lambda: fq.linear_w4a16(x, pc.unsqueeze(0), ps), ValueError, "w_codes must be 2-D [N, K/2] (canonical) or 3-D"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc) as info:
            fn()
        assert msg in str(info.value), str(info.value)


# ---- CUDA ----------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_pack_matches_cpu(fmt, seed):
    codes, scales = random_weight(64, 256, fmt, seed)
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    gc, gsc = fq.pack_w4a16(codes.cuda(), scales.cuda(), fmt)
    assert torch.equal(gc.cpu(), pc) and torch.equal(gsc.cpu().view(torch.uint8), ps.view(torch.uint8))
    c2, s2 = fq.unpack_w4a16(gc, gsc, fmt)
    assert torch.equal(c2.cpu(), codes) and torch.equal(s2.cpu().view(torch.uint8), scales.view(torch.uint8))


@pytest.mark.cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N,K", [(16, 64), (48, 192), (96, 640), (4096, 1024)])
def test_cuda_pack_kernel_equals_the_tensor_ops(fmt, N, K, seed):
    # The CUDA implementation (one kernel, w4a16_pack.cu) against the tensor-op one, byte for byte.
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    codes, scales = random_weight(N, K, fmt, seed)
    pc, ps = fq.pack_w4a16(codes, scales, fmt)
    gc, gs = fq.pack_w4a16(codes.cuda(), scales.cuda(), fmt)
    assert gc.dtype == pc.dtype and gs.dtype == ps.dtype and gc.shape == pc.shape and gs.shape == ps.shape
    assert torch.equal(gc.cpu(), pc)
    assert torch.equal(gs.cpu().view(torch.uint8), ps.view(torch.uint8))
    # float4 codes, and a view whose data does not start on a 16-byte boundary
    assert torch.equal(fq.pack_w4a16(fq.as_float4(codes.cuda()), scales.cuda(), fmt)[0].cpu(), pc)
    flat = torch.cat([torch.zeros(1, dtype=torch.uint8), codes.reshape(-1)]).cuda()
    assert torch.equal(fq.pack_w4a16(flat[1:].view(N, K // 2), scales.cuda(), fmt)[0].cpu(), pc)
    opcheck(torch.ops.fpquant.pack_w4a16.default, (codes.cuda(), scales.cuda(), fmt))
