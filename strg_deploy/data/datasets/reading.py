"""What the dataset readers share: reading annotation files (UTF-8 text, JSON, line lists) with errors
that name the file, one listing of a videos folder (:class:`_VideoIndex`), and collecting records and
skipped entries into a :class:`~strg_deploy.data.datasets.records.Dataset` (:class:`_Collector`).

Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from strg_deploy.data.datasets.records import DUPLICATE_ID, Dataset, Skipped, VideoRecord
from strg_deploy.errors import StrgError

SPLITS = ("train", "validation", "test")
VIDEO_EXTS = (".webm", ".mp4", ".avi", ".mkv", ".mov", ".m4v")

PathLike = str | os.PathLike


class _Collector:
    """Accumulates records and skipped/repaired entries; raises on the first skip when strict."""

    def __init__(self, name: str, strict: bool) -> None:
        self.name = name
        self.strict = strict
        self.records: list[VideoRecord] = []
        self.skipped: list[Skipped] = []
        self.repaired: list[Skipped] = []
        self.ids: set[str] = set()

    def skip(self, entry: str, reason: str, detail: str = "") -> None:
        item = Skipped(entry, reason, detail)
        if self.strict:
            raise StrgError(f"{self.name}: {item}")
        self.skipped.append(item)

    def repair(self, entry: str, reason: str, detail: str = "") -> None:
        self.repaired.append(Skipped(entry, reason, detail))

    def add(self, record: VideoRecord, entry: str) -> None:
        if record.video_id in self.ids:
            self.skip(entry, DUPLICATE_ID, "" if entry == record.video_id else record.video_id)
            return
        self.ids.add(record.video_id)
        self.records.append(record)

    def finish(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        *,
        multi_label: bool,
        allow_flip: bool,
        max_skipped_fraction: float,
        where: str,
    ) -> Dataset:
        total = len(self.records) + len(self.skipped)
        if total == 0:
            raise StrgError(f"{name} {split}: no entries in {where}")
        if len(self.skipped) > max_skipped_fraction * total:
            top = Counter(s.reason for s in self.skipped).most_common(3)
            reasons = ", ".join(f"{reason}: {count}" for reason, count in top)
            example = self.skipped[0]
            raise StrgError(
                f"{name} {split}: {len(self.skipped)} of {total} entries in {where} are unreadable "
                f"(more than {max_skipped_fraction:.0%}; {reasons}; first: {example})"
            )
        return Dataset(
            name=name,
            split=split,
            classes=tuple(classes),
            multi_label=multi_label,
            allow_flip=allow_flip,
            records=tuple(self.records),
            skipped=tuple(self.skipped),
            repaired=tuple(self.repaired),
        )


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise StrgError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")


def _check_fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise StrgError(f"max_skipped_fraction must be in [0, 1], got {value}")


def _read_text(path: Path) -> str:
    """A text file as str (UTF-8, BOM tolerated, any line endings); StrgError naming the file."""
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            return f.read()
    except FileNotFoundError:
        raise StrgError(f"annotation file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise StrgError(
            f"annotation file {path} is not UTF-8 text: {err.reason} at byte {err.start}"
        ) from None
    except OSError as err:
        raise StrgError(f"cannot read annotation file {path}: {err.strerror}") from None


def _loads(text: str, where: str, one_line: bool = False) -> Any:
    """JSON text -> value; StrgError naming ``where`` for anything the parser refuses (syntax, integers of
    more than 4300 digits, nesting deeper than the interpreter's recursion limit)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"column {err.colno}" if one_line else f"line {err.lineno} column {err.colno}"
        raise StrgError(f"malformed JSON in {where}: {err.msg} at {at}") from None
    except (ValueError, RecursionError) as err:
        raise StrgError(f"malformed JSON in {where}: {type(err).__name__}: {str(err)[:80]}") from None


def _read_json(path: Path) -> Any:
    return _loads(_read_text(path), str(path))


def _list_dir(path: Path, what: str) -> set[str]:
    """Names in a folder (one listing); StrgError naming the folder when it cannot be listed."""
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        raise StrgError(f"{what} not found: {path}") from None
    except NotADirectoryError:
        raise StrgError(f"{what} is not a folder: {path}") from None
    except OSError as err:
        raise StrgError(f"cannot list {what} {path}: {err.strerror}") from None


def _first_existing(candidates: Iterable[Path], default: Path) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    return default


def _find_file(name: str, folders: Sequence[Path]) -> Path:
    """``name`` in the first folder that has it; else the path in the first folder (for the error)."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return folders[0] / name


class _VideoIndex:
    """Which ``<id><ext>`` files a videos folder holds, from one listing.

    ``ext`` None accepts any of VIDEO_EXTS (the earlier one wins when a stem has several).
    ``check`` False lists nothing and assumes every file exists with ``ext`` (default ``.webm``).
    """

    def __init__(self, folder: Path, ext: str | None, check: bool, what: str = "videos folder") -> None:
        self.folder = folder
        self.ext = ext
        self.check = check
        self.by_stem: dict[str, str] = {}
        self.names: set[str] = set()
        if not check:
            return
        self.names = _list_dir(folder, what)
        if ext is None:
            rank = {e: i for i, e in enumerate(VIDEO_EXTS)}
            for name in self.names:
                stem, dot_ext = os.path.splitext(name)
                e = dot_ext.lower()
                if e in rank and (stem not in self.by_stem or rank[e] < rank[_ext_of(self.by_stem[stem])]):
                    self.by_stem[stem] = name

    def find(self, stem: str) -> str | None:
        """Path of the video for ``stem``, or None when it is not there."""
        if not self.check:
            return str(self.folder / f"{stem}{self.ext or VIDEO_EXTS[0]}")
        if self.ext is not None:
            name = f"{stem}{self.ext}"
            return str(self.folder / name) if name in self.names else None
        name = self.by_stem.get(stem)
        return None if name is None else str(self.folder / name)

    def has(self, name: str) -> bool:
        return not self.check or name in self.names


def _ext_of(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _normalise_ext(ext: str | None) -> str | None:
    if ext is None:
        return None
    return ext if ext.startswith(".") else f".{ext}"


def _read_lines_list(path: Path, what: str) -> list[str]:
    """Non-empty lines of a list file; blank lines only at the end; duplicates are an error."""
    lines = [line.strip() for line in _read_text(path).split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise StrgError(f"malformed {what} {path}: the file is empty")
    for n, line in enumerate(lines, 1):
        if not line:
            raise StrgError(f"malformed {what} {path}: line {n} is blank")
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if line in seen:
            raise StrgError(f"malformed {what} {path}: line {n} repeats line {seen[line]} ({line!r})")
        seen[line] = n
    return lines
