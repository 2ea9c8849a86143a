"""`strg train` without the command line: read the data, build the model, fit, report.

The CLI parses options into a :class:`RunSpec` and calls :func:`train_run`; everything a user can get
wrong (paths, formats, a config file, a checkpoint from another preset) raises StrgError.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strg_deploy.config import preset
from strg_deploy.data.datasets import READERS, Dataset, read_box_tracks
from strg_deploy.errors import StrgError
from strg_deploy.models.strg import build_model
from strg_deploy.train.checkpoint import TrainPosition, has_checkpoint, load_backbone_init
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import TrainOptions, fit

FORMATS = {
    "ssv2": "something-something-v2",
    "ssv1": "something-something-v1",
    "charades": "charades",
    "folders": "folders",
}


@dataclass(frozen=True)
class RunSpec:
    """What to train on and where: data, format, preset, architecture, output folder and extras."""

    data: Path
    format: str
    preset: str
    model: str
    out: Path
    boxes: Path | None = None  # ground-truth box tracks (boxes.jsonl) for STRG's nodes
    cache: Path | None = None  # decoded-clip cache folder
    init: Path | None = None  # stage-2 initialisation: the backbone of an I3D/STRG checkpoint folder
    resume: bool = False
    temporal_clips: int = 2  # validation views per video


def read_split(spec: RunSpec, split: str) -> Dataset:
    """The dataset split through the reader ``spec.format`` names."""
    if spec.format not in FORMATS:
        raise StrgError(f"unknown data format {spec.format!r}; choose one of {', '.join(FORMATS)}")
    if not spec.data.exists():
        raise StrgError(f"data folder not found: {spec.data}")
    return READERS[FORMATS[spec.format]](spec.data, split)


def options_from_file(path: Path | None, overrides: dict[str, Any]) -> TrainOptions:
    """TrainOptions from a JSON file (keys = TrainOptions fields), then the given overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise StrgError(f"cannot read options file {path}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise StrgError(f"options file {path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise StrgError(f"options file {path} must hold a JSON object")
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise StrgError(f"unknown training options {unknown}; known: {sorted(names)}")
    return TrainOptions(**values)


def join_process_group(device: str) -> None:
    """Initialise torch.distributed from torchrun's environment when it started several processes."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")


def train_run(
    spec: RunSpec,
    options: TrainOptions,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainPosition:
    """Train as ``spec`` and ``options`` say; checkpoints and metrics land in ``spec.out``.

    Under torchrun (WORLD_SIZE > 1) the processes join one group (NCCL on GPUs, gloo on CPUs), each
    takes its share of every global batch, gradients are averaged and rank 0 alone writes.
    """
    join_process_group(options.device)
    train = read_split(spec, "train")
    validation = read_split(spec, "validation")
    cfg = preset(spec.preset).with_classes(train.classes, multi_label=train.multi_label)
    cfg = cfg.replace(architecture=spec.model)
    if spec.resume and not has_checkpoint(spec.out, "last"):
        raise StrgError(f"nothing to resume in {spec.out}: no last/ checkpoint")
    tracks = read_box_tracks(spec.boxes) if spec.boxes is not None else None
    train_set = ClipDataset(train, cfg, train=True, tracks=tracks, cache=spec.cache, seed=options.seed)
    val_set = ClipDataset(
        validation,
        cfg,
        train=False,
        tracks=tracks,
        cache=spec.cache,
        loader=LoaderConfig(temporal_clips=spec.temporal_clips),
    )
    model = build_model(cfg)
    if spec.init is not None and not spec.resume:
        load_backbone_init(model, spec.init)
    return fit(
        model, train_set, val_set, spec.out, options, resume=spec.resume, on_step=on_step, on_epoch=on_epoch
    )


def eval_run(
    checkpoint: Path,
    spec: RunSpec,
    *,
    split: str = "validation",
    spatial_crops: int = 1,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    """Metrics of the checkpoint folder ``checkpoint`` on ``split``: scores of every test view
    (``spec.temporal_clips`` x ``spatial_crops``) averaged per video (see train.metrics)."""
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.train.loop import choose_device, validate

    model = load_pretrained(checkpoint)
    data = read_split(spec, split)
    if data.classes != model.cfg.classes:
        raise StrgError(
            f"the checkpoint's {model.cfg.num_classes} classes are not the "
            f"{data.num_classes} classes of {spec.data}"
        )
    tracks = read_box_tracks(spec.boxes) if spec.boxes is not None else None
    loader = LoaderConfig(temporal_clips=spec.temporal_clips, spatial_crops=spatial_crops)
    dataset = ClipDataset(data, model.cfg, train=False, tracks=tracks, cache=spec.cache, loader=loader)
    target = choose_device(device)
    return validate(model.to(target), dataset, batch_size, workers, target)
