"""Clip transforms in numpy: resize, crops, flips, normalisation, with boxes kept in step.

Layouts:

- clip: uint8 (or float32) [T, H, W, 3], RGB, as decoders give it. Resizing returns uint8 (rounded)
  for uint8 input and float32 otherwise; the functional crops and flips return views of their input
  (a flip's view has a negative stride); the pipelines return contiguous arrays.
- boxes: float32 [..., 4] (x1, y1, x2, y2) in continuous pixel coordinates of the clip's frames (pixel
  (i, j) covers [j, j + 1) x [i, i + 1)), usually [T, K, 4]; or None. Every frame of a clip goes through
  the same geometry, so the leading axes of ``boxes`` need not match T.
- mask: bool of the shape ``boxes.shape[:-1]``, True where a box is valid; None means all valid.

Every geometric op takes ``boxes=None, mask=None`` and returns ``(clip, boxes, mask)`` (boxes and mask
None when no boxes were given). Boxes go through exactly the geometry of their frames: resizes scale
them, crops shift them and clip them to the crop (a box with no area left inside the crop becomes
invalid), flips mirror them (x1' = W - x2, x2' = W - x1). Invalid boxes come out as zeros.

Resizing is separable and vectorised over frames: each output pixel is a weighted mean of input pixels
(half-pixel centres, as ``align_corners=False``) under a triangle filter, which is bilinear when
enlarging; when shrinking with ``antialias=True`` (the default) the triangle widens with the scale, as in
PIL and torch's ``antialias=True``, so that fine texture does not alias. ``interpolation="nearest"``
gathers pixels instead (fastest). A resize followed by a crop is fused by the eval transform: only the
kept output pixels are computed.

:class:`TrainTransform` (random resized crop, optional flip) and :class:`EvalTransform` (short-side
resize, then a centre or a left/right crop) are the pipelines datasets use. Normalisation and the
C x T x H x W layout come last (:func:`normalise`, :func:`to_cthw`); the exported networks normalise
uint8 input themselves, so a runtime needs only the geometric part.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from strg_deploy.errors import StrgError, shape_error

INTERPOLATIONS = ("bilinear", "nearest")
CROP_NAMES = ("left", "center", "right")
_BLOCK = 16  # output rows (columns) per matrix product: the filter band keeps each product small

Boxes = tuple[np.ndarray, np.ndarray] | tuple[None, None]


# ---------------------------------------------------------------------------------------------------
# checks


def _check_clip(clip: np.ndarray) -> np.ndarray:
    if not isinstance(clip, np.ndarray):
        raise StrgError(f"clip must be a numpy array [T, H, W, 3], got {type(clip).__name__}")
    if clip.ndim != 4 or clip.shape[-1] != 3 or 0 in clip.shape:
        raise shape_error("clip", "[T, H, W, 3] with T, H, W > 0", clip.shape)
    return clip


def _check_boxes(boxes: np.ndarray | None, mask: np.ndarray | None) -> Boxes:
    """Boxes as float32 [..., 4] and mask as bool [...] (invalid boxes zeroed); (None, None) if no boxes."""
    if boxes is None:
        if mask is not None:
            raise StrgError("a box mask was given without boxes")
        return None, None
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise shape_error("boxes", "[..., 4] (x1, y1, x2, y2)", boxes.shape)
    if mask is None:
        mask = np.ones(boxes.shape[:-1], dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != boxes.shape[:-1]:
            raise shape_error("box mask", f"{list(boxes.shape[:-1])} (the boxes' leading axes)", mask.shape)
        mask = mask.astype(bool)
    return np.where(mask[..., None], boxes, np.float32(0)), mask


def _pair(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    """(height, width) from an int (square) or a (height, width) pair; both >= 1."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise StrgError(f"{what} must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise StrgError(f"{what} must be >= 1, got {size!r}")
    return pair


def _check_rng(rng: np.random.Generator) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise StrgError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise StrgError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return interpolation


