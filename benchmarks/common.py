"""Shared by the benchmark scripts: GPU timing (medians of CUDA-event-timed calls) and result files."""

from __future__ import annotations

import datetime
import json
from typing import Callable, Optional, Sequence, Union

import torch


def bench_ms(fns: Union[Callable, Sequence[Callable]], warmup: int = 10, reps: int = 50) -> float:
    """Median milliseconds of `reps` calls, each timed with CUDA events. A list of callables is cycled
    through (e.g. the same op on several weight copies, so that small problems measure HBM, not L2)."""
    fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
    for i in range(warmup):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fns[i % len(fns)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def bench_graph_ms(fns: Union[Callable, Sequence[Callable]], replays: int = 20, repeat: int = 4) -> float:
    """Median milliseconds per call, with `repeat` rounds of all callables captured in one CUDA graph and the
    graph replayed `replays` times (each replay timed with CUDA events). This measures the GPU work without
    the host's per-call launch latency, as a CUDA-graph-driven decode loop would run it."""
    fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:  # warm-up outside capture (workspaces, autotuning, lazy init)
            f()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            for f in fns:
                f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / (repeat * len(fns)))
    times.sort()
    del graph
    return times[len(times) // 2]


def run_meta(**extra) -> dict:
    """Date, GPU and torch version for a result file."""
    meta = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
            "torch": torch.__version__}
    meta.update(extra)
    return meta


def report(title: str, header: Sequence[str], table: Sequence[Sequence[str]], meta: dict, rows: list,
           md: Optional[str], json_path: Optional[str]) -> None:
    """Print a markdown table and write it (md) and the raw rows with their metadata (json)."""
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    text = "\n".join(lines)
    print(text)
    if md:
        with open(md, "w") as f:
            f.write(text + "\n")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
