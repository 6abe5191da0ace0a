"""fpquant::fake_quantize (opcheck, straight-through gradients), torch.compile, and QAT."""

import pytest
import torch
from torch import nn

import fpquant_ext as fq
from fpquant_ext.nn import FP4Config, FP4Linear, fake_quantize, quantize_model

from nn_helpers import TinyNet, dequantize_ref, quantize_ref

CASES = [("mxfp4", "floor", None, False), ("mxfp4", "quest", "hadamard", True),
         ("nvfp4", "absmax", None, True), ("nvfp4", "absmax", "dct", False)]


@pytest.mark.parametrize("fmt,method,rotation,mask", CASES)
def test_opcheck(fmt, method, rotation, mask):
    x = torch.randn(6, 64, requires_grad=True)
    R = None if rotation is None else fq.rotations.get_rotation(rotation, 32)
    gs = torch.tensor([300.0]) if (fmt == "nvfp4" and rotation) else None
    torch.library.opcheck(torch.ops.fpquant.fake_quantize.default, (x, fmt, method, R, gs, mask))


@pytest.mark.parametrize("x", [torch.randn(6, 64, dtype=torch.float64), torch.randn(2, 0, 64)], ids=["f64", "no-rows"])
@pytest.mark.parametrize("mask", [False, True])
def test_opcheck_float64_and_no_rows(x, mask):
    R = fq.rotations.hadamard(32)
    for fmt, method in [("mxfp4", "floor"), ("nvfp4", "absmax")]:
        torch.library.opcheck(torch.ops.fpquant.fake_quantize.default,
                              (x.clone().requires_grad_(True), fmt, method, R, None, mask))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_forward_is_quantize_dequantize_and_backward_straight_through(fmt):
    x = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    R = fq.rotations.hadamard(16)
    y = fake_quantize(x, fmt, rotation=R)
    c, s, g = quantize_ref(x.detach(), fmt, R=R)
    assert y.dtype == torch.bfloat16 and torch.equal(y, dequantize_ref(c, s, g, fmt, R).bfloat16())
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad)


def test_saturated_values_get_no_gradient(seed):
    # MXFP4 floor: amax 7 gives scale 2^0, so 7 (and 6.9) clip to 6; the rest of the group does not.
    x = torch.full((1, 32), 0.5)
    x[0, 0], x[0, 1] = 7.0, 6.9
    x.requires_grad_(True)
    fake_quantize(x, "mxfp4", "floor", mask_saturated=True).sum().backward()
    expected = torch.ones(1, 32)
    expected[0, :2] = 0
    assert torch.equal(x.grad, expected)
    # with a rotation the mask is applied in the rotated space: the gradient is still exact there
    # (NVFP4 absmax clips where the E4M3 block scale rounded below amax / 6; the mask comes from the reference)
    x2 = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    R = fq.rotations.hadamard(32)
    fake_quantize(x2, "nvfp4", rotation=R, mask_saturated=True).sum().backward()
    y = fq.formats.rotate(x2.detach(), R)
    g = fq.formats.nvfp4_global_scale(y)
    _, scales = fq.formats.quantize_nvfp4(y, g)
    step = (fq.formats.e4m3_decode(scales.view(torch.uint8)) / g).repeat_interleave(16, -1)
    kept = ((y.abs() / step) <= 6).float()
    upstream = fq.formats.rotate(torch.ones(3, 64), R)  # d sum / d y for out = Q(y) R^T
    assert torch.allclose(x2.grad, fq.formats.rotate(upstream * kept, R, inverse=True), atol=1e-5)


@pytest.mark.parametrize("cfg", [FP4Config(mode="w4a16", rotation="hadamard", rotation_size=32),
                                 FP4Config(format="nvfp4", mode="w4a4"),
                                 FP4Config(mode="qat", fake_quantize_activations=True, rotation="hadamard",
                                           rotation_size=32)], ids=["w4a16", "w4a4", "qat"])
def test_compile_fullgraph_matches_eager(cfg, seed):
    torch._dynamo.reset()
    torch.manual_seed(seed)
    model = TinyNet()
    quantize_model(model, cfg, progress=False)
    if cfg.mode != "qat":
        model.requires_grad_(False)  # inference modes: no gradient flows through activation quantization
    x = torch.randn(2, 3, 64)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), eager)
    if cfg.mode == "qat":
        compiled(x).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        model(x).square().mean().backward()
        assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
        assert "blocks.0.up.weight" in grads
        assert all(torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7) for n, p in model.named_parameters()
                   if n in grads)


def test_compile_inductor_w4a16(seed):
    torch._dynamo.reset()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)).to(torch.bfloat16)
    quantize_model(model, FP4Config(format="nvfp4"), progress=False)
    model.requires_grad_(False)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    assert torch.equal(torch.compile(model, fullgraph=True)(x), model(x))