def _check_crop_fits(clip: np.ndarray, height: int, width: int) -> None:
    if height > clip.shape[1] or width > clip.shape[2]:
        raise StrgError(
            f"crop of {height} x {width} (height x width) does not fit in frames of "
            f"{clip.shape[1]} x {clip.shape[2]}: resize first"
        )


# ---------------------------------------------------------------------------------------------------
# box geometry


def _map_boxes(
    boxes: np.ndarray | None,
    mask: np.ndarray | None,
    offset: tuple[float, float],
    scale: tuple[float, float],
    out_size: tuple[int, int] | None,
) -> Boxes:
    """Boxes of pixel region (top, left) = ``offset`` scaled by (sy, sx) = ``scale``; with ``out_size``
    (height, width) they are clipped to it and those left with no area become invalid."""
    if boxes is None:
        return None, None
    top, left = offset
    sy, sx = scale
    shift = np.array([left, top, left, top], dtype=np.float32)
    factor = np.array([sx, sy, sx, sy], dtype=np.float32)
    out = (boxes - shift) * factor
    if out_size is not None:
        height, width = out_size
        out = np.clip(out, 0.0, np.array([width, height, width, height], dtype=np.float32))
        mask = mask & (out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])
    return np.where(mask[..., None], out, np.float32(0)).astype(np.float32), mask


# ---------------------------------------------------------------------------------------------------
# resampling core


def _axis_weights(in_len: int, out_len: int, start: int, count: int, antialias: bool) -> np.ndarray:
    """Filter weights float32 [count, in_len] of outputs start .. start + count - 1 of an in_len -> out_len
    resize (half-pixel centres; triangle filter, widened by the scale when shrinking with antialias)."""
    scale = in_len / out_len
    support = max(scale, 1.0) if antialias else 1.0
    centre = (np.arange(start, start + count, dtype=np.float64) + 0.5) * scale
    source = np.arange(in_len, dtype=np.float64) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(source[None, :] - centre[:, None]) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _axis_nearest(in_len: int, out_len: int, start: int, count: int) -> np.ndarray:
    """Nearest-neighbour source index int64 [count] of outputs start .. start + count - 1."""
    centre = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (in_len / out_len)
    return np.minimum(np.floor(centre).astype(np.int64), in_len - 1)


def _support(weights: np.ndarray) -> tuple[int, int]:
    """The range [a, b) of input positions with a nonzero weight."""
    used = np.flatnonzero(weights.any(axis=0))
    return int(used[0]), int(used[-1]) + 1


