"""Video decoding with PyAV: files, URLs and frame folders to RGB uint8 frames with their timestamps.

    with open_video("clip.mp4") as video:            # or "rtsp://...", or "frames/%05d.jpg" with fps=12
        for frame in video.frames(size=(112, 112)):  # frame.time: seconds, frame.image: uint8 [112, 112, 3]
            ...
        clip = video.read_at([0.5, 1.0, 1.5])        # seeks; clip.images: uint8 [3, H, W, 3]

Times come from the stream's timestamps (``pts x time_base``), relative to the stream's start, never from
a frame index times a nominal frame rate. Frames come in the decoder's output order, which is the
presentation order; each frame takes FFmpeg's best-effort timestamp (its pts, or its dts when the pts of
the stream have proved less monotonic than the dts, as in AVI files with packed B-frames), and a window
of a few frames is sorted by that time, so the times a reader gives never go backwards.

Frames are converted to RGB with FFmpeg's scaler (``swscale``, area interpolation when resizing), which
reads the frame's colour range and matrix: full-range ``yuvj420p`` and 10-bit ``yuv420p10le`` convert
correctly. The display-matrix rotation is applied afterwards with numpy; a requested size is the size
after rotation.

A packet the decoder rejects costs its frame: it is counted (``VideoReader.damaged_frames``) and
decoding goes on. Files that cannot be opened, streams that do not exist and read errors raise
:class:`~strg_deploy.errors.StrgError` with the path and FFmpeg's reason.

A still image is not a video: a file (or URL) that FFmpeg reads with an image demuxer (``image2``, the
``*_pipe`` single-image demuxers such as ``png_pipe`` or ``jpeg_pipe``, ``gif``, ``apng``...) and that
holds fewer than two pictures is refused with StrgError, whatever its name says (a PNG renamed to
``.mp4`` included). An animated GIF or APNG, a stream of concatenated JPEGs and a frame folder read
through a pattern (``frames/%05d.jpg``) are videos.

A file that ends before the data its index points to (an MP4 cut short with its ``moov`` index at the
front) is ``truncated``: it decodes up to where it ends, and ``duration`` is the part the file holds.

No torch here: this module is on the runtime side.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

import av
import av.error
import numpy as np
from av.stream import Discard
from av.video.reformatter import Interpolation, VideoReformatter

from strg_deploy.errors import StrgError

__all__ = [
    "INTERPOLATION",
    "TIME_TOLERANCE",
    "Clip",
    "DecodedFrame",
    "FrameCount",
    "VideoReader",
    "is_frame_pattern",
    "open_video",
]

INTERPOLATION = Interpolation.AREA
"""The scaler's filter when a size is requested (area averaging: no aliasing when shrinking)."""

TIME_TOLERANCE = 1e-4
"""Seconds: a requested time this close below a frame's time still selects that frame."""

# RTSP over TCP, without FFmpeg's stream probing: the session description (SDP) gives the codec and
# size, and probing would hold back about 2.5 s of frames before the first one comes out (measured
# against the GStreamer test server: first frame after 0.2 s instead of 2.45 s, 1 buffered frame
# instead of 28; benchmarks/rtsp_open.py). A camera whose size is not known after opening is opened again
# with the usual probing.
RTSP_OPTIONS = {"rtsp_transport": "tcp", "probesize": "32", "analyzeduration": "0"}
_REORDER_WINDOW = 4  # frames held back to choose the timestamp source and sort by time
_SEEK_GAP_FRAMES = 8  # a keyframe at least this many frames ahead is worth a seek instead of decoding
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FRAME_NUMBER = re.compile(r"%(0?)(\d*)d")
_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe", "gif", "apng", "jpegxl_anim", "webp"})  # + "*_pipe"


class DecodedFrame(NamedTuple):
    """One decoded frame.

    time: seconds from the stream's start (from the frame's timestamp).
    image: uint8 [H, W, 3] RGB, displayed orientation. Often a strided view of FFmpeg's frame buffer
    (rows padded for alignment); ``np.ascontiguousarray`` it where a contiguous array is needed.
    """

    time: float
    image: np.ndarray


