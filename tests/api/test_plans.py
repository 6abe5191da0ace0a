"""The plan functions (csrc/cuda/*/*_plan.cpp) that choose the CUDA kernels, evaluated on the CPU for
described GPUs, and the explicit override that tests and sweeps use instead of environment variables."""

import pytest
import torch

from fpquant_ext.tuning import GpuSpec, plan_override, plan_quantize, plan_w4a16

H100 = GpuSpec((9, 0), 132, True)
H100_NO_SM90_BUILD = GpuSpec((9, 0), 132, False)
ADA = GpuSpec((8, 9), 128, True)  # sm_90a code does not run on other architectures
B200 = GpuSpec((10, 0), 148, True)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_w4a16_paths_by_rows_and_gpu(fmt):
    for M, path in [(1, "decode"), (16, "decode"), (17, "wgmma"), (2048, "wgmma"), (2049, "slab")]:
        assert plan_w4a16(M, 8192, 8192, fmt, H100).path == path, M
    for gpu in (ADA, B200, H100_NO_SM90_BUILD):
        for M, path in [(16, "decode"), (17, "mma"), (64, "mma"), (65, "slab"), (2048, "slab")]:
            assert plan_w4a16(M, 8192, 8192, fmt, gpu).path == path, (gpu, M)


def test_w4a16_decode_shapes():
    # Wide decode shape (config 1) where the layer has at most one feature group per SM, or two at M <= 4;
    # the cluster shape (config 2) above 8 rows on layers with one 128-feature CTA per SM.
    assert plan_w4a16(1, 4096, 4096, "mxfp4", H100).config == 1  # 128 groups <= 132 SMs
    assert plan_w4a16(16, 4096, 4096, "mxfp4", H100).config == 1
    assert plan_w4a16(4, 8192, 8192, "mxfp4", H100).config == 1  # 256 groups <= 2 x 132
    assert plan_w4a16(8, 8192, 8192, "mxfp4", H100).config == 0
    p = plan_w4a16(16, 28672, 8192, "mxfp4", H100)
    assert (p.config, p.cluster, p.splits) == (2, True, 2)
    assert plan_w4a16(8, 28672, 8192, "mxfp4", H100).config == 0


def test_w4a16_splits_fill_the_gpu():
    # Decode: split only while the grid covers fewer than half the SMs.
    assert plan_w4a16(1, 1024, 8192, "mxfp4", H100).splits > 1
    assert plan_w4a16(1, 28672, 8192, "mxfp4", H100).splits == 1
    # wgmma: split while the tiles cover at most half the SMs, keeping >= 8 k-steps of 64 per split.
    p = plan_w4a16(128, 4096, 512, "mxfp4", H100)
    assert p.path == "wgmma" and p.splits == 1  # K = 512: one split of 8 steps at most
    assert plan_w4a16(128, 4096, 8192, "mxfp4", H100).splits > 1


def test_w4a16_nvfp4_wide_layers_take_four_consumer_warpgroups():
    assert plan_w4a16(128, 8192, 8192, "nvfp4", H100).config == 1
    assert plan_w4a16(128, 8192, 8192, "mxfp4", H100).config == 0
    assert plan_w4a16(129, 8192, 8192, "nvfp4", H100).config == 2  # 256-row tiles above 128 rows


def test_w4a16_override_forces_and_restores():
    with plan_override(w4a16_path="mma"):
        assert plan_w4a16(40, 8192, 8192, "mxfp4", H100).path == "mma"
        with plan_override(w4a16_path="slab"):
            assert plan_w4a16(40, 8192, 8192, "mxfp4", H100).path == "slab"
        assert plan_w4a16(40, 8192, 8192, "mxfp4", H100).path == "mma"
    assert plan_w4a16(40, 8192, 8192, "mxfp4", H100).path == "wgmma"
    with plan_override(w4a16_path="decode", w4a16_config=2, w4a16_splits=12):
        p = plan_w4a16(13, 160, 2048, "mxfp4", H100)
        assert (p.path, p.config, p.cluster, p.splits) == ("decode", 2, True, 8)  # a cluster holds 8 CTAs
    with plan_override(w4a16_splits=1000):
        assert plan_w4a16(1, 4096, 1024, "mxfp4", H100).splits == 8  # at most K / 128


def test_w4a16_override_that_cannot_apply_raises():
    cases = [(dict(w4a16_path="wgmma"), ADA, 128), (dict(w4a16_path="wgmma"), H100_NO_SM90_BUILD, 128),
             (dict(w4a16_path="decode"), H100, 17), (dict(w4a16_path="mma"), H100, 16),
             (dict(w4a16_config=3), H100, 1), (dict(w4a16_config=4), H100, 128)]
    for kw, gpu, M in cases:
        with plan_override(**kw), pytest.raises(ValueError, match="plan override"):
            plan_w4a16(M, 4096, 4096, "mxfp4", gpu)
    with pytest.raises(ValueError, match="w4a16_path"):
        with plan_override(w4a16_path="fast"):
            pass
    with pytest.raises(ValueError, match="w4a16_splits"):
        with plan_override(w4a16_splits=0):
            pass


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_quantize_paths(fmt):
    bf16, f32 = torch.bfloat16, torch.float32
    assert plan_quantize(4096, 4096, fmt, bf16, 0, H100).path == "groups"
    assert plan_quantize(4096, 4096, fmt, f32, 128, H100).path == "rotate_split"
    assert plan_quantize(8, 4096, fmt, bf16, 128, H100).path == "rotate_sm90"  # r = 128 always
    assert plan_quantize(8, 4096, fmt, bf16, 32, H100).path == "rotate_mma"  # small input, r < 128
    assert plan_quantize(1 << 16, 4096, fmt, bf16, 32, H100).path == "rotate_sm90"  # a tile per warpgroup
    for gpu in (ADA, B200, H100_NO_SM90_BUILD):
        assert plan_quantize(1 << 16, 4096, fmt, bf16, 128, gpu).path == "rotate_mma"


def test_quantize_r16_expansion():
    bf16, f32 = torch.bfloat16, torch.float32
    # The mma kernel always sees diag(R, R); the split kernel only where an MXFP4 group (32) would straddle
    # two blocks; the sm_90 kernel expands any r itself.
    assert plan_quantize(8, 256, "nvfp4", bf16, 16, H100).kernel_r == 32
    assert plan_quantize(8, 256, "mxfp4", f32, 16, H100).kernel_r == 32
    assert plan_quantize(8, 256, "nvfp4", f32, 16, H100).kernel_r == 16
    p = plan_quantize(8, 48, "nvfp4", bf16, 16, H100)  # K % 32 != 0: the split kernel
    assert (p.path, p.kernel_r) == ("rotate_split", 16)
    assert plan_quantize(1 << 16, 4096, "mxfp4", bf16, 16, H100).kernel_r == 16


def test_quantize_override():
    bf16 = torch.bfloat16
    with plan_override(quantize_path="rotate_mma"):
        assert plan_quantize(4096, 4096, "mxfp4", bf16, 128, H100).path == "rotate_mma"
        with pytest.raises(ValueError, match="plan override"):
            plan_quantize(4096, 4096, "mxfp4", torch.float32, 128, H100)  # float32 x needs the split kernel
        with pytest.raises(ValueError, match="plan override"):
            plan_quantize(4096, 4096, "mxfp4", bf16, 0, H100)  # no rotation: groups only
    with plan_override(quantize_path="rotate_sm90"), pytest.raises(ValueError, match="plan override"):
        plan_quantize(4096, 4096, "mxfp4", bf16, 128, ADA)
