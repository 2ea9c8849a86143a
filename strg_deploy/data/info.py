"""Facts about videos for ``strg data info``: container, stream, codec, sizes, frame rates, damage.

Every frame is decoded (no colour conversion): that is how the frame count, the measured frame rate and
the damaged packets are known. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError

__all__ = ["info_rows", "video_info"]


def video_info(
    source: str | os.PathLike[str], stream: int | None = None, *, fps: float | None = None
) -> dict[str, Any]:
    """Decode one video and describe it.

    Returns a JSON-ready dict: path, container, stream (index among the video streams), codec,
    pixel_format, coded_width / coded_height (before rotation), rotation (degrees counter-clockwise),
    width / height (after rotation), nominal_fps, measured_fps ((frames - 1) / (last - first frame time)),
    duration (seconds; None when unknown), declared_frames (0 when unknown), frames_decoded,
    damaged_frames, first_time / last_time (seconds).
    Raises StrgError when the video cannot be opened or read; ``fps`` is for frame-folder patterns.
    """
    with open_video(source, stream, fps=fps) as video:
        counted = video.count_frames()
        coded_width, coded_height = video.coded_size
        width, height = video.size
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
            "declared_frames": video.declared_frames,
            "frames_decoded": counted.frames,
            "damaged_frames": counted.damaged,
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