class DeferredFrame(NamedTuple):
    """A decoded frame not yet converted: ``image()`` -> uint8 [H, W, 3] RGB, displayed orientation."""

    time: float
    image: Callable[[], np.ndarray]


FrameT = TypeVar("FrameT")


@dataclass(frozen=True)
class Clip:
    """Frames picked at requested times.

    images: uint8 [T, H, W, 3] RGB, in the order the times were requested.
    times: float64 [T], the picked frames' own times (seconds from the stream's start).
    damaged: damaged packets met while decoding the clip.
    """

    images: np.ndarray
    times: np.ndarray
    damaged: int


@dataclass(frozen=True)
class FrameCount:
    """The result of decoding a whole stream without converting it.

    frames: frames decoded; damaged: packets the decoder rejected; first_time / last_time: seconds
    (None without frames); measured_fps: (frames - 1) / (last_time - first_time), None when undefined.
    """

    frames: int
    damaged: int
    first_time: float | None
    last_time: float | None
    measured_fps: float | None


def open_video(
    source: str | os.PathLike[str],
    stream: int | None = None,
    *,
    fps: float | None = None,
    timeout: float | tuple[float, float] | None = None,
    threads: int = 0,
    hwaccel: Any = None,
) -> VideoReader:
    """Open a video for decoding.

    source: a file path; a URL (``rtsp://`` is read over TCP, ``http(s)://``, ...); or a frame-folder
        pattern such as ``folder/%05d.jpg`` (FFmpeg's image2 demuxer; numbering starts at the lowest
        number present, and ``fps`` is required: 12 for Something-Something v1 frames, 24 for Charades).
    stream: index among the container's video streams (default 0, the first).
    fps: frame rate of a frame folder; ignored for files and URLs, whose timestamps give the times.
    timeout: seconds to wait for a network source to open and for each read, or a tuple (open seconds,
        read seconds); None waits forever. A read that times out raises StrgError.
    threads: decoder threads; 0 lets FFmpeg choose (frame and slice threading), 1 decodes on the calling
        thread only (lowest latency, and the choice for loader worker processes on a small machine).
    hwaccel: PyAV's ``av.codec.hwaccel.HWAccel`` to decode on a GPU (see ``strg_deploy.data.gpu_decode``);
        frames come back in system memory as usual.

    Raises StrgError when the source cannot be opened, has no video stream, or lacks the stream asked for.
    """
    return VideoReader(source, stream, fps=fps, timeout=timeout, threads=threads, hwaccel=hwaccel)


def is_frame_pattern(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a frame-folder pattern (``folder/%05d.jpg``): a printf-style frame number in
    its file name, and no file of that literal name."""
    path = os.fspath(source)
    name = os.path.basename(path)
    return (
        not _URL.match(path) and "%" in name and bool(_FRAME_NUMBER.search(name)) and not os.path.exists(path)
    )


def _is_image_demuxer(name: str) -> bool:
    """Whether FFmpeg's demuxer ``name`` reads still images (one picture per file or per packet)."""
    return name in _IMAGE_DEMUXERS or name.endswith("_pipe")


def _reason(error: BaseException) -> str:
    """FFmpeg's reason for an error, on one line."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _first_frame_number(pattern: str) -> int:
    """The lowest frame number present for a printf-style frame pattern such as ``dir/%05d.jpg``."""
    folder, name = os.path.split(pattern)
    match = _FRAME_NUMBER.search(name)
    assert match is not None
    width = int(match.group(2) or 0)
    digits = rf"\d{{{width},}}" if match.group(1) and width else r"\d+"
    regex = re.compile(re.escape(name[: match.start()]) + f"({digits})" + re.escape(name[match.end() :]))
    try:
        entries = os.listdir(folder or ".")
    except OSError as error:
        raise StrgError(f"cannot open video {pattern}: {_reason(error)}") from None
    numbers = [int(m.group(1)) for m in map(regex.fullmatch, entries) if m]
    if not numbers:
        raise StrgError(f"cannot open video {pattern}: no file in {folder or '.'} matches {name}")
    return min(numbers)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
        ok = width > 0 and height > 0 and (width, height) == tuple(size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise StrgError(f"output size must be (width, height), two positive integers; got {size!r}")
    return width, height


def _prepend(first, rest: Iterator):
    """A closable iterator: ``first``, then the items of the generator ``rest``."""
    yield first
    yield from rest


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an image by a display rotation (degrees counter-clockwise), contiguous when turned."""
    quarter_turns = round(rotation / 90) % 4
    if quarter_turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, quarter_turns))


