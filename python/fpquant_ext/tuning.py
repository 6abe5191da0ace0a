"""Which kernel runs, and how to force another one for measurements and tests.

Each CUDA op family has one plan function in C++ that picks the kernel, its tile configuration and its
split of K (``csrc/cuda/w4a16/w4a16_plan.cpp``, ``csrc/cuda/quantize/quantize_plan.cpp``,
``csrc/cuda/matmul/matmul_plan.cpp``; the reasoning and the measurements behind every threshold:
``docs/perf/w4a16.md``, ``docs/perf/quantize.md`` and ``docs/perf/matmul.md``). The plans are plain functions
of the problem and the GPU, so :func:`plan_w4a16`, :func:`plan_quantize` and :func:`plan_matmul` evaluate
them here for any GPU description, with or without a GPU.

:func:`plan_override` forces a path, configuration or split count while its ``with`` block runs: the way
tests reach every kernel and sweeps compare configurations. Nothing reads environment variables. The
override is process-wide (every thread, every call inside the block); an override that cannot apply to a
call's problem or GPU makes that call raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from . import _C

__all__ = ["W4A16_PATHS", "QUANTIZE_PATHS", "MATMUL_PATHS", "MATMUL_TILES", "CPU_ISAS", "GpuSpec", "W4A16Plan",
           "QuantizePlan", "MatmulPlan", "plan_w4a16", "plan_quantize", "plan_matmul", "plan_override"]

#: W4A16 paths, in the plan's numbering (w4a16_plan.h, W4A16Path).
W4A16_PATHS = ("decode", "mma", "wgmma", "slab")
#: Quantize paths (quantize_plan.h, QuantizePath).
QUANTIZE_PATHS = ("groups", "rotate_mma", "rotate_split", "rotate_sm90")
#: Matmul paths (matmul_plan.h, MatmulPath): the generic fallback, Blackwell (CUTLASS) and Hopper kernels, and
#: ``w4a16`` (A dequantized to bf16, B through the W4A16 kernels of ``linear_w4a16``; bf16 output).
MATMUL_PATHS = ("generic", "sm100", "sm120", "sm90", "w4a16")
#: The CUTLASS tiles (m, n, k, cluster_m) of the sm100 and sm120 paths, by config index (matmul_plan.h).
MATMUL_TILES = dict(zip(("sm100", "sm120"), _C._matmul_tiles()))
#: CPU rotation kernels, narrowest first (csrc/ops/cpu_rotation.h); the widest the CPU supports runs.
CPU_ISAS = ("generic", "avx2", "avx512")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@dataclass(frozen=True)
class GpuSpec:
    """What the plans know of a GPU. ``sm90_kernels`` / ``sm100_kernels`` / ``sm120_kernels``: the build
    compiled the sm_90a / sm_100a / sm_120a kernels."""

    cc: tuple[int, int] = (9, 0)
    num_sms: int = 132
    sm90_kernels: bool = True
    sm100_kernels: bool = True
    sm120_kernels: bool = True

    @staticmethod
    def current(device: Optional[torch.device] = None) -> "GpuSpec":
        """The GPU torch would use (and which architecture-specific kernels this build has)."""
        if not torch.cuda.is_available():
            raise ValueError("no CUDA GPU here: pass the GPU to plan for, e.g. gpu=GpuSpec(cc=(9, 0), num_sms=132)")
        props = torch.cuda.get_device_properties(device)
        archs = _C.cuda_archs.split(",")
        return GpuSpec((props.major, props.minor), props.multi_processor_count, "90a" in archs, "100a" in archs,
                       "120a" in archs)


@dataclass(frozen=True)
class W4A16Plan:
    path: str  # one of W4A16_PATHS
    config: int  # decode shape, mma m-tiles or wgmma tile (w4a16_plan.h)
    splits: int
    cluster: bool  # splits summed in a thread block cluster


@dataclass(frozen=True)
class QuantizePlan:
    path: str  # one of QUANTIZE_PATHS
    kernel_r: int  # rotation size the kernel is built for (16 may run as diag(R, R) of 32)


@dataclass(frozen=True)
class MatmulPlan:
    path: str  # one of MATMUL_PATHS
    config: int  # tile index into MATMUL_TILES[path] (sm100 / sm120); 0 for generic
    swizzle_scales: bool  # linear scales are swizzled to the blocked layout first (the CUTLASS kernels read blocked)
    workspace_bytes: int  # the launcher's workspace (sm90: the converted operands; CUTLASS: the NVFP4 alpha)
    note: Optional[str]  # why a GPU with kernels for the problem still takes the generic path
    unswizzle_scales: bool = False  # w4a16: B's blocked scales are unswizzled first (linear_w4a16 reads linear)

    @property
    def tile(self) -> Optional[tuple[int, int, int, int]]:
        """(m, n, k, cluster_m) of the CUTLASS tile, None on the generic path."""
        return MATMUL_TILES[self.path][self.config] if self.path in MATMUL_TILES else None


def plan_w4a16(M: int, N: int, K: int, format: str = "mxfp4", gpu: Optional[GpuSpec] = None) -> W4A16Plan:
    """The kernel ``linear_w4a16`` runs for x [M, K] times a weight [N, K] (under any active override)."""
    g = gpu if gpu is not None else GpuSpec.current()
    path, config, splits, cluster = _C._plan_w4a16(M, N, K, format, g.cc[0], g.cc[1], g.num_sms, g.sm90_kernels)
    return W4A16Plan(W4A16_PATHS[path], config, splits, cluster)


def plan_quantize(rows: int, K: int, format: str = "mxfp4", dtype: torch.dtype = torch.bfloat16, r: int = 0,
                  gpu: Optional[GpuSpec] = None) -> QuantizePlan:
    """The kernel ``quantize_*`` runs for ``rows`` x ``K`` values of ``dtype`` with a rotation of size ``r``."""
    g = gpu if gpu is not None else GpuSpec.current()
    path, kernel_r = _C._plan_quantize(rows, K, format, _DTYPES[dtype], r, g.cc[0], g.cc[1], g.num_sms,
                                       g.sm90_kernels)
    return QuantizePlan(QUANTIZE_PATHS[path], kernel_r)


def plan_matmul(M: int, N: int, K: int, format: str = "mxfp4", out_dtype: torch.dtype = torch.float32,
                scale_layout: str = "blocked", gpu: Optional[GpuSpec] = None,
                bias_dtype: Optional[torch.dtype] = None) -> MatmulPlan:
    """The kernel ``matmul_mxfp4`` / ``matmul_nvfp4`` runs for A [M, K] x B [N, K]^T, with a bias of
    ``bias_dtype`` (``None``: no bias)."""
    g = gpu if gpu is not None else GpuSpec.current()
    if scale_layout not in ("linear", "blocked"):
        raise ValueError(f"scale_layout must be 'linear' or 'blocked', got {scale_layout!r}")
    bias = -1 if bias_dtype is None else _DTYPES[bias_dtype]
    path, config, swizzle, unswizzle, workspace, note = _C._plan_matmul(
        M, N, K, format, _DTYPES[out_dtype], 0 if scale_layout == "linear" else 1, bias, g.cc[0], g.cc[1],
        g.num_sms, g.sm90_kernels, g.sm100_kernels, g.sm120_kernels)
    return MatmulPlan(MATMUL_PATHS[path], config, swizzle, workspace, note, unswizzle)


def _index(name: Optional[str], names: tuple, what: str) -> int:
    if name is None:
        return -1
    if name not in names:
        raise ValueError(f"{what} must be one of {names}, got {name!r}")
    return names.index(name)


@contextlib.contextmanager
def plan_override(*, w4a16_path: Optional[str] = None, w4a16_config: Optional[int] = None,
                  w4a16_splits: Optional[int] = None, quantize_path: Optional[str] = None,
                  cpu_isa: Optional[str] = None, matmul_path: Optional[str] = None,
                  matmul_config: Optional[int] = None) -> Iterator[None]:
    """Force plan choices inside the ``with`` block; ``None`` keeps the plan's own choice.

    Args:
        w4a16_path: one of :data:`W4A16_PATHS`.
        w4a16_config: the decode shape (0-2) or wgmma tile (0-3) of the chosen path.
        w4a16_splits: splits of K (capped at K / 128, and at 8 for the cluster decode shape).
        quantize_path: one of :data:`QUANTIZE_PATHS` (rotation paths only apply with a rotation).
        cpu_isa: the widest CPU rotation kernel to use, one of :data:`CPU_ISAS` (a cap: a CPU without it
            runs its own widest).
        matmul_path: one of :data:`MATMUL_PATHS`. ``"w4a16"`` applies to a bfloat16 output with no bias or a
            bfloat16 one, N a multiple of 32 and K of 128, on a GPU of compute capability 8.0 or newer.
        matmul_config: the tile of the sm100 / sm120 path (an index into :data:`MATMUL_TILES`) or of the sm90
            path (matmul_sm90_tiles.h: MXFP4 0-3, NVFP4 0-7; 2, 3, 6 and 7 persistent; NVFP4 4-7 decode the
            packed operands in the GEMM instead of an operand pass). The w4a16 path has none (its kernel
            follows the W4A16 plan, which ``w4a16_path`` / ``w4a16_config`` / ``w4a16_splits`` steer).
    """
    if w4a16_config is not None and w4a16_config < 0:
        raise ValueError(f"w4a16_config must be >= 0, got {w4a16_config}")
    if matmul_config is not None and matmul_config < 0:
        raise ValueError(f"matmul_config must be >= 0, got {matmul_config}")
    if w4a16_splits is not None and w4a16_splits < 1:
        raise ValueError(f"w4a16_splits must be >= 1, got {w4a16_splits}")
    new = (_index(w4a16_path, W4A16_PATHS, "w4a16_path"), -1 if w4a16_config is None else w4a16_config,
           0 if w4a16_splits is None else w4a16_splits, _index(quantize_path, QUANTIZE_PATHS, "quantize_path"),
           _index(cpu_isa, CPU_ISAS, "cpu_isa"), _index(matmul_path, MATMUL_PATHS, "matmul_path"),
           -1 if matmul_config is None else matmul_config)
    old = _C._get_plan_override()
    _C._set_plan_override(*new)
    try:
        yield
    finally:
        _C._set_plan_override(*old)
