"""Synthetic benchmark generation speed: videos per second of ``generate`` and where a video's time goes.

Target: 1,000 videos (112 x 112, 32 frames) in under 2 minutes on 2 cores.
Run: ``python benchmarks/synth.py [--videos N] [--workers K] [--size S] [--frames T] [--pan] [--out DIR]``.
Without --out the videos go to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strg_deploy.data import synthetic as synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from strg_deploy.engines.auto import processor_name as cpu_model  # noqa: E402

TARGET_VIDEOS, TARGET_SECONDS = 1000, 120.0

console = Console() if sys.stdout.isatty() else Console(width=140)


def stage_times(size: int, frames: int, pan: bool, count: int = 28) -> dict[str, float]:
    """Median seconds per video of each stage, in this process (two videos of every class)."""
    times: dict[str, list[float]] = {"draw": [], "render": [], "encode": []}
    for index in range(count):
        start = time.perf_counter()
        scene = synth.sample_scene(
            index % len(synth.TEMPLATES), synth.video_rng(0, "train", index), size, frames, pan
        )
        drawn = time.perf_counter()
        pixels, _ = synth.render(scene)
        rendered = time.perf_counter()
        synth.encode_mp4(pixels, 12.0)
        encoded = time.perf_counter()
        times["draw"].append(drawn - start)
        times["render"].append(rendered - drawn)
        times["encode"].append(encoded - rendered)
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=TARGET_VIDEOS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--pan", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep the videos here")
    args = parser.parse_args()

    machine = Table(title="machine", show_header=False)
    for key, value in {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "workers": args.workers,
        "python": platform.python_version(),
        "encoder": f"libx264 {synth.PRESET}, qp {synth.QUANTISER}, every frame intra",
    }.items():
        machine.add_row(key, str(value))
    console.print(machine)

    stages = stage_times(args.size, args.frames, args.pan)
    table = Table(title=f"one video, one process ({args.size} x {args.size} x {args.frames})")
    for column in ("stage", "ms per video"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, seconds in stages.items():
        table.add_row(name, f"{seconds * 1e3:.1f}")
    table.add_row("total", f"{sum(stages.values()) * 1e3:.1f}")
    console.print(table)

    validation = args.videos // 10
    with tempfile.TemporaryDirectory(prefix="strg-synth-") as scratch:
        out = args.out or Path(scratch)
        columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("generate", total=args.videos)
            summary = synth.generate(
                out,
                videos_train=args.videos - validation,
                videos_validation=validation,
                size=args.size,
                frames=args.frames,
                pan=args.pan,
                workers=args.workers,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )

    table = Table(title="generate")
    for column in (
        "videos",
        "size",
        "workers",
        "seconds",
        "videos/s",
        "MB written",
        f"{TARGET_VIDEOS} videos",
    ):
        table.add_column(column, justify="right")
    projected = summary.seconds / summary.videos * TARGET_VIDEOS
    ok = projected < TARGET_SECONDS
    table.add_row(
        str(summary.videos),
        f"{args.size}x{args.size}x{args.frames}",
        str(summary.workers),
        f"{summary.seconds:.1f}",
        f"{summary.videos / summary.seconds:.1f}",
        f"{summary.bytes_written / 1e6:.1f}",
        f"{projected:.0f} s "
        + ("[green]met[/green]" if ok else "[red]missed[/red]")
        + f" (< {TARGET_SECONDS:.0f} s)",
    )
    console.print(table)


if __name__ == "__main__":
    main()
