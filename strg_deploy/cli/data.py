"""`strg data info` and `strg data synth`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from strg_deploy.cli.common import (
    JsonOption,
    PlainUsage,
    console,
    counting_progress,
    new_table,
    reports_errors,
    warn,
)

data_app = typer.Typer(
    help="Video data: inspect files, generate the synthetic benchmark.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add the `data` group to ``app``."""
    app.add_typer(data_app, name="data")


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
