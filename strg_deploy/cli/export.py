"""`strg export`: ONNX export, the parity table of --check, and --lint."""

from __future__ import annotations

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
    given_on_command_line,
    new_table,
    reports_errors,
)
from strg_deploy.config import preset
from strg_deploy.errors import StrgError


def register(app: typer.Typer) -> None:
    """Add `strg export` to ``app``."""
    app.command("export", cls=PlainUsage)(export_command)


@reports_errors
def export_command(
    ctx: typer.Context,
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
        list[Path] | None,
        typer.Option(
            "--video",
            help="A video for the reference sample (the first) and for --check's chain (repeatable).",
        ),
    ] = None,
    lint: Annotated[
        Path | None, typer.Option("--lint", help="Lint an export folder for TensorRT instead of exporting.")
    ] = None,
    engine: Annotated[
        bool,
        typer.Option(
            "--engine", help="Also build TensorRT engines in OUT/engines-<precision> (TensorRT and a GPU)."
        ),
    ] = False,
    precision: Annotated[str, typer.Option("--precision", help="With --engine: fp32 or fp16.")] = "fp32",
    as_json: JsonOption = False,
) -> None:
    """Export an STRG checkpoint's three networks to ONNX (custom nodes with function bodies), write
    manifest.json and a reference sample (reference.npz: two clips and torch's outputs on them, which
    `strg verify` checks a runtime against), and optionally check them against torch (--check); or lint
    an export (--lint DIR)."""
    if lint is not None:
        _lint_export(lint, as_json)
        return
    if precision != "fp32" and not engine:
        raise StrgError("--precision is for --engine (the ONNX files are fp32)")
    if engine:  # before any work: without TensorRT or a GPU nothing is exported
        from strg_deploy.contract.engines import DEFAULT_MAX_BATCH, PRECISIONS
        from strg_deploy.export.engine import require_tensorrt

        if precision not in PRECISIONS:
            raise StrgError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        require_tensorrt("strg export --engine")
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
        manifest = export_model(
            model, out, options, on_network=lambda n: status.update(f"exporting {n}"), videos=videos or ()
        )
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
    reference = manifest["reference"]
    size = (Path(out) / reference["file"]).stat().st_size
    table.add_row(
        "reference", reference["file"], f"{size / 1e6:.1f}", ", ".join(reference["clips"]), "-", "-"
    )
    if not as_json:
        console.print(table)
    record: dict = manifest
    if check:
        from strg_deploy.export.parity import check_export

        rows = check_export(model, out, videos=videos or ())
        failed = [row for row in rows if not row.passed]
        if as_json:
            record = {"manifest": manifest, "check": [dataclasses.asdict(r) for r in rows]}
        else:
            console.print(comparison_table(rows, "parity with torch (fp32)"))
        if failed:
            if as_json:
                typer.echo(json.dumps(record, indent=2))
            worst = max(failed, key=lambda r: r.max_abs / r.tolerance)
            raise StrgError(
                f"{len(failed)} of {len(rows)} parity checks failed, e.g. {worst.runtime} {worst.network} on "
                f"{worst.inputs}: {worst.output} max |diff| {worst.max_abs:.2e}, "
                f"tolerance {worst.tolerance:.1e}"
            )
    if engine:
        from strg_deploy.cli.engine import build_and_report

        # engines take the export's --max-batch when it was given, else the engine default (`strg engine
        # build`'s), so that a later `strg engine build EXPORT` finds them built as it would build them
        engine_batch = max_batch if "max_batch" in given_on_command_line(ctx) else DEFAULT_MAX_BATCH
        engines = build_and_report(out, as_json, precision=precision, max_batch=engine_batch, show_json=False)
        record = {**(record if check and as_json else {"manifest": manifest}), "engines": engines}
    if as_json:  # one JSON document: the manifest (with --check / --engine: under "manifest")
        typer.echo(json.dumps(record, indent=2))


def _lint_export(folder: Path, as_json: bool) -> None:
    """`strg export --lint DIR`: TensorRT-compatibility findings for the three files; exit 1 if any."""
    from strg_deploy.contract.manifest import read_manifest
    from strg_deploy.export.lint import format_finding, lint_file

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
