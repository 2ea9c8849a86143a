"""Ground-truth box tracks: per-frame boxes of every object of a video, read from JSON lines.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.data.datasets.reading import PathLike, _loads, _read_text
from strg_deploy.errors import StrgError


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
