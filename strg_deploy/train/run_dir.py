"""A training run's folder: what makes it hold a run, and the check made before any work starts.

A run folder holds ``last/`` and ``best/`` checkpoints (or their ``.last.old`` / ``.best.old`` while a
save is swapped in), ``metrics.jsonl``, ``settings.json`` (what the run was started with, see
train.settings; alone it marks no run: it is written before the first checkpoint) and, for RPN
fine-tuning, ``detector.safetensors``. A new run into a folder that holds one is refused: ``resume``
continues it, ``overwrite`` moves the whole folder aside to ``<folder>.old-<date>-<time>`` (never deleting
it) and starts in a fresh folder.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from strg_deploy.errors import StrgError
from strg_deploy.fileio import writable_folder

RUN_MARKERS = ("last", "best", ".last.old", ".best.old", "metrics.jsonl", "detector.safetensors")


def run_contents(folder: Path) -> list[str]:
    """The entries of ``folder`` that mark it as holding a run (empty when it holds none)."""
    folder = Path(folder)
    return [name for name in RUN_MARKERS if (folder / name).exists()] if folder.is_dir() else []


def aside_name(folder: Path, now: datetime.datetime | None = None) -> Path:
    """A free sibling name ``<folder>.old-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3`` ... on a clash)."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = folder.with_name(f"{folder.name}.old-{stamp}")
    number = 2
    while candidate.exists():
        candidate = folder.with_name(f"{folder.name}.old-{stamp}-{number}")
        number += 1
    return candidate


def prepare_run_dir(folder: Path, *, resume: bool, overwrite: bool, writer: bool = True) -> Path | None:
    """Check the run folder ``folder`` before any work: a new run into a folder that holds one is refused
    unless ``overwrite``, which moves it aside; ``resume`` needs a ``last/`` checkpoint; the folder must take
    files. Only the ``writer`` (rank 0 under torchrun) moves and creates; returns where the old run went."""
    folder = Path(folder)
    if resume and overwrite:
        raise StrgError("--resume continues the run in the folder and --overwrite moves it aside: pick one")
    if folder.exists() and not folder.is_dir():
        raise StrgError(f"cannot write the run to {folder}: it exists and is not a folder")
    held = run_contents(folder)
    moved = None
    if resume:
        if not (folder / "last").is_dir() and not (folder / ".last.old").is_dir():
            raise StrgError(f"nothing to resume in {folder}: no last/ checkpoint")
    elif held and not overwrite:
        raise StrgError(
            f"{folder} already holds a run ({', '.join(held)}): pass --resume to continue it, or "
            "--overwrite to move it aside and start again"
        )
    elif held and writer:
        moved = aside_name(folder)
        try:
            os.rename(folder, moved)
        except OSError as err:
            raise StrgError(f"cannot move the old run {folder} aside to {moved}: {err.strerror}") from None
    if writer:
        writable_folder(folder)
    return moved
