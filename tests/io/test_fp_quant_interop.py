"""FP-Quant's format: transformers' FPQuantConfig accepts our config.json; checkpoints written by FP-Quant's
convention (a fixture built from its documented rules, docs/checkpoints.md) load to the same weights."""

import math

import pytest
import torch
from torch import nn

import fpquant_ext as fq
from fpquant_ext.io import load_quantized, save_quantized

from io_helpers import converted, read, write

pytest.importorskip("safetensors")


@pytest.mark.parametrize("kwargs", [dict(format="nvfp4"), dict(format="mxfp4", rotation="hadamard", rotation_size=32),
                                    dict(format="mxfp4", weight_method="quest", rotation="gsr", rotation_size=64,
                                         rotation_fallback="skip")])
def test_transformers_accepts_our_config(tmp_path, kwargs):
    transformers = pytest.importorskip("transformers")
    config = fq.FP4Config(**kwargs)
    save_quantized(converted(config), str(tmp_path), "fp-quant", config, {"model_type": "llama"})
    qc = read(str(tmp_path))[0]["quantization_config"]
    theirs = transformers.FPQuantConfig.from_dict(qc)
    for key in ("forward_dtype", "forward_method", "backward_dtype", "hadamard_group_size", "store_master_weights",
                "pseudoquantization", "transform_init", "modules_to_not_convert"):
        assert getattr(theirs, key) == qc[key], key
    assert theirs.quant_method == "fp_quant"


def sylvester(G):
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < G:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(G)


E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def rtne_codes(v):
    """E2M1 codes of v (float64), round to nearest, ties to even, saturating: QuTLASS's reference rule."""
    a = v.abs().clamp(max=6.0)
    d = (a[..., None] - E2M1).abs()
    best = d.min(-1, keepdim=True).values
    cand = (d == best)
    idx = torch.where(cand[..., 1::2].any(-1) & cand.sum(-1).gt(1), (cand * torch.arange(8)).amax(-1),
                      cand.int().argmax(-1))
    # ties: of the two nearest the one with an even index
    even = torch.where(cand.sum(-1) > 1, torch.where(idx % 2 == 0, idx, idx - 1), idx)
    return (even | ((v < 0).long() << 3)).to(torch.uint8), E2M1[even] * torch.where(v < 0, -1.0, 1.0)


def fp_quant_mxfp4_layer(w, G, method):
    """FP-Quant / QuTLASS MXFP4 as documented: W' = W·H per G block (H in bf16), scale 2^floor(log2 s) with
    s = amax (abs_max: values times 3, weight_global_scale 3) or the Gaussian fit (quest, global scale 1)."""
    H = sylvester(G).to(torch.bfloat16)
    wr = (w.double().unflatten(-1, (-1, G)) @ H.double()).flatten(-2)
    groups = wr.unflatten(-1, (-1, 32))
    if method == "abs_max":
        s = groups.abs().amax(-1) + 1e-8
    else:
        s = groups.std(-1, correction=0) * (2.92247856 / 6.0) + 1e-8
    e = torch.floor(torch.log2(s))
    mult = 3.0 if method == "abs_max" else 1.0
    codes, vals = rtne_codes(groups / torch.exp2(e)[..., None] * mult)
    codes = codes.flatten(-2)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    dequant = (vals * torch.exp2(e)[..., None] / mult).flatten(-2).float()
    gs = torch.tensor([mult], dtype=torch.bfloat16)
    tensors = {"qweight": packed, "scales": (e + 127).to(torch.uint8), "weight_global_scale": gs,
               "act_global_scale": gs.clone(), "forward_hadamard_matrix": H, "backward_hadamard_matrix": H.clone()}
    return tensors, dequant, H


