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

One module per annotation format, as torchvision's datasets are laid out:

- ``records``: :class:`Dataset`, :class:`VideoRecord`, :class:`Segment`, :class:`Skipped` and the
  skip/repair reasons; ``reading``: what the readers share (annotation files, folder listings).
- ``something_something_v2``, ``something_something_v1``, ``charades``, ``folders``: one reader each,
  gathered in :data:`READERS` by dataset name.
- ``box_tracks``: :class:`BoxTracks` and :func:`read_box_tracks` (JSON lines).

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

from strg_deploy.data.datasets.box_tracks import BoxTracks, read_box_tracks
from strg_deploy.data.datasets.charades import (
    CHARADES_CLASSES,
    CHARADES_COLUMNS,
    CHARADES_FPS,
    CHARADES_SPLIT_FILES,
    read_charades,
    read_charades_classes,
)
from strg_deploy.data.datasets.folders import SPLIT_FOLDERS, read_folders
from strg_deploy.data.datasets.reading import SPLITS, VIDEO_EXTS, PathLike
from strg_deploy.data.datasets.records import (
    BAD_ENTRY,
    DUPLICATE_ID,
    MISSING_VIDEO,
    NOT_A_VIDEO,
    OUTSIDE_CLASS,
    SEGMENT_NEGATIVE,
    SEGMENT_OUTSIDE,
    SEGMENT_PAST_END,
    SEGMENT_REVERSED,
    UNKNOWN_LABEL,
    Dataset,
    Segment,
    Skipped,
    VideoRecord,
)
from strg_deploy.data.datasets.something_something_v1 import (
    SSV1_FPS,
    SSV1_LABELS,
    SSV1_SPLIT_FILES,
    read_something_something_v1,
)
from strg_deploy.data.datasets.something_something_v2 import (
    SSV2_LABELS,
    SSV2_SPLIT_FILES,
    read_something_something_v2,
    ssv2_class_of_template,
)

READERS: dict[str, Callable[..., Dataset]] = {
    "something-something-v2": read_something_something_v2,
    "something-something-v1": read_something_something_v1,
    "charades": read_charades,
    "folders": read_folders,
}

__all__ = [
    "BAD_ENTRY",
    "CHARADES_CLASSES",
    "CHARADES_COLUMNS",
    "CHARADES_FPS",
    "CHARADES_SPLIT_FILES",
    "DUPLICATE_ID",
    "MISSING_VIDEO",
    "NOT_A_VIDEO",
    "OUTSIDE_CLASS",
    "READERS",
    "SEGMENT_NEGATIVE",
    "SEGMENT_OUTSIDE",
    "SEGMENT_PAST_END",
    "SEGMENT_REVERSED",
    "SPLITS",
    "SPLIT_FOLDERS",
    "SSV1_FPS",
    "SSV1_LABELS",
    "SSV1_SPLIT_FILES",
    "SSV2_LABELS",
    "SSV2_SPLIT_FILES",
    "UNKNOWN_LABEL",
    "VIDEO_EXTS",
    "BoxTracks",
    "Dataset",
    "PathLike",
    "Segment",
    "Skipped",
    "VideoRecord",
    "read_box_tracks",
    "read_charades",
    "read_charades_classes",
    "read_folders",
    "read_something_something_v1",
    "read_something_something_v2",
    "ssv2_class_of_template",
]
