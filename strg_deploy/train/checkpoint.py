"""Training checkpoints: ``RUN_DIR/last`` and ``RUN_DIR/best``, saved so that a kill never loses both.

Each checkpoint is a folder::

    RUN_DIR/last/
        model.safetensors   weights (save_pretrained: load_pretrained(RUN_DIR/best) works for eval/export)
        config.json         the ModelConfig
        state.pt            training state: optimizer, LR scheduler, AMP GradScaler (or None),
                            TrainPosition, RNG states (python, numpy, torch CPU, torch CUDA) and ``extra``

``state.pt`` holds only tensors and plain Python values, so it is read with ``weights_only=True``.

The swap (``name`` is ``last`` or ``best``):

1. write the whole new checkpoint into ``RUN_DIR/.last.tmp-<pid>`` (stale ``.last.tmp-*`` folders of
   killed runs are removed first);
2. if ``RUN_DIR/last`` exists, rename it to ``RUN_DIR/.last.old`` (a stale ``.last.old`` beside a
   complete ``last`` is removed first);
3. rename ``RUN_DIR/.last.tmp-<pid>`` to ``RUN_DIR/last``;
4. remove ``RUN_DIR/.last.old``.

Invariant: ``last`` only ever appears by a rename of a complete folder, so when it exists it is complete;
when it does not, ``.last.old`` is the previous complete checkpoint (a kill between steps 2 and 3).
:func:`checkpoint_dir` and :func:`load_checkpoint` therefore fall back to ``.last.old`` when ``last`` is
missing, and the next save keeps ``.last.old`` until the new ``last`` is in place. An error during a save
(a full disk, a permission problem) removes the temporary folder, puts the previous checkpoint back if it
had been moved aside, and raises one :class:`StrgError` line.

The training position (:class:`TrainPosition`) fixes where a resumed run continues: the shuffle order
of an epoch is a function of ``seed`` and ``epoch``, and ``step`` batches of that epoch are done.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from strg_deploy.config import ModelConfig
from strg_deploy.contract.configs import as_tuples, config_differences, shown
from strg_deploy.errors import StrgError
from strg_deploy.models.serialization import CONFIG_FILE, WEIGHTS_FILE, load_weights, save_pretrained
from strg_deploy.models.state_dicts import check_fit, read_state_dict
from strg_deploy.processes import process_alive

STATE_FILE = "state.pt"
CHECKPOINT_NAMES = ("last", "best")
STATE_FORMAT = 1

_SHOWN = 5  # differing config fields shown in an error message


@dataclass(frozen=True)
class TrainPosition:
    """Where training stands: ``epoch`` (0-based, the epoch in progress), ``step`` (batches of that
    epoch already done), ``global_step`` (optimizer steps since the start), ``best_metric`` (best
    validation metric so far, None before the first evaluation) and ``seed`` (the run's seed, which with
    ``epoch`` fixes the sampler's shuffle order)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_metric: float | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainPosition:
        """Rebuild from :meth:`to_dict` output; unknown keys or wrong types raise StrgError."""
        if not isinstance(data, dict):
            raise StrgError("training position must be an object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StrgError(f"training position has unknown keys {unknown}")
        for key in ("epoch", "step", "global_step", "seed"):
            value = data.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StrgError(f"training position {key} must be a non-negative integer, got {value!r}")
        best = data.get("best_metric")
        if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)):
            raise StrgError(f"training position best_metric must be a number or null, got {best!r}")
        return cls(**{k: (float(v) if k == "best_metric" and v is not None else v) for k, v in data.items()})


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` gives back besides the restored objects."""

    position: TrainPosition
    extra: dict[str, Any]
    path: Path


# ---------------------------------------------------------------------------------------------- paths


def _check_name(name: str) -> None:
    if name not in CHECKPOINT_NAMES:
        raise StrgError(f"checkpoint name must be one of {list(CHECKPOINT_NAMES)}, got {name!r}")


def _old_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def checkpoint_dir(run_dir: str | Path, name: str = "last") -> Path:
    """The complete checkpoint folder ``RUN_DIR/<name>``, or ``RUN_DIR/.<name>.old`` when a save was
    killed between moving the old one aside and putting the new one in place; StrgError when neither
    exists."""
    _check_name(name)
    final = Path(run_dir) / name
    return _existing(final)


def _existing(folder: Path) -> Path:
    if folder.is_dir():
        return folder
    old = _old_dir(folder)
    if old.is_dir():
        return old
    raise StrgError(f"checkpoint folder not found: {folder}")


def has_checkpoint(run_dir: str | Path, name: str = "last") -> bool:
    """Whether ``RUN_DIR`` holds a ``name`` checkpoint (counting a recoverable ``.<name>.old``)."""
    _check_name(name)
    final = Path(run_dir) / name
    return final.is_dir() or _old_dir(final).is_dir()


# ----------------------------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | Path,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: Any | None,
    position: TrainPosition,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``RUN_DIR/<name>`` (``name``: ``last`` or ``best``) by the swap of the module docstring;
    returns the folder. ``model`` needs a ``cfg`` (STRG or I3D; unwrap DistributedDataParallel first);
    ``scheduler`` and ``scaler`` are anything with ``state_dict()`` (or None); ``extra`` must be
    JSON-able (e.g. the training options)."""
    _check_name(name)
    run_dir = Path(run_dir)
    final = run_dir / name
    old = _old_dir(final)
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise StrgError(f"checkpoint extra must be JSON-able: {err}") from None
    state = {
        "format": STATE_FORMAT,
        "position": position.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "extra": extra_json,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)

    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    moved_aside = False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_saves(run_dir, name)
        tmp.mkdir()
        save_pretrained(model, tmp)
        with open(tmp / STATE_FILE, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.is_dir():
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
            moved_aside = True
        os.rename(tmp, final)
        moved_aside = False
        _fsync_dir(run_dir)
    except BaseException as err:  # a full disk (safetensors raises its own error type), or a kill
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside and not final.exists():
            try:
                os.rename(old, final)
            except OSError:
                pass  # .<name>.old stays, and loading recovers from it
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt, SystemExit: cleaned up, and on its way
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise StrgError(f"cannot save checkpoint {final}: {reason}") from None
    shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_saves(run_dir: str | Path, name: str | None = None) -> None:
    """Remove the temporary folders (``.<name>.tmp-<pid>``) that saves killed part-way left in
    ``run_dir``, for one checkpoint name or all; a folder of a save still running elsewhere is kept."""
    for checkpoint in (name,) if name else CHECKPOINT_NAMES:
        for stale in Path(run_dir).glob(f".{checkpoint}.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
                continue
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """The global RNG streams as tensors and plain values: python ``random``, numpy's global generator,
    torch CPU and (when available) every CUDA device."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output. CUDA streams are restored for the devices present (none when
    the checkpoint was written without CUDA or is read without it)."""
    try:
        random.setstate(as_tuples(state["python"]))
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available():
            for index, device_state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, index)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise StrgError(f"checkpoint RNG state is malformed: {err}") from None


# ----------------------------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    *,
    restore_rng: bool = True,
) -> LoadedCheckpoint:
    """Restore a checkpoint folder (``RUN_DIR/last`` or ``RUN_DIR/best``; falls back to
    ``.<name>.old``) into ``model`` and, when given, ``optimizer``, ``scheduler`` and ``scaler``;
    with ``restore_rng`` also the global RNG streams. Returns (position, extra, folder read).

    The checkpoint's config must match ``model.cfg`` in every field outside
    :data:`~strg_deploy.contract.configs.RUNTIME_FIELDS`
    (StrgError naming the presets and the differing fields), its weights must fit exactly, and its
    files must exist. A scheduler or scaler saved as None leaves the given one as it is.
    """
    folder = _existing(Path(path))
    for file in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE):
        if not (folder / file).is_file():
            raise StrgError(f"checkpoint {folder} is incomplete: {file} is missing")
    saved_cfg = ModelConfig.load(folder / CONFIG_FILE)
    check_config(saved_cfg, model.cfg, source=str(folder))
    state = _read_state(folder / STATE_FILE)
    position = TrainPosition.from_dict(state.get("position", {}))
    try:
        extra = json.loads(state.get("extra", "{}"))
    except (TypeError, json.JSONDecodeError) as err:
        raise StrgError(f"checkpoint {folder}: extra is not valid JSON: {err}") from None

    load_weights(model, folder / WEIGHTS_FILE)
    for label, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        saved = state.get(label)
        if target is None:
            continue
        if saved is None:
            if label == "optimizer":
                raise StrgError(f"checkpoint {folder} holds no optimizer state")
            continue
        try:
            target.load_state_dict(saved)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise StrgError(f"checkpoint {folder}: the {label} state does not fit: {err}") from None
    if restore_rng:
        set_rng_state(state.get("rng", {}))
    return LoadedCheckpoint(position, extra, folder)


def checkpoint_extra(folder: str | Path) -> dict[str, Any]:
    """The ``extra`` that a training checkpoint folder's state.pt holds ({} for a folder without one,
    e.g. weights saved by ``save_pretrained``)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        extra = json.loads(_read_state(path).get("extra", "{}"))
    except (TypeError, json.JSONDecodeError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and I/O errors all mean "unreadable"
        text = str(err).strip().splitlines()
        raise StrgError(
            f"cannot read training state {path}: {text[0] if text else type(err).__name__}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise StrgError(f"{path} is not a training state of format {STATE_FORMAT}")
    return state


def check_config(saved: ModelConfig, current: ModelConfig, source: str) -> None:
    """Raise StrgError when the checkpoint at ``source`` was made for another architecture."""
    diffs = config_differences(saved, current)
    if not diffs:
        return
    fields = [f"{key} {shown(x)} vs {shown(y)}" for key, x, y in diffs if key != "preset"]
    more = f", ... ({len(fields) - _SHOWN} more)" if len(fields) > _SHOWN else ""
    listed = ", ".join(fields[:_SHOWN]) + more
    if saved.preset != current.preset:
        head = f"checkpoint {source} is for preset {saved.preset!r}, the model is {current.preset!r}"
        raise StrgError(f"{head} (differs: {listed})" if fields else head)
    raise StrgError(
        f"checkpoint {source} does not fit the model's config (preset {current.preset!r}): {listed}"
    )


# ----------------------------------------------------------------------------------- two-stage recipe


def load_backbone_init(model: nn.Module, path: str | Path) -> int:
    """Stage 2 of the two-stage recipe: copy the ``backbone.*`` weights of a checkpoint folder (an I3D
    or STRG ``RUN_DIR/best``, or its ``model.safetensors``) into ``model.backbone``. Every backbone key
    must be present with the same shape, else one StrgError names the missing, unexpected and
    mismatched keys. Returns the number of tensors loaded."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = _existing(path) / WEIGHTS_FILE
    tensors = read_state_dict(path)
    backbone = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    if not backbone:
        raise StrgError(f"weights file {path} holds no backbone.* weights")
    own = model.backbone.state_dict()
    check_fit(f"backbone weights in {path}", own, backbone, name=lambda k: f"backbone.{k}")
    model.backbone.load_state_dict(backbone, strict=True)
    return len(backbone)
