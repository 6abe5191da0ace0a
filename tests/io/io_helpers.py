"""A small model (not transformers) and checkpoint-editing helpers for the tests of fpquant_ext.io."""

import json
import os

import torch
from torch import nn

import fpquant_ext as fq


class Net(nn.Module):
    """Embedding, two blocks of Linears (K = 64 and 128), a Linear whose K=96 no rotation of 64 divides,
    an lm_head (never converted)."""

    def __init__(self, d=64, hidden=128, vocab=40):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(d, hidden), "down": nn.Linear(hidden, d, bias=False)})
                                    for _ in range(2))
        self.side = nn.Linear(96, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        for b in self.blocks:
            x = x + b["down"](torch.relu(b["up"](x)))
        return self.lm_head(self.norm(x + self.side(x[..., :96] if x.shape[-1] >= 96 else torch.cat([x, x[..., :32]], -1))))


def make_model(seed=0, dtype=torch.bfloat16, device=None):
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return Net().to(dtype)


def converted(config, seed=0, dtype=torch.bfloat16):
    model = make_model(seed, dtype)
    fq.quantize_model(model, config, progress=False)
    return model


def read(ckpt):
    from safetensors.torch import load_file
    with open(os.path.join(ckpt, "config.json")) as f:
        return json.load(f), load_file(os.path.join(ckpt, "model.safetensors"))


def write(ckpt, config, tensors):
    from safetensors.torch import save_file
    os.makedirs(ckpt, exist_ok=True)
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ckpt, "model.safetensors"))


def fp4_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, fq.FP4Linear)}
