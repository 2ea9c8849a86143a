"""Per-stream geometry: how a source frame becomes the model's S x S image, and how boxes map back.

    plan = Geometry(112).plan(width, height)                 # source size after rotation
    for frame in reader.frames(size=plan.decode_size):       # FFmpeg's scaler resizes the whole frame
        image = plan.apply(frame.image)                      # uint8 [112, 112, 3]: numpy crops or pads
        boxes_in_source = plan.transform.to_source(boxes)    # model pixels -> source pixels

Three geometries:

- ``crop`` (default): the short side scaled to S, then the centred S x S crop: the test-time view of
  :func:`strg_deploy.data.clips.video_clip` (same scaled size, same crop offsets).
- ``letterbox``: the long side scaled to S, the frame centred on an S x S canvas of ``pad_value``.
- ``roi``: a region (x, y, width, height) of the source, clamped to the frame; its short side is scaled
  to S and the centred S x S crop of the region is taken (the whole frame is scaled by the same factor).

Coordinates are continuous (pixel edges: a frame of width W spans x in [0, W]), as the model's boxes are.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from strg_deploy.data.cache import short_side_size
from strg_deploy.data.transforms import crop
from strg_deploy.errors import StrgError, shape_error
from strg_deploy.stream.types import Transform

GEOMETRIES = ("crop", "letterbox", "roi")
MAX_DECODE_PIXELS = 1 << 25  # a region so small that the whole frame would exceed this (8K) is refused


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one source size becomes the model's image.

    decode_size: (width, height) the decoder scales the whole (rotated) source frame to.
    transform: model pixels -> source pixels.
    size: S. offset: (left, top) of the S x S crop in the decoded frame (crop, roi), or of the decoded
    frame on the S x S canvas (letterbox). pad_value: the canvas value (letterbox), None when cropping.
    """

    decode_size: tuple[int, int]
    transform: Transform
    size: int
    offset: tuple[int, int]
    pad_value: int | None = None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8 [decode_h, decode_w, 3] -> contiguous uint8 [S, S, 3]."""
        width, height = self.decode_size
        if not isinstance(image, np.ndarray) or image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise shape_error("decoded frame (uint8)", f"[{height}, {width}, 3]", np.shape(image))
        left, top = self.offset
        if self.pad_value is None:
            images, _, _ = crop(image[None], top, left, self.size, self.size)
            return np.ascontiguousarray(images[0])
        canvas = np.full((self.size, self.size, 3), self.pad_value, dtype=np.uint8)
        canvas[top : top + height, left : left + width] = image
        return canvas


def _integer(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StrgError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise StrgError(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``"x,y,width,height"`` (source pixels) -> (x, y, width, height); StrgError when malformed."""
    parts = str(text).replace(" ", "").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise StrgError(f"roi must be x,y,width,height (four integers in source pixels), got {text!r}")
    return values  # type: ignore[return-value]


class Geometry:
    """A stream's geometry (module docstring): ``size`` S, ``mode`` in GEOMETRIES, ``roi`` (x, y, width,
    height) in source pixels (mode ``roi`` only), ``pad_value`` 0..255 (letterbox)."""

    def __init__(
        self,
        size: int,
        mode: str = "crop",
        roi: Sequence[int] | None = None,
        pad_value: int = 0,
    ):
        self.size = _integer("model image size", size, 1)
        if mode not in GEOMETRIES:
            raise StrgError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {mode!r}")
        self.mode = mode
        self.pad_value = _integer("pad value", pad_value, 0, 255)
        if (mode == "roi") != (roi is not None):
            raise StrgError(
                "a region of interest (roi x,y,width,height) goes with geometry roi, and only there"
            )
        self.roi = None
        if roi is not None:
            if isinstance(roi, str) or not isinstance(roi, Sequence | np.ndarray) or len(roi) != 4:
                raise StrgError(f"roi must be (x, y, width, height), four integers, got {roi!r}")
            x, y, w, h = roi
            self.roi = (
                _integer("roi x", x, -(1 << 30)),
                _integer("roi y", y, -(1 << 30)),
                _integer("roi width", w, 1),
                _integer("roi height", h, 1),
            )

    def __repr__(self) -> str:
        extra = f", roi={self.roi}" if self.roi else ""
        return f"Geometry({self.size}, {self.mode!r}{extra})"

    def plan(self, width: int, height: int) -> Plan:
        """The plan for source frames of ``width`` x ``height`` (after rotation)."""
        width = _integer("source width", width, 1)
        height = _integer("source height", height, 1)
        if self.mode == "letterbox":
            return self._letterbox(width, height)
        if self.mode == "roi":
            return self._roi(width, height)
        decoded = short_side_size(width, height, self.size)
        # the offsets of data.transforms.center_crop, as video_clip takes them
        offset = ((decoded[0] - self.size) // 2, (decoded[1] - self.size) // 2)
        return self._cropping(width, height, decoded, offset)

    def _cropping(self, width: int, height: int, decoded: tuple[int, int], offset: tuple[int, int]) -> Plan:
        ax, ay = width / decoded[0], height / decoded[1]
        transform = Transform(ax, offset[0] * ax, ay, offset[1] * ay)
        return Plan(decoded, transform, self.size, offset)

    def _letterbox(self, width: int, height: int) -> Plan:
        long_side = max(width, height)
        decoded = (
            max(1, round(width * self.size / long_side)),
            max(1, round(height * self.size / long_side)),
        )
        left, top = (self.size - decoded[0]) // 2, (self.size - decoded[1]) // 2
        ax, ay = width / decoded[0], height / decoded[1]
        transform = Transform(ax, -left * ax, ay, -top * ay)
        return Plan(decoded, transform, self.size, (left, top), self.pad_value)

    def _roi(self, width: int, height: int) -> Plan:
        x, y, w, h = self.roi
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            raise StrgError(f"roi {self.roi} (x, y, width, height) lies outside the {width}x{height} frame")
        short = min(x1 - x0, y1 - y0)
        decoded = (round(width * self.size / short), round(height * self.size / short))
        if decoded[0] * decoded[1] > MAX_DECODE_PIXELS:
            least = math.ceil(self.size * math.sqrt(width * height / MAX_DECODE_PIXELS))
            raise StrgError(
                f"roi {self.roi} is too small for a {self.size}-pixel model on a {width}x{height} frame: "
                f"give it at least {least} pixels on its short side"
            )
        # centre of the clamped region in decoded pixels, exactly: (2 * x0 + w) / 2 * decoded / width
        left = ((x0 + x1) * decoded[0] - self.size * width) // (2 * width)
        top = ((y0 + y1) * decoded[1] - self.size * height) // (2 * height)
        left = min(max(left, 0), decoded[0] - self.size)
        top = min(max(top, 0), decoded[1] - self.size)
        return self._cropping(width, height, decoded, (left, top))
