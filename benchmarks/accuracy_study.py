"""The accuracy study: does reasoning over object regions beat the vanilla backbone on relational data?

On the synthetic benchmark (`strg data synth`), at the small preset, with the same epochs, learning rate and
schedule for every model, and several seeds each:

    frame     the single-frame control (2D ResNet of the backbone's shape; it cannot see frame order, so it
              must stay at chance between the two classes of each time-reversal pair)
    i3d       the vanilla I3D backbone with a global-pool classifier
    strg-rpn  STRG on the proposals of an RPN fine-tuned on the benchmark's boxes (`strg train --task
              proposals`, then `strg proposals`): the fair comparison with I3D
    strg-gt   STRG on the ground-truth boxes: the upper bound

Every run lives in OUT/<model>/seed<k> and resumes from its last checkpoint, so the study can be stopped
and continued (several sessions). The RPN is fine-tuned once (OUT/rpn) and its proposals computed once
(OUT/proposals.safetensors) for all seeds. After the runs (or with --report alone) the script evaluates
each finished run's final weights on the validation split (2 temporal clips per video) and prints top-1,
per-pair accuracy, the direction accuracy within pairs (of the videos whose prediction falls in the right
pair, the share given the right direction) and wall time; OUT/study.json keeps every number.

    python benchmarks/accuracy_study.py --data synth --cache cache --out study \\
        --epochs 6 --seeds 0 1 2 [--models frame i3d strg-rpn strg-gt] [--report]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODELS = ("frame", "i3d", "strg-rpn", "strg-gt")


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def spec_for(args, model: str, run: Path):
    from strg_deploy.train.run import RunSpec

    architecture = "strg" if model.startswith("strg") else model
    boxes = args.data / "boxes.jsonl" if model == "strg-gt" else None
    proposals = args.out / "proposals.safetensors" if model == "strg-rpn" else None
    resume = (run / "last" / "model.safetensors").exists()
    return RunSpec(
        args.data,
        "ssv2",
        args.preset,
        architecture,
        run,
        boxes=boxes,
        cache=args.cache,
        resume=resume,
        proposals=proposals,
    )


def options_for(args, seed: int):
    from strg_deploy.train.loop import TrainOptions

    return TrainOptions(epochs=args.epochs, lr=args.lr, seed=seed, workers=args.workers)


def prepare_proposals(args) -> None:
    """Fine-tune the RPN on the training split's boxes (once) and precompute its proposals (once)."""
    from strg_deploy.train.loop import TrainOptions
    from strg_deploy.train.run import RunSpec, proposals_run, proposer_run

    rpn_dir = args.out / "rpn"
    detector = rpn_dir / "detector.safetensors"
    if len(read_metrics(rpn_dir)) < args.rpn_epochs:
        resume = (rpn_dir / "last").is_dir()  # continues after the last finished epoch
        spec = RunSpec(
            args.data,
            "ssv2",
            args.preset,
            "strg",
            rpn_dir,
            boxes=args.data / "boxes.jsonl",
            cache=args.cache,
            resume=resume,
        )
        options = TrainOptions(epochs=args.rpn_epochs, lr=args.rpn_lr, seed=0, workers=args.workers)
        start = time.perf_counter()
        proposer_run(spec, options)
        print(f"rpn: fine-tuned in {time.perf_counter() - start:.0f} s", flush=True)
    proposals = args.out / "proposals.safetensors"
    if not proposals.exists():
        start = time.perf_counter()
        spec = RunSpec(args.data, "ssv2", args.preset, "strg", args.out, detector=detector)
        proposals_run(spec, proposals, device="cpu")
        print(f"rpn: proposals computed in {time.perf_counter() - start:.0f} s", flush=True)


def train_all(args) -> None:
    from strg_deploy.train.run import train_run

    for seed in args.seeds:  # seed-major: a partial study still compares every model
        for model in args.models:
            run = args.out / model / f"seed{seed}"
            if len(read_metrics(run)) >= args.epochs:
                continue
            if model == "strg-rpn":
                prepare_proposals(args)
            print(f"{model} seed {seed}: training", flush=True)
            train_run(spec_for(args, model, run), options_for(args, seed))
            line = read_metrics(run)[-1]
            print(
                f"{model} seed {seed}: top-1 {100 * line['top1']:.1f} after epoch {line['epoch']}", flush=True
            )


