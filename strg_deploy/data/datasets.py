"""Dataset readers: one record type for Something-Something v1/v2, Charades, a folder per class, and
ground-truth box tracks.

Every reader returns a :class:`Dataset` of :class:`VideoRecord` s. A record points at a video file or at
a frame folder (``source`` is then a printf pattern such as ``<root>/<id>/%05d.jpg`` whose first frame
number is ``first_frame``, shown at ``fps``). Labels are a class index (single-label datasets) or a tuple
of :class:`Segment` s in seconds (Charades, multi-label); :meth:`Dataset.targets` turns either into the
target of a clip.

Unreadable entries (a missing video file, a label not in the class list, a malformed row) are skipped,
counted by reason and reported by :meth:`Dataset.summary`; when more than ``max_skipped_fraction`` of a
split is unreadable the reader raises :class:`StrgError` with the count and the main reasons. A missing or
malformed annotation file raises :class:`StrgError` naming the file. Video files are never opened here:
a single listing of the videos folder tells which exist.

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.errors import StrgError

SPLITS = ("train", "validation", "test")
VIDEO_EXTS = (".webm", ".mp4", ".avi", ".mkv", ".mov", ".m4v")
SSV1_FPS = 12.0
CHARADES_FPS = 24.0

PathLike = str | os.PathLike

# skip reasons (stable strings: counted and reported)
MISSING_VIDEO = "missing video file"
UNKNOWN_LABEL = "unknown label"
BAD_ENTRY = "malformed entry"
DUPLICATE_ID = "duplicate id"
NOT_A_VIDEO = "not a video file"
OUTSIDE_CLASS = "video outside a class folder"

# repair reasons (Charades segments: the entry is kept, the segment changed)
SEGMENT_REVERSED = "segment ends before it starts (dropped)"
SEGMENT_PAST_END = "segment ends after the video (clipped to its length)"
SEGMENT_OUTSIDE = "segment starts after the video ends (dropped)"
SEGMENT_NEGATIVE = "segment starts before 0 (clipped to 0)"


@dataclass(frozen=True)
class Segment:
    """One labelled interval of a video: class ``label`` from ``start`` to ``end`` seconds."""

    label: int
    start: float
    end: float

    def overlaps(self, start: float, end: float) -> bool:
        """Whether the closed intervals [self.start, self.end] and [start, end] share a point."""
        return min(self.end, end) >= max(self.start, start)


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    Attributes:
        video_id: the dataset's id (Something-Something, Charades) or ``<class>/<file stem>`` (folders).
        source: a video file path, or a frame-folder pattern (``<root>/<id>/%05d.jpg``).
        fps: frame rate of a frame folder (Something-Something v1: 12, Charades: 24); None for video
            files, whose frame times come from their timestamps.
        label: single-label class index; None for multi-label data and unlabelled test splits.
        segments: multi-label intervals in seconds (Charades); empty otherwise.
        duration: length in seconds where the annotations give it (Charades ``length``).
        text: the annotation's sentence (Something-Something v2 ``label`` with placeholders filled in,
            Charades ``descriptions``), else None.
        first_frame: number of the first frame file of a frame folder (1 for both formats); None for
            video files.
    """

    video_id: str
    source: str
    fps: float | None = None
    label: int | None = None
    segments: tuple[Segment, ...] = ()
    duration: float | None = None
    text: str | None = None
    first_frame: int | None = None

    @property
    def is_frame_folder(self) -> bool:
        """True when ``source`` is a frame-file pattern rather than a video file."""
        return self.first_frame is not None


