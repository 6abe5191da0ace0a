"""Shared by the matmul tests: quantize an operand, call the op of a format, compare the GPU with the CPU
operator."""

import torch

import fpquant_ext as fq


def quantize_operand(x, fmt, layout):
    """(codes, scales, global scale or None) of x (as float32)."""
    x = x.float().contiguous()
    if fmt == "mxfp4":
        return (*fq.quantize_mxfp4(x, None, "floor", layout), None)
    g = fq.nvfp4_global_scale(x)
    return (*fq.quantize_nvfp4(x, g, None, layout), g)


def run_matmul(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias):
    if fmt == "mxfp4":
        return fq.matmul_mxfp4(a, sa, b, sb, layout, out_dtype, bias)
    return fq.matmul_nvfp4(a, sa, ga, b, sb, gb, layout, out_dtype, bias)


# ---- GPU against the CPU operator (the float64 reference) -------------------------------------------------


def to_cuda(*tensors):
    """The tensors on the GPU (None stays None)."""
    return [None if t is None else t.cuda() for t in tensors]


def gpu_and_reference(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias=None):
    """(the op on the GPU, its result moved to the CPU; the op on the CPU, the reference) for CPU operands."""
    got = run_matmul(fmt, *to_cuda(a, sa, ga, b, sb, gb), layout, out_dtype, *to_cuda(bias))
    torch.cuda.synchronize()
    return got.cpu(), run_matmul(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias)


def check_against_reference(got, ref, tol):
    """NaN and inf exactly where the reference has them; relative Frobenius error over the finite rest <= tol.
    Returns the error."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.equal(got.isnan(), ref.isnan()), (got.isnan().sum(), ref.isnan().sum())
    assert torch.equal(got.isinf() & ~ref.isnan(), ref.isinf())
    ok = ref.isfinite()
    g, r = got[ok].double(), ref[ok].double()
    err = ((g - r).norm() / r.norm().clamp_min(1e-300)).item()
    assert err <= tol, err
    return err


def random_operand(rows, K, fmt, gen, span=60, zero_groups=0.05, layout="linear"):
    """Random codes and random group scales: E8M0 exponents in [-span, span] (far beyond the Hopper kernels'
    fold window at the default), or random normal E4M3 scales; a fraction of all-zero groups."""
    group = 32 if fmt == "mxfp4" else 16
    codes = torch.randint(0, 256, (rows, K // 2), generator=gen, dtype=torch.uint8)
    zero = torch.rand(rows, K // group, generator=gen) < zero_groups
    codes.view(rows, K // group, group // 2)[zero] = 0
    if fmt == "mxfp4":
        s = torch.randint(127 - span, 127 + span + 1, (rows, K // group), generator=gen).to(torch.uint8)
        s = s.view(torch.float8_e8m0fnu)
    else:
        s = torch.randint(0x08, 0x7F, (rows, K // group), generator=gen).to(torch.uint8).view(torch.float8_e4m3fn)
    return codes, fq.swizzle_scales(s) if layout == "blocked" else s


def add_nan_groups_and_a_zero_row(a, sa, sb, fmt):
    """In place, on linear scales: the NaN scale in A at group 5 of row 3 and at the last group of row M // 2
    (those rows of the result turn NaN), in B at group 0 of row 7 and group 17 of the last row (those
    columns), and row 10 of A all-zero codes under the largest finite scales (zero, not NaN)."""
    nan = 0xFF if fmt == "mxfp4" else 0x7F
    sa.view(torch.uint8)[3, 5] = nan
    sa.view(torch.uint8)[sa.shape[0] // 2, -1] = nan
    sb.view(torch.uint8)[7, 0] = nan
    sb.view(torch.uint8)[-1, 17] = nan
    a[10] = 0
    sa.view(torch.uint8)[10] = 254 if fmt == "mxfp4" else 0x7E


def poison_allocator(nbytes=1 << 28):
    """Fill memory the caching allocator hands out next with 0xFF bytes (NaN as float32, bf16 and fp16)."""
    t = torch.full((nbytes,), 0xFF, dtype=torch.uint8, device="cuda")
    del t
