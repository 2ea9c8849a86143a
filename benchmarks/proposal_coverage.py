"""How well do precomputed proposals cover the objects a synthetic video's label is about? For a `strg
proposals` file and a `strg data synth` folder, over every frame of the validation split, the script prints
for k = 1, 2, 4 and the preset's number N of best proposals (the file's order, best score first):

    recall actors@k       the share of the actors' boxes (roles A and B, the objects the label names)
                          matched (IoU >= 0.5) by one of the frame's k best proposals
    recall distractors@k  the same for the distractors (the other objects)
    both actors@k         of the frames that show both A and B, the share where the k best match both
    overlap@k             the mean IoU between the k best proposals, pair by pair (their redundancy)

and, for comparison, the ground truth itself: objects per frame, actors per frame.

    python benchmarks/proposal_coverage.py --data data --proposals study/proposals.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _timing import print_table

IOU = 0.5
ACTORS = ("A", "B")


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [A, 4] and b [B, 4] (x1, y1, x2, y2) -> [A, B], through the graphs' box_iou_pairs."""
    import torch

    from strg_deploy.models.graphs import box_iou_pairs

    return box_iou_pairs(torch.as_tensor(a), torch.as_tensor(b)).numpy()


class Coverage:
    """Counts over frames; ``add`` one frame at a time, then ``figures()``."""

    def __init__(self, ks: tuple[int, ...]):
        self.ks = ks
        self.boxes = {"actors": 0, "distractors": 0}
        self.matched = {(group, k): 0 for group in self.boxes for k in ks}
        self.both = {k: 0 for k in ks}
        self.frames = self.frames_with_both = 0
        self.overlap: dict[int, list[float]] = {k: [] for k in ks}

    def add(self, truth: np.ndarray, actor: np.ndarray, proposals: np.ndarray) -> None:
        """truth [G, 4] the frame's visible objects, actor bool [G] (role A or B), proposals [P, 4] best
        first (P may be 0)."""
        self.frames += 1
        hits = pairwise_iou(proposals, truth) >= IOU if len(truth) else np.zeros((len(proposals), 0), bool)
        self.boxes["actors"] += int(actor.sum())
        self.boxes["distractors"] += int((~actor).sum())
        has_both = int(actor.sum()) == 2
        self.frames_with_both += has_both
        for k in self.ks:
            covered = hits[:k].any(axis=0)  # [G]
            self.matched["actors", k] += int(covered[actor].sum())
            self.matched["distractors", k] += int(covered[~actor].sum())
            self.both[k] += bool(has_both and covered[actor].all())
            top = proposals[:k]
            if len(top) >= 2:
                self.overlap[k].append(float(pairwise_iou(top, top)[np.triu_indices(len(top), 1)].mean()))

    def figures(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k in self.ks:
            for group, count in self.boxes.items():
                out[f"recall {group}@{k}"] = self.matched[group, k] / count if count else None
            out[f"both actors@{k}"] = self.both[k] / self.frames_with_both if self.frames_with_both else None
            out[f"overlap@{k}"] = float(np.mean(self.overlap[k])) if self.overlap[k] else None
        return out


def coverage(truth_tracks, proposal_tracks, videos, ks: tuple[int, ...]) -> Coverage:
    """Every frame of ``videos``: ground truth from ``truth_tracks`` (BoxTracks with roles in ``objects``),
    proposals from ``proposal_tracks`` (BoxTracks, best first)."""
    counts = Coverage(ks)
    for video in videos:
        truth, proposals = truth_tracks[video], proposal_tracks[video]
        actor = np.array([obj.get("role") in ACTORS for obj in truth.objects], dtype=bool)
        for f in range(min(truth.num_frames, proposals.boxes.shape[0])):
            visible = truth.valid[f]
            counts.add(truth.boxes[f][visible], actor[visible], proposals.boxes[f][proposals.valid[f]])
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a `strg data synth` folder")
    parser.add_argument("--proposals", type=Path, required=True, help="a `strg proposals` file")
    parser.add_argument("--preset", default="small")
    args = parser.parse_args(argv)

    from strg_deploy.config import preset
    from strg_deploy.data.datasets import read_box_tracks
    from strg_deploy.data.synthetic import SPLIT_FILES
    from strg_deploy.train.precompute import precomputed_tracks

    n = preset(args.preset).proposals.num_boxes
    ks = tuple(sorted({1, 2, 4, n}))
    videos = [str(v["id"]) for v in json.loads((args.data / SPLIT_FILES["validation"]).read_text("utf-8"))]
    counts = coverage(
        read_box_tracks(args.data / "boxes.jsonl"), precomputed_tracks(args.proposals, n), videos, ks
    )
    rows = [
        [name, "-" if value is None else f"{100 * value:.1f}"] for name, value in counts.figures().items()
    ]
    print(
        f"{args.proposals}, {len(videos)} validation videos, {counts.frames} frames: per frame "
        f"{counts.boxes['actors'] / counts.frames:.2f} actors and "
        f"{counts.boxes['distractors'] / counts.frames:.2f} distractors visible; "
        f"{counts.frames_with_both} frames show both actors"
    )
    print_table("coverage of the ground truth (%)", ["figure", "value"], rows)


if __name__ == "__main__":
    sys.exit(main())
