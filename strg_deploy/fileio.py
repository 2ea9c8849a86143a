"""Atomic file writes: a temporary file in the same folder, then a rename, so a crash or a full disk
never leaves a half-written file in place of a good one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from strg_deploy.errors import StrgError


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise StrgError(f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp's 0600 (or a writer's own, as safetensors' save_file) -> what open() would have given
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise StrgError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def writable_folder(path: Path) -> Path:
    """Prove, before any work is done that would be written there, that the folder ``path`` takes files
    (or can be created: its nearest existing parent takes files); creates nothing. StrgError naming the
    path when it, or a parent, is a file, or when a probe file cannot be written."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it exists" if existing == path else f"{existing} exists"
        raise StrgError(f"cannot write to {path}: {where} and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise StrgError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


def writable_file(path: Path, *, overwrite: bool = False) -> Path:
    """Check before any work that the file ``path`` can be written: its folder takes files, ``path`` is
    not a folder, and an existing file is replaced only with ``overwrite``; StrgError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise StrgError(f"cannot write {path}: it is a folder (give a file name)")
    if path.exists() and not overwrite:
        raise StrgError(f"{path} exists; pass --overwrite to replace it")
    writable_folder(path.parent)
    return path
