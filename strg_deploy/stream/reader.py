"""One reader thread per source: decode, bring frames to the model's size, hand them on; reconnect cameras.

    reader = StreamReader(spec, on_frame, geometry, retry=RetryPolicy(), on_event=print).start()
    ...
    reader.stop(); reader.join(10)

Each reader opens its source with :func:`strg_deploy.data.video.open_video` (RTSP over TCP, with an open
timeout and a read timeout; with ``decode="cuda"`` its NVDEC variant from
:mod:`strg_deploy.data.gpu_decode`), asks ``geometry.plan(width, height)`` for the decode size and the
crop of that source size, and calls ``on_frame(Frame)`` for every decoded frame. Readers are threads, so many
cameras open at the same time (PyAV releases the GIL while FFmpeg waits on the network).

Files apply backpressure: ``on_frame`` may block, and the file waits. For live sources the caller's
``on_frame`` must not block: the reader keeps draining the socket so the camera never stalls. A file read
with ``realtime`` (``spec.live`` and a path) is paced by its timestamps, like a camera.

A live URL that fails (cannot open, no data for ``read_timeout`` seconds, the stream ends) has its
container closed, is reported, and is opened again after the :class:`RetryPolicy` delay, until the
policy gives up or ``stop()``. Media times continue across reconnects: the first frame after a
reconnect comes one frame interval after the last frame seen. A file that ends is ``ended``; a file
that cannot be opened or read is ``failed`` once (no retry).

Every event message is masked with the stream's :class:`Redactor` (FFmpeg's errors quote the whole URL,
password included).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from strg_deploy.data.gpu_decode import video_opener
from strg_deploy.errors import StrgError
from strg_deploy.stream.retry import RetryPolicy
from strg_deploy.stream.sources import Redactor, _split_url
from strg_deploy.stream.types import Frame, SourceSpec, Transform

__all__ = ["EVENT_KINDS", "Geometry", "GeometryPlan", "StreamEvent", "StreamReader"]

EVENT_KINDS = ("opened", "failed", "retrying", "reconnected", "ended", "gave_up", "stopped")
_FALLBACK_INTERVAL = 1.0 / 25.0  # seconds between frames when a stream gives no rate and one frame


class GeometryPlan(Protocol):
    """How one source size becomes the model's size: decode at ``decode_size`` (width, height), then
    ``apply(image uint8 [h, w, 3]) -> uint8 [S, S, 3]``; ``transform`` maps model pixels back to source."""

    decode_size: tuple[int, int]
    transform: Transform

    def apply(self, image: np.ndarray) -> np.ndarray: ...


class Geometry(Protocol):
    """Plans the resize and crop for a source of ``width`` x ``height`` (after rotation)."""

    def plan(self, width: int, height: int) -> GeometryPlan: ...


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """Something that happened to a stream. ``kind``: one of EVENT_KINDS; ``message``: one line, masked;
    ``attempt``: failures in a row so far (0 when none); ``delay``: seconds before the next try
    (``retrying`` only, else None)."""

    stream: str
    kind: str
    message: str
    attempt: int = 0
    delay: float | None = None


class _Failure(Exception):
    """A connection ended: ``message`` says why (unmasked until reported)."""


class StreamReader:
    """Reads one source in its own daemon thread (named after the stream) until it ends, fails, gives
    up or is stopped.

    spec: the source. on_frame: called with each Frame (image uint8 [S, S, 3]) from the reader thread.
    geometry: ``plan(width, height)`` as in :class:`Geometry`. retry: when to try a live URL again.
    open_timeout / read_timeout: seconds for the open and for each read (a stream silent that long
    fails). on_event: called with each StreamEvent from the reader thread. threads: decoder threads.
    rng: the jitter's random source (``uniform(a, b)``). decode: "cpu", or "cuda" to decode with NVDEC
    (:mod:`strg_deploy.data.gpu_decode`; resolve ``--decode auto`` first with ``resolve_decode``).
    """

    def __init__(
        self,
        spec: SourceSpec,
        on_frame: Callable[[Frame], Any],
        geometry: Geometry,
        *,
        retry: RetryPolicy,
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        on_event: Callable[[StreamEvent], Any] | None = None,
        threads: int = 1,
        rng: random.Random | None = None,
        decode: str = "cpu",
    ) -> None:
        self.spec = spec
        self.redactor = Redactor([spec.url])
        self._on_frame = on_frame
        self._on_event = on_event
        self._geometry = geometry
        self._retry = retry
        self._timeout = (float(open_timeout), float(read_timeout))
        self._threads = threads
        self._open_video = video_opener(decode)
        self._rng = rng or random.Random()
        self._network = _split_url(spec.url) is not None
        self._retries = spec.live and self._network
        self._paced = spec.live and not self._network
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=spec.name, daemon=True)
        self._state = "new"
        self._frames = 0
        self._reconnects = 0
        self._failures = 0
        self._last_time: float | None = None  # media seconds of the last frame handed on
        self._interval: float | None = None  # media seconds between the last two frames
        self.error: BaseException | None = (
            None  # an exception from on_frame / on_event, if one ended the thread
        )

    # ------------------------------------------------------------------ control

    def start(self) -> StreamReader:
        """Start the reader thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the reader to end: it stops after the frame in hand, or when a blocking read returns (at
        most ``read_timeout`` later), closing the container (an RTSP session sends TEARDOWN)."""
        self._stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has ended (or never started)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> str:
        """new, opening, running, retrying, then one of ended, failed, gave_up, stopped."""
        return self._state

    @property
    def frames(self) -> int:
        """Frames handed to on_frame so far."""
        return self._frames

    @property
    def reconnects(self) -> int:
        """Successful opens after a failure."""
        return self._reconnects

    @property
    def failures(self) -> int:
        """Failures reported (each open failure, read timeout, or end of a live stream)."""
        return self._failures

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ thread

    def _emit(self, kind: str, message: str, attempt: int = 0, delay: float | None = None) -> None:
        if self._on_event is not None:
            self._on_event(StreamEvent(self.spec.name, kind, self.redactor.text(message), attempt, delay))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # a bug in a callback: recorded, reported, then raised in the thread
            self.error = error
            self._state = "failed"
            self._failures += 1
            self._emit("failed", f"{self.spec.display}: reader stopped by {type(error).__name__}: {error}")
            raise

    def _loop(self) -> None:
        display = self.spec.display
        attempt = 0  # failures in a row
        ever_opened = False
        while not self._stopping.is_set():
            self._state = "opening"
            began = time.monotonic()
            try:
                video = self._open_video(self.spec.url, timeout=self._timeout, threads=self._threads)
            except StrgError as error:
                message = str(error)
                waited = time.monotonic() - began
                if self._network and waited >= 0.9 * self._timeout[0]:  # FFmpeg's reason misleads
                    message = f"{display}: no answer within {waited:.1f} s (open timeout)"
            else:
                with video:  # closing frees FFmpeg's buffers and ends an RTSP session (TEARDOWN)
                    if self._retries:
                        video.reorder_window = 0  # a camera's frames leave as decoded: no frames held back
                    self._state = "running"
                    try:
                        got = self._drain(video, attempt if ever_opened else None)
                        message = f"{display}: the stream ended" if self._retries else None
                    except _Failure as failure:
                        message, got = failure.args
                    ever_opened = ever_opened or got is not None
                    if got:
                        attempt = 0
            if self._stopping.is_set():
                break
            if message is None:
                self._state = "ended"
                self._emit("ended", f"{display}: ended after {self._frames} frames")
                return
            self._failures += 1
            attempt += 1
            self._emit("failed", _naming(self.redactor.text(message), display), attempt)
            if not self._retries:
                self._state = "failed"
                return
            if self._retry.gives_up(attempt):
                self._state = "gave_up"
                self._emit("gave_up", f"{display}: gave up after {_failures(attempt)} in a row", attempt)
                return
            delay = self._retry.delay(attempt, self._rng)
            self._state = "retrying"
            self._emit(
                "retrying", f"{display}: retrying in {delay:.1f} s (attempt {attempt + 1})", attempt, delay
            )
            if self._stopping.wait(delay):
                break
        self._state = "stopped"
        self._emit("stopped", f"{display}: stopped after {self._frames} frames")

    def _drain(self, video, reconnect_after: int | None) -> bool | None:
        """Report the open, then hand on every frame of one connection. Returns whether a frame came
        (None when the stream could not even be sized). Raises _Failure(message, same) when the stream
        fails or times out. ``reconnect_after``: failures before this open, None for the first open."""
        display = self.spec.display
        try:
            width, height = video.size
            description = _describe(video)
        except StrgError as error:
            raise _Failure(str(error), None) from None
        if reconnect_after is None:
            self._emit("opened", f"{display}: opened ({description})")
        else:
            self._reconnects += 1
            self._emit(
                "reconnected",
                f"{display}: reconnected after {_failures(reconnect_after)} ({description})",
                reconnect_after,
            )
        plan = self._geometry.plan(width, height)
        source_size = (int(width), int(height))
        nominal = video.nominal_fps
        first: float | None = None
        offset = 0.0
        paced_start = None
        got = False
        started = time.monotonic()
        last_arrival = started
        try:
            for decoded in video.deferred_frames(size=plan.decode_size):
                wall = time.time()
                last_arrival = time.monotonic()
                if first is None:
                    first = decoded.time
                    if self._last_time is None:
                        offset = -first
                    else:
                        step = self._interval or (1.0 / nominal if nominal else _FALLBACK_INTERVAL)
                        offset = self._last_time + step - first
                media = decoded.time + offset
                if self._paced:
                    if paced_start is None:
                        paced_start = time.monotonic() - media
                    if self._stopping.wait(max(0.0, paced_start + media - time.monotonic())):
                        return got
                    wall = time.time()
                image = _model_image(plan, decoded.image)
                frame = Frame(self.spec.name, image, media, wall, self._frames, plan.transform, source_size)
                if self._last_time is not None and media > self._last_time:
                    self._interval = media - self._last_time
                self._last_time = media
                self._frames += 1
                got = True
                self._on_frame(frame)
                if self._stopping.is_set():
                    return got
        except StrgError as error:
            if self._stopping.is_set():
                return got
            idle = time.monotonic() - last_arrival
            if self._network and idle >= 0.9 * self._timeout[1]:
                raise _Failure(f"{self.spec.display}: no data for {idle:.1f} s (read timeout)", got) from None
            raise _Failure(str(error), got) from None
        return got


def _model_image(plan: GeometryPlan, decoded: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """A function that converts a decoded frame and applies ``plan``: -> uint8 [S, S, 3], contiguous."""
    return lambda: np.ascontiguousarray(plan.apply(decoded()))


def _failures(count: int) -> str:
    return f"{count} failure{'s' if count != 1 else ''}"


def _naming(message: str, display: str) -> str:
    """``message``, led by the source's masked URL unless it names it already."""
    return message if display in message else f"{display}: {message}"


def _describe(video) -> str:
    """``340x256 h264 30 fps`` for an opened video."""
    width, height = video.size
    fps = video.nominal_fps
    return f"{width}x{height} {video.codec}" + (f" {fps:g} fps" if fps else "")
