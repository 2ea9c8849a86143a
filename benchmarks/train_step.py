"""Training-step cost of the small preset and of the candidates that were weighed against it.

One step = forward, loss, backward and an SGD update on a batch of clips, with boxes given (ground truth or
precomputed proposals: the frozen RPN is not part of the step). The table extrapolates the median step to
an epoch of 2,000 clips, decoding aside; the issue's budget is about 2 minutes on 2 CPU cores.
Run: ``python benchmarks/train_step.py [--batch B] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import clip_boxes, measure, print_machine_info, print_table  # noqa: E402

from strg_deploy.config import preset  # noqa: E402
from strg_deploy.models.strg import build_model  # noqa: E402

EPOCH_CLIPS = 2000


def candidates() -> dict[str, object]:
    """The small preset and the variants it was chosen from (all R18-style, 112 x 112, d = 128)."""
    small = preset("small")

    def variant(width: int, frames: int, conv1_t: int):
        backbone = dataclasses.replace(small.backbone, width=width, conv1_kernel=(conv1_t, 7, 7))
        return small.replace(frames=frames, backbone=backbone)

    return {
        "small: w16, 16 frames, conv1 1x7x7": small,
        "w16, 16 frames, conv1 3x7x7": variant(16, 16, 3),
        "w32, 8 frames, conv1 3x7x7": variant(32, 8, 3),
        "w24, 16 frames, conv1 1x7x7": variant(24, 16, 1),
    }


def step_time(cfg, architecture: str, batch: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.replace(architecture=architecture)).train()
    params = [p for name, p in model.named_parameters() if not name.startswith("rpn.")]
    optimiser = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    clip = torch.randint(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    boxes, mask = clip_boxes(batch, cfg.feature_frames, cfg.proposals.num_boxes, size=float(cfg.size))
    labels = torch.randint(0, cfg.num_classes, (batch,))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = model.loss(model(clip, boxes, mask), labels)
        loss.backward()
        optimiser.step()

    return measure(step, repeats, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print_machine_info()
    rows = []
    for label, cfg in candidates().items():
        for architecture in ("i3d", "strg"):
            seconds = step_time(cfg, architecture, args.batch, args.repeats)
            clips_per_s = args.batch / seconds
            rows.append(
                [
                    label,
                    architecture,
                    f"{seconds * 1e3:.0f} ms",
                    f"{clips_per_s:.1f}",
                    f"{EPOCH_CLIPS / clips_per_s / 60:.2f}",
                ]
            )
    print_table(
        f"training step, batch {args.batch} (median of {args.repeats})",
        ["config", "model", "step", "clips/s", "min / 2,000 clips"],
        rows,
    )


if __name__ == "__main__":
    main()
