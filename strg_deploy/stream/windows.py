"""Sliding windows over one stream: frames in, model clips out.

Window k covers media seconds [k * stride, k * stride + window]. Its T frames are sampled by timestamp:
the window is cut into T equal parts and each part's centre (:func:`strg_deploy.data.sampling.paper_times`
over the window) takes the nearest frame held (ties: the earlier frame). So the frame rate may vary,
frames may skip, and frames may come much faster than T per window: the clip shows the same moments.

A window is complete once a frame at or past its end arrives. A window with no frame inside it (it lies
wholly in a gap of the stream) is skipped. At the end of a file, :meth:`WindowBuilder.flush` emits what
is left: one window over [0, last frame time] when the file was shorter than a window, else the next
window when frames cover at least half of it.

Conversion: a frame's image is made (``Frame.image``) only once it is known to be kept, when the next
frame arrives, or when a window takes it. Once the first window is out, a frame that no window samples is
never converted; at most the newest frame of a stream is held unconverted.

Memory: once the first window is out, a frame is kept only while some sample time of a window still to
come may take it, so what a stream holds is bounded by the windows open at once times T, whatever the
frame rate and however long the stream runs. Before the first window every frame is kept (at most one
window's worth), because a file shorter than a window is sampled over its own length at flush.

The same frames always give the same windows. Nothing here imports torch.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from strg_deploy.data.sampling import paper_times
from strg_deploy.errors import StrgError
from strg_deploy.stream.types import Frame, Window


def _positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise StrgError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def nearest(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``times`` (float64 [F], non-decreasing) to each ``wanted`` time (float64
    [T]); ties and repeated times go to the earlier frame. -> int64 [T]."""
    after = np.searchsorted(times, wanted, side="left")  # first frame at or after each time
    after = np.minimum(after, len(times) - 1)
    before = np.maximum(after - 1, 0)
    # the first frame of a run of equal times, for a time that falls past all of them
    before = np.searchsorted(times, times[before], side="left")
    take_before = np.abs(wanted - times[before]) <= np.abs(times[after] - wanted)
    return np.where(take_before, before, after)


