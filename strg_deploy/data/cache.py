"""A cache of decoded, resized uint8 videos: decoded once, memory-mapped on every later epoch.

Decoding is the cost of training on 2 cores. For a dataset that fits on disk, each video is decoded once
at a fixed short side and stored as ``<root>/<key>.npy`` (uint8 [F, H, W, 3], every decoded frame) beside
``<root>/<key>.times.npy`` (float64 [F], frame times in seconds). Later reads memory-map the file, so a
clip costs a gather of T frames instead of a seek and a decode. Files are written to temporary names and
renamed: a killed run leaves no half-written entry, and two loader workers that build the same entry at
once both end with a complete file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strg_deploy.data.transforms import short_side_shape
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path


@dataclass(frozen=True)
class DecodedVideo:
    """All frames of a video: ``frames`` uint8 [F, H, W, 3] (maybe memory-mapped), ``times`` float64 [F]."""

    frames: np.ndarray
    times: np.ndarray
    damaged: int = 0

    @property
    def duration(self) -> float:
        return duration_of(self.times)

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frames showing at ``times`` (the last frame starting at or before each time; the first
        frame for earlier times): (uint8 [T, H, W, 3], frame times float64 [T])."""
        start = self.times[0] if len(self.times) else 0.0
        wanted = np.asarray(times, dtype=np.float64) + start + 1e-4  # timestamps round a hair above i / fps
        index = np.searchsorted(self.times, wanted, side="right") - 1
        index = np.clip(index, 0, len(self.times) - 1)
        return np.asarray(self.frames[index]), self.times[index] - start


def duration_of(times: np.ndarray) -> float:
    """Seconds from the first frame to the end of the last (one mean frame interval past it), for frame
    times float [F]; 1 s for a single frame (a still), 0 without frames."""
    if len(times) < 2:
        return 0.0 if len(times) == 0 else 1.0
    step = (times[-1] - times[0]) / (len(times) - 1)
    return float(times[-1] - times[0] + step)


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) for FFmpeg's scaler with min(width, height) == short_side, aspect kept."""
    new_height, new_width = short_side_shape(height, width, short_side)
    return new_width, new_height


def decode_video(source: str, short_side: int | None, fps: float | None = None) -> DecodedVideo:
    """Decode every frame of ``source`` (resized to ``short_side`` by FFmpeg's scaler when given)."""
    with open_video(source, fps=fps) as reader:
        size = short_side_size(*reader.size, short_side) if short_side else None
        frames, times = [], []
        for frame in reader.frames(size=size):
            frames.append(frame.image)
            times.append(frame.time)
        damaged = reader.damaged_frames
    if not frames:
        raise StrgError(f"no frame could be decoded from {source}")
    return DecodedVideo(np.stack(frames), np.asarray(times, dtype=np.float64), damaged)


class ClipCache:
    """Decoded videos at ``short_side`` under ``root``, built on first use and memory-mapped after."""

    def __init__(self, root: str | Path, short_side: int):
        self.root = Path(root)
        self.short_side = short_side

    def key(self, source: str) -> str:
        """The entry name of a video: a hash of its path and the cache's short side."""
        digest = hashlib.sha1(f"{Path(source).resolve()}|{self.short_side}".encode()).hexdigest()
        return digest[:20]

    def paths(self, source: str) -> tuple[Path, Path]:
        key = self.key(source)
        return self.root / f"{key}.npy", self.root / f"{key}.times.npy"

    def __contains__(self, source: str) -> bool:
        frames, times = self.paths(source)
        return frames.is_file() and times.is_file()

    def load(self, source: str, fps: float | None = None) -> DecodedVideo:
        """The cached video, decoding and storing it first when it is not cached yet."""
        frames_path, times_path = self.paths(source)
        if source not in self:
            video = decode_video(source, self.short_side, fps)
            with atomic_path(times_path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, video.times)
            with atomic_path(frames_path) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, video.frames)
            return video
        try:
            return DecodedVideo(np.load(frames_path, mmap_mode="r"), np.load(times_path))
        except (OSError, ValueError) as err:
            raise StrgError(f"damaged cache entry {frames_path}: {err}; delete it to rebuild") from None
