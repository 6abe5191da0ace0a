"""The host checks of the Blackwell GEMMs (tests/host/matmul_blackwell_check.cpp), compiled with nvcc against
the CUTLASS headers and run on the CPU: CUTLASS's scale-factor layouts against our blocked layout, the kernel
arguments built from our tensors, each kernel type's shared memory. A deliberately wrong swizzle must fail.

Skips without nvcc or CUTLASS headers, except in CI (CI=true), which installs both. The binary is cached
under build/host-check/ by a hash of its inputs (about 35 s to compile)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fpquant_ext.tuning import MATMUL_TILES

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "tests" / "host" / "matmul_blackwell_check.cpp"
PLAN = ROOT / "csrc" / "cuda" / "matmul" / "matmul_plan.cpp"
W4A16_PLAN = ROOT / "csrc" / "cuda" / "w4a16" / "w4a16_plan.cpp"  # the matmul plan asks it (the w4a16 path)


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI installs nvcc and the CUTLASS headers, but: {reason}")
    pytest.skip(reason)


def _cutlass_root() -> Path | None:
    """Where third_party/FindCutlass.cmake looks: CUTLASS_DIR, else the nvidia-cutlass wheel."""
    if os.environ.get("CUTLASS_DIR"):
        root = Path(os.environ["CUTLASS_DIR"])
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = Path(list(spec.submodule_search_locations)[0]) / "source"
    return root if (root / "include" / "cutlass" / "cutlass.h").exists() else None


def _inputs() -> list[Path]:
    headers = sorted((ROOT / "csrc" / "cuda" / "matmul").glob("*.h")) + sorted(
        (ROOT / "csrc" / "cuda" / "matmul").glob("*.cuh")) + sorted((ROOT / "csrc" / "core").glob("*.h"))
    return [CHECK, PLAN, W4A16_PLAN, ROOT / "csrc" / "cuda" / "w4a16" / "w4a16_plan.h",
            ROOT / "csrc" / "cuda" / "common" / "gpu_info.h", *headers]


@pytest.fixture(scope="module")
def host_check() -> Path:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        _unavailable("nvcc not found")
    cutlass = _cutlass_root()
    if cutlass is None:
        _unavailable("CUTLASS headers not found (pip install --no-deps nvidia-cutlass==4.2.0.0)")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(version.encode() + str(cutlass).encode())
    for p in _inputs():
        key.update(p.name.encode() + p.read_bytes())
    out = ROOT / "build" / "host-check" / key.hexdigest()[:16]
    exe = out / "matmul_blackwell_check"
    if exe.exists():
        return exe
    out.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{ROOT / 'csrc'}", f"-I{cutlass / 'include'}", f"-I{cutlass / 'tools' / 'util' / 'include'}"]
    common = [nvcc, "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-Xcompiler=-Wno-deprecated-declarations"]
    steps = [
        # The kernel types need nvcc's CUDA front end; the device pass has no kernel to compile.
        [*common, "-x", "cu", "-DFPQUANT_CHECK_KERNEL_TYPES", *includes, "-c", str(CHECK), "-o", str(out / "check.o")],
        [*common, *includes, "-c", str(PLAN), "-o", str(out / "plan.o")],
        [*common, *includes, "-c", str(W4A16_PLAN), "-o", str(out / "w4a16_plan.o")],
        [nvcc, str(out / "check.o"), str(out / "plan.o"), str(out / "w4a16_plan.o"), "-o", str(out / "tmp_exe")],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    (out / "tmp_exe").rename(exe)
    return exe


def _run(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_host_checks_pass(host_check):
    r = _run(host_check)
    print(r.stdout)
    assert r.returncode == 0, r.stdout
    for n in (1, 2, 3):
        assert re.search(rf"^check {n}\b.*: OK", r.stdout, re.M), n
    assert "ALL OK" in r.stdout


def test_every_tile_of_the_plan_is_checked(host_check):
    # One shared-memory line per (architecture, format, output dtype, tile) of the plan's tables.
    out = _run(host_check).stdout
    for arch, tiles in MATMUL_TILES.items():
        for m, n, k, cluster in tiles:
            lines = re.findall(rf"^\s+{arch}a (?:mxfp4|nvfp4) out \w+ +tile {m}x{n}x{k} cluster {cluster}x1:", out, re.M)
            assert len(lines) == 6, (arch, m, n, k)


@pytest.mark.parametrize("wrong", ["row-major-tile", "swapped-32x4", "k-tiles-outer"])
def test_a_wrong_swizzle_fails_check_1(host_check, wrong):
    r = _run(host_check, f"--wrong-swizzle={wrong}")
    assert r.returncode == 1, r.stdout
    assert re.search(r"^check 1 .*: FAILED", r.stdout, re.M), r.stdout
    assert "mismatch: SF" in r.stdout
