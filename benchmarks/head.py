"""Graph reasoning of the head: banded space-time graphs vs the same maths with dense (T*N)^2 matrices.

Both sides build the forward/backward space-time graphs from the boxes, compute the similarity graph from
the node features and run the graph-convolution layers (Z = sum_g G_g X W_g, ReLU, masking) with the
same weights. The banded side is :func:`space_time_graphs` + :class:`SpaceTimeGCN`; the dense side builds
[B, T*N, T*N] space-time matrices (IoU of all node pairs, kept on the band) and multiplies them densely.
FLOPs are counted by torch.utils.flop_counter (a multiply-add counts 2).
Run: ``python benchmarks/head.py [--threads K] [--repeats R] [--default-malloc]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    clip_boxes,
    console,
    count_flops,
    matmul_problem,
    measure_interleaved,
    ms,
    print_machine_info,
    print_table,
    steady_allocator,
    verdict,
)

from strg_deploy.models.gcn import SpaceTimeGCN  # noqa: E402
from strg_deploy.models.graphs import box_iou_pairs, normalise_rows, space_time_graphs  # noqa: E402

TARGET_SPEEDUP = 1.3
TARGET_RELATIVE = 1e-5
TARGET_MATMUL_SHARE = 0.5


def banded_reasoning(gcn: SpaceTimeGCN, x: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor):
    """The library's path: x [B, T, N, d] -> [B, T, N, d]."""
    forward, backward = space_time_graphs(boxes, mask)
    return gcn(x, mask, forward, backward)


def dense_space_time_graphs(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense forward and backward graphs [B, T*N, T*N]: IoU of all node pairs, kept where j is in t+1."""
    batch, frames, count, _ = boxes.shape
    flat = torch.where(mask[..., None], boxes, 0.0).flatten(1, 2)
    frame = torch.arange(frames).repeat_interleave(count)
    band = frame[None, :] == frame[:, None] + 1
    iou = torch.where(band, box_iou_pairs(flat, flat), 0.0)
    return normalise_rows(iou), normalise_rows(iou.transpose(1, 2))


def dense_reasoning(gcn: SpaceTimeGCN, x: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor):
    """The same maths and layout as GraphConvLayer (all X W_g in one product, then the graph products
    accumulated in place), with dense space-time matrices (fusion "sum", no LayerNorm or residual)."""
    forward, backward = dense_space_time_graphs(boxes, mask)
    similarity = gcn.similarity(x, mask)
    keep = mask.flatten(1)[..., None]
    dim = x.shape[-1]
    h = x.flatten(1, 2)
    for layer in gcn.towers[0]:
        weight = torch.cat([layer.w_similarity.weight, layer.w_forward.weight, layer.w_backward.weight])
        y_sim, y_fwd, y_bwd = nn.functional.linear(h, weight).split(dim, dim=-1)
        z = torch.bmm(similarity, y_sim).baddbmm_(forward, y_fwd).baddbmm_(backward, y_bwd)
        h = torch.where(keep, torch.relu(z), 0.0)
    return h.view(x.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc defaults" if args.default_malloc else steady_allocator()
    print_machine_info(malloc=malloc)
    batch, frames, count, dim = args.batch, args.frames, args.boxes, args.dim

    torch.manual_seed(0)
    gcn = SpaceTimeGCN(dim, layers=args.layers).eval()
    boxes, mask = clip_boxes(batch, frames, count)
    x = torch.where(mask[..., None], torch.randn(batch, frames, count, dim).abs(), 0.0)
    matmul, matmul_flops = matmul_problem()

    with torch.inference_mode():
        ours = banded_reasoning(gcn, x, boxes, mask)
        dense = dense_reasoning(gcn, x, boxes, mask)
        relative = ((ours - dense).abs().max() / dense.abs().max()).item()
        flops_ours = count_flops(lambda: banded_reasoning(gcn, x, boxes, mask))
        flops_dense = count_flops(lambda: dense_reasoning(gcn, x, boxes, mask))
        # Interleaved, so that a change of machine load affects all three alike.
        times = measure_interleaved(
            {
                "dense": lambda: dense_reasoning(gcn, x, boxes, mask),
                "ours": lambda: banded_reasoning(gcn, x, boxes, mask),
                "matmul": matmul,
            },
            args.repeats,
        )

    rate_dense = flops_dense / times["dense"] / 1e9
    rate_ours = flops_ours / times["ours"] / 1e9
    rate_matmul = matmul_flops / times["matmul"] / 1e9
    speedup = times["dense"] / times["ours"]
    share = rate_ours / rate_matmul
    print_table(
        "graph reasoning (space-time graphs + similarity graph + GCN), "
        f"B={batch}, T={frames}, N={count}, d={dim}, {args.layers} layers",
        ["implementation", "median time", "GFLOP", "GFLOP/s"],
        [
            [
                "dense (T*N)^2 space-time matrices",
                ms(times["dense"]),
                f"{flops_dense / 1e9:.2f}",
                f"{rate_dense:.1f}",
            ],
            [
                "banded: space_time_graphs + SpaceTimeGCN",
                ms(times["ours"]),
                f"{flops_ours / 1e9:.2f}",
                f"{rate_ours:.1f}",
            ],
            [
                "fp32 matmul 2048^3 (machine reference)",
                ms(times["matmul"]),
                f"{matmul_flops / 1e9:.2f}",
                f"{rate_matmul:.1f}",
            ],
        ],
    )
    print_table(
        "checks",
        ["check", "value", "target", "verdict"],
        [
            [
                "speed-up over dense",
                f"{speedup:.2f}x",
                f">= {TARGET_SPEEDUP}x",
                verdict(speedup >= TARGET_SPEEDUP),
            ],
            ["FLOP ratio dense / banded", f"{flops_dense / flops_ours:.2f}x", "", ""],
            [
                "max |difference| / max |dense output|",
                f"{relative:.1e}",
                f"<= {TARGET_RELATIVE:.0e}",
                verdict(relative <= TARGET_RELATIVE),
            ],
            [
                "banded GFLOP/s / matmul GFLOP/s",
                f"{share:.2f}",
                f">= {TARGET_MATMUL_SHARE}",
                verdict(share >= TARGET_MATMUL_SHARE),
            ],
        ],
    )
    console.print(
        f"padded slots: {(~mask).sum().item()} of {mask.numel()}; FLOPs by torch.utils.flop_counter"
    )


if __name__ == "__main__":
    main()