@dataclass(frozen=True)
class Skipped:
    """An entry a reader could not use: ``entry`` (an id or ``file:line``), a ``reason`` from the
    module's reason constants, and a ``detail`` (e.g. the unknown label text)."""

    entry: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        """One line, whatever the file held: an entry or detail with line breaks or other unprintable
        characters is shown as a Python string literal."""
        entry, detail = (text if text.isprintable() else repr(text) for text in (self.entry, self.detail))
        return f"{entry}: {self.reason}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Dataset:
    """A split of a dataset.

    Attributes:
        name: dataset name (``something-something-v2``, ``something-something-v1``, ``charades``,
            ``folders``).
        split: ``train``, ``validation`` or ``test`` (or the folder read for ``folders``).
        classes: class names; a class index is a position in this tuple.
        multi_label: True when records carry ``segments`` (Charades) instead of ``label``.
        allow_flip: False where horizontal flips change the class (Something-Something: left/right).
        records: the usable videos.
        skipped: entries left out, each with its reason.
        repaired: entries kept after a change (Charades segments clipped or dropped), each with its reason.
    """

    name: str
    split: str
    classes: tuple[str, ...]
    multi_label: bool
    allow_flip: bool
    records: tuple[VideoRecord, ...]
    skipped: tuple[Skipped, ...] = ()
    repaired: tuple[Skipped, ...] = ()

    @cached_property
    def _by_id(self) -> dict[str, VideoRecord]:
        return {r.video_id: r for r in self.records}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def record(self, video_id: str) -> VideoRecord:
        """The record with this id (StrgError if there is none)."""
        try:
            return self._by_id[video_id]
        except KeyError:
            raise StrgError(f"{self.name} {self.split}: no video with id {video_id!r}") from None

    def skip_counts(self) -> dict[str, int]:
        """Skipped entries per reason, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def repair_counts(self) -> dict[str, int]:
        """Repaired entries per reason, most frequent first."""
        return dict(Counter(s.reason for s in self.repaired).most_common())

    def targets(
        self, record: VideoRecord, start: float | None = None, end: float | None = None
    ) -> np.ndarray:
        """The label target of a clip of ``record`` spanning [start, end] seconds.

        Single-label: the class index, int64 of shape [] (the span does not matter).
        Multi-label: float32 multi-hot [C], 1 for each class with a segment that overlaps the closed span
        [start, end] at all (touching counts, so a single-frame span start == end works). With start
        and end None the span is the whole video (video-level targets, as Charades evaluates).
        """
        if not self.multi_label:
            if record.label is None:
                raise StrgError(f"{self.name} {self.split}: video {record.video_id} has no label")
            return np.asarray(record.label, dtype=np.int64)
        lo = -math.inf if start is None else float(start)
        hi = math.inf if end is None else float(end)
        if hi < lo:
            raise StrgError(f"clip span ends before it starts: start {start}, end {end}")
        target = np.zeros(len(self.classes), dtype=np.float32)
        for seg in record.segments:
            if seg.overlaps(lo, hi):
                target[seg.label] = 1.0
        return target

    def summary(self, examples: int = 3) -> str:
        """A few lines: counts of records, skipped and repaired entries by reason, with examples."""
        total = len(self.records) + len(self.skipped)
        lines = [
            f"{self.name} {self.split}: {len(self.records)} of {total} videos usable, "
            f"{len(self.classes)} classes, {'multi' if self.multi_label else 'single'}-label"
        ]
        for title, items in (("skipped", self.skipped), ("repaired", self.repaired)):
            if not items:
                continue
            lines.append(f"  {title} {len(items)}:")
            for reason, count in Counter(s.reason for s in items).most_common():
                shown = [str(s) for s in items if s.reason == reason][:examples]
                lines.append(f"    {count} x {reason}, e.g. " + "; ".join(shown))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Shared helpers


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


# ----------------------------------------------------------------------------------------------------
# Something-Something v2

SSV2_LABELS = "something-something-v2-labels.json"
SSV2_SPLIT_FILES = {
    "train": "something-something-v2-train.json",
    "validation": "something-something-v2-validation.json",
    "test": "something-something-v2-test.json",
}


def ssv2_class_of_template(template: str) -> str:
    """The Something-Something v2 class of a template: the template without its brackets.

    "Pushing [something] from left to right" -> "Pushing something from left to right".
    """
    return template.replace("[", "").replace("]", "")


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _class_index(value: Any) -> int | None:
    """A label list's index ("12", 12 or 12.0) as int; None for anything else (1.5, true, Infinity...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:  # not a number, or more than 4300 digits
            return None
    return None


