"""The accuracy study: does reasoning over object regions beat the vanilla backbone on relational data?

On the synthetic benchmark (`strg data synth`), at the small preset, with the same epochs, learning rate and
schedule for every model, and several seeds each:

    frame     the single-frame control (2D ResNet of the backbone's shape; it cannot see frame order, so it
              must stay at chance between the two classes of each time-reversal pair)
    i3d       the vanilla I3D backbone with a global-pool classifier
    strg-rpn  STRG on the proposals of an RPN fine-tuned on the benchmark's boxes (`strg train --task
              proposals`, then `strg proposals`): the fair comparison with I3D
    strg-gt   STRG on the ground-truth boxes: the upper bound

Diagnostics, not in the default list:

    strg-rpn2     STRG on the same RPN's 2 best proposals per frame (the others masked): as many nodes per
                  frame as the synthetic videos have objects
    strg-rpn-i3d  the two-stage recipe: STRG on the RPN's proposals, its backbone initialised from the i3d
                  run of the same seed (`strg train --init`), then the same schedule again; it needs that
                  i3d run (list i3d before it in --models)
    i3d-i3d       its control: I3D initialised from the same i3d run, the same schedule again (as many
                  epochs in all as strg-rpn-i3d, without the graph)

Every run lives in OUT/<model>/seed<k> and resumes from its last checkpoint, so the study can be stopped
and continued; the folder keeps its settings (study-settings.json), and a study with other settings (another
lr, say) needs another OUT. The RPN is fine-tuned once (OUT/rpn) and its proposals computed once
(OUT/proposals.safetensors) for all seeds. As soon as a run has finished, the script evaluates its final
weights on the validation split (2 temporal clips per video) and adds the result to the RECORD
(benchmarks/results/accuracy_study.json, kept in the repository): top-1, per-class and per-pair accuracy,
the direction accuracy within pairs (of the videos whose prediction falls in the right pair, the share
given the right direction), wall time, clips/s and the loader's share. A run already in the record with
the same settings (preset, epochs, lr, split sizes; for strg-rpn also the RPN's epochs and lr) is not
trained again, so a study spreads over machines that keep only the record. The report (at the end, or
--report alone) reads the record and prints mean ± population standard deviation (numpy's default,
ddof=0) over seeds.

    python benchmarks/accuracy_study.py --data synth --cache cache --out study \\
        --epochs 10 --lr 0.02 --seeds 0 1 2 [--models frame i3d strg-rpn strg-gt] [--report]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from strg_deploy.engines.auto import processor_name as cpu_model

MODELS = ("frame", "i3d", "strg-rpn", "strg-gt", "strg-rpn2", "strg-rpn-i3d", "i3d-i3d")
STUDY_MODELS = MODELS[:4]
# the models on the RPN's proposals, and how many they keep per frame (None: the preset's N)
TOP_PROPOSALS = {"strg-rpn": None, "strg-rpn2": 2, "strg-rpn-i3d": None}
INIT_FROM = {"strg-rpn-i3d": "i3d", "i3d-i3d": "i3d"}  # stage 2: the backbone starts from this model's run
RECORD = Path(__file__).resolve().parent / "results" / "accuracy_study.json"


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_size(data: Path, split: str) -> int:
    from strg_deploy.data.synthetic import SPLIT_FILES

    return len(json.loads((data / SPLIT_FILES[split]).read_text(encoding="utf-8")))


def settings_for(args, model: str) -> dict:
    """What makes two runs of one model and seed the same experiment."""
    settings = {
        "preset": args.preset,
        "epochs": args.epochs,
        "lr": args.lr,
        "train_videos": split_size(args.data, "train"),
        "validation_videos": split_size(args.data, "validation"),
    }
    if model in TOP_PROPOSALS:
        settings.update(rpn_epochs=args.rpn_epochs, rpn_lr=args.rpn_lr)
    return settings


def read_record(path: Path) -> list[dict]:
    """The record's runs: dicts with model, seed, settings and the results of `evaluate_run`."""
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8"))["runs"]


