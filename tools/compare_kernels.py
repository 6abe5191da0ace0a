"""Whether a CUDA source still compiles to the same machine code as at an earlier commit, kernel by kernel.

    python tools/compare_kernels.py csrc/cuda/matmul/matmul_sm90.cu [--base REV] [--arch 90a]

For changes that cannot be run here (no GPU): a kernel whose code is byte-identical to that of a measured
build keeps its measured speed and behaviour. The file is compiled with nvcc and each tree's own
FPQUANT_CUDA_FLAGS (CMakeLists.txt) to a cubin, in the working tree and in a temporary git worktree at REV
(default HEAD); the .text section of every kernel is compared, names
taken without the anonymous namespace's per-file hash. A kernel whose signature changed shows as removed
and added.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_cuda_flags(tree: Path) -> list[str]:
    """FPQUANT_CUDA_FLAGS of the tree's CMakeLists.txt (no FMA contraction, IEEE division: they change the code)."""
    m = re.search(r"set\(FPQUANT_CUDA_FLAGS(.*?)\)", (tree / "CMakeLists.txt").read_text(), re.S)
    if m is None:
        raise SystemExit(f"no FPQUANT_CUDA_FLAGS in {tree / 'CMakeLists.txt'}")
    return m.group(1).split()


def compile_cubin(tree: Path, source: str, arch: str, out: Path) -> None:
    cmd = ["nvcc", "-std=c++17", "-O3", *project_cuda_flags(tree), f"-gencode=arch=compute_{arch},code=sm_{arch}",
           "-Icsrc", "-cubin", "-o", str(out), source]
    subprocess.run(cmd, cwd=tree, check=True)


def kernel_texts(cubin: Path) -> dict[str, bytes]:
    """.text.<kernel> sections of an ELF64 cubin, keyed by kernel name without the anonymous namespace."""
    d = cubin.read_bytes()
    shoff = struct.unpack_from("<Q", d, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", d, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = sections[shstrndx][4]

    def name(offset: int) -> str:
        end = d.index(b"\0", strtab_off + offset)
        return d[strtab_off + offset:end].decode()

    out = {}
    for sh_name, _type, _flags, _addr, off, size in sections:
        n = name(sh_name)
        if n.startswith(".text."):
            out[re.sub(r"\d+_GLOBAL__N__[0-9a-f]+_\d+_\w+?_[0-9a-f]{8}", "(anon)", n[6:])] = d[off:off + size]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a .cu file, relative to the repository root")
    parser.add_argument("--base", default="HEAD", help="the commit to compare with (default HEAD)")
    parser.add_argument("--arch", default="90a", help="the target, as in sm_<arch> (default 90a)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
        try:
            compile_cubin(base, args.source, args.arch, tmp / "base.cubin")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)
        compile_cubin(ROOT, args.source, args.arch, tmp / "work.cubin")
        old, new = kernel_texts(tmp / "base.cubin"), kernel_texts(tmp / "work.cubin")
    # A kernel whose name changed (a template or kernel parameter added) but whose code did not is paired
    # with its old self by the bytes.
    removed = {old[k]: k for k in old if k not in new}
    rows, same = [], 0
    for k in sorted(new):
        if k in old:
            status = "same" if old[k] == new[k] else "differs"
            rows.append((status, len(old[k]), len(new[k]), k))
        elif new[k] in removed:
            status = "same"
            rows.append(("same", len(new[k]), len(new[k]), f"{k}  (was {removed.pop(new[k])})"))
        else:
            status = "added"
            rows.append(("added", 0, len(new[k]), k))
        same += status == "same"
    rows += [("removed", len(code), 0, k) for code, k in removed.items()]
    for status, a, b, k in rows:
        print(f"{status:8} {a:8} -> {b:8} bytes  {k}")
    print(f"{same} kernels byte-identical to {args.base}; {len(rows) - same} added, removed or changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
