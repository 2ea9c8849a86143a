"""Something-Something v1: a class list and ``id;label`` split files, one folder of JPEG frames per id.

Nothing here imports torch.
"""

from __future__ import annotations

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
from strg_deploy.data.datasets.records import BAD_ENTRY, MISSING_VIDEO, UNKNOWN_LABEL, Dataset, VideoRecord

SSV1_FPS = 12.0
SSV1_LABELS = "something-something-v1-labels.csv"
SSV1_SPLIT_FILES = {
    "train": "something-something-v1-train.csv",
    "validation": "something-something-v1-validation.csv",
    "test": "something-something-v1-test.csv",
}


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
