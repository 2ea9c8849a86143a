"""The values that flow through `strg infer`: sources, frames, windows and their results.

    SourceSpec --reader thread--> Frame (model-size image + source->model Transform)
               --WindowBuilder--> Window (uint8 clip [3, T, S, S], media and wall times)
               --Batcher/Runner (engines.pipeline.Pipeline)--> WindowResult --> sinks

Times: ``media_time`` is seconds since the stream's first frame, from the frames' timestamps (pts), and
continues across reconnects of a live stream (a reconnected stream resumes after the last time seen);
``wall_time`` is ``time.time()`` when the frame arrived from the decoder. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

SCHEMA_VERSION = 1  # of the JSON lines `strg infer` writes (predictions, events, metrics)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One input stream. ``name``: unique, shown in every output (never holds credentials); ``url``: a
    file path or an ``rtsp://`` URL, possibly with credentials (never print it: use ``display``);
    ``display``: the URL with any password masked; ``live``: a camera (bounded queues, drops the oldest
    windows when inference falls behind, reconnects) rather than a file (backpressure, nothing dropped);
    ``options``: per-stream settings from a sources file (e.g. ``geometry``, ``roi``)."""

    name: str
    url: str
    display: str
    live: bool
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Transform:
    """Maps model-clip pixel coordinates back to source pixels, per axis: ``source_x = model_x * ax + bx``,
    ``source_y = model_y * ay + by``. Centre crop, letterbox and a region of interest are all of this form."""

    ax: float
    bx: float
    ay: float
    by: float

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """boxes float [..., 4] (x1, y1, x2, y2) in model-clip pixels -> the same in source pixels."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        out[..., 0::2] = out[..., 0::2] * self.ax + self.bx
        out[..., 1::2] = out[..., 1::2] * self.ay + self.by
        return out.astype(np.float32)


IDENTITY = Transform(1.0, 0.0, 1.0, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame, brought to the model's size when first asked: ``image`` uint8 [S, S, 3] RGB;
    ``transform`` maps its pixels back to the source frame (``source_size`` (width, height) after
    rotation); ``media_time`` and ``wall_time`` as in the module docstring; ``index`` counts the stream's
    frames. ``pixels`` is the image, or a function that makes it: the first read of ``image`` calls it
    and keeps the result, so a frame no window samples is never converted."""

    stream: str
    pixels: np.ndarray | Callable[[], np.ndarray]
    media_time: float
    wall_time: float
    index: int
    transform: Transform = IDENTITY
    source_size: tuple[int, int] = (0, 0)

    @property
    def image(self) -> np.ndarray:
        pixels = self.pixels
        if callable(pixels):
            pixels = pixels()
            object.__setattr__(self, "pixels", pixels)  # made once; the decoded frame is let go
        return pixels


@dataclasses.dataclass(frozen=True)
class Window:
    """A window of one stream ready for the model: ``clip`` uint8 [3, T, S, S] (T frames sampled by
    timestamp over [``start``, ``end``] media seconds); ``wall_end``: when its last frame arrived;
    ``sequence``: its number in the stream (0, 1, ...); ``transform`` and ``source_size`` as in Frame."""

    stream: str
    sequence: int
    clip: np.ndarray
    start: float
    end: float
    wall_end: float
    transform: Transform = IDENTITY
    source_size: tuple[int, int] = (0, 0)


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """The model's answer for one window: ``probabilities`` float32 [C] (softmax or sigmoid),
    ``boxes`` float32 [T', N, 4] in SOURCE pixels, ``scores`` [T', N], ``mask`` bool [T', N];
    ``latency``: seconds from the window entering its batch to the result; ``lag``: seconds from the
    window's last frame arriving (``window.wall_end``) to the result; ``batch``: the batch size it ran in."""

    window: Window
    probabilities: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    latency: float
    lag: float
    batch: int
