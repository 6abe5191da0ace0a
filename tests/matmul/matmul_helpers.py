"""Shared by the matmul tests: quantize an operand, call the op of a format."""

import fpquant_ext as fq


def quantize_operand(x, fmt, layout):
    """(codes, scales, global scale or None) of x."""
    if fmt == "mxfp4":
        return (*fq.quantize_mxfp4(x, None, "floor", layout), None)
    g = fq.nvfp4_global_scale(x)
    return (*fq.quantize_nvfp4(x, g, None, layout), g)


def run_matmul(fmt, a, sa, ga, b, sb, gb, layout, out_dtype, bias):
    if fmt == "mxfp4":
        return fq.matmul_mxfp4(a, sa, b, sb, layout, out_dtype, bias)
    return fq.matmul_nvfp4(a, sa, ga, b, sb, gb, layout, out_dtype, bias)