def pair_scores(predicted: np.ndarray, labels: np.ndarray, pairs: int) -> dict:
    """Per pair "p" (classes 2p, 2p+1): accuracy, the share predicted inside the pair, and the direction
    accuracy among those."""
    out = {}
    for p in range(pairs):
        inside = (labels // 2) == p
        in_pair = inside & (predicted // 2 == p)
        out[str(p)] = {
            "accuracy": float((predicted[inside] == labels[inside]).mean()),
            "in_pair": float(in_pair[inside].mean()),
            "direction": float((predicted[in_pair] == labels[in_pair]).mean()) if in_pair.any() else None,
        }
    return out


def evaluate_run(args, model: str, run: Path) -> dict:
    """Final weights (last/) on the validation split, 2 temporal clips per video; cached in the run."""
    cached = run / "study_eval.json"
    lines = read_metrics(run)
    if cached.exists():
        result = json.loads(cached.read_text())
        if result["epoch"] == lines[-1]["epoch"]:
            return result
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.train.data import ClipDataset, LoaderConfig
    from strg_deploy.train.loop import video_scores
    from strg_deploy.train.run import read_split, read_tracks

    spec = spec_for(args, model, run)
    network = load_pretrained(run / "last")
    data = read_split(spec, "validation")
    tracks = read_tracks(spec, network.cfg.proposals.num_boxes)
    dataset = ClipDataset(
        data, network.cfg, train=False, tracks=tracks, cache=args.cache, loader=LoaderConfig(temporal_clips=2)
    )
    videos, scores = video_scores(network, dataset, 8, args.workers, "cpu")
    labels = np.array([data.records[int(v)].label for v in videos])
    predicted = scores.argmax(1)
    result = {
        "epoch": lines[-1]["epoch"],
        "top1": float((predicted == labels).mean()),
        "pairs": pair_scores(predicted, labels, len(data.classes) // 2),
        "wall_seconds": sum(line.get("epoch_seconds", 0.0) for line in lines),
        "train_clips_per_second": float(np.mean([line["train_clips_per_second"] for line in lines])),
        "loader_share": float(np.mean([line["loader_share"] for line in lines])),
        "curve": [line["top1"] for line in lines],
    }
    cached.write_text(json.dumps(result, indent=1))
    return result


def mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a[0]:.1f}"


def report(args) -> None:
    from strg_deploy.data.synthetic import CLASS_NAMES

    pairs = len(CLASS_NAMES) // 2
    results: dict[str, list[dict]] = {}
    for model in args.models:
        for seed in args.seeds:
            run = args.out / model / f"seed{seed}"
            if len(read_metrics(run)) >= args.epochs:
                results.setdefault(model, []).append({"seed": seed, **evaluate_run(args, model, run)})
    print(f"\nsmall preset, {args.epochs} epochs, lr {args.lr} at batch 8; mean ± std over seeds (%)")
    header = ["model", "seeds", "top-1", "direction in pair", "in pair", "wall min/run", "clips/s", "loader"]
    rows = []
    for model, runs in results.items():
        direction = [
            np.mean([p["direction"] for p in r["pairs"].values() if p["direction"] is not None]) for r in runs
        ]
        rows.append(
            [
                model,
                ",".join(str(r["seed"]) for r in runs),
                mean_spread([r["top1"] for r in runs]),
                mean_spread(direction),
                mean_spread([np.mean([p["in_pair"] for p in r["pairs"].values()]) for r in runs]),
                f"{np.mean([r['wall_seconds'] for r in runs]) / 60:.1f}",
                f"{np.mean([r['train_clips_per_second'] for r in runs]):.1f}",
                f"{100 * np.mean([r['loader_share'] for r in runs]):.1f}%",
            ]
        )
    print_rows(header, rows)
    print("\nper-pair accuracy (both classes of the pair), mean over seeds (%)")
    header = ["pair"] + list(results)
    rows = []
    for p in range(pairs):
        name = f"{CLASS_NAMES[2 * p]} / {CLASS_NAMES[2 * p + 1]}"
        rows.append(
            [name]
            + [
                f"{100 * np.mean([r['pairs'][str(p)]['accuracy'] for r in runs]):.1f}"
                for runs in results.values()
            ]
        )
    print_rows(header, rows)
    (args.out / "study.json").write_text(json.dumps(results, indent=1))


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a `strg data synth` folder")
    parser.add_argument("--cache", type=Path, default=None, help="decoded-clip cache folder")
    parser.add_argument("--out", type=Path, required=True, help="study folder")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate at batch 8")
    parser.add_argument("--rpn-epochs", type=int, default=3)
    parser.add_argument("--rpn-lr", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only evaluate and report finished runs")
    args = parser.parse_args(argv)
    if not args.report:
        train_all(args)
    report(args)


if __name__ == "__main__":
    sys.exit(main())
