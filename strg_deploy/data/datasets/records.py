"""The types every dataset reader returns: :class:`Dataset` of :class:`VideoRecord` s, with
:class:`Segment` labels (multi-label data) and :class:`Skipped` entries, and the stable reason strings
that skipped and repaired entries carry.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from strg_deploy.errors import StrgError

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
