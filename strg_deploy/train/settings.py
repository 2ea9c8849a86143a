"""What a run folder records about its run (``RUN/settings.json``), and how a resume uses the record.

A run writes its settings when it starts (and again when it resumes), atomically: the task, the data and
model arguments and every training option, as one flat JSON object::

    {"settings_format": 1, "task": "classes", "data": "/abs/synth", "format": "ssv2", "preset": "small",
     "model": "strg", "boxes": "/abs/synth/boxes.jsonl", "proposals": null, "detector": null,
     "init": null, "cache": null, "temporal_clips": 2, "epochs": 10, "batch_size": 8, "lr": 0.02, ...}

Paths are absolute. :func:`merge_settings` gives a resume its settings: every setting not given on the
command line comes from the record, a setting given with the recorded value is fine, and one given with
another value is a StrgError naming it, unless it is in :data:`CHANGEABLE`: where and how fast the run
goes on (``device``, ``workers``, ``cache``, ``amp``), how long (``epochs`` extends or shortens the
cosine schedule from the next step on; ``max_steps``) and how it saves or tolerates data
(``save_every``, ``max_unreadable``). ``max_steps`` is a stop point for one command: never taken from
the record. A run folder from before the record existed falls back to its checkpoint's training
options and task (the data arguments must then be given again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text

SETTINGS_FILE = "settings.json"
SETTINGS_FORMAT = 1

# The data and model arguments of a run (RunSpec's names); the training options are TrainOptions' fields.
RUN_ARGUMENTS = (
    "task",
    "data",
    "format",
    "preset",
    "model",
    "boxes",
    "proposals",
    "detector",
    "init",
    "cache",
    "temporal_clips",
)
PATHS = frozenset({"data", "boxes", "proposals", "detector", "init", "cache"})
CHANGEABLE = frozenset(
    {"epochs", "workers", "device", "cache", "amp", "save_every", "max_steps", "max_unreadable"}
)
NOT_RECALLED = frozenset({"max_steps"})  # a stop point for one command, not a setting of the run
FLAGLESS = frozenset({"weight_decay", "warmup_epochs", "max_grad_norm", "save_every", "max_steps", "amp"})
FLAGLESS |= {"max_unreadable", "temporal_clips"}  # only in --options (or the library's RunSpec)


def write_settings(run_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` (flat, JSON-able; paths as strings or Paths) to ``RUN/settings.json`` atomically,
    paths made absolute. Returns the file."""
    record = {"settings_format": SETTINGS_FORMAT}
    for key, value in settings.items():
        if key in PATHS and value is not None:
            value = str(Path(value).resolve())
        record[key] = value
    path = Path(run_dir) / SETTINGS_FILE
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def read_settings(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's recorded settings (without ``settings_format``); for a run folder without
    settings.json, the task and training options its ``last/`` checkpoint holds; None when neither
    exists. An unreadable record is a StrgError."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return _checkpoint_settings(Path(run_dir))
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise StrgError(f"cannot read the run's settings {path}: {err}") from None
    if not isinstance(record, dict) or record.get("settings_format") != SETTINGS_FORMAT:
        raise StrgError(f"{path} is not a settings record of format {SETTINGS_FORMAT}")
    return {key: value for key, value in record.items() if key != "settings_format"}


def _checkpoint_settings(run_dir: Path) -> dict[str, Any] | None:
    from strg_deploy.train.checkpoint import checkpoint_dir, checkpoint_extra, has_checkpoint

    if not has_checkpoint(run_dir, "last"):
        return None
    extra = checkpoint_extra(checkpoint_dir(run_dir, "last"))
    options = extra.get("options")
    return {"task": extra.get("task", "classes"), **(options if isinstance(options, dict) else {})}


def merge_settings(
    run_dir: str | Path, record: dict[str, Any] | None, given: dict[str, Any]
) -> dict[str, Any]:
    """The settings of a resume of the run in ``run_dir``: ``record`` (see :func:`read_settings`; None:
    nothing recorded) with the settings ``given`` explicitly on the command line (same names; ``None``
    values are not given) over it. A given setting outside :data:`CHANGEABLE` whose value differs from the
    recorded one raises one StrgError line naming each such setting."""
    record = {k: v for k, v in (record or {}).items() if k not in NOT_RECALLED}
    given = {k: v for k, v in given.items() if v is not None}
    conflicts = [
        name
        for name, value in given.items()
        if name not in CHANGEABLE and name in record and not _same(name, record[name], value)
    ]
    if conflicts:
        recorded = ", ".join(_shown(name, record[name]) for name in conflicts)
        asked = ", ".join(_shown(name, given[name]) for name in conflicts)
        drop = (
            "the options to keep the recorded values"
            if conflicts[1:]
            else "the option to keep the recorded value"
        )
        raise StrgError(f"{run_dir} was trained with {recorded}; this resume gives {asked} (drop {drop})")
    return {**record, **given}


def _same(name: str, recorded: Any, given: Any) -> bool:
    if name in PATHS and recorded is not None and given is not None:
        return Path(recorded).resolve() == Path(given).resolve()
    return recorded == given


def _shown(name: str, value: Any) -> str:
    """How a setting reads in a message: ``--lr 0.01``, ``--freeze-bn``, ``no --boxes``, or for an
    option that has no flag (an --options file's) ``max_grad_norm 5.0``."""
    if name == "freeze_bn" and isinstance(value, bool):
        return "--freeze-bn" if value else "--train-bn"
    flag = "--" + name.replace("_", "-")
    if name in FLAGLESS:
        return f"{name} {json.dumps(value)}"
    if value is None:
        return f"no {flag}"
    return f"{flag} {value}"
