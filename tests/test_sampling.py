"""Clip sampling: the paper's even spread over a span of seconds, dense strides, test-time views."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from strg_deploy.data import sampling
from strg_deploy.data.sampling import SamplingConfig, View, dense_times, frame_count, paper_times
from strg_deploy.errors import StrgError


def test_paper_times_centred_and_evenly_spaced():
    times = paper_times(20.0, 32, 5.0)
    assert times.shape == (32,) and times.dtype == np.float64
    np.testing.assert_allclose(np.diff(times), 5.0 / 32)
    # centres of 32 equal sub-intervals of the span [7.5, 12.5]
    np.testing.assert_allclose(times[0], 7.5 + 0.5 * 5.0 / 32)
    np.testing.assert_allclose(times[-1], 12.5 - 0.5 * 5.0 / 32)
    np.testing.assert_allclose(times.mean(), 10.0)


def test_paper_times_position_places_the_span():
    step = 4.0 / 8
    start = paper_times(10.0, 8, 4.0, position=0.0)
    end = paper_times(10.0, 8, 4.0, position=1.0)
    np.testing.assert_allclose(start, (np.arange(8) + 0.5) * step)
    np.testing.assert_allclose(end, 6.0 + (np.arange(8) + 0.5) * step)
    np.testing.assert_allclose(end[-1], 10.0 - step / 2)
    quarter = paper_times(10.0, 8, 4.0, position=0.25)
    np.testing.assert_allclose(quarter[0], 1.5 + step / 2)


def test_paper_times_independent_of_fps():
    config = SamplingConfig(mode="paper", frames=16, span_seconds=4.0)
    at_12 = config.times(9.0, fps=12.0)
    at_30 = config.times(9.0, fps=29.97)
    at_none = config.times(9.0)
    np.testing.assert_array_equal(at_12, at_30)
    np.testing.assert_array_equal(at_12, at_none)
    for seed in range(5):
        np.testing.assert_array_equal(
            config.times(9.0, 12.0, rng=np.random.default_rng(seed)),
            config.times(9.0, 60.0, rng=np.random.default_rng(seed)),
        )


def test_paper_times_training_offsets_vary_and_stay_inside():
    duration, span, frames = 12.0, 5.0, 16
    starts = []
    for seed in range(200):
        times = paper_times(duration, frames, span, rng=np.random.default_rng(seed))
        assert times[0] > 0.0 and times[-1] < duration
        np.testing.assert_allclose(np.diff(times), span / frames)
        starts.append(times[0] - span / frames / 2)
    starts = np.array(starts)
    assert starts.min() >= 0.0 and starts.max() <= duration - span
    assert len(np.unique(np.round(starts, 9))) == 200
    # uniform over [0, 7]: the draws reach both ends and centre near 3.5
    assert starts.min() < 0.5 and starts.max() > 6.5
    assert abs(starts.mean() - 3.5) < 0.5


def test_paper_times_deterministic_per_seed():
    a = paper_times(30.0, 8, 5.0, rng=np.random.default_rng(7))
    b = paper_times(30.0, 8, 5.0, rng=np.random.default_rng(7))
    c = paper_times(30.0, 8, 5.0, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_paper_times_short_video_spreads_over_all_of_it():
    for rng in (None, np.random.default_rng(0)):
        times = paper_times(2.0, 8, 5.0, rng=rng)
        np.testing.assert_allclose(times, (np.arange(8) + 0.5) * 2.0 / 8)
    # a span exactly the video's length
    np.testing.assert_allclose(
        paper_times(5.0, 4, 5.0, rng=np.random.default_rng(1)), [0.625, 1.875, 3.125, 4.375]
    )


def test_paper_times_single_frame_is_the_span_centre():
    np.testing.assert_allclose(paper_times(10.0, 1, 4.0), [5.0])
    np.testing.assert_allclose(paper_times(10.0, 1, 4.0, position=0.0), [2.0])


@pytest.mark.parametrize("duration", [0, 0.0, -1.0, None, float("nan"), float("inf"), "long"])
def test_paper_times_rejects_bad_duration(duration):
    with pytest.raises(StrgError, match="duration"):
        paper_times(duration, 8, 5.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frames": 0}, "frames"),
        ({"frames": 2.5}, "frames"),
        ({"frames": True}, "frames"),
        ({"span_seconds": 0.0}, "span_seconds"),
        ({"position": 1.5}, "position"),
        ({"rng": 3}, "rng"),
    ],
)
def test_paper_times_rejects_bad_arguments(kwargs, message):
    args = {"duration": 10.0, "frames": 8, "span_seconds": 5.0} | kwargs
    with pytest.raises(StrgError, match=message):
        paper_times(**args)


def test_frame_count():
    assert frame_count(2.5, 12.0) == 30
    assert frame_count(2.55, 12.0) == 31
    assert frame_count(0.01, 12.0) == 1
    assert frame_count(10.01, 29.97) == math.ceil(10.01 * 29.97)


def test_dense_times_fixed_stride():
    times = dense_times(10.0, 8, 2, 12.0)  # 120 frames; clip covers 15 of them
    index = times * 12.0
    np.testing.assert_allclose(index, np.round(index), atol=1e-9)
    np.testing.assert_allclose(np.diff(index), 2.0)
    # centred: the first of the 106 possible starts times 0.5
    assert round(index[0]) == round(0.5 * (120 - 15))
    np.testing.assert_allclose(dense_times(10.0, 8, 2, 12.0, position=0.0), np.arange(8) * 2 / 12.0)
    last = dense_times(10.0, 8, 2, 12.0, position=1.0)
    np.testing.assert_allclose(last[-1] * 12.0, 119)


def test_dense_times_training_starts_stay_inside():
    starts = set()
    for seed in range(200):
        index = np.round(dense_times(3.0, 4, 3, 10.0, rng=np.random.default_rng(seed)) * 10.0).astype(int)
        np.testing.assert_array_equal(np.diff(index), 3)
        assert index[0] >= 0 and index[-1] <= 29
        starts.add(int(index[0]))
    assert starts == set(range(0, 30 - 9))  # every start 0 .. 20 drawn


def test_dense_times_short_video_repeats_the_last_frame():
    # 12 frames (0 .. 11); 8 frames at stride 2 need 15
    for rng in (None, np.random.default_rng(0)):
        index = np.round(dense_times(1.0, 8, 2, 12.0, rng=rng) * 12.0).astype(int)
        np.testing.assert_array_equal(index, [0, 2, 4, 6, 8, 10, 11, 11])
    np.testing.assert_array_equal(dense_times(0.05, 3, 1, 12.0), [0.0, 0.0, 0.0])


def test_dense_times_rejects_bad_arguments():
    with pytest.raises(StrgError, match="stride_frames"):
        dense_times(10.0, 8, 0, 12.0)
    with pytest.raises(StrgError, match="fps"):
        dense_times(10.0, 8, 2, 0.0)
    with pytest.raises(StrgError, match="duration"):
        dense_times(None, 8, 2, 12.0)


def test_test_views_count_order_and_positions():
    views = sampling.test_views(20.0, 8, 4.0, temporal_clips=4, spatial_crops=3)
    assert len(views) == 12 and all(isinstance(v, View) for v in views)
    assert [v.crop for v in views[:3]] == ["left", "center", "right"]
    assert [(v.clip_index, v.crop_index) for v in views] == [(k, c) for k in range(4) for c in range(3)]
    centres = [views[3 * k].times.mean() for k in range(4)]
    # clip k is placed at position (k + 0.5) / 4 of the room (20 - 4): its centre is 2 + position * 16
    np.testing.assert_allclose(centres, [2 + (k + 0.5) / 4 * 16 for k in range(4)])
    for k in range(4):
        for c in range(3):
            np.testing.assert_array_equal(views[3 * k + c].times, views[3 * k].times)
            np.testing.assert_allclose(np.diff(views[3 * k + c].times), 0.5)


def test_test_views_single_view_is_the_centred_clip():
    (view,) = sampling.test_views(20.0, 8, 4.0)
    assert view.crop == "center"
    np.testing.assert_array_equal(view.times, paper_times(20.0, 8, 4.0))
    assert len(sampling.test_views(20.0, 8, 4.0, temporal_clips=10, spatial_crops=1)) == 10


def test_test_views_short_video_clips_coincide():
    views = sampling.test_views(3.0, 8, 5.0, temporal_clips=3)
    for view in views:
        np.testing.assert_allclose(view.times, (np.arange(8) + 0.5) * 3.0 / 8)


def test_test_views_rejects_bad_counts():
    with pytest.raises(StrgError, match="spatial_crops"):
        sampling.test_views(10.0, 8, 4.0, temporal_clips=2, spatial_crops=2)
    with pytest.raises(StrgError, match="temporal_clips"):
        sampling.test_views(10.0, 8, 4.0, temporal_clips=0)


def test_sampling_config():
    dense = SamplingConfig(mode="dense", frames=4, stride=2)
    np.testing.assert_allclose(dense.times(10.0, fps=10.0, position=0.0), [0.0, 0.2, 0.4, 0.6])
    with pytest.raises(StrgError, match="fps"):
        dense.times(10.0)
    views = dense.views(10.0, fps=10.0, temporal_clips=2, spatial_crops=3)
    assert len(views) == 6
    assert views[0].times[0] < views[3].times[0]
    paper = SamplingConfig(frames=8, span_seconds=4.0)
    np.testing.assert_array_equal(
        [v.times for v in paper.views(20.0, temporal_clips=2)],
        [v.times for v in sampling.test_views(20.0, 8, 4.0, temporal_clips=2)],
    )
    with pytest.raises(StrgError, match="mode"):
        SamplingConfig(mode="uniform")
    with pytest.raises(StrgError, match="frames"):
        SamplingConfig(frames=0)
    with pytest.raises(StrgError, match="stride"):
        SamplingConfig(stride=0)


def test_sampling_imports_no_torch():
    code = "import sys, strg_deploy.data.sampling; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
