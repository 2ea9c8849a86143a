"""`strg train` without the command line: read the data, build the model, fit, report.

The CLI hands its settings to :func:`plan_run` (a resume takes what it is not given from the run
folder's settings.json) and calls :func:`train_run` or :func:`proposer_run` with the :class:`RunSpec` and
TrainOptions it returns; everything a user can get wrong (paths, formats, a config file, a checkpoint
from another preset, a resume that contradicts its run) raises StrgError.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strg_deploy.config import ARCHITECTURES, preset
from strg_deploy.data.datasets import READERS, Dataset, read_box_tracks
from strg_deploy.errors import StrgError
from strg_deploy.fileio import writable_file
from strg_deploy.models.strg import build_model
from strg_deploy.models.weights import load_detector_weights
from strg_deploy.train.checkpoint import TrainPosition, checkpoint_extra, has_checkpoint, load_backbone_init
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import TrainOptions, choose_device, distributed, fit
from strg_deploy.train.run_dir import prepare_run_dir
from strg_deploy.train.settings import RUN_ARGUMENTS, merge_settings, read_settings, write_settings

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
    overwrite: bool = False  # move a run already in ``out`` aside and start again


Notice = Callable[[str], None]  # receives one-line warnings for the user (skipped entries, random RPN)


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


def read_split(
    spec: RunSpec, split: str, max_skipped: float = 0.5, on_notice: Notice | None = None
) -> Dataset:
    """The dataset split through the reader ``spec.format`` names. Entries skipped (a missing video, an
    unknown label, a malformed row) or repaired are reported through ``on_notice`` in one line; more than
    ``max_skipped`` of the split skipped is a StrgError."""
    check_data(spec)
    data = READERS[FORMATS[spec.format]](spec.data, split, max_skipped_fraction=max_skipped)
    if on_notice is not None and (data.skipped or data.repaired):
        on_notice(skipped_line(data))
    return data


def check_data(spec: RunSpec) -> None:
    """The data's format is known and its folder exists (checked before anything is written)."""
    if spec.format not in FORMATS:
        raise StrgError(f"unknown data format {spec.format!r}; choose one of {', '.join(FORMATS)}")
    if not spec.data.exists():
        raise StrgError(f"data folder not found: {spec.data}")


def skipped_line(data: Dataset) -> str:
    """One line on the entries of ``data`` that were skipped or repaired, by reason, with the first one."""
    total = len(data.records) + len(data.skipped)
    parts = []
    for title, items, counts in (
        ("skipped", data.skipped, data.skip_counts()),
        ("repaired", data.repaired, data.repair_counts()),
    ):
        if items:
            reasons = ", ".join(f"{count} {reason}" for reason, count in counts.items())
            parts.append(f"{len(items)} of {total} entries {title} ({reasons}; first: {items[0]})")
    return f"{data.name} {data.split}: " + "; ".join(parts)


def random_rpn_notice(spec: RunSpec, architecture: str) -> str | None:
    """The warning for STRG whose nodes come from a randomly initialised RPN (no boxes, proposals or
    detector weights): such an RPN proposes the same boxes on every frame."""
    if architecture != "strg" or spec.boxes or spec.proposals or spec.detector:
        return None
    return (
        "STRG's boxes come from its RPN, which has random weights here: it proposes the same boxes on every "
        "frame; give --boxes, --proposals or --detector"
    )


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(TrainOptions))


