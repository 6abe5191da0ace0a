"""quantize_model on a custom nn.Module: conversion, skip reasons, rotation-size policy, meta device."""

import warnings

import pytest
import torch
from torch import nn

from fpquant_ext.nn import FP4Config, FP4Linear, quantize_model

from nn_helpers import TinyNet, dequantize_ref, product_ref, quantize_ref


def linear_names(model, cls):
    return {name for name, m in model.named_modules() if type(m) is cls}


@pytest.mark.parametrize("mode", ["w4a16", "w4a4", "qat"])
def test_custom_module_converts_in_one_call(mode, seed):
    torch.manual_seed(seed)
    model = TinyNet()
    ids = torch.randint(0, 48, (2, 5))
    x = model.embed(ids)
    summary = quantize_model(model, FP4Config(mode=mode), progress=False)
    converted = {"blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "proj_odd"}
    assert linear_names(model, FP4Linear) == converted
    assert linear_names(model, nn.Linear) == {"odd", "lm_head"}
    assert {c.name for c in summary.converted} == converted
    assert dict(summary.skipped) == {"odd": "K=100 is not a multiple of the group 32",
                                     "lm_head": "in modules_to_not_convert ('lm_head')"}
    text = str(summary)
    if mode != "qat":
        assert summary.bytes_after < summary.bytes_before / 3
        assert "x smaller)" in text
    else:  # the float master weights are kept, plus the bias: never "0.97x smaller"
        assert summary.bytes_after >= summary.bytes_before
        assert "x larger: the float weights are kept)" in text and "smaller" not in text
    assert "converted 5 Linear layers" in text and "K=100 is not a multiple of the group 32" in text
    assert model(x).shape == (2, 5, 48)


def test_w4a16_model_output_bit_exact(seed):
    torch.manual_seed(seed)
    model = TinyNet().to(torch.bfloat16)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    block = model.blocks[0]
    w_up, b_up = block.up.weight.detach().clone(), block.up.bias.detach().clone()
    w_down = block.down.weight.detach().clone()
    quantize_model(model, FP4Config(format="nvfp4"), progress=False)

    def q(w):
        return dequantize_ref(*quantize_ref(w, "nvfp4"), "nvfp4")

    h = torch.relu(product_ref(x, q(w_up), b_up, torch.bfloat16))
    assert torch.equal(block(x), x + product_ref(h, q(w_down), None, torch.bfloat16))


def test_skip_reasons_never_crash():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(100, 64)  # K not a multiple of the group
            self.b = nn.Linear(8, 64)    # K smaller than a group
            self.attn = nn.MultiheadAttention(64, 4)  # out_proj is a subclass of nn.Linear
            self.keep = nn.Linear(64, 64)
            self.drop_me = nn.Linear(64, 64)
            self.head = nn.Sequential(nn.Linear(64, 3))  # N=3 is fine
            self.lm_head = nn.Linear(64, 5)

    model = Odd()
    s = quantize_model(model, FP4Config(exclude=["drop_*"]), progress=False)
    reasons = dict(s.skipped)
    assert reasons["a"] == "K=100 is not a multiple of the group 32"
    assert reasons["b"] == "K=8 is not a multiple of the group 32"
    assert "subclass of nn.Linear" in reasons["attn.out_proj"]
    assert reasons["drop_me"] == "excluded by pattern 'drop_*'"
    assert reasons["lm_head"] == "in modules_to_not_convert ('lm_head')"
    assert {c.name for c in s.converted} == {"keep", "head.0"}
    assert model.head(torch.randn(2, 64)).shape == (2, 3)
    only = quantize_model(Odd(), FP4Config(include=["head.*"], modules_to_not_convert=[]), progress=False)
    assert {c.name for c in only.converted} == {"head.0"}
    assert dict(only.skipped)["keep"] == "matches no include pattern"


def test_nothing_converted_warns_with_the_reasons():
    model = nn.Sequential(nn.Linear(60, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"converted no Linear layer \(K=60 is not a multiple of the group 32; "
                                         r"K=8 is not a multiple of the group 32\)"):
        s = quantize_model(model, FP4Config(), progress=False)
    assert "converted no Linear layer" in str(s) and "nan" not in str(s)
    assert all(type(m) is not FP4Linear for m in model.modules())
    with pytest.warns(UserWarning, match=r"the model has no nn.Linear"):
        quantize_model(nn.Sequential(nn.ReLU()), FP4Config(), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(nn.Sequential(nn.Linear(64, 8)), FP4Config(), progress=False)


def test_shared_module_replaced_everywhere():
    shared = nn.Linear(64, 64)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    s = quantize_model(model, FP4Config(), progress=False)
    assert len(s.converted) == 1 and model["a"][0] is model["b"][0] and isinstance(model["a"][0], FP4Linear)


def test_rotation_size_policy_k576():
    """SmolLM2's hidden size 576 = 9 * 64: 128 does not divide it, 64 does."""
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(576, 128), nn.Linear(128, 576))

    m = model()
    s = quantize_model(m, FP4Config(rotation="hadamard", rotation_size=128), progress=False)
    assert [(c.name, c.rotation_size) for c in s.converted] == [("0", 64), ("1", 128)]
    assert m[0].qweight.rotation_size == 64 and "rotation=hadamard(64)" in repr(m[0])
    assert "rotation size 64 (not 128) for 1 layers with K in [576]" in str(s)
    m = model()
    s = quantize_model(m, FP4Config(rotation="hadamard", rotation_size=128, rotation_fallback="skip"),
                       progress=False)
    assert [c.name for c in s.converted] == ["1"]
    assert s.skipped == [("0", "K=576 is not a multiple of the rotation size 128 (rotation_fallback='skip')")]
    assert type(m[0]) is nn.Linear


def test_quest_without_rotation_warns():
    with pytest.warns(UserWarning, match="'quest' without a rotation"):
        FP4Config(weight_method="quest")
    with pytest.warns(UserWarning, match="act_method='quest'"):
        FP4Config(mode="w4a4", act_method="quest")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FP4Config(weight_method="quest", rotation="hadamard")
        FP4Config(act_method="quest")  # w4a16 quantizes no activations
        assert FP4Config().weight_method == "floor" and FP4Config(format="nvfp4").weight_method == "absmax"
    with pytest.raises(ValueError, match="weight_method must be one of"):
        FP4Config(format="nvfp4", weight_method="floor")


@pytest.mark.parametrize("cfg", [FP4Config(format="nvfp4", rotation="hadamard", rotation_size=32),
                                 FP4Config(mode="w4a4", act_global_scale="dynamic"),
                                 FP4Config(format="nvfp4", mode="qat", fake_quantize_activations=True,
                                           act_global_scale="static", act_global_scale_value=50.0)])
@pytest.mark.parametrize("assign", [False, True])
def test_meta_device_convert_then_load(cfg, assign, seed):
    torch.manual_seed(seed)
    source = TinyNet()
    quantize_model(source, cfg, progress=False)
    with torch.device("meta"):
        target = TinyNet()
    s = quantize_model(target, cfg, progress=False)
    assert len(s.converted) == 5 and all(t.is_meta for t in target.state_dict().values())
    if not assign:
        target.to_empty(device="cpu")
    target.load_state_dict(source.state_dict(), assign=assign)
    x = torch.randn(2, 3, 64)
    assert torch.equal(target(x), source(x))
    sd_a, sd_b = source.state_dict(), target.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(sd_a[k].dtype == sd_b[k].dtype for k in sd_a)


def test_progress_counter_on_stderr(capsys):
    quantize_model(nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 32)), FP4Config(), progress=True)
    err = capsys.readouterr().err
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert "quantizing 2/2" in err
    else:
        assert "2/2" in err