def test_qat_loss_falls(seed):
    torch.manual_seed(seed % 1000)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    student = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    quantize_model(student, FP4Config(mode="qat", fake_quantize_activations=True, rotation="hadamard",
                                      rotation_size=32, mask_saturated_gradients=True), progress=False)
    assert all(isinstance(student[i], FP4Linear) for i in (0, 2))
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add synchronization
    try:
        for _ in range(300):
            x = torch.randn(32, 64)
            with torch.no_grad():
                target = teacher(x)
            loss = nn.functional.mse_loss(student(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.3 * first, (first, last)
    # the trained layer exports its FP4 weight
    qw = student[0].quantized_weight()
    assert qw.format == "mxfp4" and qw.rotation_size == 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt,method", [("mxfp4", "ceil"), ("nvfp4", "absmax")])
def test_masked_gradient_passes_unchanged_where_nothing_clipped(fmt, method, dtype, seed):
    # In a rotation block with no clipped value the gradient is the unmasked one, bit for bit (rotated there
    # and back in the input dtype, bfloat16 gradients came back an ulp off). MXFP4 'ceil' never clips;
    # NVFP4 'absmax' clips now and then (an E4M3 scale rounded below amax / 6).
    g = torch.Generator().manual_seed(seed)
    R = fq.rotations.hadamard(32)
    x = torch.randn(16, 64, generator=g).to(dtype).requires_grad_(True)
    out, mask = torch.ops.fpquant.fake_quantize(x, fmt, method, R, None, True)
    grad = torch.randn(16, 64, generator=g).to(dtype)
    out.backward(grad)
    whole = mask.reshape(16, 2, 32).all(-1, keepdim=True).expand(16, 2, 32).reshape(16, 64)
    assert whole.sum() >= 64 and (fmt == "nvfp4" or whole.all())
    assert torch.equal(x.grad[whole], grad[whole])


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("mask", [False, True])
def test_no_rows(fmt, mask):
    x = torch.randn(2, 0, 64, requires_grad=True)
    y = fake_quantize(x, fmt, rotation=fq.rotations.hadamard(32), mask_saturated=mask)
    assert y.shape == (2, 0, 64) and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    with pytest.raises(ValueError, match=r"last dimension \(40\) must be a multiple of the group size"):
        fake_quantize(torch.randn(0, 40), fmt)
    with pytest.raises(ValueError, match=r"last dimension \(96\) must be a multiple of the rotation size 64"):
        fake_quantize(torch.randn(0, 96), fmt, rotation=fq.rotations.hadamard(64))
    with pytest.raises(ValueError, match=r"rotation size must be 16, 32, 64 or 128"):
        fake_quantize(torch.randn(0, 96), fmt, rotation=torch.eye(48))


def test_qat_layer_with_no_rows_gives_a_zero_weight_gradient():
    # As nn.Linear: the master weight takes part (a None gradient is an unused parameter for DDP).
    layer = FP4Linear.from_linear(nn.Linear(64, 32), FP4Config(mode="qat", fake_quantize_activations=True))
    layer(torch.randn(0, 64)).sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros(32, 64))
    assert torch.equal(layer.bias.grad, torch.zeros(32))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_float64_is_quantized_as_float32(fmt, seed):
    g = torch.Generator().manual_seed(seed)
    R = fq.rotations.hadamard(32)
    x = torch.randn(4, 64, generator=g, dtype=torch.float64, requires_grad=True)
    y = fake_quantize(x, fmt, rotation=R, mask_saturated=True)
    assert y.dtype == torch.float64
    assert torch.equal(y, fake_quantize(x.detach().float(), fmt, rotation=R).double())
    y.sum().backward()
    x32 = x.detach().float().requires_grad_(True)
    fake_quantize(x32, fmt, rotation=R, mask_saturated=True).sum().backward()
    assert torch.allclose(x.grad, x32.grad.double(), atol=1e-6)
    # a float64 QAT layer computes with the weight it exports
    lin = nn.Linear(64, 32).double()
    layer = FP4Linear.from_linear(lin, FP4Config(format=fmt, mode="qat", fake_quantize_activations=True,
                                                 rotation="hadamard", rotation_size=32))
    w_hat = layer.quantized_weight().dequantize_unrotated().double()
    assert torch.equal(layer(x.detach()), nn.functional.linear(y.detach(), w_hat, lin.bias))


@pytest.mark.parametrize("trainable", ["rotation", "global_scale"])
def test_fake_quantize_refuses_a_gradient_it_cannot_give(trainable):
    # The straight-through estimator has a gradient for x only: a trainable rotation or global scale must not
    # be left silently untrained (grad None).
    x = torch.randn(4, 64, requires_grad=True)
    R = fq.rotations.hadamard(32).requires_grad_(trainable == "rotation")
    gs = fq.ops.nvfp4_global_scale(x.detach()).requires_grad_(trainable == "global_scale")
    y = fake_quantize(x, "nvfp4", rotation=R, global_scale=gs)
    with pytest.raises(RuntimeError, match="no gradient for rotation or global_scale"):
        y.sum().backward()
    # frozen, the gradient reaches x as before
    y = fake_quantize(x, "nvfp4", rotation=R.detach(), global_scale=gs.detach())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_fake_quantize_takes_a_number_as_global_scale():
    x = torch.randn(4, 64)
    g = float(fq.ops.nvfp4_global_scale(x))
    assert torch.equal(fake_quantize(x, "nvfp4", global_scale=g),
                       fake_quantize(x, "nvfp4", global_scale=torch.tensor([g])))


@pytest.mark.parametrize("mode", ["w4a16", "w4a4"])
def test_mask_saturated_gradients_is_refused_where_nothing_has_a_gradient(mode):
    # w4a16 / w4a4 hold no master weight and pass no straight-through gradient: the flag would be ignored.
    with pytest.raises(ValueError, match="mask_saturated_gradients applies to modes 'pseudo' and 'qat'"):
        FP4Config(mode=mode, mask_saturated_gradients=True)
