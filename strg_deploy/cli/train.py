"""`strg train`, `strg proposals` and `strg eval`, and the tables they print."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from strg_deploy.cli.common import (
    DetectorOption,
    JsonOption,
    PlainUsage,
    PresetOption,
    ProposalsOption,
    console,
    counting_progress,
    given_on_command_line,
    new_table,
    reports_errors,
    warn,
)


def register(app: typer.Typer) -> None:
    """Add `strg train`, `strg proposals` and `strg eval` to ``app``."""
    app.command("train", cls=PlainUsage)(train)
    app.command("proposals", cls=PlainUsage)(proposals_command)
    app.command("eval", cls=PlainUsage)(evaluate_checkpoint)


@reports_errors
def train(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Run folder: last/, best/, metrics.jsonl, settings.json.")
    ],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset root (annotations and videos).")
    ] = None,
    data_format: Annotated[str, typer.Option("--format", help="ssv2, ssv1, charades or folders.")] = "ssv2",
    preset_name: PresetOption = "small",
    model: Annotated[
        str, typer.Option("--model", help="strg; i3d (the baseline, stage 1); frame (single-frame control).")
    ] = "strg",
    boxes: Annotated[
        Path | None, typer.Option("--boxes", help="Ground-truth box tracks (boxes.jsonl).")
    ] = None,
    proposals: ProposalsOption = None,
    detector: DetectorOption = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Decoded-clip cache folder.")] = None,
    init: Annotated[
        Path | None, typer.Option("--init", help="Backbone from an I3D/STRG checkpoint folder.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in OUT from OUT/last, with the settings OUT/settings.json recorded "
            "for every option not given.",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="OUT holds a run: move it aside to OUT.old-<date>-<time> and start again."
        ),
    ] = False,
    options_file: Annotated[
        Path | None, typer.Option("--options", help="JSON file of training options.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs (default 10).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Global batch (default 8).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate for a batch of 8 (scaled).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Loader processes (default 2).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seed (default 0).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = None,
    freeze_bn: Annotated[
        bool | None,
        typer.Option(
            "--freeze-bn/--train-bn", help="Freeze batch norm (fine-tuning pretrained weights) or train it."
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            "--task", help="classes (the action model) or proposals (fine-tune the RPN on --boxes)."
        ),
    ] = "classes",
) -> None:
    """Train STRG or the I3D baseline; checkpoints in OUT/last and OUT/best, metrics in OUT/metrics.jsonl.

    With --task proposals: fine-tune the RPN on ground-truth boxes; OUT/detector.safetensors and the recall
    at N boxes per frame in OUT/metrics.jsonl.

    SGD with momentum 0.9 and weight decay, a linear warm-up then a cosine schedule, gradient clipping.
    Options come from --options (a JSON file of training options) overridden by the flags.

    --resume --out OUT continues a run with the settings it recorded; options given again must keep
    their values, except --epochs, --workers, --device and --cache (and amp, save_every, max_steps,
    max_unreadable in --options).
    """
    from strg_deploy.extras import require

    require("torch", "strg train")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from strg_deploy.train.run import plan_run, proposer_run, train_run

    values = {
        "task": task,
        "data": data,
        "format": data_format,
        "preset": preset_name,
        "model": model,
        "boxes": boxes,
        "proposals": proposals,
        "detector": detector,
        "cache": cache,
        "init": init,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "workers": workers,
        "seed": seed,
        "device": device,
        "freeze_bn": freeze_bn,
    }
    renamed = {"data_format": "format", "preset_name": "preset"}
    given = {renamed.get(name, name) for name in given_on_command_line(ctx)}
    task, spec, options = plan_run(
        out, values, given=given, resume=resume, overwrite=overwrite, options_file=options_file
    )
    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
    )
    bar = progress.add_task("train", total=None, loss=float("nan"))

    def on_step(step: int, total: int, loss: float) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(bar, completed=step, total=total, loss=loss)

    def on_epoch(metrics: dict) -> None:
        console.print(epoch_table([metrics], f"after epoch {metrics['epoch']}"))

    if task == "proposals":
        try:
            result = proposer_run(spec, options, on_step, on_notice=warn)
        finally:
            if progress.live.is_started:
                progress.stop()
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
            return
        table = new_table(
            f"RPN fine-tuning: recall at {result['num_boxes']} boxes per frame, IoU >= {result['iou']}"
        )
        for column in ("epoch", "objectness loss", "box loss", "recall", "frames/s"):
            table.add_column(column, justify="right")
        for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            table.add_row(
                str(row["epoch"]),
                f"{row['objectness_loss']:.3f}",
                f"{row['box_loss']:.3f}",
                f"{100 * row['recall']:.1f}%",
                f"{row['train_frames_per_second']:.0f}",
            )
        console.print(table)
        console.print(f"detector weights in {out / 'detector.safetensors'} (for --detector)")
        return

    try:
        position = train_run(spec, options, on_step, on_epoch, on_notice=warn)
    finally:
        if progress.live.is_started:
            progress.stop()
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    metrics_path = out / "metrics.jsonl"
    if not metrics_path.exists():  # stopped by max_steps inside the first epoch
        console.print(f"stopped at step {position.global_step}; checkpoint in {out / 'last'}")
        return
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()]
    console.print(epoch_table(rows, "all epochs"))
    console.print(f"{best_line(rows)}; checkpoints in {out / 'best'} and {out / 'last'}", soft_wrap=True)


def best_line(rows: list[dict]) -> str:
    """Where the run's best validation came from: ``best top1 41.7 % at epoch 3 (step 15)``."""
    scored = [row for row in rows if row.get("headline") is not None]
    if not scored:
        return f"trained {rows[-1]['epoch']} epochs ({rows[-1]['global_step']} steps), no validation"
    best = max(scored, key=lambda row: row["headline"])  # the first epoch of the best value, as fit keeps
    name = best.get("headline_name", "metric")
    return f"best {name} {100 * best['headline']:.1f} % at epoch {best['epoch']} (step {best['global_step']})"