def _read_ssv2_labels(path: Path) -> tuple[str, ...]:
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise StrgError(f"malformed label list {path}: expected a JSON object mapping class text to index")
    by_index: dict[int, str] = {}
    for text, index in data.items():
        i = _class_index(index)
        if i is None:
            raise StrgError(
                f"malformed label list {path}: index {_cut(repr(index))} of {_cut(repr(text))} is not a "
                "number 0, 1, 2, ..."
            )
        if i in by_index:
            raise StrgError(f"malformed label list {path}: index {i} used by {by_index[i]!r} and {text!r}")
        by_index[i] = text
    if sorted(by_index) != list(range(len(by_index))):
        raise StrgError(f"malformed label list {path}: indices are not 0..{len(by_index) - 1}")
    return tuple(by_index[i] for i in range(len(by_index)))


def read_something_something_v2(
    root: PathLike,
    split: str,
    *,
    videos_dir: PathLike | None = None,
    annotations_dir: PathLike | None = None,
    video_ext: str | None = None,
    check_videos: bool = True,
    strict: bool = False,
    max_skipped_fraction: float = 0.5,
) -> Dataset:
    """Read a Something-Something v2 split (or the synthetic benchmark, which uses the same files).

    Annotation files (in ``annotations_dir``; default ``root``, else ``root/labels``):
    ``something-something-v2-labels.json`` maps class text -> index as a string ("0".."173");
    ``something-something-v2-{train,validation}.json`` are lists of {"id", "label", "template",
    "placeholders"} whose class is the template without brackets; ``something-something-v2-test.json``
    lists ids only (records get label None). UTF-8, CRLF or LF.

    Videos are ``<videos_dir>/<id><video_ext>``; ``videos_dir`` defaults to ``root/videos``, else
    ``root/20bn-something-something-v2``, else ``root``. ``video_ext`` None accepts any of VIDEO_EXTS
    (".webm" first); ".webm" for the official set, ".mp4" for the synthetic one. One listing of the
    folder checks existence; ``check_videos=False`` skips it (sources then assume ``video_ext`` or .webm).

    ``strict=True`` raises StrgError on the first unusable entry (e.g. a label not in the list) instead
    of skipping it. Records: ``text`` is the entry's ``label`` sentence; ``fps`` None (timestamps).
    Horizontal flips are not allowed (left/right classes).
    """
    _check_split(split)
    _check_fraction(max_skipped_fraction)
    root = Path(root)
    folders = [Path(annotations_dir)] if annotations_dir is not None else [root, root / "labels"]
    labels_path = _find_file(SSV2_LABELS, folders)
    split_path = _find_file(SSV2_SPLIT_FILES[split], folders)
    classes = _read_ssv2_labels(labels_path)
    index_of = {c: i for i, c in enumerate(classes)}
    entries = _read_json(split_path)
    if not isinstance(entries, list):
        raise StrgError(f"malformed split file {split_path}: expected a JSON list of entries")
    if videos_dir is None:
        videos = _first_existing([root / "videos", root / "20bn-something-something-v2"], root)
    else:
        videos = Path(videos_dir)
    index = _VideoIndex(videos, _normalise_ext(video_ext), check_videos)

    name = "something-something-v2"
    out = _Collector(f"{name} {split} ({split_path})", strict)
    for n, entry in enumerate(entries):
        where = f"{split_path.name}[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str | int) or entry["id"] == "":
            out.skip(where, BAD_ENTRY, "no id")
            continue
        vid = str(entry["id"])
        label: int | None = None
        if split != "test":
            template = entry.get("template")
            if not isinstance(template, str):
                out.skip(vid, BAD_ENTRY, "no template")
                continue
            cls = ssv2_class_of_template(template)
            if cls not in index_of:
                out.skip(vid, UNKNOWN_LABEL, cls)
                continue
            label = index_of[cls]
        text = entry.get("label")
        source = index.find(vid)
        if source is None:
            out.skip(vid, MISSING_VIDEO, str(videos / f"{vid}{index.ext or '.*'}"))
            continue
        out.add(VideoRecord(vid, source, label=label, text=text if isinstance(text, str) else None), vid)
    return out.finish(
        name,
        split,
        classes,
        multi_label=False,
        allow_flip=False,
        max_skipped_fraction=max_skipped_fraction,
        where=str(split_path),
    )


