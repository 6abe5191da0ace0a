"""FP4Linear outputs against references built from the fpquant ops: bit for bit on the CPU."""

import pytest
import torch
from torch import nn

import fpquant_ext as fq
from fpquant_ext.nn import FP4Config, FP4Linear, QuantizedWeight, calibrate_activations

from nn_helpers import dequantize_ref, product_ref, quantize_ref, rotate_ref

FORMATS = ["mxfp4", "nvfp4"]


def make_linear(K, N, seed, dtype=torch.float32, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
    return lin.to(dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rotation", ["none", "hadamard", "dct"])
def test_w4a16_bit_exact(fmt, dtype, rotation, seed):
    K, N = 128, 48
    lin = make_linear(K, N, seed, dtype)
    layer = FP4Linear.from_linear(lin, FP4Config(format=fmt, rotation=rotation, rotation_size=64))
    x = torch.randn(3, 5, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    R = None if rotation == "none" else fq.rotations.get_rotation(rotation, 64)
    codes, scales, gs = quantize_ref(lin.weight, fmt, R=R)
    xr = x if R is None else rotate_ref(x, R)
    expected = product_ref(xr, dequantize_ref(codes, scales, gs, fmt), lin.bias, dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (3, 5, N)
    assert torch.equal(out, expected)
    # stored rotated: unrotating approximates W, the stored weight is W · blockdiag(R)
    w = lin.weight.float()
    err = (layer.qweight.dequantize_unrotated() - w).norm() / w.norm()
    assert err < 0.2
    if R is not None:
        err_rot = (layer.qweight.dequantize() - rotate_ref(w, R)).norm() / w.norm()
        assert err_rot < 0.2


@pytest.mark.parametrize("fmt,method", [("mxfp4", "floor"), ("mxfp4", "ceil"), ("mxfp4", "quest"),
                                        ("nvfp4", "absmax")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w4a4_emulation_bit_exact(fmt, method, dtype, seed):
    K, N, r = 256, 64, 32
    lin = make_linear(K, N, seed, dtype)
    cfg = FP4Config(format=fmt, mode="w4a4", act_method=method, rotation="random_hadamard", rotation_size=r,
                    rotation_seed=seed % 100)
    layer = FP4Linear.from_linear(lin, cfg)
    R = fq.rotations.random_hadamard(r, seed=seed % 100)
    x = torch.randn(7, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    wc, ws, wg = quantize_ref(lin.weight, fmt, R=R)
    ac, as_, ag = quantize_ref(x, fmt, method, R=R)
    expected = product_ref(dequantize_ref(ac, as_, ag, fmt), dequantize_ref(wc, ws, wg, fmt), lin.bias, dtype)
    assert torch.equal(layer(x), expected)


def test_w4a4_nvfp4_static_global_scale_and_calibration(seed):
    K, N = 64, 32
    lin = make_linear(K, N, seed)
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(seed))
    fixed = FP4Linear.from_linear(lin, FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static",
                                                 act_global_scale_value=100.0))
    wc, ws, wg = quantize_ref(lin.weight, "nvfp4")
    gs = torch.tensor([100.0])
    ac, as_, _ = quantize_ref(x, "nvfp4", gs=gs)
    expected = product_ref(dequantize_ref(ac, as_, gs, "nvfp4"), dequantize_ref(wc, ws, wg, "nvfp4"), lin.bias,
                           torch.float32)
    assert torch.equal(fixed(x), expected)

    layer = FP4Linear.from_linear(lin, FP4Config(format="nvfp4", mode="w4a4", act_global_scale="static"))
    with pytest.raises(RuntimeError, match="no calibrated value"):
        layer(x)
    with calibrate_activations(layer):
        layer(x[:4])
        layer(x[4:])
    assert torch.equal(layer.act_global_scale, fq.nvfp4_global_scale(x))
    assert "act_global_scale" in layer.state_dict()
    # dynamic: the global scale of each input
    dyn = FP4Linear.from_linear(lin, FP4Config(format="nvfp4", mode="w4a4"))
    assert torch.equal(dyn(x), layer(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_pseudo_matches_unrotated_dequantization(fmt, seed):
    lin = make_linear(128, 32, seed)
    cfg = FP4Config(format=fmt, mode="pseudo", rotation="hadamard", rotation_size=32)
    layer = FP4Linear.from_linear(lin, cfg)
    assert not layer.weight.requires_grad
    x = torch.randn(4, 128)
    w_hat = layer.quantized_weight().dequantize_unrotated()
    assert torch.equal(layer(x), nn.functional.linear(x, w_hat, lin.bias))
    # the W4A4 pseudo layer fake-quantizes activations as well
    cfg_a = FP4Config(format=fmt, mode="pseudo", fake_quantize_activations=True, rotation="hadamard",
                      rotation_size=32)
    R = fq.rotations.hadamard(32)
    xc, xs, xg = quantize_ref(x, fmt, R=R)
    x_hat = dequantize_ref(xc, xs, xg, fmt, R)
    assert torch.equal(FP4Linear.from_linear(lin, cfg_a)(x), nn.functional.linear(x_hat, w_hat, lin.bias))


def test_dtype_and_device_behaviour():
    lin = make_linear(64, 32, 0)
    layer = FP4Linear.from_linear(lin, FP4Config(format="nvfp4", rotation="hadamard", rotation_size=64))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.to(torch.bfloat16)
    assert layer.bias.dtype == torch.bfloat16
    for k in ("qweight.codes", "qweight.scales", "qweight.global_scale", "qweight.rotation"):
        v = layer.state_dict()[k]
        assert v.dtype == before[k].dtype and torch.equal(v.view(torch.uint8), before[k].view(torch.uint8)), k
    layer.half().double().float()
    assert layer.qweight.scales.dtype == torch.float8_e4m3fn and layer.qweight.global_scale.dtype == torch.float32
    layer.type(torch.float16)  # converts every tensor it sees, uint8 ones too: the FP4 buffers must not be
    for k in ("qweight.codes", "qweight.scales", "qweight.global_scale", "qweight.rotation"):
        v = layer.state_dict()[k]
        assert v.dtype == before[k].dtype and torch.equal(v.view(torch.uint8), before[k].view(torch.uint8)), k
    assert layer.bias.dtype == torch.float16
    layer.float()
    assert layer(torch.randn(2, 64)).dtype == torch.float32
    built = FP4Linear(64, 32, device="meta", dtype=torch.bfloat16, config=FP4Config(mode="qat"))
    assert built.weight.is_meta and built.weight.dtype == torch.bfloat16 and built.weight.requires_grad


def test_extra_repr():
    layer = FP4Linear.from_linear(make_linear(64, 32, 0), FP4Config(
        format="nvfp4", mode="w4a4", rotation="gsr", rotation_size=64))
    text = repr(layer)
    for part in ("format=nvfp4", "mode=w4a4", "group=16", "rotation=gsr(64)", "act_global_scale=dynamic"):
        assert part in text, text
    assert "rotation=none" in repr(FP4Linear.from_linear(make_linear(64, 32, 0)))


def test_quantized_weight_state_dict_round_trip(seed):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(seed))
    for fmt in FORMATS:
        qw = QuantizedWeight.quantize(w, fmt, rotation=fq.rotations.hadamard(64))
        fresh = QuantizedWeight.empty(32, 128, fmt, rotation=torch.zeros(64, 64))
        fresh.load_state_dict(qw.state_dict())
        assert torch.equal(fresh.dequantize(), qw.dequantize())
        assert torch.equal(fresh.dequantize_unrotated(), qw.dequantize_unrotated())
        assert qw.shape == (32, 128) and qw.rotation_size == 64 and qw.group == (32 if fmt == "mxfp4" else 16)
    bad = dict(qw.state_dict(), scales=qw.scales.view(torch.uint8))
    with pytest.raises(RuntimeError, match="scales: expected dtype torch.float8_e4m3fn, got torch.uint8"):
        fresh.load_state_dict(bad)
    assert torch.equal(fresh.dequantize(), qw.dequantize())
    with pytest.raises(ValueError, match="scales must be"):
        QuantizedWeight(qw.codes, qw.scales.view(torch.uint8), qw.global_scale, format="nvfp4")


MODES_CONFIGS = [dict(format="mxfp4"), dict(format="nvfp4", mode="w4a4"), dict(format="mxfp4", mode="w4a4"),
                 dict(format="nvfp4", mode="pseudo", fake_quantize_activations=True), dict(format="mxfp4", mode="qat")]


@pytest.mark.parametrize("kwargs", MODES_CONFIGS, ids=lambda k: "-".join(map(str, k.values())))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batch_of_no_rows_gives_an_empty_output(kwargs, dtype):
    layer = FP4Linear.from_linear(make_linear(64, 32, 0), FP4Config(**kwargs)).to(dtype)
    for shape in [(0, 64), (2, 0, 64)]:
        y = layer(torch.randn(shape, dtype=dtype))
        assert y.shape == shape[:-1] + (32,) and y.dtype == dtype
    with pytest.raises(Exception, match="64|48"):
        layer(torch.randn(3, 48, dtype=dtype))  # K still checked


@pytest.mark.parametrize("fmt", FORMATS)
def test_w4a4_behind_a_trainable_layer(fmt, seed):
    # No gradient flows through the activation quantization (docs/nn.md): an input that requires grad is
    # quantized like any other, never an error; the same in a compiled graph.
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), FP4Linear.from_linear(make_linear(64, 32, seed),
                                                                   FP4Config(format=fmt, mode="w4a4")))
    x = torch.randn(5, 64, generator=g)
    with torch.no_grad():
        expected = model(x)
    y = model(x)
    assert torch.equal(y, expected)
    y.sum().backward()  # reaches the FP4 layer's bias, not the Linear before it
    assert model[0].weight.grad is None and model[1].bias.grad is not None
    torch._dynamo.reset()
    assert torch.equal(torch.compile(model, fullgraph=True)(x), expected)


def test_uncalibrated_static_layer_raises_when_compiled_too():
    layer = FP4Linear.from_linear(make_linear(64, 32, 0), FP4Config(format="nvfp4", mode="w4a4",
                                                                    act_global_scale="static"))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="no calibrated value"):
        compiled(torch.randn(2, 64))
    with calibrate_activations(layer):
        layer(torch.randn(8, 64))
    with torch.no_grad():
        x = torch.randn(2, 64)
        assert torch.equal(compiled(x), layer(x))


@pytest.mark.parametrize("kwargs", MODES_CONFIGS + [dict(format="mxfp4", rotation="hadamard", rotation_size=32)],
                         ids=lambda k: "-".join(map(str, k.values())))
def test_bad_input_is_refused_with_the_layer_shape(kwargs):
    layer = FP4Linear.from_linear(make_linear(64, 32, 0), FP4Config(**kwargs))
    # an integer output would be a truncated product
    with pytest.raises(TypeError, match="floating-point tensor, got torch.int64"):
        layer(torch.ones(3, 64, dtype=torch.long))
    for shape in [(3, 48), (2, 3, 96), (0, 48)]:
        with pytest.raises(ValueError, match=rf"in_features=64\], got shape \[{', '.join(map(str, shape))}\]"):
            layer(torch.randn(shape))


@pytest.mark.parametrize("fmt", FORMATS)
def test_w4a16_float64_input(fmt, seed):
    # Documented: float64 input gets the reference product in float64.
    lin = make_linear(128, 48, seed)
    layer = FP4Linear.from_linear(lin, FP4Config(format=fmt, rotation="hadamard", rotation_size=64))
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    R = fq.rotations.hadamard(64).double()
    xr = (x.reshape(-1, 64) @ R).reshape(x.shape)
    expected = torch.matmul(xr, layer.qweight.dequantize().double().t()) + lin.bias.double()
    out = layer(x)
    assert out.dtype == torch.float64
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kwargs", MODES_CONFIGS, ids=lambda k: "-".join(map(str, k.values())))
def test_from_linear_keeps_a_frozen_bias_frozen(kwargs):
    frozen = make_linear(64, 32, 0).requires_grad_(False)
    layer = FP4Linear.from_linear(frozen, FP4Config(**kwargs))
    assert not layer.bias.requires_grad
    assert layer.weight is None or layer.weight.requires_grad == (kwargs.get("mode") == "qat")
    assert layer(torch.randn(2, 64)).requires_grad == (kwargs.get("mode") == "qat")
    assert FP4Linear.from_linear(make_linear(64, 32, 0), FP4Config(**kwargs)).bias.requires_grad
