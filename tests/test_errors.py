"""Bad input gives a clear error naming the argument and what was expected, on the kernel and under
FakeTensor (torch.compile tracing) alike."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fpquant_ext as fq
from fpquant_ext import rotations

Q_MX = torch.ops.fpquant.quantize_mxfp4
Q_NV = torch.ops.fpquant.quantize_nvfp4
D_MX = torch.ops.fpquant.dequantize_mxfp4
D_NV = torch.ops.fpquant.dequantize_nvfp4
G1 = torch.tensor([1.0])


def x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def mx_scales(rows, groups):
    return torch.zeros(rows, groups, dtype=torch.uint8).view(torch.float8_e8m0fnu)


CASES = [
    # (name, callable, exception type, message fragment)
    ("int dtype", lambda: Q_MX(torch.ones(4, 32, dtype=torch.int32)), TypeError, "x must be float32, bfloat16 or float16"),
    ("float64", lambda: Q_NV(x(4, 32, dtype=torch.float64), G1), TypeError, "x must be float32"),
    ("non-contiguous", lambda: Q_MX(x(64, 64).t()), ValueError, "x must be contiguous"),
    ("K not multiple of 32", lambda: Q_MX(x(4, 48)), ValueError, "last dimension (48) must be a multiple of the group size 32"),
    ("K not multiple of 16", lambda: Q_NV(x(4, 40), G1), ValueError, "multiple of the group size 16"),
    ("empty", lambda: Q_MX(x(0, 32)), ValueError, "x is empty"),
    ("0-dim", lambda: Q_MX(torch.tensor(1.0)), ValueError, "at least one dimension"),
    ("non-square rotation", lambda: Q_MX(x(4, 64), torch.randn(32, 16)), ValueError, "rotation must be a square matrix"),
    ("rotation size 24", lambda: Q_MX(x(4, 96), torch.eye(24)), ValueError, "rotation size must be 16, 32, 64 or 128"),
    ("rotation does not divide K", lambda: Q_MX(x(4, 96), torch.eye(64)), ValueError, "multiple of the rotation size 64"),
    ("rotation dtype", lambda: Q_MX(x(4, 64), torch.eye(32, dtype=torch.float64)), TypeError, "rotation must be float32"),
    ("rotation non-contiguous", lambda: Q_MX(x(4, 64), torch.randn(32, 32).t()), ValueError, "rotation must be contiguous"),
    ("bad method", lambda: Q_MX(x(4, 32), None, "round"), ValueError, "method must be one of 'floor', 'ceil', 'quest'"),
    ("bad layout", lambda: Q_MX(x(4, 32), None, "floor", "swizzled"), ValueError, "scale_layout must be 'linear' or 'blocked'"),
    ("global scale shape", lambda: Q_NV(x(4, 32), torch.ones(2)), ValueError, "global_scale must hold one value"),
    ("global scale 2-d", lambda: Q_NV(x(4, 32), torch.ones(1, 1)), ValueError, "global_scale must hold one value"),
    ("global scale dtype", lambda: Q_NV(x(4, 32), torch.ones(1, dtype=torch.float64)), TypeError, "global_scale must be float32"),
    ("codes dtype", lambda: D_MX(torch.zeros(4, 16, dtype=torch.int8), mx_scales(4, 1)), TypeError, "codes must be uint8"),
    ("codes width", lambda: D_MX(torch.zeros(4, 8, dtype=torch.uint8), mx_scales(4, 1)), ValueError, "whole groups of 32"),
    ("scales dtype", lambda: D_MX(torch.zeros(4, 16, dtype=torch.uint8), torch.zeros(4, 1, dtype=torch.uint8)), TypeError, "scales must be Float8_e8m0fnu"),
    ("scales shape", lambda: D_MX(torch.zeros(4, 16, dtype=torch.uint8), mx_scales(4, 2)), ValueError, "scales must have shape [4, 1]"),
    ("blocked scales shape", lambda: D_MX(torch.zeros(4, 16, dtype=torch.uint8), mx_scales(4, 1), None, "blocked"), ValueError, "scales must have shape [128, 4] for the blocked layout"),
    ("nv scales dtype", lambda: D_NV(torch.zeros(4, 8, dtype=torch.uint8), mx_scales(4, 1), G1), TypeError, "scales must be Float8_e4m3fn"),
    ("nv global scale", lambda: D_NV(torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(4, 1, dtype=torch.float8_e4m3fn), torch.ones(3)), ValueError, "global_scale must hold one value"),
    ("out dtype", lambda: D_MX(torch.zeros(4, 16, dtype=torch.uint8), mx_scales(4, 1), None, "linear", torch.int32), TypeError, "out_dtype must be float32, bfloat16 or float16"),
    ("unswizzle shape", lambda: fq.unswizzle_scales(mx_scales(128, 4), 129, 4), ValueError, "must have shape [256, 4]"),
    ("swizzle dtype", lambda: fq.swizzle_scales(torch.zeros(4, 4)), TypeError, "one-byte dtype"),
]


@pytest.mark.parametrize("name,fn,exc,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_input_cpu(name, fn, exc, msg):
    with pytest.raises(exc, match=None) as info:
        fn()
    assert msg in str(info.value), str(info.value)
    assert "fpquant." in str(info.value)


@pytest.mark.parametrize("fn,msg", [
    (lambda t: Q_MX(t(4, 48)), "must be a multiple of the group size 32"),
    (lambda t: Q_MX(t(4, 96), t(64, 64)), "multiple of the rotation size 64"),
    (lambda t: Q_MX(t(4, 64), t(32, 16)), "rotation must be a square matrix"),
    (lambda t: Q_NV(t(4, 32), t(2)), "global_scale must hold one value"),
    (lambda t: Q_MX(t(4, 32), None, "round"), "method must be one of"),
])
def test_bad_input_fake(fn, msg):
    with FakeTensorMode():
        with pytest.raises(Exception) as info:
            fn(lambda *s: torch.empty(*s))
    assert msg in str(info.value)


def test_wrong_device_rotation_and_global_scale():
    # meta tensors stand in for "another device" on a CPU-only machine.
    with pytest.raises(Exception, match="rotation is on meta but the input is on cpu"):
        Q_MX(x(4, 64), torch.empty(32, 32, device="meta"))
    with pytest.raises(Exception, match="global_scale is on meta but the input is on cpu"):
        Q_NV(x(4, 64), torch.empty(1, device="meta"))


def test_rotation_helpers_reject_bad_sizes():
    with pytest.raises(ValueError, match="power of two"):
        rotations.hadamard(24)
    with pytest.raises(ValueError, match="unknown rotation"):
        rotations.get_rotation("fourier", 32)
