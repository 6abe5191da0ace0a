"""The CPU kernels give the same bits with one thread and with two, and those are the reference's bits.

Shapes are chosen so that the work really is split: more than one 2048-column tile per row (with a partial
last one), row counts that leave partial 8-row tiles, and many narrow tiles."""


import pytest
import torch

import fpquant_ext as fq
from fpquant_ext.tuning import CPU_ISAS, plan_override
from fpquant_ext import formats as ref
from fpquant_ext import rotations

from conftest import diverse_tensor

SHAPES = [(37, 2176), (1001, 128), (1, 4224)]
ROTATIONS = [None, 32, 128]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


def with_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def on_one_and_two(fn):
    one, two = with_threads(1, fn), with_threads(2, fn)
    one = one if isinstance(one, tuple) else (one,)
    two = two if isinstance(two, tuple) else (two,)
    assert all(same_bits(a, b) for a, b in zip(one, two)), "1 and 2 threads differ"
    return one


def rotation(r):
    # A dense matrix with varied entries for the small size, signed Hadamard for the large one.
    if r is None:
        return None
    return rotations.dct(r) if r <= 64 else rotations.random_hadamard(r, seed=r)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", ROTATIONS)
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mxfp4_threads(shape, r, layout, dtype, seed):
    x, R = diverse_tensor(*shape, seed=seed, dtype=dtype), rotation(r)
    codes, scales = on_one_and_two(lambda: fq.quantize_mxfp4(x, R, method="floor", scale_layout=layout))
    rc, rs = ref.quantize_mxfp4(x, R, method="floor", scale_layout=layout)
    assert same_bits(codes, rc) and same_bits(scales, rs)
    for out_dtype in (torch.float32, torch.bfloat16):
        (out,) = on_one_and_two(lambda: fq.dequantize_mxfp4(codes, scales, R, layout, out_dtype))
        assert same_bits(out, ref.dequantize_mxfp4(rc, rs, R, layout, out_dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r", ROTATIONS)
@pytest.mark.parametrize("layout", ["linear", "blocked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nvfp4_threads(shape, r, layout, dtype, seed):
    x, R = diverse_tensor(*shape, seed=seed).clamp(-6e4, 6e4).to(dtype), rotation(r)
    (g,) = on_one_and_two(lambda: fq.nvfp4_global_scale(x, R))
    assert same_bits(g, ref.nvfp4_global_scale(x, R))
    codes, scales = on_one_and_two(lambda: fq.quantize_nvfp4(x, g, R, scale_layout=layout))
    rc, rs = ref.quantize_nvfp4(x, g, R, scale_layout=layout)
    assert same_bits(codes, rc) and same_bits(scales, rs)
    for out_dtype in (torch.float32, torch.float16):
        (out,) = on_one_and_two(lambda: fq.dequantize_nvfp4(codes, scales, g, R, layout, out_dtype))
        assert same_bits(out, ref.dequantize_nvfp4(rc, rs, g, R, layout, out_dtype))


def test_quest_and_ceil_threads(seed):
    x = diverse_tensor(129, 2176, seed=seed, dtype=torch.bfloat16)
    for method in ("ceil", "quest"):
        codes, scales = on_one_and_two(lambda: fq.quantize_mxfp4(x, rotation(64), method=method))
        rc, rs = ref.quantize_mxfp4(x, rotation(64), method=method)
        assert same_bits(codes, rc) and same_bits(scales, rs)


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_rotation_kernel(isa, seed):
    # The widest rotation kernel the CPU has runs by default; plan_override caps it, so that the narrower
    # kernels are checked on a machine that has more (a cap above what the CPU has runs its widest).
    x = diverse_tensor(45, 2176, seed=seed)
    with plan_override(cpu_isa=isa):
        for r in (16, 128):
            R = rotations.dct(r)
            c, s = fq.quantize_mxfp4(x, R)
            rc, rs = ref.quantize_mxfp4(x, R)
            assert same_bits(c, rc) and same_bits(s, rs)
            assert same_bits(fq.dequantize_mxfp4(c, s, R), ref.dequantize_mxfp4(rc, rs, R))
            assert same_bits(fq.nvfp4_global_scale(x, R), ref.nvfp4_global_scale(x, R))