def epoch_table(rows: list[dict], title: str):
    """A rich table of metrics.jsonl lines: epoch, step, training loss and throughput, validation metrics."""
    table = new_table(title)
    columns = ("epoch", "step", "loss", "clips/s", "top1", "top5", "mean class acc", "mAP")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [row.get(k) for k in ("top1", "top5", "mean_class_accuracy", "map")]
        loss = row.get("train_loss")
        table.add_row(
            str(row["epoch"]),
            str(row["global_step"]),
            "-" if loss is None else f"{loss:.3f}",
            f"{row.get('train_clips_per_second', 0):.1f}",
            *("-" if v is None else f"{100 * v:.1f}" for v in cells),
        )
    return table


@reports_errors
def proposals_command(
    data: Annotated[Path, typer.Option("--data", help="Dataset root (annotations and videos).")],
    out: Annotated[Path, typer.Option("--out", help="The proposals file to write (.safetensors).")],
    detector: Annotated[
        Path,
        typer.Option(
            "--detector", help="RPN weights: a Faster R-CNN state dict or RUN/detector.safetensors."
        ),
    ],
    data_format: Annotated[str, typer.Option("--format", help="ssv2, ssv1, charades or folders.")] = "ssv2",
    preset_name: PresetOption = "small",
    splits: Annotated[
        str, typer.Option("--splits", help="Comma-separated splits to cover.")
    ] = "train,validation",
    batch_frames: Annotated[int, typer.Option("--batch-frames", min=1, help="Frames per RPN batch.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Run the RPN once on every frame of a dataset and keep its N proposals per frame in one file, for
    `strg train --proposals FILE` (so they are not recomputed every epoch)."""
    from strg_deploy.extras import require

    require("torch", "strg proposals")
    from strg_deploy.train.run import RunSpec, proposals_run

    spec = RunSpec(data, data_format, preset_name, "strg", out, detector=detector, overwrite=overwrite)
    wanted = tuple(part.strip() for part in splits.split(",") if part.strip())
    with counting_progress("proposing boxes") as advance:
        summary = proposals_run(
            spec,
            out,
            splits=wanted,
            device=device,
            batch_frames=batch_frames,
            on_video=advance,
            on_notice=warn,
        )
    console.print(f"wrote proposals of {summary['videos']} videos to {out} ({summary['bytes'] / 1e6:.1f} MB)")


@reports_errors
def evaluate_checkpoint(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint folder, e.g. RUN_DIR/best.", metavar="CHECKPOINT")
    ],
    data: Annotated[Path, typer.Option("--data", help="Dataset root (annotations and videos).")],
    data_format: Annotated[str, typer.Option("--format", help="ssv2, ssv1, charades or folders.")] = "ssv2",
    split: Annotated[str, typer.Option("--split", help="validation or test.")] = "validation",
    boxes: Annotated[
        Path | None, typer.Option("--boxes", help="Ground-truth box tracks (boxes.jsonl).")
    ] = None,
    proposals: ProposalsOption = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Decoded-clip cache folder.")] = None,
    clips: Annotated[int, typer.Option("--clips", min=1, help="Temporal clips per video.")] = 2,
    crops: Annotated[int, typer.Option("--crops", help="Spatial crops per clip: 1 or 3.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per forward pass.")] = 8,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Loader processes (0: none).")] = 2,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Evaluate a checkpoint per video: top-1/top-5 and per-class accuracy, or mAP (Charades).

    The scores of all test views (--clips temporal clips x --crops spatial crops) are averaged per video;
    mAP leaves out classes without positives.
    """
    from strg_deploy.extras import require

    require("torch", "strg eval")
    from strg_deploy.train.run import RunSpec, eval_run

    spec = RunSpec(
        data, data_format, "", "", checkpoint, boxes, cache, temporal_clips=clips, proposals=proposals
    )
    metrics = eval_run(
        checkpoint,
        spec,
        split=split,
        spatial_crops=crops,
        batch_size=batch_size,
        workers=workers,
        device=device,
        on_notice=warn,
    )
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    table = new_table(f"{checkpoint} on {split}: {metrics['num_videos']} videos, per class")
    table.add_column("class")
    table.add_column("videos", justify="right")
    table.add_column("AP" if metrics["multi_label"] else "accuracy", justify="right")
    for name, value in metrics["per_class"].items():
        shown = "-" if value is None else f"{100 * value:.1f}"
        table.add_row(name, str(metrics["class_counts"][name]), shown)
    console.print(table)
    if metrics["multi_label"]:
        console.print(f"mAP {100 * metrics['map']:.2f} (classes with positives)")
    else:
        console.print(
            f"top-1 {100 * metrics['top1']:.2f}  top-5 {100 * metrics['top5']:.2f}  "
            f"mean class accuracy {100 * metrics['mean_class_accuracy']:.2f}"
        )
