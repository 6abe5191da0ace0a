"""The plan functions (csrc/cuda/*/*_plan.cpp) that choose the CUDA kernels, evaluated on the CPU for
described GPUs, and the explicit override that tests and sweeps use instead of environment variables."""

import pytest
import torch

from fpquant_ext.tuning import MATMUL_PATHS, GpuSpec, plan_matmul, plan_override, plan_quantize, plan_w4a16

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
    # Thread block clusters exist from compute capability 9.0: Ada never takes the cluster shape, and forcing
    # it there is refused (its reduction would read nothing from a missing cluster).
    p = plan_w4a16(16, 28672, 8192, "mxfp4", ADA)
    assert (p.path, p.cluster) == ("decode", False) and p.config != 2
    with plan_override(w4a16_config=2), pytest.raises(ValueError, match="cluster decode config"):
        plan_w4a16(16, 28672, 8192, "mxfp4", ADA)
    with plan_override(w4a16_config=2):
        assert plan_w4a16(16, 28672, 8192, "mxfp4", H100).cluster


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


# ---- matmul_mxfp4 / matmul_nvfp4 (csrc/cuda/matmul/matmul_plan.cpp) ----------------------------------------
RTX5090 = GpuSpec((12, 0), 170, True)
B300 = GpuSpec((10, 3), 148, True)  # sm_100a code does not load on 10.3
B200_NO_BLACKWELL_BUILD = GpuSpec((10, 0), 148, True, False, False)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("out", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_paths_by_gpu(fmt, out):
    assert plan_matmul(256, 4096, 4096, fmt, out, "blocked", B200).path == "sm100"
    assert plan_matmul(256, 4096, 4096, fmt, out, "blocked", RTX5090).path == "sm120"
    # Hopper takes its own kernels for any shape (the operand pass handles tails), with their workspace, except
    # a bf16 output at small M (the w4a16 path, test_matmul_w4a16_path_on_hopper); GPUs without matching
    # kernels take the w4a16 path where it applies (bf16 output; Ampere, Ada, Hopper without sm_90a), else the
    # generic path.
    bf16 = out == torch.bfloat16
    for M, N, K in [(256, 4096, 4096), (1, 3, 32), (1000, 4100, 48)]:
        p = plan_matmul(M, N, K, fmt, out, "blocked", H100)
        if bf16 and M == 256:
            assert p.path == "w4a16"
            continue
        assert p.path == "sm90" and p.note is None, (M, N, K)
        # converted operands, except where the NVFP4 tiles decode in the GEMM (no workspace at all)
        if fmt == "mxfp4" or NV_PLAN_FIRST < 4:
            assert p.workspace_bytes >= (M + N) * K, (M, N, K)
        else:
            assert p.workspace_bytes == 0, (M, N, K)
    for gpu in (H100_NO_SM90_BUILD, ADA, B300, B200_NO_BLACKWELL_BUILD):
        p = plan_matmul(64, 4096, 4096, fmt, out, "blocked", gpu)
        path = "w4a16" if bf16 and gpu in (H100_NO_SM90_BUILD, ADA) else "generic"
        assert (p.path, p.tile, p.workspace_bytes, p.swizzle_scales) == (path, None, 0, False), gpu
    assert plan_matmul(1 << 30, 4096, 4096, fmt, out, "blocked", H100).path == "generic"
    p = plan_matmul(8, 4096, 4096, fmt, out, "blocked", ADA)
    assert p.note is None if bf16 else "bfloat16" in p.note
    assert "10.0" in plan_matmul(8, 4096, 4096, fmt, out, "blocked", B300).note
    assert "no kernels" in plan_matmul(8, 4096, 4096, fmt, out, "blocked", B200_NO_BLACKWELL_BUILD).note


def test_matmul_tiles_by_rows():
    # sm100: one 128-row CTA up to 128 rows, the 2-SM 256 x 128 tile on a 2 x 1 cluster above.
    for M, tile in [(1, (128, 128, 256, 1)), (128, (128, 128, 256, 1)), (129, (256, 128, 256, 2)),
                    (8192, (256, 128, 256, 2))]:
        assert plan_matmul(M, 4096, 4096, "nvfp4", torch.bfloat16, "blocked", B200).tile == tile, M
    # sm120: 128 x 128 below 512 rows, 256 x 128 from 512.
    for M, tile in [(1, (128, 128, 128, 1)), (511, (128, 128, 128, 1)), (512, (256, 128, 128, 1))]:
        assert plan_matmul(M, 4096, 4096, "mxfp4", torch.bfloat16, "blocked", RTX5090).tile == tile, M


# kMatmulSm90NvPlanFirst (matmul_sm90_tiles.h): the first of the two NVFP4 tiles the plan chooses between.
NV_PLAN_FIRST = 0


@pytest.mark.parametrize("fmt,wide", [("mxfp4", 192), ("nvfp4", 256)])
def test_matmul_sm90_tile_fills_the_gpu(fmt, wide):
    # config 0 is the wide tile (128 x 192 MXFP4, 128 x 256 NVFP4), config 1 the 128 x 128 one: the plan takes
    # the one with fewer waves x columns, a narrow column counted 11/9 (MXFP4) or 10/9 (NVFP4), so the narrow
    # tile where the wide one leaves SMs idle.
    def cost(M, N, bn, weight):
        return -(-(-(-M // 128) * -(-N // bn)) // 132) * bn * weight

    # Forced: a bf16 output at small M takes the w4a16 path by default.
    with plan_override(matmul_path="sm90"):
        for M, N in [(1, 8192), (16, 8192), (128, 8192), (1024, 8192), (4096, 14336), (8192, 8192), (300, 1000)]:
            expected = 0 if cost(M, N, wide, 9) <= cost(M, N, 128, 11 if fmt == "mxfp4" else 10) else 1
            expected += NV_PLAN_FIRST if fmt == "nvfp4" else 0
            assert plan_matmul(M, N, 4096, fmt, torch.bfloat16, "linear", H100).config == expected, (M, N)
        # the faster tile of the H200 sweeps at each of their shapes (docs/perf/matmul.md)
        measured = {"mxfp4": {(8192, 8192): 0, (4096, 14336): 0, (4096, 4096): 0, (16384, 8192): 0, (1, 8192): 1,
                              (16, 8192): 1, (128, 8192): 1, (1024, 8192): 0},
                    "nvfp4": {(8192, 8192): 0, (4096, 14336): 0, (4096, 4096): 0, (16384, 8192): 0, (1, 8192): 1,
                              (16, 8192): 1, (128, 8192): 1, (1024, 8192): 0}}[fmt]
        for (M, N), tile in measured.items():
            tile += NV_PLAN_FIRST if fmt == "nvfp4" else 0
            assert plan_matmul(M, N, 8192, fmt, torch.bfloat16, "linear", H100).config == tile, (M, N)


def test_matmul_workspace_and_swizzle():
    # The NVFP4 alpha = 1 / (gA gB) lives in the workspace; MXFP4 needs none. Linear scales are swizzled.
    nv = plan_matmul(64, 4096, 4096, "nvfp4", torch.bfloat16, "linear", B200)
    mx = plan_matmul(64, 4096, 4096, "mxfp4", torch.bfloat16, "blocked", B200)
    assert (nv.workspace_bytes, nv.swizzle_scales) == (256, True)
    assert (mx.workspace_bytes, mx.swizzle_scales) == (0, False)


@pytest.mark.parametrize("gpu", [B200, RTX5090])
def test_matmul_shapes_the_kernels_cannot_take_fall_back(gpu):
    bf16, f32 = torch.bfloat16, torch.float32
    p = plan_matmul(64, 4096, 48, "nvfp4", bf16, "blocked", gpu)  # K % 32 != 0: rows of codes not 16-byte
    assert p.path == "generic" and "K a multiple of 32" in p.note
    p = plan_matmul(64, 4100, 64, "nvfp4", bf16, "blocked", gpu)  # bf16 rows of 8200 bytes
    assert p.path == "generic" and "16 bytes" in p.note
    assert plan_matmul(64, 4100, 64, "nvfp4", f32, "blocked", gpu).path != "generic"  # 16400 bytes
    assert plan_matmul(64, 4, 32, "mxfp4", f32, "blocked", gpu).path != "generic"
    assert plan_matmul(64, 4, 32, "mxfp4", bf16, "blocked", gpu).path == "generic"
    assert plan_matmul(1 << 31, 4096, 64, "mxfp4", bf16, "blocked", gpu).path == "generic"  # int M


def test_matmul_override():
    bf16 = torch.bfloat16
    with plan_override(matmul_path="generic"):
        assert plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", B200).path == "generic"
    with plan_override(matmul_path="sm100", matmul_config=0):
        assert plan_matmul(4096, 4096, 4096, "mxfp4", bf16, "blocked", B200).tile == (128, 128, 256, 1)
        for gpu in (H100, RTX5090, B300):
            with pytest.raises(ValueError, match="plan override"):
                plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", gpu)
        with pytest.raises(ValueError, match="plan override"):
            plan_matmul(256, 4096, 48, "nvfp4", bf16, "blocked", B200)  # K the kernels cannot take
    with plan_override(matmul_path="sm120", matmul_config=2), pytest.raises(ValueError, match="plan override"):
        plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", RTX5090)
    with plan_override(matmul_path="sm90"):
        for fmt in ("mxfp4", "nvfp4"):
            p = plan_matmul(256, 4096, 4096, fmt, bf16, "linear", H100)
            assert (p.path, p.swizzle_scales) == ("sm90", False)  # both layouts read directly
            # the narrow tile: 32 or 44 wide CTAs would leave most SMs idle
            assert p.config == 1 + (NV_PLAN_FIRST if fmt == "nvfp4" else 0)
            # MXFP4: converted operands (E4M3, 1 byte per element) and block factors. NVFP4: the bf16 operands
            # (2 bytes per element) for the tiles of the operand pass, none for those that decode in the GEMM.
            if fmt == "mxfp4":
                assert p.workspace_bytes >= (256 + 4096) * 4096
            elif NV_PLAN_FIRST < 4:
                assert p.workspace_bytes >= (256 + 4096) * 4096 * 2
            else:
                assert p.workspace_bytes == 0
                for config, pass_ in [(3, True), (4, False), (7, False)]:
                    with plan_override(matmul_path="sm90", matmul_config=config):
                        w = plan_matmul(256, 4096, 4096, fmt, bf16, "linear", H100).workspace_bytes
                    assert (w >= (256 + 4096) * 4096 * 2) if pass_ else w == 0, config
        for gpu in (H100_NO_SM90_BUILD, ADA, B200):
            with pytest.raises(ValueError, match="compute capability 9.0"):
                plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", gpu)
    with plan_override(matmul_path="sm90", matmul_config=3):
        assert plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", H100).config == 3
        assert plan_matmul(256, 4096, 4096, "nvfp4", bf16, "blocked", H100).config == 3
    with plan_override(matmul_path="sm90", matmul_config=4):
        with pytest.raises(ValueError, match="MXFP4 matmul tile"):
            plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", H100)
        assert plan_matmul(256, 4096, 4096, "nvfp4", bf16, "blocked", H100).config == 4
    with plan_override(matmul_path="sm90", matmul_config=8):
        with pytest.raises(ValueError, match="NVFP4 matmul tile"):
            plan_matmul(256, 4096, 4096, "nvfp4", bf16, "blocked", H100)
    assert plan_matmul(256, 4096, 4096, "mxfp4", bf16, "blocked", B200).path == "sm100"  # restored
    with pytest.raises(ValueError, match="matmul_path"):
        with plan_override(matmul_path="cutlass"):
            pass


# ---- the w4a16 matmul path: A dequantized to bf16, B through the W4A16 kernels ------------------------------
A100 = GpuSpec((8, 0), 108, False, False, False)
TURING = GpuSpec((7, 5), 40, False, False, False)
W4A16_MAX_M = 512  # kMatmulW4a16MaxM (matmul_plan.h)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("layout", ["linear", "blocked"])
def test_matmul_w4a16_path_on_hopper(fmt, layout):
    bf16, f32, f16 = torch.bfloat16, torch.float32, torch.float16
    for M in (1, 16, 128, W4A16_MAX_M):
        for bias in (None, bf16):
            p = plan_matmul(M, 8192, 8192, fmt, bf16, layout, H100, bias_dtype=bias)
            assert (p.path, p.config, p.workspace_bytes, p.swizzle_scales, p.tile) == ("w4a16", 0, 0, False, None)
            assert p.unswizzle_scales == (layout == "blocked")  # linear_w4a16 reads a canonical weight's scales
    # Above the threshold, other output or bias dtypes (a second rounding), shapes the W4A16 tiles cannot take:
    # the sm90 kernels.
    assert plan_matmul(W4A16_MAX_M + 1, 8192, 8192, fmt, bf16, layout, H100).path == "sm90"
    for out, bias in [(f32, None), (f16, None), (bf16, f32), (bf16, f16), (f32, bf16)]:
        assert plan_matmul(16, 8192, 8192, fmt, out, layout, H100, bias_dtype=bias).path == "sm90", (out, bias)
    for N, K in [(8200, 8192), (96 + 16, 1024), (8192, 8192 + 64), (8192, 96)]:
        p = plan_matmul(16, N, K, fmt, bf16, layout, H100)
        assert (p.path, p.unswizzle_scales) == ("sm90", False), (N, K)
    assert plan_matmul(16, 96, 1024, fmt, bf16, layout, H100).path == "w4a16"
    # The default arguments: a float32 output and no bias.
    assert plan_matmul(16, 8192, 8192, fmt, gpu=H100).path == "sm90"


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_matmul_w4a16_path_instead_of_generic(fmt):
    bf16, f32 = torch.bfloat16, torch.float32
    # GPUs without a native kernel take it instead of the float64 generic path for the rows the W4A16 kernels
    # multiply themselves (M <= 64 there); above, their plan would use cuBLAS on bf16 slabs (a second rounding).
    for gpu in (A100, ADA, H100_NO_SM90_BUILD):
        for M in (1, 16, 64):
            assert plan_matmul(M, 4096, 4096, fmt, bf16, "blocked", gpu).path == "w4a16", (gpu, M)
        for M in (65, 8192):
            p = plan_matmul(M, 4096, 4096, fmt, bf16, "blocked", gpu)
            assert p.path == "generic" and "slabs" in p.note, (gpu, M)
        assert plan_matmul(64, 4096, 4096, fmt, bf16, "linear", gpu, bias_dtype=bf16).path == "w4a16"
        cases = [(4096, 4096, f32, None, "bfloat16 only"), (4096, 4096, bf16, f32, "bfloat16 bias"),
                 (60, 4096, bf16, None, "multiple of 32"), (4096, 4160, bf16, None, "multiple of 128")]
        for N, K, out, bias, why in cases:
            p = plan_matmul(8192, N, K, fmt, out, "blocked", gpu, bias_dtype=bias)
            assert p.path == "generic" and why in p.note, (gpu, N, K, out, bias)
    # Blackwell keeps its CUTLASS kernels, and without them the generic path with the note on its build.
    assert plan_matmul(16, 4096, 4096, fmt, bf16, "blocked", B200).path == "sm100"
    assert plan_matmul(16, 4096, 4096, fmt, bf16, "blocked", RTX5090).path == "sm120"
    for gpu, note in [(B300, "10.0"), (B200_NO_BLACKWELL_BUILD, "no kernels")]:
        p = plan_matmul(16, 4096, 4096, fmt, bf16, "blocked", gpu)
        assert p.path == "generic" and note in p.note, gpu
    # Before compute capability 8.0 (no mma.sync for the W4A16 kernels): the generic path.
    p = plan_matmul(16, 4096, 4096, fmt, bf16, "blocked", TURING)
    assert (p.path, p.note) == ("generic", None)


def test_matmul_w4a16_override():
    bf16, f32 = torch.bfloat16, torch.float32
    assert MATMUL_PATHS[4] == "w4a16"  # MatmulPath::kW4a16
    with plan_override(matmul_path="w4a16"):
        for gpu, Ms in ((H100, (1, 2048)), (A100, (1, 64)), (B200, (1, 64))):
            for M in Ms:
                p = plan_matmul(M, 4096, 4096, "nvfp4", bf16, "blocked", gpu)
                assert (p.path, p.unswizzle_scales) == ("w4a16", True), (gpu, M)
            with pytest.raises(ValueError, match="slabs"):  # the W4A16 plan's cuBLAS rows
                plan_matmul(Ms[1] + 1, 4096, 4096, "nvfp4", bf16, "blocked", gpu)
        cases = [(dict(out_dtype=f32), "bfloat16 only"), (dict(bias_dtype=f32), "bfloat16 bias"),
                 (dict(N=100), "multiple of 32"), (dict(K=4096 + 32), "multiple of 128"),
                 (dict(gpu=TURING), "compute capability 8.0")]
        for kw, why in cases:
            args = dict(M=16, N=4096, K=4096, format="mxfp4", out_dtype=bf16, scale_layout="linear", gpu=H100)
            args.update(kw)
            with pytest.raises(ValueError, match=f"plan override: .*{why}"):
                plan_matmul(**args)
    # The path has no tile of its own: a tile override cannot apply to it, forced or chosen.
    with plan_override(matmul_path="w4a16", matmul_config=0), pytest.raises(ValueError, match="no tile"):
        plan_matmul(16, 4096, 4096, "mxfp4", bf16, "linear", H100)
    with plan_override(matmul_config=1):
        with pytest.raises(ValueError, match="no tile"):
            plan_matmul(16, 4096, 4096, "mxfp4", bf16, "linear", H100)
        assert plan_matmul(16, 4096, 4096, "mxfp4", f32, "linear", H100).config == 1  # sm90
    assert plan_matmul(16, 4096, 4096, "mxfp4", bf16, "linear", H100).path == "w4a16"  # restored


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for the missing GPU: runs where there is none")
def test_plans_without_a_gpu_ask_for_one():
    for call in (lambda: plan_w4a16(16, 8192, 8192, "mxfp4"), lambda: plan_quantize(128, 4096, "mxfp4"),
                 lambda: plan_matmul(128, 128, 128, "mxfp4")):
        with pytest.raises(ValueError, match=r"no CUDA GPU here: pass the GPU to plan for, e.g. gpu=GpuSpec\("):
            call()