def find_run(runs: list[dict], model: str, seed: int, settings: dict) -> dict | None:
    for run in runs:
        if run["model"] == model and run["seed"] == seed and run["settings"] == settings:
            return run
    return None


def add_to_record(path: Path, entry: dict) -> None:
    """Add (or replace) one run in the record, written atomically."""
    from strg_deploy.fileio import atomic_write_text

    runs = [
        r
        for r in read_record(path)
        if not (
            r["model"] == entry["model"] and r["seed"] == entry["seed"] and r["settings"] == entry["settings"]
        )
    ]
    runs.append(entry)
    runs.sort(key=lambda r: (MODELS.index(r["model"]), r["seed"], json.dumps(r["settings"], sort_keys=True)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"runs": runs}, indent=1) + "\n")


def claim_run_folder(run: Path, settings: dict) -> None:
    """Mark ``run`` (OUT/<model>/seed<k>) as holding a run with ``settings``; exit with one line when it
    already holds one with other settings (say another lr), which would otherwise resume or be evaluated
    under the wrong settings. A folder without a mark (from an older study) is claimed as it is."""
    from strg_deploy.fileio import atomic_write_text

    mark = run / "study-settings.json"
    if mark.exists():
        held = json.loads(mark.read_text(encoding="utf-8"))
        if held != settings:
            differ = ", ".join(
                f"{k} {held.get(k)} (not {v})" for k, v in settings.items() if held.get(k) != v
            )
            raise SystemExit(f"error: {run} holds a run with other settings: {differ}; give another --out")
        return
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mark, json.dumps(settings, sort_keys=True) + "\n")


def spec_for(args, model: str, run: Path):
    from strg_deploy.train.run import RunSpec

    architecture = "strg" if model.startswith("strg") else model.split("-")[0]
    boxes = args.data / "boxes.jsonl" if model == "strg-gt" else None
    proposals = proposals_file(args, model) if model in TOP_PROPOSALS else None
    resume = (run / "last" / "model.safetensors").exists()
    init = args.out / INIT_FROM[model] / run.name / "last" if model in INIT_FROM else None
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
        init=init,
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


def proposals_file(args, model: str) -> Path:
    top = TOP_PROPOSALS[model]
    return args.out / ("proposals.safetensors" if top is None else f"proposals-top{top}.safetensors")


def keep_best_proposals(source: Path, out: Path, keep: int) -> None:
    """A copy of a precomputed-proposals file with each frame's ``keep`` best proposals (once)."""
    from strg_deploy.train.precompute import PrecomputedBoxes, write_precomputed

    if out.exists():
        return
    boxes = PrecomputedBoxes(source, keep)
    entries = {}
    for video_id in boxes.videos:
        stored = boxes.stored(video_id)  # frame_index, fps and size as stored
        best = boxes(video_id, stored["frame_index"])  # the proposals cut to `keep`
        entries[video_id] = {
            "frame_index": stored["frame_index"],
            "fps": stored["fps"],
            "size": stored["size"],
            **best._asdict(),
        }
    write_precomputed(out, entries)


def prepare_inputs(args, model: str, seed: int) -> None:
    """What a run of ``model`` needs before it trains: the RPN's proposals (fine-tuned and computed once,
    then cut to the model's number per frame) and, for a stage-2 model, its finished stage-1 run."""
    if model in TOP_PROPOSALS:
        prepare_proposals(args)
        if TOP_PROPOSALS[model] is not None:
            keep_best_proposals(
                proposals_file(args, "strg-rpn"), proposals_file(args, model), TOP_PROPOSALS[model]
            )
    if model in INIT_FROM:
        first = INIT_FROM[model]
        if len(read_metrics(args.out / first / f"seed{seed}")) < args.epochs:
            raise SystemExit(
                f"error: {model} seed {seed} starts from the {first} run of seed {seed}, which has not "
                f"finished: list {first} before {model} in --models"
            )


