import os
import random

import pytest
import torch

import fpquant_ext as fq  # registers torch.ops.fpquant


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and fq.backend_info()["cuda_device"] is not None:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of fpquant_ext")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def diverse_tensor(rows: int, cols: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Gaussian rows with per-row magnitudes spread over 2^-30 .. 2^30, some heavy-tailed outliers,
    and some exact zeros: exercises every scale exponent region, not just values near 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    row_scale = torch.exp2(torch.randint(-30, 31, (rows, 1), generator=g).double())
    x = x * row_scale
    outliers = torch.rand(rows, cols, generator=g) < 1e-3
    x = torch.where(outliers, x * 50, x)
    zeros = torch.rand(rows, cols, generator=g) < 1e-3
    x = torch.where(zeros, torch.zeros_like(x), x)
    return x.to(dtype)


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test run (FPQUANT_TEST_SEED pins it); printed with any failure."""
    value = int(os.environ.get("FPQUANT_TEST_SEED", random.randrange(1 << 30)))
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value


_FLOAT8 = (torch.float8_e8m0fnu, torch.float8_e4m3fn)


def opcheck(op, args):
    """torch.library.opcheck with one accommodation: its test_schema compares inputs before/after the call
    with torch.allclose, which torch does not implement for float8 dtypes (our scale inputs). Those are
    compared bit for bit instead; everything else goes through unchanged."""
    original = torch.allclose

    def allclose(a, b, *rest, **kwargs):
        if isinstance(a, torch.Tensor) and a.dtype in _FLOAT8:
            return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        return original(a, b, *rest, **kwargs)

    torch.allclose = allclose
    try:
        torch.library.opcheck(op, args)
    finally:
        torch.allclose = original


def replay_matches(fn, x):
    """Capture fn(x) in a CUDA graph, replay it on new data in x's buffer, and return (graph outputs,
    eager outputs on the same data) for the caller to compare."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(static_x)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static_x)
    new = torch.randn_like(x)
    static_x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    return out, fn(new)


def make_weight(N, K, fmt, seed, device="cpu"):
    """A random [N, K] weight (std 0.02) quantized to `fmt`: (codes, scales, global scale or None, the
    dequantized weight in float64 on the CPU), the first three on `device`."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.02
    if fmt == "mxfp4":
        codes, scales = fq.quantize_mxfp4(w)
        gs = None
        w_deq = fq.dequantize_mxfp4(codes, scales)
    else:
        gs = fq.nvfp4_global_scale(w)
        codes, scales = fq.quantize_nvfp4(w, gs)
        w_deq = fq.dequantize_nvfp4(codes, scales, gs)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(codes), move(scales), move(gs), w_deq.double()
