"""`strg model presets` and `strg model summary`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from strg_deploy.cli.common import (
    ConfigOption,
    JsonOption,
    PlainUsage,
    PresetOption,
    console,
    new_table,
    reports_errors,
    resolve_config,
)
from strg_deploy.config import PRESETS, preset

model_app = typer.Typer(help="Inspect model presets: parameters, FLOPs and shapes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `model` group to ``app``."""
    app.add_typer(model_app, name="model")


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

    cfg = resolve_config(preset_name, config_path)
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
