"""Space-time graph construction: batched bands vs the public reproduction's loop.

The baseline keeps the reproduction's structure: a Python loop over frames t and boxes i, each step
vectorised over the batch and the boxes of frame t + 1, writing IoUs into a dense (T*N) x (T*N) matrix,
then the transpose, the row normalisation and the NaN clean-up (with the continuous IoU convention, so
the outputs can be compared).
Run: ``python benchmarks/graphs.py [--threads K] [--repeats R] [--default-malloc]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    clip_boxes,
    console,
    measure,
    ms,
    print_machine_info,
    print_table,
    steady_allocator,
    verdict,
)

from strg_deploy.models.graphs import space_time_graphs  # noqa: E402

TARGET_SPEEDUP = 50.0


def loop_space_time_graphs(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reproduction's structure: boxes [B, T, N, 4] -> dense forward and backward [B, T*N, T*N]."""
    batch, frames, count, _ = boxes.shape
    size = frames * count
    forward = torch.zeros(batch, size, size)
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    for t in range(frames - 1):
        for i in range(count):
            box, others = boxes[:, t, i], boxes[:, t + 1]
            width = torch.min(box[:, 2:3], others[:, :, 2]) - torch.max(box[:, 0:1], others[:, :, 0])
            height = torch.min(box[:, 3:4], others[:, :, 3]) - torch.max(box[:, 1:2], others[:, :, 1])
            inter = width.clamp(min=0) * height.clamp(min=0)
            iou = inter / (areas[:, t, i : i + 1] + areas[:, t + 1] - inter)
            forward[:, t * count + i, (t + 1) * count : (t + 2) * count] = iou
    backward = forward.transpose(1, 2)
    forward = torch.nan_to_num(forward / forward.sum(dim=-1, keepdim=True), nan=0.0)
    backward = torch.nan_to_num(backward / backward.sum(dim=-1, keepdim=True), nan=0.0)
    return forward, backward


def bands_of(forward: torch.Tensor, backward: torch.Tensor, frames: int, count: int):
    """The [B, T-1, N, N] bands inside dense [B, T*N, T*N] graphs (backward stored as [t, j, i])."""
    fwd = torch.stack(
        [
            forward[:, t * count : (t + 1) * count, (t + 1) * count : (t + 2) * count]
            for t in range(frames - 1)
        ],
        1,
    )
    bwd = torch.stack(
        [
            backward[:, (t + 1) * count : (t + 2) * count, t * count : (t + 1) * count]
            for t in range(frames - 1)
        ],
        1,
    )
    return fwd, bwd


def off_band_max(dense: torch.Tensor, frames: int, count: int, upper: bool) -> float:
    """Largest |entry| of a dense graph outside its band (must be 0)."""
    rest = dense.clone()
    for t in range(frames - 1):
        rows = slice(t * count, (t + 1) * count)
        cols = slice((t + 1) * count, (t + 2) * count)
        if upper:
            rest[:, rows, cols] = 0
        else:
            rest[:, cols, rows] = 0
    return rest.abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the batched version")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc defaults" if args.default_malloc else steady_allocator()
    print_machine_info(malloc=malloc)
    batch, frames, count = args.batch, args.frames, args.boxes
    boxes, mask = clip_boxes(batch, frames, count)

    with torch.inference_mode():
        ours_f, ours_b = space_time_graphs(boxes, mask)
        dense_f, dense_b = loop_space_time_graphs(boxes)
        ref_f, ref_b = bands_of(dense_f, dense_b, frames, count)
        diff = max((ours_f - ref_f).abs().max().item(), (ours_b - ref_b).abs().max().item())
        outside = max(off_band_max(dense_f, frames, count, True), off_band_max(dense_b, frames, count, False))
        equal = diff <= 1e-6 and outside == 0.0
        t_loop = measure(lambda: loop_space_time_graphs(boxes), max(3, args.repeats // 4), warmup=1)
        t_ours = measure(lambda: space_time_graphs(boxes, mask), args.repeats, warmup=3)

    speedup = t_loop / t_ours
    print_table(
        f"space-time graphs, B={batch}, T={frames}, N={count}",
        ["implementation", "median time", "output"],
        [
            [
                "reproduction loop, dense (T*N)^2",
                ms(t_loop),
                f"2 x [{batch}, {frames * count}, {frames * count}]",
            ],
            ["space_time_graphs, bands", ms(t_ours), f"2 x [{batch}, {frames - 1}, {count}, {count}]"],
        ],
    )
    print_table(
        "checks",
        ["check", "value", "target", "verdict"],
        [
            ["speed-up", f"{speedup:.1f}x", f">= {TARGET_SPEEDUP:.0f}x", verdict(speedup >= TARGET_SPEEDUP)],
            ["max |difference| on the bands", f"{diff:.2e}", "<= 1e-6", verdict(diff <= 1e-6)],
            [
                "max |entry| of the loop's graphs off the bands",
                f"{outside:.1e}",
                "0",
                verdict(outside == 0.0),
            ],
            ["outputs equal", str(equal), "True", verdict(equal)],
        ],
    )
    console.print(f"padded slots: {(~mask).sum().item()} of {mask.numel()}")


if __name__ == "__main__":
    main()