def train_all(args) -> None:
    """Train every (seed, model) not yet in the record; record each one as soon as it has finished."""
    from strg_deploy.train.run import train_run

    for seed in args.seeds:  # seed-major: a partial study still compares every model
        for model in args.models:
            settings = settings_for(args, model)
            if find_run(read_record(args.record), model, seed, settings) is not None:
                continue
            run = args.out / model / f"seed{seed}"
            claim_run_folder(run, settings)
            if len(read_metrics(run)) < args.epochs:
                prepare_inputs(args, model, seed)
                print(f"{model} seed {seed}: training", flush=True)
                train_run(spec_for(args, model, run), options_for(args, seed))
            entry = evaluate_run(args, model, seed, run)
            add_to_record(args.record, entry)
            print(f"{model} seed {seed}: top-1 {100 * entry['top1']:.1f} (recorded)", flush=True)


def pair_scores(predicted: np.ndarray, labels: np.ndarray, pairs: int) -> dict:
    """Per pair "p" (classes 2p, 2p+1): accuracy, the share predicted inside the pair, and the direction
    accuracy among those (None where the pair has no video, or no prediction inside it).

    predicted, labels: int [V] per video."""
    out = {}
    for p in range(pairs):
        inside = (labels // 2) == p
        in_pair = inside & (predicted // 2 == p)
        if not inside.any():
            out[str(p)] = {"accuracy": None, "in_pair": None, "direction": None}
            continue
        out[str(p)] = {
            "accuracy": float((predicted[inside] == labels[inside]).mean()),
            "in_pair": float(in_pair[inside].mean()),
            "direction": float((predicted[in_pair] == labels[in_pair]).mean()) if in_pair.any() else None,
        }
    return out


def summary_of(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top1, per_class [C], pairs (see `pair_scores`), and their means over pairs: direction and in_pair.

    predicted, labels: int [V] per video."""
    pairs = pair_scores(predicted, labels, num_classes // 2)
    directions = [p["direction"] for p in pairs.values() if p["direction"] is not None]
    return {
        "top1": float((predicted == labels).mean()),
        "per_class": [
            float((predicted[labels == c] == c).mean()) if (labels == c).any() else None
            for c in range(num_classes)
        ],
        "pairs": pairs,
        "direction": float(np.mean(directions)) if directions else None,
        "in_pair": float(np.mean([p["in_pair"] for p in pairs.values() if p["in_pair"] is not None])),
    }


def training_figures(lines: list[dict]) -> dict:
    """Training clips/s and the loader's share of the step time: medians over the epochs of metrics.jsonl,
    so that a few epochs slowed by other work on the machine do not move them (wall time does move)."""
    return {
        "train_clips_per_second": float(np.median([line["train_clips_per_second"] for line in lines])),
        "loader_share": float(np.median([line["loader_share"] for line in lines])),
    }


def validation_predictions(network, data, tracks, cache: Path | None, workers: int):
    """The network's predicted class and the label of every video of ``data`` (a Dataset), from its scores
    averaged over 2 temporal clips, on the CPU: predicted, labels int [V]. ``tracks``: the boxes of STRG's
    nodes (None for the RPN, or for models without regions)."""
    from strg_deploy.train.data import ClipDataset, LoaderConfig
    from strg_deploy.train.loop import video_scores

    dataset = ClipDataset(
        data, network.cfg, train=False, tracks=tracks, cache=cache, loader=LoaderConfig(temporal_clips=2)
    )
    videos, scores = video_scores(network, dataset, 8, workers, "cpu")
    return scores.argmax(1), np.array([data.records[int(v)].label for v in videos])


def evaluate_run(args, model: str, seed: int, run: Path) -> dict:
    """The record entry of a finished run: its final weights (last/) on the validation split, 2 temporal
    clips per video, and its training figures from metrics.jsonl."""
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.train.run import read_split, read_tracks

    lines = read_metrics(run)
    spec = spec_for(args, model, run)
    network = load_pretrained(run / "last")
    data = read_split(spec, "validation")
    tracks = read_tracks(spec, network.cfg.proposals.num_boxes)
    predicted, labels = validation_predictions(network, data, tracks, args.cache, args.workers)
    return {
        "model": model,
        "seed": seed,
        "settings": settings_for(args, model),
        **summary_of(predicted, labels, len(data.classes)),
        "final_loss": lines[-1]["train_loss"],
        "curve": [line["top1"] for line in lines],
        "wall_seconds": sum(line.get("epoch_seconds", 0.0) for line in lines),
        **training_figures(lines),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, no GPU",
        "date": datetime.date.today().isoformat(),
    }


def mean_spread(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """ "m ± s" (population standard deviation, numpy's ddof=0) of the values that are not None, times
    scale; "-" when there are none."""
    a = scale * np.asarray([v for v in values if v is not None], dtype=float)
    if not len(a):
        return "-"
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}" if len(a) > 1 else f"{a[0]:.{digits}f}"


def report(args) -> None:
    from strg_deploy.data.synthetic import CLASS_NAMES

    record = read_record(args.record)
    results: dict[str, list[dict]] = {}
    for model in args.models:
        settings = settings_for(args, model)
        for seed in args.seeds:
            entry = find_run(record, model, seed, settings)
            run = args.out / model / f"seed{seed}"
            if entry is None and len(read_metrics(run)) >= args.epochs:
                claim_run_folder(run, settings)
                entry = evaluate_run(args, model, seed, run)
                add_to_record(args.record, entry)
            if entry is not None:
                results.setdefault(model, []).append(entry)
    print(
        f"\n{args.preset} preset, {args.epochs} epochs, lr {args.lr} at batch 8; "
        "mean ± population std over seeds (%)"
    )
    header = [
        "model",
        "seeds",
        "top-1",
        "direction in pair",
        "in pair",
        "final loss",
        "wall min/run",
        "clips/s",
    ]
    header.append("loader")
    rows = []
    for model, runs in results.items():
        rows.append(
            [
                model,
                ",".join(str(r["seed"]) for r in runs),
                mean_spread([r["top1"] for r in runs]),
                mean_spread([r["direction"] for r in runs]),
                mean_spread([r["in_pair"] for r in runs]),
                mean_spread([r["final_loss"] for r in runs], scale=1.0, digits=2),
                mean_spread([r["wall_seconds"] for r in runs], scale=1 / 60),
                mean_spread([r["train_clips_per_second"] for r in runs], scale=1.0),
                mean_spread([r["loader_share"] for r in runs]),
            ]
        )
    print_rows(header, rows)
    print("\nper-pair accuracy (both classes of the pair), mean ± population std over seeds (%)")
    rows = []
    for p in range(len(CLASS_NAMES) // 2):
        name = f"{CLASS_NAMES[2 * p]} / {CLASS_NAMES[2 * p + 1]}"
        rows.append(
            [name]
            + [mean_spread([r["pairs"][str(p)]["accuracy"] for r in runs]) for runs in results.values()]
        )
    print_rows(["pair"] + list(results), rows)
    print("\nper-class accuracy, mean ± population std over the seeds that recorded it (%)")
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        rows.append(
            [name]
            + [
                mean_spread([(r.get("per_class") or [None] * len(CLASS_NAMES))[c] for r in runs])
                for runs in results.values()
            ]
        )
    print_rows(["class"] + list(results), rows)


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
    parser.add_argument("--record", type=Path, default=RECORD, help="the results of finished runs (JSON)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate at batch 8")
    parser.add_argument("--rpn-epochs", type=int, default=3)
    parser.add_argument("--rpn-lr", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(STUDY_MODELS), choices=MODELS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only evaluate and report finished runs")
    args = parser.parse_args(argv)
    if not args.report:
        train_all(args)
    report(args)


if __name__ == "__main__":
    sys.exit(main())