# ----------------------------------------------------------------------------------------------------
# Something-Something v1

SSV1_LABELS = "something-something-v1-labels.csv"
SSV1_SPLIT_FILES = {
    "train": "something-something-v1-train.csv",
    "validation": "something-something-v1-validation.csv",
    "test": "something-something-v1-test.csv",
}


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


def read_something_something_v1(
    root: PathLike,
    split: str,
    *,
    frames_dir: PathLike | None = None,
    annotations_dir: PathLike | None = None,
    check_videos: bool = True,
    strict: bool = False,
    max_skipped_fraction: float = 0.5,
) -> Dataset:
    """Read a Something-Something v1 split.

    Annotation files (in ``annotations_dir``, default ``root``): ``something-something-v1-labels.csv``,
    one class name per line (index = line number from 0); ``something-something-v1-{train,validation}.csv``
    with rows ``id;label text``; ``something-something-v1-test.csv`` with rows ``id`` (label None).
    Frames are JPEG files ``<frames_dir>/<id>/%05d.jpg`` from 00001 at 12 fps; ``frames_dir`` defaults to
    ``root/20bn-something-something-v1``, else ``root/frames``, else ``root``. One listing of the frames
    folder checks that each id's folder exists (its files are not listed). Horizontal flips are not
    allowed (left/right classes).
    """
    _check_split(split)
    _check_fraction(max_skipped_fraction)
    root = Path(root)
    ann = Path(annotations_dir) if annotations_dir is not None else root
    labels_path = ann / SSV1_LABELS
    split_path = ann / SSV1_SPLIT_FILES[split]
    classes = tuple(_read_lines_list(labels_path, "class list"))
    index_of = {c: i for i, c in enumerate(classes)}
    rows = _read_text(split_path).split("\n")
    if frames_dir is None:
        frames = _first_existing([root / "20bn-something-something-v1", root / "frames"], root)
    else:
        frames = Path(frames_dir)
    index = _VideoIndex(frames, "", check_videos, what="frames folder")

    name = "something-something-v1"
    out = _Collector(f"{name} {split} ({split_path})", strict)
    for n, row in enumerate(rows, 1):
        row = row.strip()
        if not row:
            continue
        where = f"{split_path.name}:{n}"
        vid, sep, text = row.partition(";")
        vid, text = vid.strip(), text.strip()
        label: int | None = None
        if not vid:
            out.skip(where, BAD_ENTRY, "no id")
            continue
        if split != "test":
            if not sep or not text:
                out.skip(where, BAD_ENTRY, f"expected 'id;label', got {row!r}")
                continue
            if text not in index_of:
                out.skip(vid, UNKNOWN_LABEL, text)
                continue
            label = index_of[text]
        if not index.has(vid):
            out.skip(vid, MISSING_VIDEO, f"no frame folder {frames / vid}")
            continue
        source = str(frames / vid / "%05d.jpg")
        out.add(VideoRecord(vid, source, fps=SSV1_FPS, label=label, first_frame=1), vid)
    return out.finish(
        name,
        split,
        classes,
        multi_label=False,
        allow_flip=False,
        max_skipped_fraction=max_skipped_fraction,
        where=str(split_path),
    )


# ----------------------------------------------------------------------------------------------------
# Charades v1

CHARADES_CLASSES = "Charades_v1_classes.txt"
CHARADES_SPLIT_FILES = {
    "train": "Charades_v1_train.csv",
    "validation": "Charades_v1_test.csv",
    "test": "Charades_v1_test.csv",
}
CHARADES_COLUMNS = ("id", "actions", "length")


