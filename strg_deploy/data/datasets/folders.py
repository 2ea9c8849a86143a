"""Videos laid out one folder per class (``<root>/<class>/<video>``, optionally under a split folder).

Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from strg_deploy.data.datasets.reading import (
    SPLITS,
    VIDEO_EXTS,
    PathLike,
    _check_fraction,
    _check_split,
    _Collector,
    _ext_of,
    _normalise_ext,
)
from strg_deploy.data.datasets.records import NOT_A_VIDEO, OUTSIDE_CLASS, UNKNOWN_LABEL, Dataset, VideoRecord
from strg_deploy.errors import StrgError

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
