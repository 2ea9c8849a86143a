"""Forward time at batch 1 for each preset on this CPU: each network of the contract and the whole model.

The RPN runs on the clip's T' sampled frames; the whole model is rpn -> backbone -> head. FLOPs come from
torch.utils.flop_counter (a multiply-add counts 2; only convolutions and matrix products).
Run: ``python benchmarks/forward.py [--presets paper-r50 small tiny] [--repeats R] [--threads K]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import count_flops, matmul_gflops, measure, ms, print_machine_info, print_table  # noqa: E402

from strg_deploy.config import PRESETS, preset  # noqa: E402
from strg_deploy.contract.networks import rpn_frames  # noqa: E402
from strg_deploy.models.strg import STRG  # noqa: E402


def time_preset(name: str, repeats: int) -> list[list[str]]:
    cfg = preset(name)
    torch.manual_seed(0)
    model = STRG(cfg).eval()
    clip = torch.randint(0, 256, (1, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    frames = rpn_frames(clip, cfg.backbone.temporal_stride)
    rows = []
    with torch.inference_mode():
        features = model.backbone(clip)
        boxes, mask = model.propose(clip)
        runs = {
            "rpn": lambda: model.rpn(frames),
            "backbone": lambda: model.backbone(clip),
            "head": lambda: model.head(features, boxes, mask),
            "whole model": lambda: model(clip),
        }
        for network, run in runs.items():
            seconds = measure(run, repeats, warmup=1)
            flops = count_flops(run)
            rows.append([name, network, ms(seconds), f"{flops / 1e9:.2f}", f"{flops / seconds / 1e9:.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine_info()
    print(f"fp32 matmul: {matmul_gflops():.1f} GFLOP/s")
    rows = [row for name in args.presets for row in time_preset(name, args.repeats)]
    print_table("forward at batch 1 (median)", ["preset", "network", "time", "GFLOPs", "GFLOP/s"], rows)


if __name__ == "__main__":
    main()