def read_charades_classes(path: PathLike) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``Charades_v1_classes.txt`` (lines ``c000 name``) -> (codes, names), index = line number."""
    path = Path(path)
    codes, names = [], []
    for n, line in enumerate(_read_lines_list(path, "class list"), 1):
        code, _, text = line.partition(" ")
        if not code or not text.strip():
            raise StrgError(f"malformed class list {path}: line {n} is not 'c000 name': {line!r}")
        codes.append(code)
        names.append(text.strip())
    if len(set(codes)) != len(codes):
        raise StrgError(f"malformed class list {path}: a class code appears twice")
    return tuple(codes), tuple(names)


def _parse_charades_actions(
    actions: str, code_index: dict[str, int], length: float
) -> tuple[list[Segment], list[tuple[str, str]], str | None, str]:
    """Parse ``c092 11.90 21.20;c147 0.00 12.60`` -> (segments, repairs, error reason, error detail)."""
    segments: list[Segment] = []
    repairs: list[tuple[str, str]] = []
    for item in actions.split(";"):
        item = item.strip()
        if not item:
            continue
        parts = item.split()
        if len(parts) != 3:
            return [], [], BAD_ENTRY, f"action {item!r} is not 'class start end'"
        code, start_text, end_text = parts
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            return [], [], BAD_ENTRY, f"action {item!r} has a time that is not a number"
        if not (math.isfinite(start) and math.isfinite(end)):
            return [], [], BAD_ENTRY, f"action {item!r} has a time that is not finite"
        if code not in code_index:
            return [], [], UNKNOWN_LABEL, code
        if end < start:
            repairs.append((SEGMENT_REVERSED, item))
            continue
        if start > length:
            repairs.append((SEGMENT_OUTSIDE, item))
            continue
        if start < 0:
            repairs.append((SEGMENT_NEGATIVE, item))
            start = 0.0
        if end > length:
            repairs.append((SEGMENT_PAST_END, item))
            end = length
        segments.append(Segment(code_index[code], start, end))
    return segments, repairs, None, ""


def read_charades(
    root: PathLike,
    split: str,
    *,
    frames: bool = False,
    videos_dir: PathLike | None = None,
    annotations_dir: PathLike | None = None,
    check_videos: bool = True,
    strict: bool = False,
    max_skipped_fraction: float = 0.5,
) -> Dataset:
    """Read a Charades v1 split (multi-label).

    Annotation files (in ``annotations_dir``, default ``root``): ``Charades_v1_classes.txt`` (157 lines
    ``c000 name``; ``classes`` are the names, index = line number) and ``Charades_v1_{train,test}.csv``
    with header ``id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length``.
    Charades has no separate validation set: ``validation`` and ``test`` both read ``Charades_v1_test.csv``.
    ``actions`` is ``c092 11.90 21.20;c147 0.00 12.60`` (class, start s, end s), possibly empty (the
    record then has no segments and an all-zero target). Segments that end before they start or start
    after ``length`` are dropped, segments that end after ``length`` are clipped to it (and a negative
    start to 0); each change is counted in ``Dataset.repaired``. A row with a malformed action, an
    unknown class code or a bad ``length`` is skipped.

    Videos: ``<videos_dir>/<id>.mp4`` (default ``root/Charades_v1``, else ``root/videos``, else ``root``),
    or with ``frames=True`` the 24 fps frame folders ``<videos_dir>/<id>/<id>-%06d.jpg`` from 000001
    (default ``root/Charades_v1_rgb``, else ``root/frames``, else ``root``). Records carry ``segments``,
    ``duration`` (``length``) and ``text`` (``descriptions``).

    Evaluation (the metric lives with the training code): per-class average precision over the split's
    videos, the mean over classes; classes without any positive video are excluded from the mean.
    """
    _check_split(split)
    _check_fraction(max_skipped_fraction)
    root = Path(root)
    ann = Path(annotations_dir) if annotations_dir is not None else root
    codes, classes = read_charades_classes(ann / CHARADES_CLASSES)
    code_index = {c: i for i, c in enumerate(codes)}
    split_path = ann / CHARADES_SPLIT_FILES[split]
    text = _read_text(split_path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:  # e.g. an unclosed quote running past the module's field size limit
        raise StrgError(f"malformed CSV in {split_path} at line {reader.line_num}: {err}") from None
    missing = [c for c in CHARADES_COLUMNS if c not in header]
    if missing:
        raise StrgError(f"malformed Charades file {split_path}: header lacks {', '.join(missing)}")
    if videos_dir is not None:
        videos = Path(videos_dir)
    elif frames:
        videos = _first_existing([root / "Charades_v1_rgb", root / "frames"], root)
    else:
        videos = _first_existing([root / "Charades_v1", root / "videos"], root)
    if frames:
        index = _VideoIndex(videos, "", check_videos, what="frames folder")
    else:
        index = _VideoIndex(videos, ".mp4", check_videos)

    name = "charades"
    out = _Collector(f"{name} {split} ({split_path})", strict)
    for line_num, row in rows:
        where = f"{split_path.name}:{line_num}"
        if None in row or any(row.get(c) is None for c in CHARADES_COLUMNS):
            out.skip(where, BAD_ENTRY, "wrong number of fields")
            continue
        vid = row["id"].strip()
        if not vid:
            out.skip(where, BAD_ENTRY, "no id")
            continue
        try:
            length = float(row["length"])
        except ValueError:
            length = math.nan
        if not math.isfinite(length) or length <= 0:
            out.skip(vid, BAD_ENTRY, f"length {row['length']!r}")
            continue
        segments, repairs, error, detail = _parse_charades_actions(row["actions"], code_index, length)
        if error is not None:
            out.skip(vid, error, detail)
            continue
        if frames:
            source = str(videos / vid / f"{vid}-%06d.jpg") if index.has(vid) else None
        else:
            source = index.find(vid)
        if source is None:
            out.skip(vid, MISSING_VIDEO, str(videos / (vid if frames else f"{vid}.mp4")))
            continue
        if vid in out.ids:
            out.skip(vid, DUPLICATE_ID)
            continue
        for reason, item in repairs:
            out.repair(vid, reason, item)
        description = (row.get("descriptions") or "").strip() or None
        out.add(
            VideoRecord(
                vid,
                source,
                fps=CHARADES_FPS if frames else None,
                segments=tuple(segments),
                duration=length,
                text=description,
                first_frame=1 if frames else None,
            ),
            vid,
        )
    return out.finish(
        name,
        split,
        classes,
        multi_label=True,
        allow_flip=True,
        max_skipped_fraction=max_skipped_fraction,
        where=str(split_path),
    )


# ----------------------------------------------------------------------------------------------------
# A folder per class

SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


def _subfolders(path: Path) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise StrgError(f"cannot list folder {path}: {err.strerror}") from None


def read_folders(
    root: PathLike,
    split: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    allow_flip: bool = True,
    extensions: Sequence[str] = VIDEO_EXTS,
    strict: bool = False,
    max_skipped_fraction: float = 0.5,
) -> Dataset:
    """Read videos laid out one folder per class: ``<root>/<class>/<video>``.

    With ``split`` ("train", "validation" or "test") the layout is ``<root>/<split>/<class>/<video>``
    (``val`` also names the validation folder) and the classes are the sorted union of the class folders
    of every split folder present, so that indices agree between splits. Without ``split`` the class
    folders are those of ``root``, sorted. ``classes`` fixes the class list instead (folders not in it
    are skipped as unknown labels). Files whose extension is not in ``extensions`` (case-insensitive)
    are skipped and counted; hidden files are ignored. Record ids are ``<class>/<file stem>``.
    ``allow_flip`` is True unless the caller's classes depend on left and right.
    """
    _check_fraction(max_skipped_fraction)
    root = Path(root)
    if not root.is_dir():
        raise StrgError(f"dataset folder not found: {root}")
    if split is None:
        base = root
        class_sources = [root]
    else:
        _check_split(split)
        present = {s: next((root / f for f in SPLIT_FOLDERS[s] if (root / f).is_dir()), None) for s in SPLITS}
        base = present[split]  # type: ignore[assignment]
        if base is None:
            names = " or ".join(str(root / f) for f in SPLIT_FOLDERS[split])
            raise StrgError(f"split folder not found: {names}")
        class_sources = [p for p in present.values() if p is not None]
    if classes is None:
        found: set[str] = set()
        for folder in class_sources:
            found.update(_subfolders(folder))
        class_list = tuple(sorted(found))
    else:
        class_list = tuple(classes)
    if not class_list:
        raise StrgError(f"no class folders in {base}")
    index_of = {c: i for i, c in enumerate(class_list)}
    exts = {_normalise_ext(e).lower() for e in extensions}  # type: ignore[union-attr]

    name = "folders"
    out = _Collector(f"{name} {split or base.name} ({base})", strict)
    with os.scandir(base) as it:
        top = sorted((e.name, e.is_dir()) for e in it if not e.name.startswith("."))
    for entry_name, is_dir in top:
        if not is_dir:
            if _ext_of(entry_name) in exts:
                out.skip(entry_name, OUTSIDE_CLASS, str(base / entry_name))
            continue
        if entry_name not in index_of:
            out.skip(entry_name + "/", UNKNOWN_LABEL, entry_name)
            continue
        label = index_of[entry_name]
        class_dir = base / entry_name
        with os.scandir(class_dir) as it:
            files = sorted((e.name, e.is_file()) for e in it if not e.name.startswith("."))
        for file_name, is_file in files:
            vid = f"{entry_name}/{os.path.splitext(file_name)[0]}"
            if not is_file or _ext_of(file_name) not in exts:
                out.skip(f"{entry_name}/{file_name}", NOT_A_VIDEO, str(class_dir / file_name))
                continue
            out.add(VideoRecord(vid, str(class_dir / file_name), label=label), f"{entry_name}/{file_name}")
    return out.finish(
        name,
        split or base.name,
        class_list,
        multi_label=False,
        allow_flip=allow_flip,
        max_skipped_fraction=max_skipped_fraction,
        where=str(base),
    )


READERS: dict[str, Callable[..., Dataset]] = {
    "something-something-v2": read_something_something_v2,
    "something-something-v1": read_something_something_v1,
    "charades": read_charades,
    "folders": read_folders,
}


# ----------------------------------------------------------------------------------------------------
# Ground-truth box tracks (JSON lines)


@dataclass(frozen=True, eq=False)
class BoxTracks:
    """Per-frame ground-truth boxes of every object of one video.

    Attributes:
        video_id: the video's id.
        fps: frame rate; frame i is at time i / fps.
        width, height: size of the stored video frames (box coordinates are continuous pixels of it).
        boxes: float32 [N, K, 4] (x1, y1, x2, y2) for N frames and K objects; 0 where not visible.
        valid: bool [N, K]; False where the object is not visible (null in the file).
        objects: per object, its JSON fields other than ``boxes`` (``track``, ``role``, ``shape``...).
    """

    video_id: str
    fps: float
    width: int
    height: int
    boxes: np.ndarray
    valid: np.ndarray
    objects: tuple[dict[str, Any], ...] = ()

    @property
    def num_frames(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[1])

    def boxes_at(self, frame_indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes at these frame indices: (boxes float32 [F, K, 4], valid bool [F, K]).

        Indices must lie in [0, num_frames) (StrgError otherwise).
        """
        idx = np.asarray(frame_indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise StrgError(
                f"frame indices must be a 1-D integer sequence, got shape {list(idx.shape)} {idx.dtype}"
            )
        idx = idx.astype(np.int64)
        bad = (idx < 0) | (idx >= self.num_frames)
        if bad.any():
            raise StrgError(
                f"box tracks of {self.video_id}: frame index {int(idx[bad][0])} "
                f"outside 0..{self.num_frames - 1}"
            )
        return self.boxes[idx], self.valid[idx]

    def boxes_at_times(self, times: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of the frames nearest to these times in seconds (rounded to i / fps, clamped to the
        video): (boxes float32 [F, K, 4], valid bool [F, K])."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        idx = np.clip(np.rint(t * self.fps), 0, self.num_frames - 1).astype(np.int64)
        return self.boxes[idx], self.valid[idx]


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_number(value: Any) -> bool:
    """A JSON number that fits a float32 (bools, NaN, infinities and 400-digit integers do not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return abs(float(value)) <= _FLOAT32_MAX
    except OverflowError:
        return False


def _whole(value: Any) -> int | None:
    """A JSON integer (or a float with an integral value, as some writers give) as int; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _parse_box_line(obj: Any, where: str) -> BoxTracks:
    if not isinstance(obj, dict):
        raise StrgError(f"{where}: expected a JSON object")
    for key in ("id", "fps", "width", "height", "frames", "objects"):
        if key not in obj:
            raise StrgError(f"{where}: missing field {key!r}")
    vid, fps, objects = obj["id"], obj["fps"], obj["objects"]
    width, height, frames = (_whole(obj[key]) for key in ("width", "height", "frames"))
    if isinstance(vid, bool) or not isinstance(vid, str | int) or vid == "":
        raise StrgError(f"{where}: bad id {vid!r}")
    if not (_is_number(fps) and fps > 0):
        raise StrgError(f"{where}: bad value: fps must be a positive number, got {obj['fps']!r}"[:200])
    for key, value in (("width", width), ("height", height), ("frames", frames)):
        if value is None or value <= 0:
            raise StrgError(f"{where}: bad value: {key} must be a positive integer, got {obj[key]!r}"[:200])
    if not isinstance(objects, list):
        raise StrgError(f"{where}: 'objects' must be a list")
    for k, o in enumerate(objects):  # every length is checked before anything is allocated
        if not isinstance(o, dict) or not isinstance(o.get("boxes"), list):
            raise StrgError(f"{where}: object {k} has no 'boxes' list")
        if len(o["boxes"]) != frames:
            raise StrgError(f"{where}: object {k} has {len(o['boxes'])} boxes for {frames} frames")
    boxes = np.zeros((frames, len(objects), 4), dtype=np.float32)
    valid = np.zeros((frames, len(objects)), dtype=bool)
    meta = []
    for k, o in enumerate(objects):
        for i, box in enumerate(o["boxes"]):
            if box is None:
                continue
            if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
                raise StrgError(
                    f"{where}: object {k} frame {i}: expected [x1, y1, x2, y2] or null, got {box!r}"[:300]
                )
            boxes[i, k] = box
            valid[i, k] = True
        meta.append({key: value for key, value in o.items() if key != "boxes"})
    return BoxTracks(str(vid), float(fps), width, height, boxes, valid, tuple(meta))


def read_box_tracks(path: PathLike) -> dict[str, BoxTracks]:
    """Read ground-truth box tracks from JSON lines (``boxes.jsonl``), one object per video:

    {"id": "<video id>", "fps": 12.0, "width": 112, "height": 112, "frames": 32,
     "objects": [{"track": 0, "role": "A", "shape": "square", "boxes": [[x1, y1, x2, y2] or null, ...]}]}

    with one box per frame per object. Returns {video id: BoxTracks}. Blank lines are ignored; a
    malformed line or a repeated id raises StrgError naming the file and line.
    """
    path = Path(path)
    tracks: dict[str, BoxTracks] = {}
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        t = _parse_box_line(_loads(line, where, one_line=True), where)
        if t.video_id in tracks:
            raise StrgError(f"{where}: id {t.video_id!r} appears twice")
        tracks[t.video_id] = t
    return tracks
