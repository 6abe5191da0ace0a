"""Against the real compressed-tensors: its decompressor reads our exports, we read what its compressor writes."""

import json
import os

import pytest
import torch
from torch import nn

import fpquant_ext as fq
from fpquant_ext.io import load_quantized, save_quantized

from io_helpers import converted, fp4_layers, make_model, read

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import ModelCompressor, MXFP4PackedCompressor, NVFP4PackedCompressor  # noqa: E402
from compressed_tensors.quantization import (QuantizationConfig, apply_quantization_config,  # noqa: E402
                                             preset_name_to_scheme)
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam  # noqa: E402

COMPRESSORS = {"nvfp4": NVFP4PackedCompressor, "mxfp4": MXFP4PackedCompressor}


@pytest.mark.parametrize("format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("mode", ["w4a16", "w4a4"])
def test_their_decompressor_reads_our_export(tmp_path, format, mode):
    config = fq.FP4Config(format=format, mode=mode)
    model = converted(config)
    save_quantized(model, str(tmp_path), "compressed-tensors", config)
    cfg, tensors = read(str(tmp_path))
    qconfig = QuantizationConfig.model_validate(cfg["quantization_config"])  # their schema accepts ours
    scheme = qconfig.config_groups["group_0"]
    for name, layer in fp4_layers(model).items():
        sd = {k.split(".")[-1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
        sd.pop("bias", None)
        theirs = COMPRESSORS[format].decompress(sd, scheme)["weight"]
        assert theirs.dtype == torch.bfloat16
        assert torch.equal(theirs, layer.qweight.dequantize(torch.bfloat16)), name


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(32, 64, bias=False)
        self.lm_head = nn.Linear(64, 16, bias=False)

    def forward(self, x):
        return self.lm_head(self.b(self.a(x)))


def _their_checkpoint(path, preset, fmt):
    """What llm-compressor does, by hand: observe scales, compress with ModelCompressor, save, update_config."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Two().to(torch.bfloat16)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])}, ignore=["lm_head"]), show_progress=False)
    for m in (model.a, model.b):
        args = m.quantization_scheme.weights
        w = m.weight.data.float()
        groups = w.unflatten(-1, (-1, args.group_size))
        gs = None
        if fmt.startswith("nvfp4"):
            gs = generate_gparam(w.min(), w.max())
            m.weight_global_scale.data.copy_(gs)
        scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gs)
        m.weight_scale.data = scale.to(m.weight_scale.dtype)
    compressor = ModelCompressor.from_pretrained_model(model, fmt)
    compressor.compress_model(model)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "two"}, f)
    compressor.update_config(path)
    return model


@pytest.mark.parametrize("preset,fmt", [("NVFP4A16", "nvfp4-pack-quantized"), ("MXFP4A16", "mxfp4-pack-quantized")])
def test_we_load_what_their_compressor_writes(tmp_path, preset, fmt):
    theirs = _their_checkpoint(str(tmp_path), preset, fmt)
    scheme = theirs.a.quantization_scheme
    cfg, tensors = read(str(tmp_path))
    model = load_quantized(Two().to(torch.bfloat16), str(tmp_path))
    assert isinstance(model.a, fq.FP4Linear) and isinstance(model.lm_head, nn.Linear)
    assert model.a.format == fmt[:5]
    for name in ("a", "b"):
        sd = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(name + ".") and not k.endswith("bias")}
        want = COMPRESSORS[fmt[:5]].decompress(sd, scheme)["weight"]
        assert torch.equal(getattr(model, name).qweight.dequantize(torch.bfloat16), want)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    a = getattr(model, "a")
    ref = (x.float() @ a.qweight.dequantize().t() + a.bias.float()).to(torch.bfloat16)
    assert torch.equal(a(x), ref)