def read_options_file(path: Path | None) -> dict[str, Any]:
    """The training options of a JSON file (an object whose keys are TrainOptions fields; {} for None)."""
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise StrgError(f"cannot read options file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise StrgError(f"options file {path} is not UTF-8 JSON text: {err}") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, too deep
        raise StrgError(f"options file {path} is not valid JSON: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise StrgError(f"options file {path} must hold a JSON object")
    _check_option_names(values)
    return values


def _check_option_names(values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - OPTION_NAMES)
    if unknown:
        raise StrgError(f"unknown training options {unknown}; known: {sorted(OPTION_NAMES)}")


def options_from_file(
    path: Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> TrainOptions:
    """TrainOptions from ``defaults`` (over TrainOptions' own), a JSON file (keys = TrainOptions fields),
    then the given overrides."""
    values = {**read_options_file(path), **{k: v for k, v in overrides.items() if v is not None}}
    values = {**(defaults or {}), **values}
    _check_option_names(values)
    return TrainOptions(**values)


TASKS = ("classes", "proposals")


def settings_of(task: str, spec: RunSpec, options: TrainOptions) -> dict[str, Any]:
    """The flat settings record of a run (see train.settings): the task, ``spec``'s data and model
    arguments and every training option."""
    run = {name: getattr(spec, name) for name in RUN_ARGUMENTS if name != "task"}
    return {"task": task, **run, **dataclasses.asdict(options)}


def plan_run(
    out: Path,
    values: dict[str, Any],
    *,
    given: set[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    options_file: Path | None = None,
) -> tuple[str, RunSpec, TrainOptions]:
    """(task, RunSpec, TrainOptions) of `strg train --out OUT`. ``values`` holds the command line's
    settings under the record's names (``task``, ``data``, ``format``, ``preset``, ``model``, ``boxes``,
    ..., and TrainOptions fields; None: not set), defaults included; ``given`` names those given
    explicitly (None: all of them), and the options file's values count as given, under the flags.

    A new run takes ``values``. A resume takes every setting not given from OUT's record (see
    train.settings: :func:`~strg_deploy.train.settings.merge_settings`); a given one that conflicts with
    it is one StrgError line. The RPN task's learning rate defaults to :data:`PROPOSALS_LR`.
    """
    from_file = read_options_file(options_file)
    settings = {**from_file, **{k: v for k, v in values.items() if v is not None}}
    explicit = set(settings) if given is None else set(from_file) | (set(given) & set(settings))
    if resume:
        if not has_checkpoint(out, "last"):
            raise StrgError(f"nothing to resume in {out}: no last/ checkpoint")
        recorded = merge_settings(out, read_settings(out), {k: settings[k] for k in explicit})
        settings = {**settings, **recorded}
    task = settings.get("task", "classes")
    if task not in TASKS:
        raise StrgError(f"--task must be classes or proposals, got {task!r}")
    if settings.get("data") is None:
        if resume:
            raise StrgError(f"Missing option '--data': {out} has no settings.json to take it from")
        raise StrgError("Missing option '--data': a new run needs the dataset root")
    options = {k: v for k, v in settings.items() if k in OPTION_NAMES}
    defaults = {"lr": PROPOSALS_LR} if task == "proposals" else {}
    spec = RunSpec(
        data=Path(settings["data"]),
        format=settings.get("format", "ssv2"),
        preset=settings.get("preset", "small"),
        model=settings.get("model", "strg"),
        out=Path(out),
        boxes=_path(settings.get("boxes")),
        cache=_path(settings.get("cache")),
        init=_path(settings.get("init")),
        resume=resume,
        temporal_clips=settings.get("temporal_clips", 2),
        proposals=_path(settings.get("proposals")),
        detector=_path(settings.get("detector")),
        overwrite=overwrite,
    )
    return task, spec, TrainOptions(**{**defaults, **options})


def _path(value: Any) -> Path | None:
    return None if value is None else Path(value)


def record_settings(task: str, spec: RunSpec, options: TrainOptions) -> None:
    """Rank 0 writes the run's settings to ``spec.out/settings.json`` (once the data was read: a run that
    fails before that leaves no folder behind)."""
    if distributed()[0] == 0:
        write_settings(spec.out, settings_of(task, spec, options))


def join_process_group(device: str) -> None:
    """Initialise torch.distributed from torchrun's environment when it started several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")


def prepare_output(spec: RunSpec) -> None:
    """Check ``spec.out`` before any work (see :func:`prepare_run_dir`); rank 0 moves an old run aside
    and the other processes of a torchrun group wait for it."""
    rank, world = distributed()
    prepare_run_dir(spec.out, resume=spec.resume, overwrite=spec.overwrite, writer=rank == 0)
    if world > 1:
        torch.distributed.barrier()


def train_run(
    spec: RunSpec,
    options: TrainOptions,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_notice: Notice | None = None,
) -> TrainPosition:
    """Train as ``spec`` and ``options`` say; checkpoints, metrics and the run's settings
    (settings.json) land in ``spec.out``, checked before any work (a folder holding a run is refused
    without ``spec.resume`` or ``spec.overwrite``).
    The model's initial weights, the shuffle order and every clip come from ``options.seed``: the same
    command on the same machine writes the same bytes.

    Under torchrun (WORLD_SIZE > 1) the processes join one group (NCCL on GPUs, gloo on CPUs), each
    takes its share of every global batch, gradients are averaged and rank 0 alone writes.
    """
    join_process_group(options.device)
    choose_device(options.device)
    if spec.model not in ARCHITECTURES:
        raise StrgError(f"--model must be one of {', '.join(ARCHITECTURES)}, got {spec.model!r}")
    cfg = preset(spec.preset)
    check_data(spec)
    prepare_output(spec)
    train = read_split(spec, "train", options.max_unreadable, on_notice)
    validation = read_split(spec, "validation", options.max_unreadable, on_notice)
    cfg = cfg.with_classes(train.classes, multi_label=train.multi_label).replace(architecture=spec.model)
    notice = random_rpn_notice(spec, cfg.architecture)
    if notice and on_notice is not None and not spec.resume:  # a resumed run keeps its RPN
        on_notice(notice)
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
    torch.manual_seed(options.seed)  # the initial weights come from the seed too
    model = build_model(cfg)
    if spec.init is not None and not spec.resume:
        load_backbone_init(model, spec.init)
    if spec.detector is not None and not spec.resume:
        if cfg.architecture != "strg":
            raise StrgError(
                f"--detector gives STRG's proposal network weights; --model {cfg.architecture} has none"
            )
        load_detector_weights(model.rpn, spec.detector)
    extra = {} if spec.resume else {"rpn_weights": rpn_weights_source(spec, cfg.architecture)}
    record_settings("classes", spec, options)
    return fit(
        model,
        train_set,
        val_set,
        spec.out,
        options,
        resume=spec.resume,
        on_step=on_step,
        on_epoch=on_epoch,
        extra=extra,
    )


def rpn_weights_source(spec: RunSpec, architecture: str) -> str | None:
    """Where a new run's RPN weights come from, kept in its checkpoints' training state (``rpn_weights``)
    so that evaluation can warn about a random RPN: "detector", "random", or None without an RPN."""
    if architecture != "strg":
        return None
    return "detector" if spec.detector is not None else "random"


def eval_run(
    checkpoint: Path,
    spec: RunSpec,
    *,
    split: str = "validation",
    spatial_crops: int = 1,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    max_skipped: float = 0.1,
    on_notice: Notice | None = None,
) -> dict[str, Any]:
    """Metrics of the checkpoint folder ``checkpoint`` on ``split``: scores of every test view
    (``spec.temporal_clips`` x ``spatial_crops``) averaged per video (see train.metrics). More than
    ``max_skipped`` of the split's entries unreadable is a StrgError; fewer are reported."""
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.train.loop import validate

    target = choose_device(device)
    model = load_pretrained(checkpoint)
    data = read_split(spec, split, max_skipped, on_notice)
    uses_rpn = model.cfg.architecture == "strg" and spec.boxes is None and spec.proposals is None
    if uses_rpn and on_notice is not None and checkpoint_extra(checkpoint).get("rpn_weights") == "random":
        on_notice(
            f"{checkpoint}'s RPN has random weights (trained without --detector): it proposes the same boxes "
            "on every frame; give --boxes or --proposals"
        )
    if data.classes != model.cfg.classes:
        raise StrgError(
            f"the checkpoint's {model.cfg.num_classes} classes are not the "
            f"{data.num_classes} classes of {spec.data}"
        )
    tracks = read_tracks(spec, model.cfg.proposals.num_boxes)
    loader = LoaderConfig(temporal_clips=spec.temporal_clips, spatial_crops=spatial_crops)
    dataset = ClipDataset(data, model.cfg, train=False, tracks=tracks, cache=spec.cache, loader=loader)
    return validate(model.to(target), dataset, batch_size, workers, target)


def proposals_run(
    spec: RunSpec,
    out: Path,
    *,
    splits: tuple[str, ...] = ("train", "validation"),
    device: str = "auto",
    batch_frames: int = 64,
    on_video: Callable[[int, int], None] | None = None,
    on_notice: Notice | None = None,
) -> dict[str, Any]:
    """`strg proposals`: the RPN of preset ``spec.preset`` with the weights of ``spec.detector`` on every
    frame of the videos of ``splits``, written to one precomputed-proposals file ``out``.
    Returns {"videos", "file", "bytes"}."""
    from strg_deploy.models.proposals import RegionProposer
    from strg_deploy.train.precompute import precompute_proposals

    if spec.detector is None:
        raise StrgError("proposals need detector weights (--detector FILE, e.g. RUN/detector.safetensors)")
    target = choose_device(device)
    cfg = preset(spec.preset)
    check_data(spec)
    writable_file(out, overwrite=spec.overwrite)
    records = [record for split in splits for record in read_split(spec, split, on_notice=on_notice).records]
    if not records:
        raise StrgError(f"no videos in the {'/'.join(splits)} split(s) of {spec.data}")
    proposer = load_detector_weights(RegionProposer(cfg), spec.detector).eval()
    with torch.inference_mode():
        precompute_proposals(
            records, proposer, out, batch_frames=batch_frames, device=target, on_video=on_video
        )
    return {"videos": len({r.video_id for r in records}), "file": str(out), "bytes": out.stat().st_size}


PROPOSALS_LR = 0.05  # RPN fine-tuning from scratch: trained stably on the synthetic set (per 8 clips)


def proposer_run(
    spec: RunSpec,
    options: TrainOptions,
    on_step: Callable[[int, int, float], None] | None = None,
    on_notice: Notice | None = None,
) -> dict[str, Any]:
    """`strg train --task proposals`: fine-tune the preset's RPN on the ground-truth boxes of
    ``spec.boxes`` (from ``spec.detector`` weights when given, else from scratch; with ``spec.resume``
    from ``spec.out/last``); writes ``spec.out/detector.safetensors``, ``spec.out/metrics.jsonl``
    (recall at N per epoch), ``spec.out/settings.json`` and ``spec.out/last`` and ``best`` (the training
    state). Under torchrun the processes join one group and share every batch, as in :func:`train_run`."""
    from strg_deploy.train.proposer import fit_proposer

    if spec.boxes is None:
        raise StrgError("--task proposals trains the RPN on ground-truth boxes: give --boxes boxes.jsonl")
    if spec.proposals is not None or spec.init is not None:
        raise StrgError(
            "--task proposals takes --boxes and optionally --detector or --resume (no --proposals/--init)"
        )
    join_process_group(options.device)
    choose_device(options.device)
    cfg = preset(spec.preset)
    check_data(spec)
    prepare_output(spec)
    train = read_split(spec, "train", options.max_unreadable, on_notice)
    validation = read_split(spec, "validation", options.max_unreadable, on_notice)
    cfg = cfg.with_classes(train.classes, multi_label=train.multi_label)
    tracks = read_box_tracks(spec.boxes)
    train_set = ClipDataset(train, cfg, train=True, tracks=tracks, cache=spec.cache, seed=options.seed)
    val_set = ClipDataset(validation, cfg, train=False, tracks=tracks, cache=spec.cache)
    record_settings("proposals", spec, options)
    return fit_proposer(
        cfg, train_set, val_set, spec.out, options, init=spec.detector, resume=spec.resume, on_step=on_step
    )
