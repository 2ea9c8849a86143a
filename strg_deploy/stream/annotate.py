"""An annotated video per stream: the model's own frames with the top labels and proposal boxes drawn.

    video = AnnotatedVideo(Path("out"), "cam1", fps=12)
    for result in results_of_cam1:               # WindowResult, in sequence order
        video.write(result)
    video.close()                                # -> out/cam1.mp4

What is drawn: the frames the model saw (the window's clip, uint8 [3, T, S, S], scaled up ``scale``
times with nearest-neighbour so model pixels stay visible), each frame once. The T frames of a window
are taken to lie evenly over [start, end] media seconds (t_i = start + i * (end - start) / (T - 1)); a
window contributes its frames later than the previous window's end, so overlapping windows add only
their new frames and the first window all of them. On each frame: the window's ``top_k`` labels and
probabilities (top left, on a dark band) and the ``boxes`` highest-scoring valid proposals of the feature
frame it belongs to (frame i of T -> feature frame i * T' // T), mapped from source pixels back to
model pixels by inverting the window's transform; the best box is red, then green, blue, yellow.

Timing: a frame is stamped at its media time on a 1/fps grid (never twice the same stamp), so the video
plays at the stream's pace, gaps of dropped windows included. Encoding: PyAV, H.264 (``libx264``) where
the PyAV build has it, else MPEG-4 Part 2 (``mpeg4``), yuv420p in MP4. The file is written under a
temporary name in the folder and renamed to ``<folder>/<stream>.mp4`` by :meth:`AnnotatedVideo.close`;
a stream without any frame leaves no file. Stream names become file names with any character other
than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path, writable_folder
from strg_deploy.stream.types import Transform, WindowResult

__all__ = ["BOX_COLOURS", "AnnotatedVideo", "video_codec", "video_name"]

BOX_COLOURS = ((255, 40, 40), (40, 220, 40), (40, 120, 255), (255, 210, 0))
"""RGB of the boxes by rank: the highest-scoring proposal first."""

_EPSILON = 1e-6  # seconds: a frame this close to the previous window's end was already shown


def video_codec() -> str:
    """The encoder used: ``libx264`` when this PyAV build has it, else ``mpeg4``."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def video_name(stream: str) -> str:
    """The file name of ``stream``'s annotated video (``<stream>.mp4``, made safe for file systems)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stream).lstrip(".") or "stream"
    return f"{safe}.mp4"


def _to_model(boxes: np.ndarray, transform: Transform) -> np.ndarray:
    """boxes float [..., 4] in source pixels -> model pixels (the inverse of ``transform.to_source``)."""
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[..., 0::2] = (out[..., 0::2] - transform.bx) / transform.ax
    out[..., 1::2] = (out[..., 1::2] - transform.by) / transform.ay
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


class AnnotatedVideo:
    """The annotated video of one stream, ``<folder>/<stream>.mp4`` (see the module docstring).

    folder: where the video goes (created). stream: the stream's name. fps: the stamp grid (frames per
    second; the stream's own rate, or the model's sampling rate). classes: the model's labels (C, those
    of ``WindowResult.probabilities``). scale: 1..4, how many video pixels per
    model pixel. top_k: labels drawn. boxes: proposals drawn per frame. overwrite: replace an existing
    video (otherwise StrgError naming it)."""

    def __init__(
        self,
        folder: Path,
        stream: str,
        fps: float,
        *,
        classes: Sequence[str],
        scale: int = 2,
        top_k: int = 3,
        boxes: int = 3,
        overwrite: bool = False,
    ) -> None:
        if not fps > 0:
            raise StrgError(f"the annotated video's frame rate must be positive, got {fps}")
        if scale not in (1, 2, 3, 4):
            raise StrgError(f"the annotated video's scale must be 1 to 4, got {scale}")
        self.folder = writable_folder(Path(folder))
        self.path = self.folder / video_name(stream)
        if self.path.exists() and not overwrite:
            raise StrgError(f"{self.path} exists; pass --overwrite to replace it")
        self.stream = stream
        self.rate = Fraction(fps).limit_denominator(1001)
        self.scale, self.top_k, self.boxes = scale, top_k, boxes
        self.classes = list(classes)
        self.frames = 0
        self._font = _font(8 * scale)
        self._previous_end = -np.inf
        self._last_pts = -1
        self._exit = contextlib.ExitStack()
        self._container = None
        self._video = None

    def write(self, result: WindowResult) -> int:
        """Draw and encode the new frames of ``result``'s window; return how many were added."""
        window = result.window
        clip = np.asarray(window.clip)  # uint8 [3, T, S, S]
        count = clip.shape[1]
        if count > 1:
            times = window.start + np.arange(count) * (window.end - window.start) / (count - 1)
        else:
            times = np.array([window.end])
        new = np.flatnonzero(times > self._previous_end + _EPSILON)
        self._previous_end = max(self._previous_end, float(window.end))
        if new.size == 0:
            return 0
        probabilities = np.asarray(result.probabilities, dtype=np.float64).reshape(-1)
        order = np.argsort(-np.nan_to_num(probabilities, nan=-np.inf), kind="stable")[: self.top_k]
        lines = [f"{self.classes[i]} {probabilities[i]:.2f}" for i in order]
        boxes = _to_model(result.boxes, window.transform) * self.scale  # [T', N, 4] video pixels
        scores = np.asarray(result.scores, dtype=np.float64)
        mask = np.asarray(result.mask, dtype=bool)
        feature_frames = boxes.shape[0]
        for i in new:
            t_feature = min(int(i) * feature_frames // count, feature_frames - 1) if feature_frames else -1
            image = self._draw(clip[:, i].transpose(1, 2, 0), lines, boxes, scores, mask, t_feature)
            self._encode(image, float(times[i]))
        return int(new.size)

    def _draw(self, rgb, lines, boxes, scores, mask, t) -> np.ndarray:
        """rgb uint8 [S, S, 3] -> the annotated frame, uint8 [H, W, 3] with H, W = S * scale (made even)."""
        image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        if self.scale != 1:
            image = image.resize((image.width * self.scale, image.height * self.scale), Image.NEAREST)
        draw = ImageDraw.Draw(image)
        if t >= 0 and self.boxes:
            valid = np.flatnonzero(mask[t])
            best = valid[np.argsort(-scores[t, valid], kind="stable")][: self.boxes]
            for rank, n in reversed(list(enumerate(best))):  # the best box drawn last, on top
                x1, y1, x2, y2 = (float(v) for v in boxes[t, n])
                if x2 > x1 and y2 > y1:
                    draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOURS[rank % 4], width=self.scale)
        if lines:
            text = "\n".join(lines)
            left, top, right, bottom = draw.multiline_textbbox((2, 1), text, font=self._font)
            draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
            draw.multiline_text((2, 1), text, fill=(255, 255, 255), font=self._font)
        array = np.asarray(image)
        height, width = array.shape[0] + array.shape[0] % 2, array.shape[1] + array.shape[1] % 2
        if (height, width) != array.shape[:2]:  # yuv420p needs even sizes
            array = np.pad(array, ((0, height - array.shape[0]), (0, width - array.shape[1]), (0, 0)))
        return array

    def _open(self, width: int, height: int) -> None:
        tmp = self._exit.enter_context(atomic_path(self.path))
        try:
            self._container = av.open(str(tmp), "w", format="mp4")
            codec = video_codec()
            self._video = self._container.add_stream(codec, rate=self.rate)
            self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                self._video.options = {"preset": "veryfast", "crf": "20"}
            else:
                self._video.bit_rate = 4 * width * height * int(self.rate + 1)
        except (av.error.FFmpegError, OSError) as err:
            if self._container is not None:
                with contextlib.suppress(Exception):
                    self._container.close()
                self._container = None
            self._discard(err)
            raise StrgError(f"cannot write {self.path}: {err}") from None

    def _encode(self, image: np.ndarray, time: float) -> None:
        if self._container is None:
            self._open(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != (self._video.width, self._video.height):
            raise StrgError(f"stream {self.stream}: the window size changed within the stream")
        pts = max(self._last_pts + 1, round(time * self.rate))
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, 1 / self.rate
        try:
            for packet in self._video.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as err:
            raise StrgError(f"cannot write {self.path}: {err}") from None
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and move the video to ``<folder>/<stream>.mp4``. Idempotent."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._video.encode():
                container.mux(packet)
            container.close()
        except (av.error.FFmpegError, OSError) as err:
            self._discard(err)
            raise StrgError(f"cannot write {self.path}: {err}") from None
        self._exit.close()  # renames the temporary file

    def _discard(self, error: BaseException) -> None:
        """Remove the temporary file (atomic_path's failure path) after ``error``."""
        with contextlib.suppress(Exception):
            self._exit.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> AnnotatedVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
