"""FP4Linear on a GPU: the W4A16 kernels with the weight packed once, compile, state dicts after a move."""

import pytest
import torch
from torch import nn

import fpquant_ext as fq
from fpquant_ext.nn import FP4Config, FP4Linear, quantize_model

from nn_helpers import TinyNet, dequantize_ref, quantize_ref, rotate_ref

pytestmark = pytest.mark.cuda


def count_calls(fn, op_name):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == op_name)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("M", [1, 16, 200])
def test_w4a16_kernels_packed_once(fmt, M, seed):
    torch.manual_seed(seed % 1000)
    lin = nn.Linear(1024, 512).to(torch.bfloat16)
    layer = FP4Linear.from_linear(lin, FP4Config(format=fmt, rotation="hadamard", rotation_size=128)).cuda()
    layer.requires_grad_(False)
    assert layer.qweight._packed is not None  # packed when it arrived on the GPU
    x = torch.randn(M, 1024, dtype=torch.bfloat16, device="cuda")
    out, packs = count_calls(lambda: layer(x), "fpquant::pack_w4a16")
    assert packs == 0
    c, s, g = quantize_ref(lin.weight.float(), fmt, R=fq.rotations.hadamard(128))
    w = dequantize_ref(c, s, g, fmt).double()
    ref = rotate_ref(x.cpu(), fq.rotations.hadamard(128)).double() @ w.T + lin.bias.double()
    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err


def test_model_on_gpu_compile_and_reload(seed):
    torch.manual_seed(seed % 1000)
    model = TinyNet(d=128, hidden=256).to(torch.bfloat16)
    quantize_model(model, FP4Config(format="nvfp4", rotation="hadamard", rotation_size=128), progress=False)
    cpu_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.cuda().requires_grad_(False)
    x = torch.randn(4, 7, 128, dtype=torch.bfloat16, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    # Inductor fuses the bf16 rotation glue (x.float() @ R, back to bf16) and keeps some intermediates in
    # float32 where eager rounds them to bf16: on the H200 that moved 16% of the outputs by up to one bf16
    # step of their inputs (max abs 0.0078). The kernels are the same; the outputs agree to bf16 rounding.
    got = compiled(x)
    assert ((got.double() - eager.double()).norm() / eager.double().norm()).item() < 1e-2
    # load_state_dict into GPU buffers repacks: changed weights change the output
    scrambled = {k: (v.flip(0) if k.endswith("qweight.codes") else v) for k, v in cpu_state.items()}
    model.load_state_dict(scrambled)
    assert not torch.equal(model(x), eager)
    model.load_state_dict(cpu_state)
    assert torch.equal(model(x), eager)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_w4a4_runs_the_gemm_op(fmt, seed):
    # On a GPU with a native block-scaled GEMM the W4A4 product is the op (one call per layer), within the
    # float32-emulation's rounding of the CPU result; compiled, the same.
    torch.manual_seed(seed % 1000)
    model = TinyNet(d=128, hidden=256).to(torch.bfloat16)
    quantize_model(model, FP4Config(format=fmt, mode="w4a4", rotation="hadamard", rotation_size=128),
                   progress=False)
    x = torch.randn(3, 5, 128, dtype=torch.bfloat16)
    ref = model(x)
    model.cuda().requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, FP4Linear)]
    native = fq.tuning.plan_matmul(1, 256, 128, fmt, torch.bfloat16, "linear", bias_dtype=torch.bfloat16).path != "generic"
    assert all(m.qweight.native_gemm == native for m in layers)
    out, calls = count_calls(lambda: model(x.cuda()), f"fpquant::matmul_{fmt}")
    assert calls == (len(layers) if native else 0)
    assert ((out.double().cpu() - ref.double()).norm() / ref.double().norm()).item() < 1e-2
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x.cuda())
    assert ((got.double() - out.double()).norm() / out.double().norm()).item() < 1e-2


@pytest.mark.parametrize("mode", ["w4a4", "qat"])
def test_other_modes_run_on_gpu(mode, seed):
    torch.manual_seed(seed % 1000)
    model = TinyNet(d=128, hidden=256)
    quantize_model(model, FP4Config(format="nvfp4", mode=mode, fake_quantize_activations=mode == "qat"),
                   progress=False)
    x = torch.randn(3, 128)
    ref = model(x)
    model.cuda()
    out = model(x.cuda())
    assert ((out.cpu() - ref).norm() / ref.norm()).item() < 1e-2
    if mode == "qat":
        out.square().mean().backward()
        assert model.blocks[0].up.weight.grad is not None


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_w4a4_float64_input_on_gpu(fmt, seed):
    # The GEMM op has no float64 output: such a product is emulated, as on the CPU, not refused by the op.
    torch.manual_seed(seed % 1000)
    layer = FP4Linear.from_linear(nn.Linear(256, 128), FP4Config(format=fmt, mode="w4a4"))
    x = torch.randn(5, 256, dtype=torch.float64)
    ref = layer(x)
    layer.cuda().requires_grad_(False)
    out = layer(x.cuda())
    # the same FP4 operands; float64 sums in another order
    assert out.dtype == torch.float64 and torch.allclose(out.cpu(), ref, rtol=1e-10, atol=1e-12)
