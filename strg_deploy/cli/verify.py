"""`strg verify`: an export on a runtime of this machine against its reference sample (no torch)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from strg_deploy.cli.common import (
    JsonOption,
    PlainUsage,
    comparison_table,
    console,
    new_table,
    reports_errors,
)
from strg_deploy.engines.pipeline import GPU_RUNTIMES, RUNTIMES
from strg_deploy.errors import StrgError

VERIFY_BACKENDS = ("auto", *RUNTIMES, *GPU_RUNTIMES)


def register(app: typer.Typer) -> None:
    """Add `strg verify` to ``app``."""
    app.command("verify", cls=PlainUsage)(verify_command)


@reports_errors
def verify_command(
    export: Annotated[
        Path, typer.Argument(help="An export folder (strg export --out DIR).", metavar="EXPORT")
    ],
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="auto (fastest CPU runtime per network), onnxruntime, openvino, "
            "onnxruntime-cuda or tensorrt (strg engine build).",
        ),
    ] = "onnxruntime",
    threads: Annotated[
        int, typer.Option("--threads", help="Intra-op threads (0: the runtime's default).")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Check that a runtime of this machine computes what the trained model computed: the export's
    files against their SHA-256, each network and the whole chain against the reference sample that
    `strg export` wrote. Needs no torch. Exit status 1 when a comparison fails."""
    if backend not in VERIFY_BACKENDS:
        raise StrgError(f"--backend must be one of {', '.join(VERIFY_BACKENDS)}, got {backend!r}")
    if threads < 0:
        raise StrgError(f"--threads must be 0 or more, got {threads}")
    from strg_deploy.engines.verify import verify_export

    status = contextlib.nullcontext() if as_json else console.status(f"verifying {export} on {backend}")
    with status:
        result = verify_export(export, backend, threads=threads)
    rows, backends = result.rows, result.backends
    failed = [row for row in rows if not row.passed]
    if as_json:
        record = {
            "export": str(export),
            "passed": result.passed,
            "clips": list(result.clips),
            "backends": backends,
            "rows": [dataclasses.asdict(r) for r in rows],
        }
        typer.echo(json.dumps(record, indent=2))
    else:
        if backends:
            console.print(backend_table(backends))
        clips = ", ".join(result.clips)
        console.print(comparison_table(rows, f"{export} against its reference sample ({clips})"))
    if failed:
        first = failed[0]
        what = (
            f"changed files: {first.output}"
            if first.network == "files"
            else f"{first.runtime} {first.network}: {first.output} max |diff| {first.max_abs:.2e}, "
            f"tolerance {first.tolerance:.1e}"
            + ("" if first.masks_equal else ", masks differ")
            + ("" if first.top1_equal is not False else ", top-1 class differs")
        )
        typer.echo(f"error: {len(failed)} of {len(rows)} checks failed, e.g. {what}", err=True)
        raise typer.Exit(1)
    if not as_json:
        console.print(f"{len(rows)} checks passed")


def backend_table(rows: list[dict]) -> object:
    """What runs each network (Pipeline.describe), with auto's measurements where there are any."""
    table = new_table("backends")
    measured = any(row.get("measured_ms") for row in rows)
    for column in (
        "network",
        "backend",
        "device",
        "precision",
        "version",
        *(("measured ms",) if measured else ()),
    ):
        table.add_column(column)
    for row in rows:
        cells = [row["network"], row["backend"], row["device"], row["precision"], row["version"]]
        if measured:
            cells.append(", ".join(f"{k} {v:.1f}" for k, v in row.get("measured_ms", {}).items()))
        table.add_row(*cells)
    return table
