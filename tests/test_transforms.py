"""Clip transforms on hand-made clips: exact pixels, and boxes that follow their frames' geometry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from strg_deploy.config import KINETICS_MEAN, KINETICS_STD
from strg_deploy.data.transforms import (
    EvalTransform,
    TrainTransform,
    center_crop,
    crop,
    horizontal_flip,
    normalise,
    random_crop,
    random_resized_crop,
    random_resized_crop_params,
    resize,
    resize_short_side,
    resized_crop,
    spatial_crop,
    spatial_crop_offsets,
    to_cthw,
)
from strg_deploy.errors import StrgError


def square_clip(frames=4, height=60, width=80, box=(20, 10, 44, 30)):
    """A black clip with one white rectangle box = (x1, y1, x2, y2) (pixels x1 .. x2 - 1), and its box."""
    clip = np.zeros((frames, height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    clip[:, y1:y2, x1:x2] = 255
    boxes = np.tile(np.array(box, dtype=np.float32), (frames, 1, 1))  # [T, 1, 4]
    return clip, boxes


def white_box(frame):
    """Continuous (x1, y1, x2, y2) bounding box of the pixels brighter than half; None when there are none."""
    ys, xs = np.nonzero(frame[..., 0] > 127)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def assert_box_encloses_white(clip, boxes, mask, tol=1.0):
    for t in range(clip.shape[0]):
        found = white_box(clip[t])
        if found is None:
            assert not mask[t, 0]
            np.testing.assert_array_equal(boxes[t, 0], 0)
        else:
            assert mask[t, 0]
            np.testing.assert_allclose(boxes[t, 0], found, atol=tol)


def moving_dot_clip(frames=6, height=16, width=32):
    """A 2 x 2 white dot moving 4 px right per frame, and its boxes [T, 1, 4]."""
    clip = np.zeros((frames, height, width, 3), dtype=np.uint8)
    boxes = np.zeros((frames, 1, 4), dtype=np.float32)
    for t in range(frames):
        x = 2 + 4 * t
        clip[t, 7:9, x : x + 2] = 255
        boxes[t, 0] = [x, 7, x + 2, 9]
    return clip, boxes


# ---------------------------------------------------------------------------------------------------
# resize


def test_bilinear_values_by_hand():
    row = np.array([0, 100], dtype=np.float32)
    clip = np.broadcast_to(row[None, None, :, None], (1, 1, 2, 3)).copy()
    out, _, _ = resize(clip, (1, 4))
    # half-pixel centres: source x = -0.25, 0.25, 0.75, 1.25 (clamped at the edges)
    np.testing.assert_allclose(out[0, 0, :, 0], [0, 25, 75, 100], atol=1e-4)
    assert out.dtype == np.float32


def test_shrink_with_and_without_antialias_by_hand():
    row = np.array([0, 100, 200, 100], dtype=np.uint8)
    clip = np.broadcast_to(row[None, None, :, None], (1, 1, 4, 3)).copy()
    plain, _, _ = resize(clip, (1, 2), antialias=False)
    np.testing.assert_array_equal(plain[0, 0, :, 0], [50, 150])
    smooth, _, _ = resize(clip, (1, 2), antialias=True)
    # triangle of half-width 2 around source centres 1.0 and 3.0: weights 0.75, 0.75, 0.25 (normalised)
    np.testing.assert_array_equal(smooth[0, 0, :, 0], [round(125 / 1.75), round(250 / 1.75)])
    nearest, _, _ = resize(clip, (1, 2), interpolation="nearest")
    np.testing.assert_array_equal(nearest[0, 0, :, 0], [100, 100])
    assert smooth.dtype == np.uint8


def test_resize_to_the_same_size_is_exact():
    clip = np.random.default_rng(0).integers(0, 256, (2, 9, 13, 3), dtype=np.uint8)
    out, _, _ = resize(clip, (9, 13))
    np.testing.assert_array_equal(out, clip)


def test_resize_keeps_a_constant_clip_and_the_channels_apart():
    clip = np.empty((3, 30, 50, 3), dtype=np.uint8)
    clip[...] = [10, 128, 250]
    for size in (17, 64):
        out, _, _ = resize_short_side(clip, size)
        assert (out == np.array([10, 128, 250], dtype=np.uint8)).all()


@pytest.mark.parametrize("size, expected", [(112, (112, 149)), (30, (30, 40)), (120, (120, 160))])
@pytest.mark.parametrize("options", [{}, {"antialias": False}, {"interpolation": "nearest"}])
def test_resize_short_side_boxes_follow_the_square(size, expected, options):
    clip, boxes = square_clip(frames=2, height=240, width=320, box=(50, 70, 150, 130))
    out, out_boxes, mask = resize_short_side(clip, size, boxes, **options)
    assert out.shape == (2, *expected, 3) and out.dtype == np.uint8
    assert out_boxes.dtype == np.float32 and mask.all()
    scale = np.array([expected[1] / 320, expected[0] / 240] * 2)  # the rounded long side sets x's scale
    np.testing.assert_allclose(out_boxes[0, 0], np.array([50, 70, 150, 130]) * scale, rtol=1e-6)
    assert_box_encloses_white(out, out_boxes, mask)


def test_resize_short_side_portrait():
    clip, boxes = square_clip(frames=1, height=100, width=50, box=(10, 40, 30, 90))
    out, out_boxes, mask = resize_short_side(clip, 20, boxes)
    assert out.shape == (1, 40, 20, 3)
    np.testing.assert_allclose(out_boxes[0, 0], [4, 16, 12, 36])
    assert_box_encloses_white(out, out_boxes, mask)


# ---------------------------------------------------------------------------------------------------
# crops and flips


def test_crop_clips_boxes_and_marks_empty_ones():
    clip, _ = square_clip(frames=1)
    boxes = np.array([[[20, 10, 44, 30], [0, 0, 5, 5], [70, 50, 80, 60]]], dtype=np.float32)
    out, out_boxes, mask = crop(clip, 15, 30, 20, 40, boxes)
    assert out.shape == (1, 20, 40, 3)
    # the square: x 20..44 -> -10..14 -> 0..14; y 10..30 -> -5..15 -> 0..15
    np.testing.assert_allclose(out_boxes[0, 0], [0, 0, 14, 15])
    np.testing.assert_array_equal(mask, [[True, False, False]])
    np.testing.assert_array_equal(out_boxes[0, 1:], 0)
    np.testing.assert_allclose(white_box(out[0]), out_boxes[0, 0])


def test_center_crop_and_random_crop_keep_boxes_on_the_square():
    clip, boxes = square_clip(frames=2, height=60, width=80, box=(30, 20, 50, 40))
    out, out_boxes, mask = center_crop(clip, 32, boxes)
    assert out.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(out_boxes[0, 0], [6, 6, 26, 26])  # offsets (14, 24)
    assert_box_encloses_white(out, out_boxes, mask, tol=0)
    out, out_boxes, mask = center_crop(clip, (20, 60), boxes)
    assert out.shape == (2, 20, 60, 3)
    assert_box_encloses_white(out, out_boxes, mask, tol=0)
    outside = 0
    for seed in range(50):
        out, out_boxes, mask = random_crop(clip, 24, np.random.default_rng(seed), boxes)
        assert out.shape == (2, 24, 24, 3)
        assert_box_encloses_white(out, out_boxes, mask, tol=0)
        outside += int(not mask[0, 0])
    assert outside > 0  # some crops miss the square, and say so


def test_spatial_crops_along_the_long_side():
    assert spatial_crop_offsets(60, 80, 40, "left") == (10, 0)
    assert spatial_crop_offsets(60, 80, 40, "center") == (10, 20)
    assert spatial_crop_offsets(60, 80, 40, "right") == (10, 40)
    assert spatial_crop_offsets(80, 60, 40, "left") == (0, 10)  # portrait: top
    assert spatial_crop_offsets(80, 60, 40, "right") == (40, 10)  # portrait: bottom
    clip, boxes = square_clip(frames=1, height=60, width=120, box=(0, 20, 30, 40))
    left, left_boxes, left_mask = spatial_crop(clip, 60, "left", boxes)
    right, _, right_mask = spatial_crop(clip, 60, "right", boxes)
    centre, _, _ = spatial_crop(clip, 60, "center", boxes)
    np.testing.assert_array_equal(centre, center_crop(clip, 60)[0])
    np.testing.assert_allclose(left_boxes[0, 0], [0, 20, 30, 40])
    assert left_mask[0, 0] and not right_mask[0, 0] and white_box(right[0]) is None
    assert_box_encloses_white(left, left_boxes, left_mask, tol=0)
    with pytest.raises(StrgError, match="spatial crop"):
        spatial_crop(clip, 60, "top")


def test_flip_mirrors_pixels_and_boxes():
    clip, boxes = square_clip(frames=1, height=20, width=50, box=(5, 2, 15, 8))
    out, out_boxes, mask = horizontal_flip(clip, boxes)
    np.testing.assert_allclose(out_boxes[0, 0], [35, 2, 45, 8])
    np.testing.assert_allclose(white_box(out[0]), out_boxes[0, 0])
    back, back_boxes, _ = horizontal_flip(out, out_boxes, mask)
    np.testing.assert_array_equal(back, clip)
    np.testing.assert_allclose(back_boxes, boxes)


def test_flip_reverses_left_to_right_motion():
    clip, boxes = moving_dot_clip()
    xs = [white_box(f)[0] for f in clip]
    assert np.all(np.diff(xs) > 0)
    flipped, flipped_boxes, mask = horizontal_flip(clip, boxes)
    flipped_xs = [white_box(f)[0] for f in flipped]
    assert np.all(np.diff(flipped_xs) < 0)
    np.testing.assert_allclose(flipped_boxes[:, 0, 0], flipped_xs)
    assert_box_encloses_white(flipped, flipped_boxes, mask, tol=0)


def test_invalid_boxes_stay_invalid_and_become_zeros():
    clip, _ = square_clip(frames=2)
    boxes = np.array([[[20, 10, 44, 30]], [[np.nan, np.nan, np.nan, np.nan]]], dtype=np.float32)
    mask = np.array([[True], [False]])
    given_boxes, given_mask = boxes.copy(), mask.copy()
    for op in (
        lambda c, b, m: horizontal_flip(c, b, m),
        lambda c, b, m: resize_short_side(c, 30, b, m),
        lambda c, b, m: center_crop(c, 40, b, m),
    ):
        _, out_boxes, out_mask = op(clip, boxes, mask)
        np.testing.assert_array_equal(out_mask, mask)
        np.testing.assert_array_equal(out_boxes[1], 0)
        assert np.isfinite(out_boxes).all()
    # the caller's arrays are not changed
    np.testing.assert_array_equal(mask, given_mask)
    np.testing.assert_array_equal(boxes, given_boxes)


# ---------------------------------------------------------------------------------------------------
# random resized crop


def test_random_resized_crop_params_respect_scale_and_ratio():
    fractions = []
    for seed in range(300):
        top, left, h, w = random_resized_crop_params(240, 320, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        fraction = h * w / (240 * 320)
        # rounding h and w to whole pixels moves the area fraction by a little
        assert 0.25 - 0.01 <= fraction <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        fractions.append(fraction)
    assert min(fractions) < 0.3 and max(fractions) > 0.6
    small = [
        random_resized_crop_params(240, 320, np.random.default_rng(s), scale=(0.1, 0.2)) for s in range(50)
    ]
    assert all(0.1 - 0.01 <= h * w / (240 * 320) <= 0.2 + 0.01 for _, _, h, w in small)


def test_random_resized_crop_falls_back_to_the_centre():
    # no crop of a quarter of a 10 x 1000 strip fits with an aspect ratio <= 4/3: centre crop, ratio clamped
    assert random_resized_crop_params(10, 1000, np.random.default_rng(0)) == (0, (1000 - 13) // 2, 10, 13)


def test_random_resized_crop_is_deterministic_per_seed():
    clip = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    a, _, _ = random_resized_crop(clip, 32, np.random.default_rng(5))
    b, _, _ = random_resized_crop(clip, 32, np.random.default_rng(5))
    c, _, _ = random_resized_crop(clip, 32, np.random.default_rng(6))
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_random_resized_crop_is_the_resized_region():
    clip = np.random.default_rng(1).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    top, left, h, w = random_resized_crop_params(48, 64, np.random.default_rng(3))
    out, _, _ = random_resized_crop(clip, 24, np.random.default_rng(3))
    expected, _, _ = resize(clip[:, top : top + h, left : left + w], 24)
    np.testing.assert_array_equal(out, expected)


def test_random_resized_crop_boxes_follow_the_square():
    clip, boxes = square_clip(frames=2, height=120, width=160, box=(40, 30, 100, 80))
    for seed in range(40):
        out, out_boxes, mask = random_resized_crop(clip, 56, np.random.default_rng(seed), boxes=boxes)
        assert out.shape == (2, 56, 56, 3)
        assert_box_encloses_white(out, out_boxes, mask)
    region = (10, 20, 40, 40)  # a region that cuts the square: y 30..50, x 40..60 of it
    out, out_boxes, mask = resized_crop(clip, region, 80, boxes)
    np.testing.assert_allclose(out_boxes[0, 0], [40, 40, 80, 80])
    assert_box_encloses_white(out, out_boxes, mask)


# ---------------------------------------------------------------------------------------------------
# pipelines


def test_train_transform_never_flips_when_flips_are_forbidden():
    # noise: no crop of it is its own mirror image, so any flip would show
    clip = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[4, 4, 20, 30]], dtype=np.float32), (3, 1, 1))
    no_flip = TrainTransform(24, allow_flip=False)
    may_flip = TrainTransform(24, allow_flip=True)
    flipped = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        cropped, cropped_boxes, cropped_mask = random_resized_crop(clip, 24, rng, boxes=boxes)
        out, out_boxes, _ = no_flip(clip, boxes, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out, cropped)
        np.testing.assert_array_equal(out_boxes, cropped_boxes)
        assert out.flags["C_CONTIGUOUS"]
        maybe, maybe_boxes, maybe_mask = may_flip(clip, boxes, rng=np.random.default_rng(seed))
        if not np.array_equal(maybe, cropped):
            mirrored = horizontal_flip(cropped, cropped_boxes, cropped_mask)
            np.testing.assert_array_equal(maybe, mirrored[0])
            np.testing.assert_array_equal(maybe_boxes, mirrored[1])
            np.testing.assert_array_equal(maybe_mask, cropped_mask)
            flipped += 1
    assert 70 < flipped < 130  # about half


def test_train_transform_output_and_boxes():
    clip, boxes = square_clip(frames=3, height=90, width=120, box=(30, 20, 90, 70))
    transform = TrainTransform(32, scale=(0.5, 1.0))
    for seed in range(20):
        out, out_boxes, mask = transform(clip, boxes, rng=np.random.default_rng(seed))
        assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
        assert out_boxes.shape == (3, 1, 4) and mask.shape == (3, 1)
        assert_box_encloses_white(out, out_boxes, mask)
    out, none_boxes, none_mask = transform(clip, rng=np.random.default_rng(0))
    assert none_boxes is None and none_mask is None
    assert "allow_flip=True" in repr(transform)


def test_eval_transform_is_resize_then_crop():
    clip = np.random.default_rng(2).integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)
    transform = EvalTransform(28)
    assert transform.resize == 32
    resized, _, _ = resize_short_side(clip, 32)
    for which in ("left", "center", "right"):
        expected, _, _ = spatial_crop(resized, 28, which)
        out, _, _ = transform(clip, crop=which)
        assert out.shape == (2, 28, 28, 3)
        np.testing.assert_array_equal(out, expected)
    out, _, _ = EvalTransform(28, resize=28, interpolation="nearest")(clip)
    np.testing.assert_array_equal(
        out, center_crop(resize_short_side(clip, 28, interpolation="nearest")[0], 28)[0]
    )


def test_eval_transform_boxes_follow_the_square():
    clip, boxes = square_clip(frames=2, height=120, width=200, box=(10, 30, 70, 90))
    for which in ("left", "center", "right"):
        out, out_boxes, mask = EvalTransform(48)(clip, boxes, crop=which)
        assert_box_encloses_white(out, out_boxes, mask)
    _, _, mask = EvalTransform(48)(clip, boxes, crop="right")
    assert not mask.any()


# ---------------------------------------------------------------------------------------------------
# normalisation and layout


def test_normalise_values():
    clip = np.zeros((1, 1, 2, 3), dtype=np.uint8)
    clip[0, 0, 1] = 255
    out = normalise(clip, KINETICS_MEAN, KINETICS_STD)
    assert out.dtype == np.float32
    mean, std = np.array(KINETICS_MEAN), np.array(KINETICS_STD)
    np.testing.assert_allclose(out[0, 0, 0], -mean / std, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 1], (1 - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(normalise(clip.astype(np.float32) / 255, mean, std), out, rtol=1e-5)
    cthw = normalise(to_cthw(clip), mean, std, channel_axis=0)
    np.testing.assert_allclose(cthw, to_cthw(out), rtol=1e-6)
    with pytest.raises(StrgError, match="one value per channel"):
        normalise(clip, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(StrgError, match="positive"):
        normalise(clip, mean, (0.2, 0.0, 0.2))


def test_to_cthw():
    clip = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    out = to_cthw(clip[:, :, ::-1])
    assert out.shape == (3, 2, 3, 4) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert out[1, 1, 2, 0] == clip[1, 2, 3, 1]
    assert to_cthw(clip.astype(np.float32)).dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# errors and layering


def test_errors_name_shapes_and_arguments():
    clip, boxes = square_clip(frames=2)
    with pytest.raises(StrgError, match=r"expected shape \[T, H, W, 3\].*got \[2, 60, 80\]"):
        resize_short_side(clip[..., 0], 30)
    with pytest.raises(StrgError, match="boxes"):
        center_crop(clip, 30, boxes[..., :3])
    with pytest.raises(StrgError, match="box mask"):
        center_crop(clip, 30, boxes, np.ones((2, 2), bool))
    with pytest.raises(StrgError, match="without boxes"):
        horizontal_flip(clip, None, np.ones((2, 1), bool))
    with pytest.raises(StrgError, match="does not fit"):
        center_crop(clip, 61)
    with pytest.raises(StrgError, match="outside"):
        crop(clip, 50, 0, 20, 20)
    with pytest.raises(StrgError, match="interpolation"):
        resize(clip, 10, interpolation="bicubic")
    with pytest.raises(StrgError, match="Generator"):
        random_crop(clip, 10, 0)
    with pytest.raises(StrgError, match="size"):
        center_crop(clip, 0)
    with pytest.raises(StrgError, match="scale"):
        TrainTransform(32, scale=(0.5, 1.5))
    with pytest.raises(StrgError, match="resize"):
        EvalTransform(32, resize=16)


def test_transforms_import_no_torch():
    code = "import sys, strg_deploy.data.transforms; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
