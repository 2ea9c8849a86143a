"""Something-Something v2 (and the synthetic benchmark, which writes the same files): JSON label list
and split files, one video file per id.

Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strg_deploy.data.datasets.reading import (
    PathLike,
    _check_fraction,
    _check_split,
    _Collector,
    _find_file,
    _first_existing,
    _normalise_ext,
    _read_json,
    _VideoIndex,
)
from strg_deploy.data.datasets.records import BAD_ENTRY, MISSING_VIDEO, UNKNOWN_LABEL, Dataset, VideoRecord
from strg_deploy.errors import StrgError

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
