"""Clip sampling: which moments of a video a clip shows, as times in seconds.

Samplers return frame times (float64 [T], seconds from the first frame, all inside [0, duration]), not
frame indices, so that a sampling is independent of the file's frame rate: a video reader maps each time
to the decoded frame showing at that time.

Two samplings:

- :func:`paper_times` (the paper's): T frames spread evenly over a span of ``span_seconds`` (about 5 s
  for 32 frames). The span is cut into T equal sub-intervals and each frame time is the centre of one,
  so consecutive times are ``span / T`` apart and the first and last lie half a step inside the span.
  A video shorter than the span is spread over whole.
- :func:`dense_times`: T frames at a fixed stride of the file's frames (e.g. every 2nd frame), the usual
  sampling of I3D-style models; padded with the last frame when the video is too short.

Training passes a ``numpy.random.Generator`` and the span starts anywhere in the video; at test time
(no generator) ``position`` in [0, 1] places the span (0 = start, 0.5 = centred, 1 = end).
:func:`test_views` gives the test-time views: K temporal clips times 1 or 3 spatial crops.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strg_deploy.errors import StrgError

SAMPLING_MODES = ("paper", "dense")
CROPS_1 = ("center",)
CROPS_3 = ("left", "center", "right")


def _check_duration(duration: float | None) -> float:
    if duration is None:
        raise StrgError("the video's duration is unknown: cannot sample a clip")
    try:
        value = float(duration)
    except (TypeError, ValueError):
        raise StrgError(f"duration must be a number of seconds, got {duration!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise StrgError(f"duration must be a positive, finite number of seconds, got {duration!r}")
    return value


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise StrgError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StrgError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise StrgError(f"{name} must be positive and finite, got {value!r}")
    return number


def _check_position(position: float) -> float:
    try:
        value = float(position)
    except (TypeError, ValueError):
        raise StrgError(f"position must be a number in [0, 1], got {position!r}") from None
    if not 0.0 <= value <= 1.0:
        raise StrgError(f"position must be in [0, 1], got {position!r}")
    return value


def _check_rng(rng: np.random.Generator | None) -> None:
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise StrgError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")


def paper_times(
    duration: float,
    frames: int,
    span_seconds: float,
    *,
    rng: np.random.Generator | None = None,
    position: float = 0.5,
) -> np.ndarray:
    """The paper's sampling: ``frames`` times spread evenly over a span of ``span_seconds``.

    The span is ``min(span_seconds, duration)``. It starts at ``rng.uniform(0, duration - span)`` when
    ``rng`` is given (training) and at ``position * (duration - span)`` otherwise (test). The span is
    cut into ``frames`` equal sub-intervals; the times are their centres:
    ``start + (i + 0.5) * span / frames`` for i = 0 .. frames - 1. The result does not depend on the
    file's frame rate.

    Args:
        duration: seconds of video (> 0).
        frames: T, the number of frame times (>= 1).
        span_seconds: the span the T frames cover (> 0).
        rng: a numpy Generator for a random start (training), or None.
        position: where the span lies when ``rng`` is None, 0 (start) .. 1 (end).

    Returns:
        float64 [T], increasing, inside [0, duration].
    """
    duration = _check_duration(duration)
    frames = _check_count("frames", frames)
    span = min(_check_positive("span_seconds", span_seconds), duration)
    position = _check_position(position)
    _check_rng(rng)
    room = duration - span
    start = float(rng.uniform(0.0, room)) if rng is not None and room > 0 else position * room
    return start + (np.arange(frames, dtype=np.float64) + 0.5) * (span / frames)


def frame_count(duration: float, fps: float) -> int:
    """Frames of a video of ``duration`` seconds at ``fps`` (frame i at i / fps), at least 1."""
    duration = _check_duration(duration)
    fps = _check_positive("fps", fps)
    return max(1, math.ceil(duration * fps - 1e-6))


def dense_times(
    duration: float,
    frames: int,
    stride_frames: int,
    fps: float,
    *,
    rng: np.random.Generator | None = None,
    position: float = 0.5,
) -> np.ndarray:
    """Dense sampling: ``frames`` frames, ``stride_frames`` apart, of a video at ``fps``, as times.

    The video has F = :func:`frame_count` (duration, fps) frames, frame i at time i / fps. A clip takes
    frames ``s, s + stride, ..., s + (T - 1) * stride``; the first frame s is drawn uniformly from the
    starts that keep the clip inside the video when ``rng`` is given, and is ``round(position * room)``
    otherwise (room = the last valid start). When the video is shorter than the clip, s = 0 and the
    frames past the end repeat the last frame (F - 1).

    Returns:
        float64 [T]: frame times ``index / fps``, non-decreasing, inside [0, duration].
    """
    frames = _check_count("frames", frames)
    stride = _check_count("stride_frames", stride_frames)
    count = frame_count(duration, fps)
    fps = float(fps)
    position = _check_position(position)
    _check_rng(rng)
    room = count - ((frames - 1) * stride + 1)
    if room <= 0:
        start = 0
    elif rng is not None:
        start = int(rng.integers(0, room + 1))
    else:
        start = int(round(position * room))
    index = np.minimum(start + np.arange(frames) * stride, count - 1)
    return index.astype(np.float64) / fps


@dataclass(frozen=True, eq=False)
class View:
    """One test-time view of a video.

    Attributes:
        times: float64 [T] frame times in seconds.
        crop: ``"center"``, or with three crops ``"left"`` / ``"center"`` / ``"right"``: the crop's place
            along the frame's LONG side (left means top for a portrait frame, right means bottom).
        clip_index: k, the temporal clip (0 .. K - 1).
        crop_index: the spatial crop (0 .. crops - 1), in the order left, center, right.
    """

    times: np.ndarray
    crop: str
    clip_index: int = 0
    crop_index: int = 0


def _crops(spatial_crops: int) -> tuple[str, ...]:
    if isinstance(spatial_crops, bool) or spatial_crops not in (1, 3):
        raise StrgError(f"spatial_crops must be 1 or 3, got {spatial_crops!r}")
    return CROPS_1 if spatial_crops == 1 else CROPS_3


def view_positions(temporal_clips: int) -> np.ndarray:
    """Positions of K evenly placed temporal clips: (k + 0.5) / K, float64 [K]."""
    clips = _check_count("temporal_clips", temporal_clips)
    return (np.arange(clips, dtype=np.float64) + 0.5) / clips


def test_views(
    duration: float,
    frames: int,
    span_seconds: float,
    temporal_clips: int = 1,
    spatial_crops: int = 1,
) -> list[View]:
    """The test-time views of a video: K temporal clips times 1 or 3 spatial crops (K * crops views).

    Temporal clip k is :func:`paper_times` at ``position = (k + 0.5) / K`` (one clip is centred; K clips
    are spread evenly from start to end). With 3 spatial crops each clip is seen through a left/top,
    a centre and a right/bottom crop along the frame's long side (SlowFast's convention; see
    :func:`strg_deploy.data.transforms.spatial_crop`). Views come clip by clip, crops in that order.
    Scores of all views are averaged per video.
    """
    crops = _crops(spatial_crops)
    views = []
    for k, position in enumerate(view_positions(temporal_clips)):
        times = paper_times(duration, frames, span_seconds, position=float(position))
        views.extend(View(times, crop, k, c) for c, crop in enumerate(crops))
    return views


# not a pytest test, although its name starts with "test": test modules may import it by name
test_views.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SamplingConfig:
    """How clips are sampled.

    Attributes:
        mode: ``"paper"`` (``frames`` spread over ``span_seconds``) or ``"dense"`` (every ``stride``-th
            frame of the file).
        frames: T, frames per clip.
        span_seconds: the span of a paper clip.
        stride: the frame stride of a dense clip.
    """

    mode: str = "paper"
    frames: int = 32
    span_seconds: float = 5.0
    stride: int = 2

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise StrgError(f"sampling mode must be one of {', '.join(SAMPLING_MODES)}, got {self.mode!r}")
        _check_count("frames", self.frames)
        _check_positive("span_seconds", self.span_seconds)
        _check_count("stride", self.stride)

    def times(
        self,
        duration: float,
        fps: float | None = None,
        *,
        rng: np.random.Generator | None = None,
        position: float = 0.5,
    ) -> np.ndarray:
        """Frame times float64 [T] of one clip; ``fps`` is needed by the dense mode only."""
        if self.mode == "paper":
            return paper_times(duration, self.frames, self.span_seconds, rng=rng, position=position)
        if fps is None:
            raise StrgError("dense sampling needs the video's fps")
        return dense_times(duration, self.frames, self.stride, fps, rng=rng, position=position)

    def views(
        self,
        duration: float,
        fps: float | None = None,
        temporal_clips: int = 1,
        spatial_crops: int = 1,
    ) -> list[View]:
        """Test-time views (as :func:`test_views`) in this config's mode."""
        crops = _crops(spatial_crops)
        views = []
        for k, position in enumerate(view_positions(temporal_clips)):
            times = self.times(duration, fps, position=float(position))
            views.extend(View(times, crop, k, c) for c, crop in enumerate(crops))
        return views
