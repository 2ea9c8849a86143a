"""Test-time clips: a video file as the uint8 clip a model takes.

:func:`video_clip` is the evaluation view a deployment feeds the exported networks: ``frames`` frames
spread evenly over the middle ``span_seconds`` of the video (:func:`~strg_deploy.data.sampling.paper_times`),
decoded with the short side resized to ``size`` and centre-cropped to ``size`` x ``size``. The exported
graphs normalise uint8 input themselves, so this is all the preprocessing a runtime does. Nothing here
imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strg_deploy.data.cache import duration_of, short_side_size
from strg_deploy.data.sampling import paper_times
from strg_deploy.data.transforms import center_crop
from strg_deploy.data.video import open_video


def video_clip(path: str | Path, frames: int, size: int, span_seconds: float) -> np.ndarray:
    """The test clip of a video -> uint8 [3, T, S, S] with T = ``frames``, S = ``size``."""
    with open_video(path, threads=1) as reader:
        duration = reader.duration or duration_of(reader.frame_times())
        times = paper_times(duration, frames, span_seconds)
        clip = reader.read_at(times, size=short_side_size(*reader.size, size))
    images, _, _ = center_crop(clip.images, size)
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2))


def synthetic_clip(frames: int, size: int, seed: int) -> np.ndarray:
    """A deterministic clip for checks without a video: smooth colour gradients that drift over time
    plus a few moving rectangles, uint8 [3, T, S, S]; the same ``seed`` gives the same clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None] / max(frames, 1)
    y = np.arange(size, dtype=np.float32)[None, :, None] / size
    x = np.arange(size, dtype=np.float32)[None, None, :] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    clip = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (x + y + t) + p) for p in phase])  # [3, T, S, S]
    clip = np.broadcast_to(clip, (3, frames, size, size)).copy()
    for _ in range(3):
        colour = rng.uniform(0, 1, 3)[:, None, None]
        w, h = rng.integers(size // 8, size // 3, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        dx, dy = rng.integers(-2, 3, 2)
        for f in range(frames):
            left = int(np.clip(x0 + dx * f, 0, size - w))
            top = int(np.clip(y0 + dy * f, 0, size - h))
            clip[:, f, top : top + h, left : left + w] = colour
    return np.round(clip * 255).astype(np.uint8)
