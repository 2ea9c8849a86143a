"""The `strg` command line: thin typer commands that call the library and print with rich.

Importing this module never imports torch: commands that need it import it inside their bodies.
Every error a user can cause is a StrgError, printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from strg_deploy import __version__
from strg_deploy.config import PRESETS, ModelConfig, preset
from strg_deploy.errors import StrgError

F = TypeVar("F", bound=Callable[..., Any])

try:  # typer vendors click from 0.2x on; its usage errors derive from TyperException
    from typer import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer with click itself
    from click import ClickException as UsageProblem


class OneLineErrors(typer.core.TyperGroup):
    """The top-level group: a usage error (a bad flag value, a missing option, an unknown command) is one
    line on stderr, ``error: <what> (see strg <command> --help)``, with exit status 2, like every error
    the library raises; Ctrl-C is ``error: interrupted`` with status 130.

    SIGTERM keeps its default action (the process ends at once): raising an exception from a handler at
    an arbitrary point (inside a fork, or a DataLoader's file-descriptor handshake) was seen to hang the
    process. Writes are atomic, stale temporary folders are removed by the next run, and child processes
    end with their parent (``strg_deploy.processes``)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageProblem as err:
            ctx = getattr(err, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            text = err.format_message() if hasattr(err, "format_message") else str(err)
            if type(err).__name__ == "NoArgsIsHelpError":  # a group called bare: its help (rich printed it)
                if text.strip():
                    typer.echo(text.rstrip(), err=True)
            else:
                typer.echo(f"error: {' '.join(text.split())}{hint}", err=True)
            sys.exit(getattr(err, "exit_code", 2))
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


class PlainUsage(typer.core.TyperCommand):
    """A command whose usage line names its arguments as ``CHECKPOINT`` (required) and ``[CHECKPOINT]``
    (optional), where typer writes ``{checkpoint}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") != "argument":
                continue
            name = (param.metavar or param.name.upper()).strip("[]").removesuffix("...")
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


app = typer.Typer(
    name="strg",
    cls=OneLineErrors,
    help="Train, export and serve STRG (Videos as Space-Time Region Graphs) action recognition.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Inspect model presets: parameters, FLOPs and shapes.", no_args_is_help=True)
app.add_typer(model_app, name="model")
data_app = typer.Typer(
    help="Video data: inspect files, generate the synthetic benchmark.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

console = Console()


def new_table(title: str) -> Table:
    """A compact table that fits an 80-column terminal."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


def one_line(err: StrgError) -> str:
    """The error's message on one line. An error raised in a DataLoader worker comes back wrapped in the
    worker's traceback; its last line holds the original message."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if len(lines) > 1 and "Traceback" in str(err):
        return lines[-1].split("StrgError: ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def reports_errors(command: F) -> F:
    """Turn a StrgError raised by ``command`` into one line on stderr and exit status 2; the command's
    help is its docstring with each paragraph joined into one line (the terminal wraps it)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StrgError as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None

    run.__doc__ = _paragraphs(command.__doc__ or "")
    return run  # type: ignore[return-value]


def _paragraphs(doc: str) -> str:
    """A docstring with the lines of each paragraph joined by spaces; paragraphs stay apart."""
    blocks = re.split(r"\n\s*\n", doc.strip())
    return "\n\n".join(" ".join(line.strip() for line in block.splitlines()) for block in blocks)


def warn(message: str) -> None:
    """A one-line warning on stderr (``warning: ...``)."""
    typer.echo(f"warning: {message}", err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strg-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, export and serve STRG (Videos as Space-Time Region Graphs) action recognition."""


@contextlib.contextmanager
def counting_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A transient rich bar fed by ``advance(done, total)``; it starts on the first call, so options that
    fail before any work show no bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    progress = Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(description, total=None)

    def advance(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if progress.live.is_started:
            progress.stop()


ProposalsOption = Annotated[
    Path | None, typer.Option("--proposals", help="Precomputed proposals (a `strg proposals` file).")
]
DetectorOption = Annotated[
    Path | None,
    typer.Option("--detector", help="RPN weights: a Faster R-CNN state dict or RUN/detector.safetensors."),
]
PresetOption = Annotated[str, typer.Option("--preset", "-p", help=f"Model preset: {', '.join(PRESETS)}.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="A model config.json (or a checkpoint folder holding one) instead of a preset."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]


def _resolve_config(preset_name: str, config_path: Path | None) -> ModelConfig:
    return ModelConfig.load(config_path) if config_path is not None else preset(preset_name)


@model_app.command("presets", cls=PlainUsage)
@reports_errors
def model_presets(as_json: JsonOption = False) -> None:
    """List the named presets and what they fix (no torch needed)."""
    rows = []
    for name in PRESETS:
        cfg = preset(name)
        rows.append(
            {
                "preset": name,
                "clip": f"{cfg.frames}x{cfg.size}x{cfg.size}",
                "backbone": f"R{cfg.backbone.depth}/w{cfg.backbone.width}",
                "features": f"{cfg.node_dim}x{cfg.feature_frames}x{cfg.feature_size}x{cfg.feature_size}",
                "layers": cfg.head.layers,
                "boxes": cfg.proposals.num_boxes,
                "detector": cfg.proposals.detector.replace("mobilenet_v3_large", "mnv3"),
                "classes": cfg.num_classes,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = new_table("Presets (features: d x T' x H' x W'; boxes: proposals per frame)")
    for key in rows[0]:
        table.add_column(key, no_wrap=True)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@model_app.command("summary", cls=PlainUsage)
@reports_errors
def model_summary(
    preset_name: PresetOption = "paper-r50",
    config_path: ConfigOption = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Clips per batch for the FLOP count.")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Parameters and FLOPs per stage, and the output shape of each of the three networks.

    FLOPs come from torch.utils.flop_counter, which counts a multiply-add as 2 FLOPs; the literature's
    "153 GFLOPs" for I3D-R50 are multiply-adds (GMACs, also shown). Only convolutions and matrix
    products are counted.
    """
    from strg_deploy.extras import require

    cfg = _resolve_config(preset_name, config_path)
    require("torch", "strg model summary")
    require("torchvision", "strg model summary")
    from strg_deploy.models.summary import summarize

    with console.status(f"counting FLOPs of {cfg.preset} on a random clip...", spinner="dots"):
        summary = summarize(cfg, batch=batch)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    console.print(summary.stage_table())
    console.print(summary.network_table())
    console.print(
        "[dim]FLOPs: torch.utils.flop_counter, a multiply-add counts as 2 FLOPs (GMACs = GFLOPs / 2); "
        "only convolutions and matrix products are counted.[/dim]"
    )


@data_app.command("info", cls=PlainUsage)
@reports_errors
def data_info(
    videos: Annotated[
        list[str], typer.Argument(help="Video files, URLs or frame-folder patterns.", metavar="VIDEO")
    ],
    stream: Annotated[
        int | None, typer.Option("--stream", help="Video stream index (default: the first).")
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="Frame rate of frame-folder patterns (frames/%05d.jpg); files ignore it."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Container, stream, codec, size after rotation, fps, duration, decoded and damaged frames per video.

    Every frame is decoded (that is how damaged frames and the measured fps are found). A file that cannot
    be read (a still image included) becomes a row with its error, and the exit status is 1 when any row
    has one. A file that decodes fewer frames than it declares (beyond damaged packets), or that ends
    before the data its index points to (truncated), shows decoded/declared frames marked with ! and a
    warning line; its JSON row says so in missing_frames and truncated.
    """
    from strg_deploy.data.info import info_rows, row_warning

    rows = info_rows(videos, stream=stream, fps=fps)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = new_table("videos (--json gives every field)")
        table.add_column("file", max_width=24, overflow="ellipsis")
        for column in ("codec", "size", "fps", "measured", "seconds", "frames", "damaged"):
            justify = "left" if column in ("codec", "size") else "right"
            table.add_column(column, no_wrap=True, justify=justify, min_width=len(column))  # the name shrinks
        for row in rows:
            name = Path(row["path"]).name or row["path"]
            if "error" in row:
                table.add_row(name, "[red]error[/red]")
                continue
            decoded, declared = row["frames_decoded"], row["declared_frames"]
            frames = str(decoded) if declared in (0, decoded) else f"{decoded}/{declared}"
            table.add_row(
                name,
                row["codec"],
                f"{row['width']}x{row['height']}",
                f"{row['nominal_fps']:.2f}" if row["nominal_fps"] else "-",
                f"{row['measured_fps']:.2f}" if row["measured_fps"] else "-",
                f"{row['duration']:.2f}" if row["duration"] is not None else "-",
                f"[yellow]{frames}![/yellow]" if row_warning(row) else frames,
                str(row["damaged_frames"]),
            )
        console.print(table)
        for row in rows:
            if "error" in row:
                typer.echo(f"error: {row['error']}", err=True)
            elif warning := row_warning(row):
                warn(warning)
    if any("error" in row for row in rows):
        raise typer.Exit(1)


@data_app.command("synth", cls=PlainUsage)
@reports_errors
def data_synth(
    out: Annotated[
        Path,
        typer.Argument(help="Folder to write videos/, the annotation JSON and boxes.jsonl.", metavar="OUT"),
    ],
    train: Annotated[int, typer.Option("--train", min=0, help="Training videos.")] = 2000,
    validation: Annotated[int, typer.Option("--validation", min=0, help="Validation videos.")] = 500,
    size: Annotated[
        int, typer.Option("--size", help="Frame width and height in pixels (even, 32 to 5968).")
    ] = 112,
    frames: Annotated[int, typer.Option("--frames", help="Frames per video.")] = 32,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the written videos.")] = 12.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed writes the same files.")] = 0,
    pan: Annotated[bool, typer.Option("--pan/--no-pan", help="Pan the camera over the scene.")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes (default: all cores).")
    ] = None,
) -> None:
    """Generate the synthetic relational benchmark: H.264 videos whose class depends on how objects
    relate over time, Something-Something v2 style annotations and per-frame boxes of every object.

    SIGTERM stops it between videos (the videos being written finish): `error: terminated`, status 143."""
    from strg_deploy.data.synthetic import generate
    from strg_deploy.processes import TERMINATED_EXIT_STATUS, Terminated

    try:
        with counting_progress("rendering videos") as advance:
            summary = generate(
                out,
                videos_train=train,
                videos_validation=validation,
                size=size,
                frames=frames,
                fps=fps,
                seed=seed,
                pan=pan,
                workers=workers,
                progress=advance,
            )
    except Terminated as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(TERMINATED_EXIT_STATUS) from None
    console.print(
        f"wrote {summary.videos_train} training and {summary.videos_validation} validation videos "
        f"({len(summary.classes)} classes, {summary.bytes_written / 1e6:.1f} MB) to {out} "
        f"in {summary.seconds:.1f} s"
    )


@app.command("train", cls=PlainUsage)
@reports_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="Dataset root (annotations and videos).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: last/, best/, metrics.jsonl.")],
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
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from OUT/last.")] = False,
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
    """
    from strg_deploy.extras import require

    require("torch", "strg train")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from strg_deploy.train.run import PROPOSALS_LR, RunSpec, options_from_file, proposer_run, train_run

    if task not in ("classes", "proposals"):
        raise StrgError(f"--task must be classes or proposals, got {task!r}")
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "workers": workers,
        "seed": seed,
        "device": device,
        "freeze_bn": freeze_bn,
    }
    defaults = {"lr": PROPOSALS_LR} if task == "proposals" else None
    options = options_from_file(options_file, overrides, defaults)
    spec = RunSpec(
        data,
        data_format,
        preset_name,
        model,
        out,
        boxes,
        cache,
        init,
        resume,
        proposals=proposals,
        detector=detector,
        overwrite=overwrite,
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


@app.command("proposals", cls=PlainUsage)
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


@app.command("eval", cls=PlainUsage)
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


@app.command("export", cls=PlainUsage)
@reports_errors
def export_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="An STRG checkpoint folder (RUN_DIR/best); none: --preset, random weights.",
            metavar="CHECKPOINT",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for rpn/backbone/head.onnx + manifest.json.")
    ] = None,
    preset_name: Annotated[
        str | None,
        typer.Option("--preset", "-p", help="Without a checkpoint: export this preset with random weights."),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset, 18 to 21.")] = 18,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch", help="Largest batch of clips, for engine builders (the ONNX files take any)."
        ),
    ] = 32,
    external_data: Annotated[
        bool, typer.Option("--external-data", help="Weights in <network>.onnx.data beside each file.")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Inline the custom nodes' bodies (standard ops only).")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Compare onnxruntime and OpenVINO with torch after exporting.")
    ] = False,
    videos: Annotated[
        list[Path] | None, typer.Option("--video", help="A video for --check's chain (repeatable).")
    ] = None,
    lint: Annotated[
        Path | None, typer.Option("--lint", help="Lint an export folder for TensorRT instead of exporting.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Export an STRG checkpoint's three networks to ONNX (custom nodes with function bodies), write
    manifest.json, and optionally check them against torch (--check); or lint an export (--lint DIR)."""
    if lint is not None:
        _lint_export(lint, as_json)
        return
    from strg_deploy.extras import require

    require("torch", "strg export")
    from strg_deploy.export.onnx import ExportOptions, check_out, export_model
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.models.strg import build_model

    if out is None:
        raise StrgError("strg export needs --out DIR (or --lint DIR)")
    if (checkpoint is None) == (preset_name is None):
        raise StrgError("give a checkpoint folder or --preset NAME (random weights), not both")
    options = ExportOptions(opset=opset, max_batch=max_batch, external_data=external_data, plain=plain)
    options.validate()
    check_out(out)  # before any work: a file or a folder that cannot be written fails here
    model = load_pretrained(checkpoint) if checkpoint is not None else build_model(preset(preset_name)).eval()
    with console.status("exporting") as status:
        manifest = export_model(model, out, options, on_network=lambda n: status.update(f"exporting {n}"))
    table = new_table(f"exported to {out}")
    for column in ("network", "file", "MB", "inputs", "outputs", "custom ops"):
        table.add_column(column)
    for name, entry in manifest["networks"].items():
        size = entry["bytes"] + entry.get("external_data", {}).get("bytes", 0)
        table.add_row(
            name,
            entry["file"],
            f"{size / 1e6:.1f}",
            ", ".join(i["name"] for i in entry["inputs"]),
            ", ".join(o["name"] for o in entry["outputs"]),
            ", ".join(entry["custom_ops"]) or "-",
        )
    if not as_json:
        console.print(table)
    if check:
        from strg_deploy.export.parity import check_export

        rows = check_export(model, out, videos=videos or ())
        failed = [row for row in rows if not row.passed]
        if as_json:
            typer.echo(
                json.dumps({"manifest": manifest, "check": [dataclasses.asdict(r) for r in rows]}, indent=2)
            )
        else:
            console.print(parity_table(rows))
        if failed:
            worst = max(failed, key=lambda r: r.max_abs / r.tolerance)
            raise StrgError(
                f"{len(failed)} of {len(rows)} parity checks failed, e.g. {worst.runtime} {worst.network} on "
                f"{worst.inputs}: {worst.output} max |diff| {worst.max_abs:.2e}, "
                f"tolerance {worst.tolerance:.1e}"
            )
    elif as_json:
        typer.echo(json.dumps(manifest, indent=2))


def parity_table(rows: list) -> Table:
    """The rows of `strg export --check` as a table: the float output nearest its bound, its largest
    difference and bound, and (where any row has them) the proposals matched across tied scores."""
    table = new_table("parity with torch (fp32)")
    tied = any(row.reordered for row in rows)
    columns = ("runtime", "network", "inputs", "output", "|diff|", "tolerance", "masks")
    for column in (*columns, *(("tied",) if tied else ()), "top-1", "result"):
        table.add_column(column)
    for row in rows:
        top1 = "-" if row.top1_equal is None else ("same" if row.top1_equal else "DIFFERS")
        cells = [
            row.runtime,
            row.network,
            row.inputs,
            row.output,
            f"{row.max_abs:.1e}",
            f"{row.tolerance:.1e}",
            "equal" if row.masks_equal else "DIFFER",
        ]
        if tied:
            cells.append(str(row.reordered))
        table.add_row(*cells, top1, "ok" if row.passed else "FAIL")
    return table


def _lint_export(folder: Path, as_json: bool) -> None:
    """`strg export --lint DIR`: TensorRT-compatibility findings for the three files; exit 1 if any."""
    from strg_deploy.export.lint import format_finding, lint_file
    from strg_deploy.export.manifest import read_manifest

    manifest = read_manifest(folder)
    num_boxes = manifest["clip"]["num_boxes"]
    findings = []
    for name, entry in manifest["networks"].items():
        findings += lint_file(folder / entry["file"], network=name, num_boxes=num_boxes)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            console.print(format_finding(finding), markup=False)
        networks = ", ".join(manifest["networks"])
        console.print(f"{len(findings)} finding(s) in {networks} ({folder})")
    if findings:
        raise typer.Exit(1)
