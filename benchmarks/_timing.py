"""Shared helpers of the benchmark scripts: machine description, timing, fp32 matmul speed, rich tables.

torch is imported only inside the helpers that use it, so torch-free benchmarks can share the rest.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from strg_deploy.engines.auto import processor_name

# Wide enough for the tables when the output goes to a file or a pipe.
console = Console() if sys.stdout.isatty() else Console(width=140)


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": processor_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def print_machine_info(**extra: Any) -> None:
    table = Table(title="machine", show_header=False)
    for key, value in {**machine_info(), **extra}.items():
        table.add_row(key, str(value))
    console.print(table)


# glibc mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
STEADY_MMAP_THRESHOLD = 64 * 1024 * 1024


def steady_allocator(nbytes: int = STEADY_MMAP_THRESHOLD) -> str:
    """Fix glibc's mmap and trim thresholds so that large tensors reuse heap pages; returns a description.

    CPU tensors come from malloc. With glibc's defaults a tensor above the (dynamic) mmap threshold, or
    heap memory trimmed after a free, comes back as fresh pages that fault in on first touch (about 3 us
    per 4 KiB page in this VM: 0.9 ms for a 1.2 MB tensor), and whether that happens depends on what
    ran before. A fixed 64 MiB threshold gives the steady state of a long-running process (or of
    jemalloc/tcmalloc) to every implementation alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, nbytes) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, 2 * nbytes) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "default (glibc mallopt unavailable)"
    return f"glibc, mmap threshold fixed at {nbytes // 2**20} MiB (large tensors reuse heap pages)"


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time in seconds of each function, the runs interleaved (A, B, A, B, ...) so that a
    change of machine load affects all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_problem(size: int = 2048) -> tuple[Callable[[], Any], int]:
    """A size x size x size fp32 matmul to time (the machine's reference) and its FLOPs (2 * size**3)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    return (lambda: torch.mm(a, b, out=out)), 2 * size**3


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of a size x size x size matmul (a multiply-add counts 2)."""
    run, flops = matmul_problem(size)
    return flops / measure(run, repeats) / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call, counted as ``strg model summary`` counts them (a multiply-add counts 2)."""
    from strg_deploy.models.summary import flop_counter

    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def verdict(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def clip_boxes(batch: int, frames: int, count: int, size: float = 224.0, seed: int = 0):
    """Benchmark inputs: boxes float [B, T, N, 4] drifting over time inside a size x size frame, and
    mask bool [B, T, N] with about 20 % of the slots padded (zero boxes, as the model contract pads)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, 1, count, 2, generator=gen) * size * 0.67
    corner = corner + torch.randn(batch, frames, count, 2, generator=gen).cumsum(1) * 4
    extent = torch.rand(batch, frames, count, 2, generator=gen) * size * 0.27 + 10
    boxes = torch.cat([corner, corner + extent], dim=-1)
    mask = torch.rand(batch, frames, count, generator=gen) > 0.2
    return torch.where(mask[..., None], boxes, 0.0), mask
