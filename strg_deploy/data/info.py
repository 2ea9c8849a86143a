"""Facts about videos for ``strg data info``: container, stream, codec, sizes, frame rates, damage.

Every frame is decoded (no colour conversion): that is how the frame count, the measured frame rate and
the damaged packets are known. A file that decodes fewer frames than its container declares (beyond the
damaged packets) is reported: ``missing_frames``, ``truncated`` and :func:`row_warning`. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from strg_deploy.data.video import is_frame_pattern, open_video
from strg_deploy.errors import StrgError

__all__ = ["info_rows", "row_warning", "video_info"]


def video_info(
    source: str | os.PathLike[str], stream: int | None = None, *, fps: float | None = None
) -> dict[str, Any]:
    """Decode one video and describe it.

    Returns a JSON-ready dict: path, container, stream (index among the video streams), codec,
    pixel_format, coded_width / coded_height (before rotation), rotation (degrees counter-clockwise),
    width / height (after rotation), nominal_fps, measured_fps ((frames - 1) / (last - first frame time)),
    duration (seconds the file holds; None when unknown), declared_duration (seconds the container
    declares), declared_frames (0 when unknown), frames_decoded, damaged_frames, missing_frames
    (declared frames neither decoded nor lost to a damaged packet; 0 when the count is unknown),
    truncated (the file ends before the data its index points to), first_time / last_time (seconds).
    Raises StrgError when the video cannot be opened or read; ``fps`` is the frame rate of a frame-folder
    pattern (``frames/%05d.jpg``), required for one and ignored otherwise.
    """
    if is_frame_pattern(source) and not (fps is not None and fps > 0):
        raise StrgError(
            f"cannot open video {os.fspath(source)}: a frame-folder pattern needs its frame rate: pass "
            "--fps (e.g. 12 for Something-Something v1 frames, 24 for Charades)"
        )
    with open_video(source, stream, fps=fps) as video:
        counted = video.count_frames()
        coded_width, coded_height = video.coded_size
        width, height = video.size
        declared = video.declared_frames
        missing = max(declared - counted.frames - counted.damaged, 0) if declared > 0 else 0
        return {
            "path": video.path,
            "container": video.container_format,
            "stream": video.stream_index,
            "codec": video.codec,
            "pixel_format": video.pixel_format,
            "coded_width": coded_width,
            "coded_height": coded_height,
            "rotation": video.rotation,
            "width": width,
            "height": height,
            "nominal_fps": video.nominal_fps,
            "measured_fps": counted.measured_fps,
            "duration": video.duration,
            "declared_duration": video.declared_duration,
            "declared_frames": declared,
            "frames_decoded": counted.frames,
            "damaged_frames": counted.damaged,
            "missing_frames": missing,
            "truncated": video.truncated,
            "first_time": counted.first_time,
            "last_time": counted.last_time,
        }


def info_rows(
    sources: Iterable[str | os.PathLike[str]], stream: int | None = None, *, fps: float | None = None
) -> list[dict[str, Any]]:
    """One :func:`video_info` row per source, in order; a source that cannot be read gives
    ``{"path": ..., "error": "<one line>"}`` instead of raising."""
    rows = []
    for source in sources:
        try:
            rows.append(video_info(source, stream, fps=fps))
        except StrgError as error:
            rows.append({"path": os.fspath(source), "error": str(error)})
    return rows


def row_warning(row: dict[str, Any]) -> str | None:
    """One line on a row whose file holds fewer frames than its container declares, or ends before the
    data its index points to; None otherwise (and for error rows)."""
    if "error" in row or not (row["missing_frames"] or row["truncated"]):
        return None
    parts = []
    if row["missing_frames"]:
        damaged = f", {row['damaged_frames']} damaged" if row["damaged_frames"] else ""
        parts.append(
            f"{row['missing_frames']} of the {row['declared_frames']} frames it declares are missing "
            f"({row['frames_decoded']} decoded{damaged})"
        )
    if row["truncated"]:
        parts.append("the file is truncated (it ends before the data its index points to)")
    return f"{row['path']}: {'; '.join(parts)}; training reads the frames that decode"