def test_string_where_a_list_is_expected_is_one_name():
    def model():
        return nn.ModuleDict({"body": nn.Linear(64, 64), "lm_head": nn.Linear(64, 10), "head2": nn.Linear(64, 8)})
    m = model()
    quantize_model(m, FP4Config(modules_to_not_convert="lm_head"), progress=False)
    assert type(m["lm_head"]) is nn.Linear and isinstance(m["body"], FP4Linear)
    m = model()
    quantize_model(m, FP4Config(exclude="*head*", modules_to_not_convert=[]), progress=False)
    assert [n for n, x in m.items() if isinstance(x, FP4Linear)] == ["body"]
    m = model()
    quantize_model(m, FP4Config(include="body"), progress=False)
    assert [n for n, x in m.items() if isinstance(x, FP4Linear)] == ["body"]
    assert FP4Config(include=("a", "b")).include == ["a", "b"]
    for bad in (dict(exclude=3), dict(include=["a", 3]), dict(modules_to_not_convert=None)):
        with pytest.raises(TypeError, match="must be a list of strings"):
            FP4Config(**bad)


def test_a_module_under_two_names_breaks_no_tie():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 64)
            self.alias = self.a

    m = Aliased()
    s = quantize_model(m, FP4Config(), progress=False)
    assert m.a is m.alias and isinstance(m.a, FP4Linear)
    assert not s.notes, s.notes
