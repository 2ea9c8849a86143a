"""Charades v1 (multi-label): a class list and CSV split files whose ``actions`` are labelled segments
in seconds, one video file (or a folder of frames) per id.

Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from strg_deploy.data.datasets.reading import (
    PathLike,
    _check_fraction,
    _check_split,
    _Collector,
    _first_existing,
    _read_lines_list,
    _read_text,
    _VideoIndex,
)
from strg_deploy.data.datasets.records import (
    BAD_ENTRY,
    DUPLICATE_ID,
    MISSING_VIDEO,
    SEGMENT_NEGATIVE,
    SEGMENT_OUTSIDE,
    SEGMENT_PAST_END,
    SEGMENT_REVERSED,
    UNKNOWN_LABEL,
    Dataset,
    Segment,
    VideoRecord,
)
from strg_deploy.errors import StrgError

CHARADES_FPS = 24.0
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
