"""`strg engine build`: TensorRT engines (and their sidecars) for an export folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from strg_deploy.cli.common import JsonOption, PlainUsage, console, new_table, reports_errors
from strg_deploy.contract.engines import DEFAULT_MAX_BATCH

engine_app = typer.Typer(
    help="TensorRT engines for an export (needs TensorRT >= 10.9 and an NVIDIA GPU).", no_args_is_help=True
)

PrecisionOption = Annotated[str, typer.Option("--precision", help="Engine precision: fp32 or fp16.")]


def register(app: typer.Typer) -> None:
    """Add the `engine` group to ``app``."""
    app.add_typer(engine_app, name="engine")


def build_and_report(export: Path, as_json: bool = False, show_json: bool = True, **options) -> list[dict]:
    """Build the engines of ``export`` (``strg_deploy.export.engine.build_engines`` options) with a status
    line, then print what was built or kept as a table (or, with ``as_json`` and ``show_json``, as JSON);
    returns the JSON rows."""
    from strg_deploy.export.engine import build_engines

    with console.status("building TensorRT engines") as status:
        results = build_engines(
            export, on_network=lambda n: status.update(f"building the {n} engine (minutes)"), **options
        )
    rows = [{**r.__dict__, "path": str(r.path)} for r in results]
    if as_json:
        if show_json:
            typer.echo(json.dumps(rows, indent=2))
        return rows
    table = new_table(f"TensorRT engines in {results[0].path.parent}")
    for column in ("network", "engine", "MB", "status", "seconds"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.network, r.path.name, f"{r.path.stat().st_size / 1e6:.1f}", r.status, f"{r.seconds:.0f}"
        )
    console.print(table)
    return rows


@engine_app.command("build", cls=PlainUsage)
@reports_errors
def engine_build(
    export: Annotated[Path, typer.Argument(help="An export folder (strg export --out).", metavar="EXPORT")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the engines (default EXPORT/engines-<precision>)."),
    ] = None,
    precision: PrecisionOption = "fp32",
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Largest batch of clips the engines take.")
    ] = DEFAULT_MAX_BATCH,
    opt_batch: Annotated[
        int | None, typer.Option("--opt-batch", help="The batch TensorRT tunes for (default min(4, max)).")
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild engines that exist already.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Build TensorRT engines for the rpn, backbone and head of an export: <network>.engine plus a
    sidecar <network>.engine.json (TensorRT version, GPU, precision, profile, the export's hashes).
    Engines that match are kept unless --rebuild; engines for another GPU, TensorRT or export are refused."""
    build_and_report(
        export,
        as_json,
        out_dir=out,
        precision=precision,
        max_batch=max_batch,
        opt_batch=opt_batch,
        rebuild=rebuild,
    )