class WindowBuilder:
    """The sliding windows of stream ``stream`` (module docstring): ``frames`` T per clip, windows of
    ``window_seconds`` every ``stride_seconds``. ``pending_frames``: frames held now."""

    def __init__(self, stream: str, frames: int, window_seconds: float, stride_seconds: float):
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
            raise StrgError(f"frames per window must be an integer >= 1, got {frames!r}")
        self.stream = stream
        self.frames = int(frames)
        self.window = _positive("window", window_seconds)
        self.stride = _positive("stride", stride_seconds)
        self._offsets = paper_times(self.window, self.frames, self.window)  # float64 [T], in [0, window]
        self._offsets_list = [float(o) for o in self._offsets]  # the same, for scalar arithmetic
        self._held: list[Frame] = []
        self._next = 0  # the first window not yet complete
        self._sequence = 0  # windows emitted
        self._flushed = False

    @property
    def pending_frames(self) -> int:
        return len(self._held)

    def _start(self, k: int) -> float:
        return k * self.stride

    def _end(self, k: int) -> float:
        return k * self.stride + self.window

    def push(self, frame: Frame) -> list[Window]:
        """Add the next frame (``image`` uint8 [S, S, 3]); -> the windows it completes, oldest first.
        A frame earlier than the newest one is ignored (media times never go back); one at the same time
        only completes windows (ties go to the earlier frame)."""
        if self._flushed:
            raise RuntimeError(f"stream {self.stream}: push() after flush()")
        time = float(frame.media_time)
        if not math.isfinite(time) or (self._held and time < self._held[-1].media_time):
            return []
        previous = self._held[-1].media_time if self._held else -math.inf
        if time != previous:  # of frames at the same time, the first is the one every window takes
            self._held.append(frame)
        out = []
        while time >= self._end(self._next):
            k = self._next
            # no frame in [start, end]: the previous one is before it (every end before the previous
            # frame completed earlier) and this one after it; skip to the windows this frame ends
            if previous < self._start(k) and time > self._end(k):
                self._next = max(k + 1, math.floor((time - self.window) / self.stride))
                continue
            self._next += 1
            out.append(self._emit(self._start(k) + self._offsets, k, frame.wall_time))
        if self._sequence:
            self._prune(everything=bool(out))
        if len(self._held) > 1:  # the frame before the newest stays: convert it now, let its decode go
            _ = self._held[-2].image
        return out

    def flush(self) -> list[Window]:
        """The end of the stream: the windows left (module docstring); nothing after."""
        if self._flushed or not self._held:
            self._flushed = True
            return []
        self._flushed = True
        last = self._held[-1]
        out = []
        if self._sequence == 0:
            span = float(last.media_time)
            times = paper_times(span, self.frames, span) if span > 0 else np.zeros(self.frames)
            out.append(self._emit(times, None, last.wall_time, end=span))
        elif last.media_time >= self._start(self._next) + self.window / 2:
            out.append(self._emit(self._start(self._next) + self._offsets, self._next, last.wall_time))
        self._held = []
        return out

    def _emit(self, times: np.ndarray, k: int | None, wall_end: float, end: float | None = None) -> Window:
        """The window over sample ``times`` (float64 [T]) -> Window with clip uint8 [3, T, S, S]."""
        held = np.array([f.media_time for f in self._held], dtype=np.float64)
        chosen = [self._held[i] for i in nearest(held, times)]
        clip = np.stack([f.image for f in chosen]).transpose(3, 0, 1, 2)  # [T, S, S, 3] -> [3, T, S, S]
        newest = chosen[-1]
        window = Window(
            stream=self.stream,
            sequence=self._sequence,
            clip=np.ascontiguousarray(clip),
            start=0.0 if k is None else self._start(k),
            end=end if k is None else self._end(k),
            wall_end=wall_end,
            transform=newest.transform,
            source_size=newest.source_size,
        )
        self._sequence += 1
        return window

    def _prune(self, everything: bool) -> None:
        """Drop held frames that no sample time of a window still to come takes: all frames after an
        emission, else just the one before the newest (whose share of time just became known)."""
        held = self._held
        if len(held) < 2:
            return
        candidates = range(len(held) - 1) if everything else [len(held) - 2]
        drop = set()
        for j in candidates:
            before = held[j - 1].media_time if j > 0 else None
            if not self._takes(before, held[j].media_time, held[j + 1].media_time):
                drop.add(j)
        if drop:
            self._held = [f for j, f in enumerate(held) if j not in drop]

    def _takes(self, before: float | None, time: float, after: float) -> bool:
        """Whether a sample time of a window k >= the next takes the frame at ``time`` between frames at
        ``before`` (None: none) and ``after``, by :func:`nearest`'s rule (ties: the earlier frame). The
        candidates are the sample times within the frame's share of time widened by a hair, computed as
        :meth:`_emit` computes them, so float rounding can only keep a frame, never drop one a window
        takes."""
        low = (before + time) / 2 if before is not None else -math.inf
        high = (time + after) / 2
        slack = 1e-9 * max(1.0, abs(high))
        low, high = low - slack, high + slack
        offsets, stride = self._offsets_list, self.stride
        first = self._next
        if low > -math.inf:
            first = max(first, math.floor((low - self.window) / stride) - 1)
        for k in range(first, math.floor(high / stride) + 2):  # windows that may reach into [low, high]
            start = k * stride
            for i in range(bisect.bisect_left(offsets, low - start - slack), len(offsets)):
                sample = start + offsets[i]  # as _emit computes it
                if sample > high:
                    break
                if sample < low:
                    continue
                if sample <= time:  # at or before this frame: the earlier one wins a tie
                    if before is None or abs(sample - before) > abs(time - sample):
                        return True
                elif abs(sample - time) <= abs(after - sample):
                    return True
        return False