class VideoReader:
    """One video stream of a container, decoded to timestamped RGB frames. Use :func:`open_video`.

    Every read (``frames``, ``read_at``, ``frame_times``, ``count_frames``) starts a new pass over the
    stream; an iterator from an earlier ``frames`` call stops being valid when another read starts.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        stream: int | None = None,
        *,
        fps: float | None = None,
        timeout: float | tuple[float, float] | None = None,
        threads: int = 0,
        hwaccel: Any = None,
    ) -> None:
        self.path = os.fspath(source)
        self.hwaccel = hwaccel
        self._container = None
        options: dict[str, str] = {}
        container_format = None
        if _URL.match(self.path):
            if self.path.lower().startswith(("rtsp://", "rtsps://")):
                options.update(RTSP_OPTIONS)
        elif is_frame_pattern(self.path):
            if fps is None or not fps > 0:
                raise StrgError(
                    f"cannot open video {self.path}: a frame-folder pattern needs its frame rate "
                    "(fps=..., e.g. 12 for Something-Something v1, 24 for Charades)"
                )
            container_format = "image2"
            options["framerate"] = str(Fraction(fps).limit_denominator(1001))
            options["start_number"] = str(_first_frame_number(self.path))
        self._open(container_format, options, timeout)
        if "probesize" in options and not self._coded_size_known():
            self.close()  # the camera's parameters were not in its session description: probe as usual
            options = {k: v for k, v in options.items() if k not in ("probesize", "analyzeduration")}
            self._open(container_format, options, timeout)
        self.open_options = dict(options)
        if container_format is None and _is_image_demuxer(self._container.format.name):
            self._refuse_still_image(options, timeout)
        videos = self._container.streams.video
        if not videos:
            kinds = ", ".join(s.type for s in self._container.streams) or "none"
            self.close()
            raise StrgError(f"cannot open video {self.path}: no video stream (streams: {kinds})")
        try:
            index = 0 if stream is None else operator.index(stream)
        except TypeError:
            index = -1
        if isinstance(stream, bool) or not 0 <= index < len(videos):
            count = len(videos)
            self.close()
            raise StrgError(
                f"video {self.path} has {count} video stream{'s' if count != 1 else ''} "
                f"(indices 0..{count - 1}); there is no video stream {stream!r}"
            )
        self.stream_index = index
        self._stream = videos[index]
        codec_context = self._stream.codec_context
        if codec_context is None:
            self.close()
            raise StrgError(f"cannot open video {self.path}: FFmpeg has no decoder for this video stream")
        if threads != 1:
            codec_context.thread_type = "AUTO"
        codec_context.thread_count = max(int(threads), 0)
        for other in self._container.streams:
            if other is not self._stream:
                other.discard = Discard.all
        self._time_base = float(self._stream.time_base)
        self._origin: int | None = self._stream.start_time
        self._faults = [0, 0]  # non-increasing pts, non-increasing dts (FFmpeg's best-effort rule)
        self._state = "fresh"  # fresh: nothing read; probed: first frames held; dirty: rewind first
        self._held: Iterator[av.VideoFrame] | None = None
        self._first: av.VideoFrame | None = None
        self._pass = 0
        self._damaged: list[tuple[float | None, int | None]] = []
        self._first_error: str | None = None
        self._keyframes: tuple[int, np.ndarray] | None = None
        self._coverage: tuple[int, int] | None = None
        self._reformatter = VideoReformatter()
        # frames held back to settle the timestamp source and sort by time (0: each frame leaves as it is
        # decoded, for live streams whose decoder already gives presentation order: no added latency)
        self.reorder_window = _REORDER_WINDOW

    def _open(self, container_format: str | None, options: dict[str, str], timeout) -> None:
        try:
            self._container = av.open(
                self.path,
                format=container_format,
                options=options,
                timeout=timeout,
                metadata_errors="replace",  # tags that are not UTF-8 (a damaged or Latin-1 header) open too
                **({} if self.hwaccel is None else {"hwaccel": self.hwaccel}),
            )
        except (av.error.FFmpegError, OSError) as error:
            where = "" if self.hwaccel is None else f" for decoding on GPU {self.hwaccel.device_id}"
            raise StrgError(f"cannot open video {self.path}{where}: {_reason(error)}") from None

    def _coded_size_known(self) -> bool:
        videos = self._container.streams.video
        context = videos[0].codec_context if videos else None
        return context is not None and context.width > 0 and context.height > 0

    def _refuse_still_image(self, options: dict[str, str], timeout) -> None:
        """Raise StrgError when the container, opened by an image demuxer, holds fewer than two pictures;
        otherwise reopen it (reading the pictures moved it past its start, and image demuxers seek badly)."""
        demuxer = self._container.format.name
        videos = self._container.streams.video
        pictures = 0
        if videos:
            try:
                for packet in self._container.demux(videos[0]):
                    pictures += packet.size > 0
                    if pictures >= 2:
                        break
            except av.error.FFmpegError:
                pass
        if pictures >= 2:
            self.close()
            self._open(None, options, timeout)
            return
        codec = videos[0].codec_context.name if videos and videos[0].codec_context is not None else "image"
        self.close()
        raise StrgError(
            f"cannot open video {self.path}: it is a still image ({codec}, read by FFmpeg's {demuxer} "
            "demuxer), not a video; a folder of frames is read through a pattern such as "
            "folder/%05d.jpg with its frame rate"
        )

    # ------------------------------------------------------------------ facts

    @property
    def container_format(self) -> str:
        """FFmpeg's demuxer name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2`` or ``matroska,webm``."""
        return self._container.format.name

    @property
    def codec(self) -> str:
        """The codec's name (``h264``, ``hevc``, ``av1``, ``vp8``, ``mpeg4``, ``mjpeg``...)."""
        context = self._stream.codec_context
        return context.codec.canonical_name if context.codec is not None else context.name

    @property
    def pixel_format(self) -> str | None:
        """The decoder's pixel format (``yuv420p``, ``yuvj420p``, ``yuv420p10le``...)."""
        name = self._stream.codec_context.pix_fmt
        if name is None and self._probe() is not None:
            name = self._first.format.name
        return name

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the decoded pictures, before rotation."""
        context = self._stream.codec_context
        if (not context.width or not context.height) and self._probe() is not None:
            return self._first.width, self._first.height
        return context.width, context.height

    @property
    def rotation(self) -> int:
        """Display rotation in degrees counter-clockwise (the display matrix; -90 = a quarter turn
        clockwise). Read from the first frame, which is decoded for it when nothing was read yet."""
        first = self._probe()
        return 0 if first is None else first.rotation

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, after rotation."""
        width, height = self.coded_size
        return (height, width) if round(self.rotation / 90) % 2 else (width, height)

    @property
    def nominal_fps(self) -> float | None:
        """The frame rate the stream declares (average, else FFmpeg's guess); None when unknown."""
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    @property
    def duration(self) -> float | None:
        """Seconds, from the stream when it says, else from the container; None when unknown. For a
        ``truncated`` file: the declared duration times the share of the indexed packets the file holds."""
        seconds = self.declared_duration
        held, indexed = self._index_coverage()
        return seconds * held / indexed if seconds is not None and held < indexed else seconds

    @property
    def declared_duration(self) -> float | None:
        """Seconds the stream (else the container) declares, even when the file is truncated."""
        if self._stream.duration:
            return self._stream.duration * self._time_base
        if self._container.duration:
            return self._container.duration / av.time_base
        return None

    @property
    def truncated(self) -> bool:
        """Whether the file ends before the data its index points to (a local file cut short whose index
        sits at the front, as in an MP4 with its ``moov`` first). False when there is no index to tell."""
        held, indexed = self._index_coverage()
        return held < indexed

    def _index_coverage(self) -> tuple[int, int]:
        """(indexed packets of the stream that lie wholly inside the file, indexed packets); equal when
        the source is not a local file or has no index. Only the last entry is read when it is inside."""
        if self._coverage is None:
            entries = self._stream.index_entries
            count = len(entries)
            size = None
            if count and not _URL.match(self.path):
                with contextlib.suppress(OSError):
                    size = os.path.getsize(self.path)
            last = entries[count - 1] if size is not None else None
            if last is None or (last.pos >= 0 and last.pos + last.size <= size):
                self._coverage = (count, count)
            else:
                known = [e.pos + e.size for e in entries if e.pos >= 0]
                self._coverage = (sum(end <= size for end in known), len(known))
        return self._coverage

    @property
    def declared_frames(self) -> int:
        """Frames the container declares; 0 when unknown (usual for Matroska and WebM)."""
        return self._stream.frames

    @property
    def damaged_frames(self) -> int:
        """Damaged packets (frames lost) in the latest read."""
        return len(self._damaged)

    @property
    def damaged_at(self) -> list[tuple[float | None, int | None]]:
        """(time in seconds or None, byte position or None) of each damaged packet in the latest read.
        With threaded decoding the error surfaces a few packets after the damaged one."""
        return list(self._damaged)

    # ------------------------------------------------------------------ reads

    def frames(self, size: Sequence[int] | None = None) -> Iterator[DecodedFrame]:
        """Decode the whole stream in presentation order.

        size: (width, height) of the output after rotation; None keeps the stream's size.
        Yields DecodedFrame(time, image uint8 [H, W, 3]). Raises StrgError when no frame decodes.
        """
        convert = self._converter(size)
        return self._frames(lambda time, frame: DecodedFrame(time, convert(frame)))

    def deferred_frames(self, size: Sequence[int] | None = None) -> Iterator[DeferredFrame]:
        """:meth:`frames` without the conversion: each frame's RGB image is made only when its
        ``image()`` is called (once, in the caller's thread), so frames nobody samples cost only their
        decode. Converting is most of the cost at model sizes (320x240 H.264 to 149x112: about 0.1 ms
        to decode, 0.5 ms to convert). A DeferredFrame holds the decoded frame (FFmpeg's buffer, full
        source size) until converted or dropped: keep few of them.

        Yields DeferredFrame(time, image: () -> uint8 [H, W, 3]). Raises StrgError when no frame decodes.
        """
        convert = self._converter(size)
        path = self.path

        def deferred(time: float, frame: av.VideoFrame) -> DeferredFrame:
            def image() -> np.ndarray:
                try:
                    return convert(frame)
                except av.error.FFmpegError as error:
                    raise StrgError(f"video {path}: cannot convert a frame: {error}") from None

            return DeferredFrame(time, image)

        return self._frames(deferred)

    def _frames(self, make: Callable[[float, av.VideoFrame], FrameT]) -> Iterator[FrameT]:
        my_pass = self._begin_pass()
        count = 0
        for time, frame in self._timed(self._from_start()):
            count += 1
            yield make(time, frame)
            if self._pass != my_pass:
                raise RuntimeError("another read of this VideoReader started; this frames() iterator ended")
        if count == 0:
            raise self._no_frames()

    def read_at(self, times: Sequence[float] | np.ndarray, size: Sequence[int] | None = None) -> Clip:
        """Pick the frame shown at each requested time, decoding only what is needed.

        The frame shown at t is the last frame whose time is <= t (+ TIME_TOLERANCE): the frame whose
        interval [time, next frame's time) contains t. Times before the first frame give the first frame,
        times past the end give the last. Requested times may come in any order; the clip keeps it.
        The reader seeks to the keyframe before the first wanted time and decodes forward, seeking again
        across gaps that hold a keyframe; the result equals picking from a full ``frames()`` decode.

        times: float [T] seconds from the stream's start. size: (width, height) after rotation or None.
        Returns Clip(images uint8 [T, H, W, 3], times float64 [T], damaged).
        """
        wanted = np.asarray(times, dtype=np.float64)
        if wanted.ndim != 1 or not np.all(np.isfinite(wanted)):
            raise StrgError(f"read_at needs a 1-D sequence of finite times in seconds, got {times!r}")
        convert = self._converter(size)
        self._begin_pass()
        order = np.argsort(wanted, kind="stable")
        picked: list[tuple[float, av.VideoFrame] | None] = [None] * len(wanted)
        if len(wanted):
            self._pick(wanted[order], order, picked)
        if len(wanted) and picked[0] is None:
            raise self._no_frames()
        frame_times = np.array([p[0] for p in picked], dtype=np.float64)
        images = None
        done: dict[int, int] = {}
        for i, (_, frame) in enumerate(picked):
            j = done.get(id(frame))
            image = convert(frame) if j is None else images[j]
            if images is None:
                images = np.empty((len(wanted), *image.shape), dtype=np.uint8)
            elif image.shape != images.shape[1:]:
                raise StrgError(
                    f"video {self.path}: frame size changed inside the clip; read it with size=(w, h)"
                )
            images[i] = image
            done.setdefault(id(frame), i)
        if images is None:
            width, height = _check_size(size) if size is not None else self.size
            images = np.empty((0, height, width, 3), dtype=np.uint8)
        return Clip(images, frame_times, self.damaged_frames)

    def frame_times(self) -> np.ndarray:
        """float64 [N]: every frame's time in seconds, sorted, from the packets' timestamps when they all
        have one (no decoding; a packet that would fail to decode is still listed), else by decoding."""
        self._begin_pass()
        self._rewind(keep_held=False)
        self._state = "dirty"
        stamps = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.pts is None:
                    stamps = None
                    break
                stamps.append(packet.pts)
        except av.error.FFmpegError as error:
            raise StrgError(f"cannot read video {self.path}: {_reason(error)}") from None
        if stamps is None:
            self._begin_pass()
            return np.array([t for t, _ in self._timed(self._from_start())], dtype=np.float64)
        stamps = np.sort(np.array(stamps, dtype=np.int64))
        if self._origin is None and len(stamps):
            self._origin = int(stamps[0])
        return (stamps - (self._origin or 0)) * self._time_base

    def count_frames(self) -> FrameCount:
        """Decode the whole stream (no colour conversion): frames, damaged packets, measured fps."""
        self._begin_pass()
        count, first, last = 0, None, None
        for time, _ in self._timed(self._from_start()):
            if first is None:
                first = time
            last = time
            count += 1
        fps = (count - 1) / (last - first) if count > 1 and last > first else None
        return FrameCount(count, self.damaged_frames, first, last, fps)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the container (idempotent)."""
        if self._container is not None:
            if getattr(self, "_held", None) is not None:
                self._held.close()
                self._held = None
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, stream={getattr(self, 'stream_index', None)})"

    # ------------------------------------------------------------------ internals

    def _begin_pass(self) -> int:
        if self._container is None:
            raise StrgError(f"video {self.path} is closed")
        self._pass += 1
        self._damaged = []
        self._first_error = None
        return self._pass

    def _no_frames(self) -> StrgError:
        if self._first_error is not None:
            return StrgError(
                f"cannot decode video {self.path}: no frame decoded "
                f"({self.damaged_frames} damaged packets; {self._first_error})"
            )
        return StrgError(f"cannot decode video {self.path}: the video stream has no frames")

    def _raw(self) -> Iterator[av.VideoFrame]:
        """Decoded frames from the container's current position; damaged packets are counted."""
        decode = self._stream.codec_context.decode
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = decode(packet)
                except av.error.FFmpegError as error:
                    self._note_damage(packet, error)
                    continue
                yield from frames
        except av.error.FFmpegError as error:
            raise StrgError(f"cannot read video {self.path}: {_reason(error)}") from None

    def _note_damage(self, packet: av.Packet, error: BaseException) -> None:
        stamp = packet.pts if packet.pts is not None else packet.dts
        time = None if stamp is None else (stamp - (self._origin or 0)) * self._time_base
        self._damaged.append((time, packet.pos if packet.pos is not None and packet.pos >= 0 else None))
        if self._first_error is None:
            self._first_error = _reason(error)

    def _probe(self) -> av.VideoFrame | None:
        """The stream's first frame, decoded once; held so that the next read starts with it."""
        if self._first is None and self._container is not None:
            if self._state != "fresh":
                self._pass += 1  # the rewind below ends any iterator still running
            damaged, first_error = self._damaged, self._first_error
            self._rewind(keep_held=True)
            raw = self._raw()
            self._state = "dirty"
            first = next(raw, None)
            if first is not None:
                self._note_first(first)
                self._held = _prepend(first, raw)
                self._state = "probed"
            self._damaged = damaged + self._damaged
            self._first_error = first_error or self._first_error
        return self._first

    def _note_first(self, frame: av.VideoFrame) -> None:
        if self._first is None:
            self._first = frame
        if self._origin is None:
            self._origin = frame.pts if frame.pts is not None else frame.dts

    def _drop_held(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _rewind(self, keep_held: bool) -> None:
        """Go back to the stream's start, keeping probed frames when ``keep_held``."""
        if self._state == "fresh" or (self._state == "probed" and keep_held):
            return
        self._drop_held()
        start = self._stream.start_time
        self._seek(start if start is not None else (self._origin or 0))
        self._state = "fresh"

    def _seek(self, stamp: int) -> None:
        try:
            self._container.seek(int(stamp), stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as error:
            raise StrgError(f"cannot seek in video {self.path}: {_reason(error)}") from None

    def _from_start(self) -> Iterator[av.VideoFrame]:
        self._rewind(keep_held=True)
        self._state = "dirty"
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if self._first is None:
            return self._noting_first(self._raw())
        return self._raw()

    def _noting_first(self, raw: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        for frame in raw:
            self._note_first(frame)
            yield frame
            yield from raw

    def _timed(self, raw: Iterator[av.VideoFrame]) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time in seconds, frame) in presentation order with non-decreasing times.

        A frame's stamp is its pts unless the stream's pts have been non-increasing more often than its
        dts (FFmpeg's best-effort timestamp); a window of _REORDER_WINDOW frames lets that choice settle
        before the first frames leave and is emitted in time order.
        """
        faults = self._faults
        time_base = self._time_base
        fallback_step = 1.0 / (self.nominal_fps or 25.0)
        window: deque[tuple[av.VideoFrame, int | None, int | None]] = deque()
        last_pts = last_dts = None
        last_time = -math.inf

        def stamp(pts: int | None, dts: int | None) -> int | None:
            if pts is not None and (dts is None or faults[0] <= faults[1]):
                return pts
            return dts

        def take() -> tuple[float, av.VideoFrame]:
            nonlocal last_time
            best, best_stamp = 0, None
            if len(window) > 1:
                for k, (_, pts, dts) in enumerate(window):
                    s = stamp(pts, dts)
                    if s is not None and (best_stamp is None or s < best_stamp):
                        best, best_stamp = k, s
            frame, pts, dts = window[best]
            del window[best]
            s = stamp(pts, dts)
            if s is None:
                time = last_time + fallback_step if last_time > -math.inf else 0.0
            else:
                if self._origin is None:
                    self._origin = s
                time = (s - self._origin) * time_base
            if time < last_time:
                time = last_time
            last_time = time
            return time, frame

        for frame in raw:
            pts, dts = frame.pts, frame.dts
            if dts is not None:
                if last_dts is not None and dts <= last_dts:
                    faults[1] += 1
                last_dts = dts
            elif pts is not None:
                last_dts = pts
            if pts is not None:
                if last_pts is not None and pts <= last_pts:
                    faults[0] += 1
                last_pts = pts
            elif dts is not None:
                last_pts = dts
            window.append((frame, pts, dts))
            if len(window) > self.reorder_window:
                yield take()
        while window:
            yield take()

    def _converter(self, size: Sequence[int] | None):
        """frame -> uint8 [H, W, 3] RGB after rotation, at ``size`` (width, height) when given."""
        reformat = self._reformatter.reformat
        if size is None:

            def convert(frame: av.VideoFrame) -> np.ndarray:
                rgb = reformat(frame, format="rgb24", threads=1).to_ndarray()
                rotation = frame.rotation
                return _rotate(rgb, rotation) if rotation else rgb

            return convert
        width, height = _check_size(size)

        def convert_sized(frame: av.VideoFrame) -> np.ndarray:
            rotation = frame.rotation
            if rotation and round(rotation / 90) % 2:
                rgb = reformat(frame, height, width, "rgb24", interpolation=INTERPOLATION, threads=1)
                return _rotate(rgb.to_ndarray(), rotation)
            rgb = reformat(frame, width, height, "rgb24", interpolation=INTERPOLATION, threads=1)
            return _rotate(rgb.to_ndarray(), rotation) if rotation else rgb.to_ndarray()

        return convert_sized

    def _keyframe_times(self) -> np.ndarray | None:
        """Seconds of the keyframes the container's index knows (decode timestamps); None when the
        index says nothing (fewer than two entries, as in Matroska files without cues)."""
        entries = self._stream.index_entries
        if len(entries) < 2:
            return None
        if self._keyframes is None or self._keyframes[0] != len(entries):
            origin = self._origin or 0
            stamps = np.array([e.timestamp for e in entries if e.is_keyframe], dtype=np.int64)
            self._keyframes = (len(entries), np.sort((stamps - origin) * self._time_base))
        return self._keyframes[1]

    def _worth_seeking(self, now: float, target: float) -> bool:
        """Whether the index shows a keyframe far enough after ``now`` and at or before ``target``
        (without an index: whether ``target`` is far enough ahead to try)."""
        keyframes = self._keyframe_times()
        gap = _SEEK_GAP_FRAMES / (self.nominal_fps or 25.0)
        if keyframes is None:
            return target > now + gap
        k = np.searchsorted(keyframes, target + TIME_TOLERANCE, side="right")
        return k > 0 and keyframes[k - 1] > now + gap

    def _decode_from(self, target: float) -> Iterator[tuple[float, av.VideoFrame]]:
        """Timed frames from a keyframe at or before ``target`` seconds (or from the start)."""
        if self._origin is None and self._probe() is None:
            return self._timed(self._from_start())  # no frame at all: the caller reports it
        back = 0.0
        while True:
            start = target - back
            if start <= 0.0 or not self._worth_seeking(0.0, start):
                return self._timed(self._from_start())
            self._drop_held()
            self._seek(self._origin + round(start / self._time_base))
            self._state = "dirty"
            timed = self._timed(self._raw())
            first = next(timed, None)
            if first is not None and first[0] <= target + TIME_TOLERANCE:
                return _prepend(first, timed)
            timed.close()
            back = max(1.0, 2.0 * back)

    def _pick(self, wanted: np.ndarray, order: np.ndarray, picked: list) -> None:
        """Fill picked[order[i]] with the (time, frame) shown at wanted[i] (wanted sorted ascending)."""
        n = len(wanted)
        i = 0
        timed = self._decode_from(wanted[0])
        previous = None
        while i < n:
            item = next(timed, None)
            if item is None:
                break
            time = item[0]
            advanced = False
            while i < n and wanted[i] + TIME_TOLERANCE < time:
                picked[order[i]] = previous if previous is not None else item
                i += 1
                advanced = True
            previous = item
            if advanced and i < n and self._worth_seeking(time, wanted[i]):
                timed.close()
                timed = self._decode_from(wanted[i])
                previous = None
        timed.close()
        while i < n and previous is not None:
            picked[order[i]] = previous
            i += 1
