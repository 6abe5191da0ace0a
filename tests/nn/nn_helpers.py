"""Models and independent references for the tests of fpquant_ext.nn."""

import torch
from torch import nn

import fpquant_ext as fq


class Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class TinyNet(nn.Module):
    """Not a transformers model: nested blocks, a ModuleList, an odd-K layer and an lm_head."""

    def __init__(self, d=64, hidden=128, vocab=48, odd=100):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, hidden) for _ in range(2)])
        self.proj_odd = nn.Linear(d, odd)  # K=64 is fine; its output feeds the odd-K layer
        self.odd = nn.Linear(odd, d)       # K=100: not a multiple of any group
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.lm_head(x + self.odd(self.proj_odd(x)))


def rotate_ref(x, R):
    """x · blockdiag(R) in float32, back in x's dtype (what FP4Linear documents)."""
    r = R.shape[0]
    y = x.float().reshape(-1, r) @ R.float()
    return y.reshape(x.shape).to(x.dtype)


def quantize_ref(x, fmt, method=None, R=None, gs=None):
    """(codes, scales, global scale) from the fpquant ops."""
    if fmt == "mxfp4":
        codes, scales = fq.quantize_mxfp4(x.contiguous(), R, method or "floor")
        return codes, scales, None
    gs = fq.nvfp4_global_scale(x.contiguous(), R) if gs is None else gs
    codes, scales = fq.quantize_nvfp4(x.contiguous(), gs, R)
    return codes, scales, gs


def dequantize_ref(codes, scales, gs, fmt, R=None):
    if fmt == "mxfp4":
        return fq.dequantize_mxfp4(codes, scales, R)
    return fq.dequantize_nvfp4(codes, scales, gs, R)


def product_ref(a, w, bias, dtype):
    """float32 matmul, bias in the output dtype then float32, one rounding: linear_w4a16's CPU reference."""
    out = a.float() @ w.float().t()
    if bias is not None:
        out = out + bias.to(dtype).float()
    return out.to(dtype)
