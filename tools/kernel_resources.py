"""Per-kernel resource usage from ptxas's verbose output (`-Xptxas=-v`, CMake option FPQUANT_PTXAS_VERBOSE):
registers, spills and static shared memory of every kernel in a build log, one line per kernel, checked
against the target's limits (255 registers per thread; static shared memory per block: 227 KB on sm_90a
and sm_100a, 99 KB on sm_120a). CUTLASS kernels take their shared memory dynamically; the host check
(tests/host/matmul_blackwell_check.cpp) reports and bounds that part. Exit status 1 if a limit is exceeded.

    python tools/kernel_resources.py build/cuda-check/compile.log
"""

from __future__ import annotations

import re
import subprocess
import sys

MAX_REGISTERS = 255
SMEM_PER_BLOCK = {"sm_90a": 227 * 1024, "sm_100a": 227 * 1024, "sm_120a": 99 * 1024}

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt", "--no-recurse-limit"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return out if len(out) == len(names) else names
    except (OSError, subprocess.CalledProcessError):
        return names


def describe(name: str) -> str:
    """A short description: for CUTLASS GEMMs the mainloop, formats, tile and output type."""
    if "GemmUniversal" in name:
        mainloop = re.search(r"Mainloop(Sm\d+)\w*", name)
        tile = re.search(r"CollectiveMma<[^<]*<[^>]*>(?:[^<]*<[^>]*>)*?[^<]*?, cute::tuple<cute::C<(\d+)>, "
                         r"cute::C<(\d+)>, cute::C<(\d+)> >", name)
        fmt = "mxfp4" if "float_ue8m0_t" in name else ("nvfp4" if "float_ue4m3_t" in name else "?")
        out = re.search(r"LinCombPerColBias<(?:cutlass::)?(\w+)", name)
        cluster = re.search(r"BlockScaled<(?:\d+, )+cute::tuple<cute::C<(\d+)>", name)
        parts = [f"CUTLASS GEMM {mainloop.group(1) if mainloop else '?'} {fmt}"]
        if tile:
            parts.append("tile " + "x".join(tile.groups()))
        if cluster:
            parts.append(f"cluster {cluster.group(1)}x1")
        if out:
            parts.append(f"out {out.group(1)}")
        return " ".join(parts)
    base = name.replace("void ", "", 1).replace("(anonymous namespace)::", "")
    return re.sub(r"[<(].*", "", base)


def parse(text: str) -> list[dict]:
    kernels, current = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"name": m.group(1), "arch": m.group(2), "spill": 0, "stack": 0}
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            current["stack"], current["spill"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
            continue
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
            kernels.append(current)
            current = None
    return kernels


def main(argv: list[str]) -> int:
    text = open(argv[1]).read() if len(argv) > 1 else sys.stdin.read()
    kernels = parse(text)
    names = demangle([k["name"] for k in kernels])
    bad = 0
    # Kernels with the same description and usage (template instances of one kernel) share a line.
    rows: dict[tuple, int] = {}
    for k, name in zip(kernels, names):
        over = k["registers"] > MAX_REGISTERS or k["smem"] > SMEM_PER_BLOCK.get(k["arch"], 48 * 1024)
        bad += over
        key = (k["arch"], describe(name), k["registers"], k["spill"], k["smem"], over)
        rows[key] = rows.get(key, 0) + 1
    print(f"kernel resources (ptxas): {len(kernels)} kernels")
    print(f"  {'arch':8} {'regs':>4} {'spill B':>7} {'smem B':>7}  kernel")
    for (arch, desc, regs, spill, smem, over), n in sorted(rows.items()):
        count = f" (x{n})" if n > 1 else ""
        print(f"  {arch:8} {regs:4d} {spill:7d} {smem:7d}  {desc}{count}{'  OVER THE LIMIT' if over else ''}")
    if bad:
        print(f"kernel resources: {bad} kernel(s) over the limits")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