@pytest.mark.parametrize("method", ["abs_max", "quest"])
def test_fp_quant_mxfp4_checkpoint_loads_to_its_weights(tmp_path, method):
    torch.manual_seed(0)
    G = 32
    model = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 8, bias=False)).to(torch.bfloat16)
    layer_tensors, dequant, H = fp_quant_mxfp4_layer(model[0].weight.data, G, method)
    tensors = {f"0.{k}": v for k, v in layer_tensors.items()}
    tensors["0.bias"] = model[0].bias.data
    tensors["1.weight"] = model[1].weight.data
    qc = {"quant_method": "fp_quant", "forward_dtype": "mxfp4", "forward_method": method, "backward_dtype": "bf16",
          "hadamard_group_size": G, "modules_to_not_convert": ["1"], "store_master_weights": False,
          "pseudoquantization": False, "transform_init": "hadamard"}
    write(str(tmp_path), {"quantization_config": qc}, tensors)
    fresh = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 8, bias=False)).to(torch.bfloat16)
    load_quantized(fresh, str(tmp_path))
    layer = fresh[0]
    assert isinstance(layer, fq.FP4Linear) and isinstance(fresh[1], nn.Linear)
    assert torch.equal(layer.qweight.dequantize(), dequant)  # code * 2^e / 3 (abs_max), code * 2^e (quest)
    # the rotation is the stored bf16 Hadamard, which is our exact one rounded: ours is used
    assert torch.equal(layer.qweight.rotation, fq.rotations.hadamard(G))
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    xr = (x.float().reshape(-1, G) @ fq.rotations.hadamard(G)).reshape(x.shape).to(torch.bfloat16)
    ref = (xr.float() @ dequant.t() + layer.bias.float()).to(torch.bfloat16)
    assert torch.equal(layer(x), ref)
    # and it saves back to the same FP-Quant tensors
    save_quantized(fresh, str(tmp_path / "again"), "fp-quant",
                   fq.FP4Config(format="mxfp4", rotation="hadamard", rotation_size=G))
    again = read(str(tmp_path / "again"))[1]
    assert torch.equal(again["0.qweight"], tensors["0.qweight"]) and torch.equal(again["0.scales"], tensors["0.scales"])
    assert float(again["0.weight_global_scale"]) == (3.0 if method == "abs_max" else 1.0)


def test_fp_quant_nvfp4_checkpoint_global_scale_3(tmp_path):
    """FP-Quant's NVFP4 abs_max modules use weight_global_scale 3.0 (bf16): the encode multiplier, as ours."""
    torch.manual_seed(0)
    w = torch.randn(32, 64, dtype=torch.bfloat16)
    gs = torch.tensor([3.0])
    codes, scales = fq.quantize_nvfp4(w, gs)
    eye = torch.eye(16, dtype=torch.bfloat16)
    tensors = {"0.qweight": codes, "0.scales": scales.view(torch.uint8), "0.weight_global_scale": gs.bfloat16(),
               "0.act_global_scale": gs.bfloat16(), "0.forward_hadamard_matrix": eye, "0.backward_hadamard_matrix": eye.clone()}
    qc = {"quant_method": "fp_quant", "forward_dtype": "nvfp4", "forward_method": "abs_max", "backward_dtype": "bf16",
          "hadamard_group_size": 16, "modules_to_not_convert": [], "store_master_weights": False,
          "pseudoquantization": False, "transform_init": "identity"}
    write(str(tmp_path), {"quantization_config": qc}, tensors)
    fresh = load_quantized(nn.Sequential(nn.Linear(64, 32, bias=False)).to(torch.bfloat16), str(tmp_path))
    assert fresh[0].qweight.rotation is None  # identity: no rotation
    assert torch.equal(fresh[0].qweight.dequantize(), fq.dequantize_nvfp4(codes, scales, gs))


def test_transformers_loader_needs_a_gpu(tmp_path):
    """transformers' FP-Quant quantizer refuses to load without a CUDA / XPU device (and the fp_quant
    package): on this CPU machine only the config can be checked."""
    transformers = pytest.importorskip("transformers")
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from transformers.quantizers.quantizer_fp_quant import FPQuantHfQuantizer
    q = FPQuantHfQuantizer(transformers.FPQuantConfig(forward_dtype="mxfp4", forward_method="abs_max"))
    with pytest.raises(NotImplementedError, match="only supported on GPU"):
        q.validate_environment(device_map=None)
