"""The conversion summary `fpquant quantize` prints counts the bytes of the model it was given."""

import pytest
import torch

from fpquant_ext import jobs
from fpquant_ext.nn import FP4Config


def test_calibrated_summary_counts_the_model_dtype(monkeypatch):
    """Calibrated methods quantize a float32 copy of a bfloat16 model (faster on the CPU); the summary's
    bytes before and after are still those of the bfloat16 layers, as for round to nearest."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, attention_bias=True)
    base = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(jobs, "_calibration_windows", lambda args, tokenizer: list(ids))
    linears = {n: m for n, m in base.named_modules() if type(m) is torch.nn.Linear and n != "lm_head"}

    model, summary = jobs._convert(base, FP4Config(format="mxfp4", algorithm="gptq"), None, None)

    assert sorted(c.name for c in summary.converted) == sorted(linears)
    assert summary.bytes_before == sum(p.numel() * p.element_size() for m in linears.values() for p in m.parameters())
    assert summary.bytes_after == sum(model.get_submodule(n).nbytes for n in linears)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
