"""Read-bandwidth floor for the W4A16 decode kernel (docs/perf/w4a16.md, "Current numbers"): how long the GPU takes
to stream a buffer the size of a packed FP4 weight (34 MiB: 8192 x 8192 codes and scales; 128 MiB: the bf16
weight) through simple Triton read kernels of three access patterns, next to a device copy.

    python benchmarks/bench_read_floor.py        (CUDA and Triton needed)

flat: one program per BLOCK int32 (a front sweeping the buffer); streams: P programs each reading S contiguous
regions in lockstep (the decode kernel's pattern: a CTA per feature group, K walked in order); front: P
persistent programs reading interleaved blocks.
"""
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_graph_ms  # noqa: E402

@triton.jit
def flat_read(src, dst, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    v = tl.load(src + pid * BLOCK + tl.arange(0, BLOCK))
    tl.store(dst + pid, tl.sum(v, axis=0))

@triton.jit
def stream_read(src, dst, n_per, BLOCK: tl.constexpr, STREAMS: tl.constexpr):
    # program p reads STREAMS regions of n_per elements each (regions p*STREAMS .. ), in lockstep
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    base = src + pid.to(tl.int64) * STREAMS * n_per
    for i in tl.range(0, n_per, BLOCK, num_stages=4):
        for s in tl.static_range(STREAMS):
            acc += tl.load(base + s * n_per + i + tl.arange(0, BLOCK))
    tl.store(dst + pid, tl.sum(acc, axis=0))

@triton.jit
def front_read(src, dst, n_steps, BLOCK: tl.constexpr):
    # persistent-ish: program p reads block (step * nprog + p): a sweeping front
    pid = tl.program_id(0)
    npg = tl.num_programs(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for st in tl.range(0, n_steps, num_stages=4):
        acc += tl.load(src + (st * npg + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK))
    tl.store(dst + pid, tl.sum(acc, axis=0))

for mb in (34, 128):
    n = mb * 2**20 // 4
    bufs = [torch.randint(0, 2**31 - 1, (n,), device="cuda", dtype=torch.int32) for _ in range(3)]
    outs = [torch.empty_like(b) for b in bufs]
    dst = torch.empty(1 << 20, device="cuda", dtype=torch.int32)
    res = [f"{mb} MiB:"]
    t = bench_graph_ms([lambda b=b, o=o: o.copy_(b) for b, o in zip(bufs, outs)])
    res.append(f"copy {t*1e3:.1f} us ({2*n*4/t/1e9:.2f} TB/s r+w)")
    for B in (1024, 4096, 16384):
        t = bench_graph_ms([lambda b=b: flat_read[(n // B,)](b, dst, BLOCK=B) for b in bufs])
        res.append(f"flat{B} {t*1e3:.1f} ({n*4/t/1e9:.2f})")
    for progs, streams in ((256, 2), (512, 1), (1024, 1), (264, 1)):
        per = n // (progs * streams)
        if per % 1024: continue
        t = bench_graph_ms([lambda b=b: stream_read[(progs,)](b, dst, per, BLOCK=1024, STREAMS=streams) for b in bufs])
        res.append(f"streams{progs}x{streams} {t*1e3:.1f} ({n*4/t/1e9:.2f})")
    for progs in (264, 528, 1056):
        B = 1024
        steps = n // (progs * B)
        t = bench_graph_ms([lambda b=b: front_read[(progs,)](b, dst, steps, BLOCK=B) for b in bufs])
        res.append(f"front{progs} {t*1e3:.1f} ({steps*progs*B*4/t/1e9:.2f})")
    print(" | ".join(res), flush=True)
