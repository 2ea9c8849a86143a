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
from strg_deploy.models.proposals import load_detector_weights
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
    proposals: Path | None = None  # precomputed proposals (a `strg proposals` file) for STRG's nodes
    detector: Path | None = None  # RPN weights (a detector file) for STRG's frozen proposal network


def read_tracks(spec: RunSpec, num_boxes: int):
    """The per-video boxes STRG's nodes come from: ground truth (``spec.boxes``), precomputed
    proposals (``spec.proposals``) or None (the RPN proposes them on every clip)."""
    if spec.boxes is not None and spec.proposals is not None:
        raise StrgError("give ground-truth boxes (--boxes) or precomputed proposals (--proposals), not both")
    if spec.boxes is not None:
        return read_box_tracks(spec.boxes)
    if spec.proposals is not None:
        from strg_deploy.train.precompute import precomputed_tracks

        return precomputed_tracks(spec.proposals, num_boxes)
    return None


def read_split(spec: RunSpec, split: str) -> Dataset:
    """The dataset split through the reader ``spec.format`` names."""
    if spec.format not in FORMATS:
        raise StrgError(f"unknown data format {spec.format!r}; choose one of {', '.join(FORMATS)}")
    if not spec.data.exists():
        raise StrgError(f"data folder not found: {spec.data}")
    return READERS[FORMATS[spec.format]](spec.data, split)


def options_from_file(
    path: Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> TrainOptions:
    """TrainOptions from ``defaults`` (over TrainOptions' own), a JSON file (keys = TrainOptions fields),
    then the given overrides."""
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
    values = {**(defaults or {}), **values}
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
    tracks = read_tracks(spec, cfg.proposals.num_boxes)
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
    if spec.detector is not None and not spec.resume:
        if cfg.architecture != "strg":
            raise StrgError(
                f"--detector gives STRG's proposal network weights; --model {cfg.architecture} has none"
            )
        load_detector_weights(model.rpn, spec.detector)
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
    tracks = read_tracks(spec, model.cfg.proposals.num_boxes)
    loader = LoaderConfig(temporal_clips=spec.temporal_clips, spatial_crops=spatial_crops)
    dataset = ClipDataset(data, model.cfg, train=False, tracks=tracks, cache=spec.cache, loader=loader)
    target = choose_device(device)
    return validate(model.to(target), dataset, batch_size, workers, target)


def proposals_run(
    spec: RunSpec,
    out: Path,
    *,
    splits: tuple[str, ...] = ("train", "validation"),
    device: str = "auto",
    batch_frames: int = 64,
    on_video: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """`strg proposals`: the RPN of preset ``spec.preset`` with the weights of ``spec.detector`` on every
    frame of the videos of ``splits``, written to one precomputed-proposals file ``out``.
    Returns {"videos", "file", "bytes"}."""
    import torch

    from strg_deploy.models.proposals import RegionProposer
    from strg_deploy.train.loop import choose_device
    from strg_deploy.train.precompute import precompute_proposals

    if spec.detector is None:
        raise StrgError("proposals need detector weights (--detector FILE, e.g. RUN/detector.safetensors)")
    records = [record for split in splits for record in read_split(spec, split).records]
    if not records:
        raise StrgError(f"no videos in the {'/'.join(splits)} split(s) of {spec.data}")
    cfg = preset(spec.preset)
    proposer = load_detector_weights(RegionProposer(cfg), spec.detector).eval()
    with torch.inference_mode():
        precompute_proposals(
            records, proposer, out, batch_frames=batch_frames, device=choose_device(device), on_video=on_video
        )
    return {"videos": len({r.video_id for r in records}), "file": str(out), "bytes": out.stat().st_size}


PROPOSALS_LR = 0.05  # RPN fine-tuning from scratch: trained stably on the synthetic set (per 8 clips)


def proposer_run(
    spec: RunSpec, options: TrainOptions, on_step: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """`strg train --task proposals`: fine-tune the preset's RPN on the ground-truth boxes of
    ``spec.boxes`` (from ``spec.detector`` weights when given, else from scratch; with ``spec.resume``
    from ``spec.out/last``); writes ``spec.out/detector.safetensors``, ``spec.out/metrics.jsonl``
    (recall at N per epoch) and ``spec.out/last`` (the training state). Under torchrun the processes
    join one group and share every batch, as in :func:`train_run`."""
    from strg_deploy.train.proposer import fit_proposer

    if spec.boxes is None:
        raise StrgError("--task proposals trains the RPN on ground-truth boxes: give --boxes boxes.jsonl")
    if spec.proposals is not None or spec.init is not None:
        raise StrgError(
            "--task proposals takes --boxes and optionally --detector or --resume (no --proposals/--init)"
        )
    if spec.resume and not has_checkpoint(spec.out, "last"):
        raise StrgError(f"nothing to resume in {spec.out}: no last/ checkpoint")
    join_process_group(options.device)
    train = read_split(spec, "train")
    validation = read_split(spec, "validation")
    cfg = preset(spec.preset).with_classes(train.classes, multi_label=train.multi_label)
    tracks = read_box_tracks(spec.boxes)
    train_set = ClipDataset(train, cfg, train=True, tracks=tracks, cache=spec.cache, seed=options.seed)
    val_set = ClipDataset(validation, cfg, train=False, tracks=tracks, cache=spec.cache)
    return fit_proposer(
        cfg, train_set, val_set, spec.out, options, init=spec.detector, resume=spec.resume, on_step=on_step
    )
