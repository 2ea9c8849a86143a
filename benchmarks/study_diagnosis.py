"""Does a trained STRG use its region graph? Evaluate one run of the accuracy study with other boxes than
it was trained on, and with one half of the fused feature silenced.

The classifier sees [mean of the graph's nodes (d), global average pool of the backbone (d)]. For a run's
final weights (RUN/last) on the validation split (2 temporal clips per video), the script prints top-1,
the share predicted in the right time-reversal pair and the direction accuracy inside it, for:

    boxes     ground truth (boxes.jsonl) or the fine-tuned RPN's proposals (a `strg proposals` file)
    silenced  none, the graph half (zeros: the backbone alone decides) or the global half (the graph alone)

and the norms of the classifier's weights on the two halves. A model that reasons over objects gains
from ground-truth boxes and loses much without its graph half.

    python benchmarks/study_diagnosis.py study/strg-rpn/seed0 --data data --cache cache \\
        --proposals study/proposals.safetensors
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

from _timing import print_table
from accuracy_study import validation_predictions


def fused_classify(silence: str | None):
    """GraphHead.classify with one half of the fused feature set to zero ("graph" or "global")."""
    import torch

    def classify(self, pooled_nodes, features):
        clip = features.mean(dim=(2, 3, 4))
        if silence == "graph":
            pooled_nodes = torch.zeros_like(pooled_nodes)
        elif silence == "global":
            clip = torch.zeros_like(clip)
        return self.classifier(self.dropout(torch.cat([pooled_nodes, clip], dim=1)))

    return classify


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a study run folder (its last/ is evaluated)")
    parser.add_argument("--data", type=Path, required=True, help="the `strg data synth` folder")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--proposals", type=Path, required=True, help="the study's proposals file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.train.precompute import precomputed_tracks

    torch.set_num_threads(args.threads)
    model = load_pretrained(args.run / "last")
    if model.cfg.architecture != "strg":
        raise SystemExit(f"error: {args.run} is not an STRG run")
    validation = read_something_something_v2(args.data, "validation")
    tracks = {
        "ground truth": read_box_tracks(args.data / "boxes.jsonl"),
        "RPN proposals": precomputed_tracks(args.proposals, model.cfg.proposals.num_boxes),
    }
    weight = model.head.classifier.weight.detach()
    d = weight.shape[1] // 2
    print(
        f"{args.run}: classifier weight norm on the graph half {weight[:, :d].norm():.3f}, "
        f"on the global half {weight[:, d:].norm():.3f}"
    )
    rows = []
    for boxes in tracks:
        for silence in (None, "graph", "global"):
            model.head.classify = types.MethodType(fused_classify(silence), model.head)
            predicted, labels = validation_predictions(model, validation, tracks[boxes], args.cache, 0)
            in_pair = predicted // 2 == labels // 2
            rows.append(
                [
                    boxes,
                    silence or "-",
                    f"{100 * (predicted == labels).mean():.1f}",
                    f"{100 * in_pair.mean():.1f}",
                    f"{100 * (predicted[in_pair] == labels[in_pair]).mean():.1f}" if in_pair.any() else "-",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    print_table(
        f"{args.run} on the validation split (%)",
        ["boxes", "silenced", "top-1", "in pair", "direction"],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
