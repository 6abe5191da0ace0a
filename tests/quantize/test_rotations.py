import math

import pytest
import torch

import fpquant_ext as fq
from fpquant_ext import formats as ref
from fpquant_ext import rotations


@pytest.mark.parametrize("name", sorted(rotations.ROTATIONS))
@pytest.mark.parametrize("r", [16, 32, 64, 128])
def test_orthogonal(name, r):
    R = rotations.get_rotation(name, r).double()
    assert R.shape == (r, r) and rotations.get_rotation(name, r).dtype == torch.float32
    torch.testing.assert_close(R @ R.t(), torch.eye(r, dtype=torch.float64), atol=1e-6, rtol=0)


def test_hadamard_entries_and_symmetry():
    H = rotations.hadamard(32)
    assert torch.equal(H.abs(), torch.full((32, 32), 1 / math.sqrt(32), dtype=torch.float32))
    assert torch.equal(H, H.t())
    assert H[0].gt(0).all()


def test_random_hadamard_is_seeded_sign_flip():
    a, b, c = rotations.random_hadamard(64, seed=3), rotations.random_hadamard(64, seed=3), rotations.random_hadamard(64, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    signs = (a / rotations.hadamard(64))[:, 0]
    assert signs.abs().eq(1).all() and torch.equal(a, signs[:, None] * rotations.hadamard(64))


def test_dct_dst_formulas():
    r = 16
    x = torch.randn(3, r, dtype=torch.float64)
    n = torch.arange(r, dtype=torch.float64)
    k = 3
    want = math.sqrt(2 / r) * (x * torch.cos(math.pi * (n + 0.5) * k / r)).sum(-1)
    torch.testing.assert_close((x @ rotations.dct(r).double())[:, k], want, atol=1e-6, rtol=0)
    want0 = math.sqrt(1 / r) * x.sum(-1)
    torch.testing.assert_close((x @ rotations.dct(r).double())[:, 0], want0, atol=1e-6, rtol=0)
    want = math.sqrt(2 / r) * (x * torch.sin(math.pi * (n + 0.5) * (k + 1) / r)).sum(-1)
    torch.testing.assert_close((x @ rotations.dst(r).double())[:, k], want, atol=1e-6, rtol=0)


def test_gsr_is_block_diagonal_sequency_ordered():
    R = rotations.gsr(128, group_size=32)
    assert R[:32, 32:].eq(0).all() and R[32:64, :32].eq(0).all()
    block = R[:32, :32].t()  # rows are the Walsh basis vectors
    changes = [(block[i, 1:].sign() != block[i, :-1].sign()).sum().item() for i in range(32)]
    assert changes == list(range(32))


def test_rotation_is_applied_blockwise_as_x_at_R():
    # Reference semantics: y_block = x_block @ R with float64 accumulation, then float32.
    x = torch.randn(4, 64)
    R = rotations.random_hadamard(32, seed=1)
    y = ref.rotate(x, R)
    want = (x.double().reshape(4, 2, 32) @ R.double()).reshape(4, 64).float()
    assert (y - want).abs().max().item() <= 1e-6
    # and the kernels quantize exactly that rotated tensor
    codes, scales = fq.quantize_mxfp4(x, R)
    c2, s2 = fq.quantize_mxfp4(y)
    assert torch.equal(codes, c2) and torch.equal(scales.view(torch.uint8), s2.view(torch.uint8))


def test_dequantize_inverts_rotation():
    x = torch.randn(16, 256)
    R = rotations.hadamard(128)
    codes, scales = fq.quantize_mxfp4(x, R)
    back = fq.dequantize_mxfp4(codes, scales, R)
    in_rotated = fq.dequantize_mxfp4(codes, scales)
    torch.testing.assert_close(ref.rotate(back, R), in_rotated, atol=1e-5, rtol=1e-5)


def test_rotation_helpers_reject_bad_sizes():
    with pytest.raises(ValueError, match="power of two"):
        rotations.hadamard(24)
    with pytest.raises(ValueError, match="unknown rotation"):
        rotations.get_rotation("fourier", 32)


# ---- the operators accept orthogonal matrices only (max|R R^T - I| <= 1e-2) ---------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(rotations.ROTATIONS))
def test_every_rotation_passes_the_orthogonality_check(name, dtype):
    x = torch.randn(2, 128)
    for r in (16, 32, 64, 128):
        R = rotations.get_rotation(name, r).to(dtype)
        codes, scales = fq.quantize_mxfp4(x, R)
        fq.dequantize_mxfp4(codes, scales, R)
        g = fq.nvfp4_global_scale(x, R)
        fq.dequantize_nvfp4(*fq.quantize_nvfp4(x, g, R), g, R)


def test_rescaled_rotation_is_rejected_with_the_tolerance():
    # Before the check, 2·H round-tripped to about 4x the input and a random matrix to relative error 44.
    with pytest.raises(ValueError, match=r"fpquant.quantize_mxfp4: rotation must be orthogonal: "
                                         r"max\|R R\^T - I\| = 3 exceeds the tolerance 0.01"):
        fq.quantize_mxfp4(torch.randn(2, 64), 2 * rotations.hadamard(32))


def test_in_place_changes_are_rechecked():
    # The verdict is cached per tensor and version: an in-place change, also through a view, is seen.
    x = torch.randn(2, 64)
    R = rotations.hadamard(32)
    fq.quantize_mxfp4(x, R)
    R.mul_(2)
    with pytest.raises(ValueError, match="rotation must be orthogonal"):
        fq.quantize_mxfp4(x, R)
    R.div_(2)
    fq.quantize_mxfp4(x, R)
    R.view(-1)[:32] *= 2
    with pytest.raises(ValueError, match="rotation must be orthogonal"):
        fq.dequantize_mxfp4(*fq.quantize_mxfp4(x), R)
    # new data under the same tensor keeps its version: the data pointer tells
    R.data = rotations.hadamard(32)
    fq.quantize_mxfp4(x, R)
    R.data = 2 * rotations.hadamard(32)
    with pytest.raises(ValueError, match="rotation must be orthogonal"):
        fq.quantize_mxfp4(x, R)


def test_many_rotations_and_inference_tensors():
    # More live rotations than the verdict cache holds, and inference tensors (no version counter).
    x = torch.randn(2, 64)
    Rs = [rotations.random_hadamard(32, seed=s) for s in range(80)]
    for R in Rs + Rs:
        fq.quantize_mxfp4(x, R)
    with torch.inference_mode():
        R = rotations.dct(32)
        fq.quantize_mxfp4(x, R)
        with pytest.raises(ValueError, match="rotation must be orthogonal"):
            fq.quantize_mxfp4(x, R * 2)


@pytest.mark.cuda
def test_cuda_rejects_non_orthogonal_and_captures_after_warm_up():
    from conftest import replay_matches

    H = rotations.hadamard(32).cuda()
    x = torch.randn(64, 256, device="cuda")
    with pytest.raises(ValueError, match="fpquant.quantize_mxfp4: rotation must be orthogonal"):
        fq.quantize_mxfp4(x, 2 * H)
    with pytest.raises(ValueError, match="fpquant.dequantize_nvfp4: rotation must be orthogonal"):
        g = torch.ones(1, device="cuda")
        fq.dequantize_nvfp4(*fq.quantize_nvfp4(x, g), g, 2 * H)

    def roundtrip(t):
        return fq.dequantize_mxfp4(*fq.quantize_mxfp4(t, H), H)

    replayed, eager = replay_matches(roundtrip, x)  # warm-up (checks H), capture, replay
    assert torch.equal(replayed, eager)

    # A rotation first seen inside a capture cannot be read there (it would synchronize): let through.
    fresh = rotations.dct(32).cuda()
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    fq.quantize_mxfp4(static_x)  # warm-up of the kernels themselves
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        codes, scales = fq.quantize_mxfp4(static_x, fresh)
    graph.replay()
    torch.cuda.synchronize()
    want_c, want_s = fq.quantize_mxfp4(static_x, fresh)
    assert torch.equal(codes, want_c) and torch.equal(scales.view(torch.uint8), want_s.view(torch.uint8))