def _filter_rows(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """x float32 [B, C, H, W], weights [R, H] -> [B, C, R, W], in bands of rows."""
    out = np.empty(x.shape[:2] + (weights.shape[0],) + x.shape[3:], dtype=np.float32)
    for s in range(0, weights.shape[0], _BLOCK):
        block = weights[s : s + _BLOCK]
        a, b = _support(block)
        np.matmul(block[:, a:b], x[:, :, a:b], out=out[:, :, s : s + _BLOCK])
    return out


def _filter_cols(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """x float32 [B, C, H, W], weights [S, W] -> [B, C, H, S], in bands of columns."""
    out = np.empty(x.shape[:3] + (weights.shape[0],), dtype=np.float32)
    for s in range(0, weights.shape[0], _BLOCK):
        block = weights[s : s + _BLOCK]
        a, b = _support(block)
        np.matmul(x[..., a:b], np.ascontiguousarray(block[:, a:b].T), out=out[..., s : s + _BLOCK])
    return out


def _out_dtype(frames: np.ndarray) -> np.ndarray:
    """uint8 stays uint8; anything else becomes float32."""
    return frames if frames.dtype in (np.uint8, np.float32) else frames.astype(np.float32)


def _resample(
    clip: np.ndarray,
    window: tuple[int, int, int, int],
    resized: tuple[int, int],
    keep: tuple[int, int, int, int],
    antialias: bool,
    interpolation: str,
) -> np.ndarray:
    """Resize the pixel region ``window`` = (top, left, height, width) of ``clip`` to ``resized`` =
    (height, width) and return only the output pixels of ``keep`` = (top, left, height, width)."""
    top, left, height, width = window
    out_h, out_w = resized
    k_top, k_left, k_h, k_w = keep
    if interpolation == "nearest":
        rows = top + _axis_nearest(height, out_h, k_top, k_h)
        cols = left + _axis_nearest(width, out_w, k_left, k_w)
        return _out_dtype(np.take(np.take(clip, rows, axis=1), cols, axis=2))
    if (height, width) == (out_h, out_w):
        # scale 1: the weights are the identity; only the crop remains
        return _out_dtype(clip[:, top + k_top : top + k_top + k_h, left + k_left : left + k_left + k_w])
    wy = _axis_weights(height, out_h, k_top, k_h, antialias)
    wx = _axis_weights(width, out_w, k_left, k_w, antialias)
    ya, yb = _support(wy)
    xa, xb = _support(wx)
    region = clip[:, top + ya : top + yb, left + xa : left + xb]
    wy, wx = wy[:, ya:yb], wx[:, xa:xb]
    x = np.empty((region.shape[0], 3) + region.shape[1:3], dtype=np.float32)
    np.copyto(x, region.transpose(0, 3, 1, 2), casting="unsafe")
    # filter first along the axis that leaves the smaller intermediate result
    if k_h * x.shape[3] <= x.shape[2] * k_w:
        x = _filter_cols(_filter_rows(x, wy), wx)
    else:
        x = _filter_rows(_filter_cols(x, wx), wy)
    out = np.empty((x.shape[0], k_h, k_w, 3), dtype=np.uint8 if clip.dtype == np.uint8 else np.float32)
    if out.dtype == np.uint8:
        x += 0.5
        np.clip(x, 0.0, 255.0, out=x)
    np.copyto(out, x.transpose(0, 2, 3, 1), casting="unsafe")
    return out


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with min(height, width) == size and the aspect kept (long side rounded)."""
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


# ---------------------------------------------------------------------------------------------------
# functional ops


def resize(
    clip: np.ndarray,
    size: int | Sequence[int],
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resize every frame to ``size`` (int: square, or (height, width)).

    clip [T, H, W, 3] -> [T, h, w, 3] (same dtype); boxes scale by (w / W, h / H).
    """
    clip = _check_clip(clip)
    boxes, mask = _check_boxes(boxes, mask)
    out_h, out_w = _pair(size)
    _, height, width, _ = clip.shape
    frames = _resample(
        clip,
        (0, 0, height, width),
        (out_h, out_w),
        (0, 0, out_h, out_w),
        antialias,
        _check_interpolation(interpolation),
    )
    boxes, mask = _map_boxes(boxes, mask, (0.0, 0.0), (out_h / height, out_w / width), None)
    return frames, boxes, mask


def resize_short_side(
    clip: np.ndarray,
    size: int,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resize so that the short side is ``size``, keeping the aspect (:func:`short_side_shape`).

    clip [T, H, W, 3] -> [T, h, w, 3] with min(h, w) == size; boxes scale accordingly.
    """
    clip = _check_clip(clip)
    height, width = short_side_shape(clip.shape[1], clip.shape[2], _pair(size)[0])
    return resize(clip, (height, width), boxes, mask, antialias=antialias, interpolation=interpolation)


def crop(
    clip: np.ndarray,
    top: int,
    left: int,
    height: int,
    width: int,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The pixel region (top, left, height, width) of every frame (a view).

    clip [T, H, W, 3] -> [T, height, width, 3]; boxes shift by (-left, -top) and are clipped to the crop;
    boxes left with no area are marked invalid.
    """
    clip = _check_clip(clip)
    boxes, mask = _check_boxes(boxes, mask)
    if top < 0 or left < 0 or height < 1 or width < 1:
        raise StrgError(f"bad crop region: top {top}, left {left}, height {height}, width {width}")
    if top + height > clip.shape[1] or left + width > clip.shape[2]:
        raise StrgError(
            f"crop region (top {top}, left {left}, height {height}, width {width}) lies outside frames "
            f"of {clip.shape[1]} x {clip.shape[2]}"
        )
    frames = clip[:, top : top + height, left : left + width]
    boxes, mask = _map_boxes(boxes, mask, (top, left), (1.0, 1.0), (height, width))
    return frames, boxes, mask


def center_crop(
    clip: np.ndarray,
    size: int | Sequence[int],
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The centred ``size`` crop (int: square, or (height, width)) at (top, left) =
    ``((H - h) // 2, (W - w) // 2)``.

    clip [T, H, W, 3] -> [T, h, w, 3] (a view); boxes as in :func:`crop`.
    """
    clip = _check_clip(clip)
    height, width = _pair(size)
    _check_crop_fits(clip, height, width)
    top, left = (clip.shape[1] - height) // 2, (clip.shape[2] - width) // 2
    return crop(clip, top, left, height, width, boxes, mask)


def random_crop(
    clip: np.ndarray,
    size: int | Sequence[int],
    rng: np.random.Generator,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A ``size`` crop at a uniformly random place, the same for every frame. Boxes as in :func:`crop`."""
    clip = _check_clip(clip)
    height, width = _pair(size)
    _check_crop_fits(clip, height, width)
    rng = _check_rng(rng)
    top = int(rng.integers(0, clip.shape[1] - height + 1))
    left = int(rng.integers(0, clip.shape[2] - width + 1))
    return crop(clip, top, left, height, width, boxes, mask)


def spatial_crop_offsets(height: int, width: int, size: int, which: str) -> tuple[int, int]:
    """(top, left) of a ``size`` x ``size`` crop of the three-crop test views.

    Along the LONG side (width when width >= height): ``"left"`` at the start (left, or top for portrait
    frames), ``"center"`` in the middle, ``"right"`` at the end (right, or bottom); centred along the
    short side. ``"center"`` is :func:`center_crop`'s place (SlowFast's ``uniform_crop`` convention).
    """
    if which not in CROP_NAMES:
        raise StrgError(f"spatial crop must be one of {', '.join(CROP_NAMES)}, got {which!r}")
    top, left = (height - size) // 2, (width - size) // 2
    end = {"left": 0, "center": None, "right": 1}[which]
    if end is not None:
        if height > width:
            top = 0 if end == 0 else height - size
        else:
            left = 0 if end == 0 else width - size
    return top, left


def spatial_crop(
    clip: np.ndarray,
    size: int,
    which: str,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One of the three test-time crops (``"left"``, ``"center"``, ``"right"``; :func:`spatial_crop_offsets`).

    clip [T, H, W, 3] -> [T, size, size, 3] (a view); boxes as in :func:`crop`.
    """
    clip = _check_clip(clip)
    size = _pair(size)[0]
    _check_crop_fits(clip, size, size)
    top, left = spatial_crop_offsets(clip.shape[1], clip.shape[2], size, which)
    return crop(clip, top, left, size, size, boxes, mask)


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's ``RandomResizedCrop.get_params``.

    Up to 10 tries draw an area fraction uniformly from ``scale`` and an aspect ratio (w / h)
    log-uniformly from ``ratio``; the first that fits is placed uniformly at random. If none fits, the
    centred crop of the whole frame clamped to ``ratio`` is used.
    """
    rng = _check_rng(rng)
    lo, hi = (float(v) for v in scale)
    r_lo, r_hi = (float(v) for v in ratio)
    if not 0 < lo <= hi or not 0 < r_lo <= r_hi:
        raise StrgError(f"scale and ratio must be increasing positive pairs, got {scale}, {ratio}")
    area = height * width
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    for _ in range(10):
        target = area * rng.uniform(lo, hi)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < r_lo:
        w, h = width, int(round(width / r_lo))
    elif in_ratio > r_hi:
        h, w = height, int(round(height * r_hi))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    clip: np.ndarray,
    region: tuple[int, int, int, int],
    size: int | Sequence[int],
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The pixel region (top, left, h, w) of every frame, resized to ``size`` (only that region is read).

    clip [T, H, W, 3] -> [T, size_h, size_w, 3]; boxes shift, clip to the region and scale; boxes left
    with no area are marked invalid.
    """
    clip = _check_clip(clip)
    boxes, mask = _check_boxes(boxes, mask)
    top, left, height, width = (int(v) for v in region)
    if (
        top < 0
        or left < 0
        or height < 1
        or width < 1
        or top + height > clip.shape[1]
        or (left + width > clip.shape[2])
    ):
        raise StrgError(f"crop region {region} lies outside frames of {clip.shape[1]} x {clip.shape[2]}")
    out_h, out_w = _pair(size)
    frames = _resample(
        clip,
        (top, left, height, width),
        (out_h, out_w),
        (0, 0, out_h, out_w),
        antialias,
        _check_interpolation(interpolation),
    )
    boxes, mask = _map_boxes(boxes, mask, (top, left), (out_h / height, out_w / width), (out_h, out_w))
    return frames, boxes, mask


def random_resized_crop(
    clip: np.ndarray,
    size: int | Sequence[int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One random resized crop (:func:`random_resized_crop_params`) for the whole clip, resized to ``size``.

    clip [T, H, W, 3] -> [T, size, size, 3]; boxes as in :func:`resized_crop`.
    """
    clip = _check_clip(clip)
    region = random_resized_crop_params(clip.shape[1], clip.shape[2], rng, scale, ratio)
    return resized_crop(clip, region, size, boxes, mask, antialias=antialias, interpolation=interpolation)


def horizontal_flip(
    clip: np.ndarray,
    boxes: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Mirror every frame left-right (a view); boxes mirror too: x1' = W - x2, x2' = W - x1."""
    clip = _check_clip(clip)
    boxes, mask = _check_boxes(boxes, mask)
    if boxes is not None:
        width = np.float32(clip.shape[2])
        boxes = np.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], -1)
        boxes = np.where(mask[..., None], boxes, np.float32(0)).astype(np.float32)
    return clip[:, :, ::-1], boxes, mask


def normalise(
    clip: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    channel_axis: int = -1,
) -> np.ndarray:
    """(clip / 255 - mean) / std as float32, for uint8 clips; float clips are taken as already in [0, 1].

    mean, std: per channel, on the [0, 1] scale (e.g. the config's KINETICS_MEAN / KINETICS_STD).
    channel_axis: the axis of the 3 channels (-1 for [T, H, W, 3], 0 for [3, T, H, W]).
    """
    clip = np.asarray(clip)
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    channels = clip.shape[channel_axis] if clip.ndim else 0
    if mean_arr.shape != (channels,) or std_arr.shape != (channels,):
        raise StrgError(
            f"mean and std need one value per channel ({channels} on axis {channel_axis}), "
            f"got {list(mean_arr.shape)} and {list(std_arr.shape)}"
        )
    if np.any(std_arr <= 0):
        raise StrgError(f"std must be positive, got {list(std_arr)}")
    shape = [1] * clip.ndim
    shape[channel_axis] = channels
    unit = np.float32(1 / 255) if clip.dtype == np.uint8 else np.float32(1)
    factor = (unit / std_arr).reshape(shape)
    offset = (mean_arr / std_arr).reshape(shape)
    out = clip.astype(np.float32) * factor
    out -= offset
    return out


def to_cthw(clip: np.ndarray) -> np.ndarray:
    """[T, H, W, C] -> contiguous [C, T, H, W], dtype kept (uint8 or float32)."""
    clip = np.asarray(clip)
    if clip.ndim != 4:
        raise shape_error("clip", "[T, H, W, C]", clip.shape)
    return np.ascontiguousarray(clip.transpose(3, 0, 1, 2))


# ---------------------------------------------------------------------------------------------------
# pipelines


class TrainTransform:
    """Training geometry: one random resized crop for the whole clip, then a horizontal flip with
    probability ``flip_probability`` unless ``allow_flip`` is False (datasets whose classes name left
    and right, such as Something-Something, forbid it).

    __call__(clip uint8 [T, H, W, 3], boxes [..., 4] or None, mask or None, rng) ->
    (clip uint8 [T, size, size, 3] contiguous, boxes, mask). Each call draws the crop and then one flip number
    from ``rng`` (the flip number is drawn even when flips are off, so the crops of a seed do not depend
    on ``allow_flip``); without ``rng`` a fresh, unseeded generator is used.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        allow_flip: bool = True,
        flip_probability: float = 0.5,
        antialias: bool = True,
        interpolation: str = "bilinear",
    ):
        self.size = _pair(size)[0]
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi <= 1:
            raise StrgError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        r_lo, r_hi = (float(v) for v in ratio)
        if not 0 < r_lo <= r_hi:
            raise StrgError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        if not 0.0 <= flip_probability <= 1.0:
            raise StrgError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.scale = (lo, hi)
        self.ratio = (r_lo, r_hi)
        self.allow_flip = bool(allow_flip)
        self.flip_probability = float(flip_probability)
        self.antialias = antialias
        self.interpolation = _check_interpolation(interpolation)

    def __call__(
        self,
        clip: np.ndarray,
        boxes: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        rng = np.random.default_rng() if rng is None else _check_rng(rng)
        clip, boxes, mask = random_resized_crop(
            clip,
            self.size,
            rng,
            self.scale,
            self.ratio,
            boxes,
            mask,
            antialias=self.antialias,
            interpolation=self.interpolation,
        )
        flip = rng.random() < self.flip_probability
        if flip and self.allow_flip:
            clip, boxes, mask = horizontal_flip(clip, boxes, mask)
        return np.ascontiguousarray(clip), boxes, mask

    def __repr__(self) -> str:
        return (
            f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"allow_flip={self.allow_flip}, flip_probability={self.flip_probability})"
        )


class EvalTransform:
    """Test geometry: resize the short side to ``resize`` (default ``round(size * 8 / 7)``: 256 for 224,
    128 for 112), then take the ``size`` x ``size`` crop named by ``crop``: ``"center"`` (the default),
    or ``"left"`` / ``"right"`` for the three-crop views (:func:`spatial_crop_offsets`). The resize and the
    crop are fused: only the kept pixels are computed.

    __call__(clip uint8 [T, H, W, 3], boxes [..., 4] or None, mask or None, rng=None, crop="center") ->
    (clip uint8 [T, size, size, 3] contiguous, boxes, mask). ``rng`` is accepted for a signature shared with
    :class:`TrainTransform` and not used.
    """

    def __init__(
        self,
        size: int,
        resize: int | None = None,
        antialias: bool = True,
        interpolation: str = "bilinear",
    ):
        self.size = _pair(size)[0]
        self.resize = round(self.size * 8 / 7) if resize is None else _pair(resize, "resize")[0]
        if self.resize < self.size:
            raise StrgError(f"resize ({self.resize}) must be at least the crop size ({self.size})")
        self.antialias = antialias
        self.interpolation = _check_interpolation(interpolation)

    def __call__(
        self,
        clip: np.ndarray,
        boxes: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        crop: str = "center",
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        clip = _check_clip(clip)
        boxes, mask = _check_boxes(boxes, mask)
        _, height, width, _ = clip.shape
        out_h, out_w = short_side_shape(height, width, self.resize)
        top, left = spatial_crop_offsets(out_h, out_w, self.size, crop)
        frames = _resample(
            clip,
            (0, 0, height, width),
            (out_h, out_w),
            (top, left, self.size, self.size),
            self.antialias,
            self.interpolation,
        )
        # boxes: scale to the resized frame, then shift and clip to the crop
        sy, sx = out_h / height, out_w / width
        boxes, mask = _map_boxes(boxes, mask, (top / sy, left / sx), (sy, sx), (self.size, self.size))
        return np.ascontiguousarray(frames), boxes, mask

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={self.resize})"
