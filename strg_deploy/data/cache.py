"""A cache of decoded, resized uint8 videos: decoded once, memory-mapped on every later epoch.

Decoding is the cost of training on 2 cores. For a dataset that fits on disk, each video is decoded once
at a fixed short side and stored as ``<root>/<key>.npy`` (uint8 [F, H, W, 3], every decoded frame) beside
``<root>/<key>.times.npy`` (float64 [F], frame times in seconds). Later reads memory-map the file, so a
clip costs a gather of T frames instead of a seek and a decode. Files are written to temporary names and
renamed: a killed run leaves no half-written entry, and two loader workers that build the same entry at
once both end with a complete file.

An entry that cannot be read back (a truncated or garbled ``.npy`` or sidecar, frames and times that do not
match, frames at another size) is the cache's fault, not the video's: it is rebuilt from the video (the
same atomic writes) and said once, as one line to ``on_notice`` naming the first such entry (once per
process: each loader worker says it for the first entry it rebuilds). A cache that cannot be written
raises :class:`CacheError` (a StrgError naming the cache folder), which a training run does not mistake
for an unreadable video.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strg_deploy.data.transforms import short_side_shape
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path

Notice = Callable[[str], None]


class CacheError(StrgError):
    """The decoded-clip cache, not a video, is at fault (an entry that cannot be written)."""


class _Unreadable(Exception):
    """A cache entry that cannot be read back (the reason is the message)."""


def warn_on_stderr(message: str) -> None:
    """The default notice: ``warning: <message>`` on one line of stderr (from a loader worker too)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
    """Decoded videos at ``short_side`` under ``root``, built on first use and memory-mapped after.

    on_notice: receives one line when the first entry that could not be read has been rebuilt (later
    ones are rebuilt without a word); default: a ``warning:`` line on stderr.
    """

    def __init__(self, root: str | Path, short_side: int, on_notice: Notice | None = None):
        self.root = Path(root)
        self.short_side = short_side
        self.on_notice = on_notice or warn_on_stderr
        self.rebuilt = 0  # entries rebuilt by this process

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
        """The cached video, decoding and storing it first when it is not cached yet, or when its entry
        cannot be read (``on_notice`` hears of the first such entry once it is rebuilt).

        Raises StrgError when the video cannot be decoded, CacheError when the entry cannot be written.
        """
        frames_path, times_path = self.paths(source)
        problem = None
        if source in self:
            try:
                return self._read(frames_path, times_path)
            except _Unreadable as err:
                problem = str(err)
        video = decode_video(source, self.short_side, fps)
        self._write(video, frames_path, times_path)
        if problem is not None:
            self.rebuilt += 1
            if self.rebuilt == 1:
                self.on_notice(
                    f"cache entry {frames_path} could not be read ({problem}); rebuilt it from {source} "
                    "(other unreadable entries are rebuilt without another warning)"
                )
        return video

    def _read(self, frames_path: Path, times_path: Path) -> DecodedVideo:
        """The entry, memory-mapped; _Unreadable with the reason when it is not a whole, consistent entry."""
        try:
            frames = np.load(frames_path, mmap_mode="r")
            times = np.load(times_path)
        except (OSError, ValueError, EOFError) as err:
            raise _Unreadable(" ".join(str(err).split()) or type(err).__name__) from None
        if not (isinstance(frames, np.ndarray) and isinstance(times, np.ndarray)):
            raise _Unreadable("not .npy arrays")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or 0 in frames.shape:
            raise _Unreadable(f"frames are {frames.dtype} {list(frames.shape)}, not uint8 [F, H, W, 3]")
        if self.short_side and min(frames.shape[1:3]) != self.short_side:
            raise _Unreadable(
                f"frames are {frames.shape[2]}x{frames.shape[1]}, not at short side {self.short_side}"
            )
        if times.dtype != np.float64 or times.shape != frames.shape[:1]:
            raise _Unreadable(f"times are {times.dtype} {list(times.shape)} for {len(frames)} frames")
        if not (np.all(np.isfinite(times)) and np.all(np.diff(times) >= 0)):
            raise _Unreadable("times are not finite and non-decreasing")
        return DecodedVideo(frames, times)

    def _write(self, video: DecodedVideo, frames_path: Path, times_path: Path) -> None:
        """Store an entry (times first, frames last: an entry is complete once its frames file exists)."""
        try:
            for path, array in ((times_path, video.times), (frames_path, video.frames)):
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, array)
        except (StrgError, OSError) as err:
            reason = err.strerror if isinstance(err, OSError) else str(err)
            raise CacheError(
                f"decoded-clip cache {self.root}: {reason}; free space there, or delete the folder or "
                "choose another --cache"
            ) from None
