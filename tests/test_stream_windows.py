"""Stream geometry (crop, letterbox, roi and the way back to source pixels) and sliding windows."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from strg_deploy.data.clips import video_clip
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.stream.geometry import GEOMETRIES, Geometry, parse_roi
from strg_deploy.stream.types import Frame, Transform
from strg_deploy.stream.windows import WindowBuilder, nearest

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"no test clips at {VIDEOS}")

# ------------------------------------------------------------------------------------------- geometry


def _scaled(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What the reader does: FFmpeg's scaler brings the whole frame to ``size`` (width, height)."""
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    return frame.reformat(size[0], size[1], "rgb24", interpolation="AREA").to_ndarray()


def _source_with_box(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A grey frame with a red filled rectangle box = (x1, y1, x2, y2) (pixel edges)."""
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = (250, 10, 10)
    return image


def _found_box(image: np.ndarray) -> np.ndarray:
    """The red rectangle's box (x1, y1, x2, y2) in ``image`` pixels, from pixels at least half red."""
    red = (image[..., 0] > 170) & (image[..., 1] < 50)
    ys, xs = np.nonzero(red)
    assert len(xs), "the rectangle is not in the model image"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize(
    ("mode", "roi", "width", "height", "box"),
    [
        ("crop", None, 640, 360, (300, 100, 380, 220)),
        ("crop", None, 240, 500, (60, 200, 150, 260)),  # portrait: the crop is centred vertically
        ("letterbox", None, 640, 360, (10, 20, 120, 90)),
        ("letterbox", None, 300, 500, (250, 400, 290, 490)),
        ("roi", (400, 40, 200, 160), 640, 360, (450, 80, 520, 150)),
        ("roi", (-50, 300, 150, 200), 640, 360, (20, 320, 70, 350)),  # clamped to (0, 300, 100, 60)
    ],
)
def test_a_box_drawn_in_the_source_maps_back_onto_itself(mode, roi, width, height, box):
    size = 64
    plan = Geometry(size, mode, roi).plan(width, height)
    source = _source_with_box(width, height, box)
    image = plan.apply(_scaled(source, plan.decode_size))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    back = plan.transform.to_source(_found_box(image))
    # within about one model pixel (ax, ay source pixels) plus one source pixel of scaler blur
    tolerance = 1.5 * max(plan.transform.ax, plan.transform.ay) + 1
    np.testing.assert_allclose(back, box, atol=tolerance)
    assert tolerance < 0.25 * min(box[2] - box[0], box[3] - box[1]) + 12  # the check means something


def test_crop_is_the_short_side_scaled_then_centred():
    plan = Geometry(112).plan(640, 480)
    assert plan.decode_size == (149, 112)  # data.cache.short_side_size
    assert plan.offset == (18, 0)  # data.transforms.center_crop: (149 - 112) // 2
    t = plan.transform
    np.testing.assert_allclose([t.ax, t.bx, t.ay, t.by], [640 / 149, 18 * 640 / 149, 480 / 112, 0.0])
    # the model image's corners land where the crop's corners are in the source
    corners = plan.transform.to_source(np.array([0, 0, 112, 112]))
    np.testing.assert_allclose(corners, [18 * 640 / 149, 0, 130 * 640 / 149, 480], rtol=1e-6)


def test_letterbox_pads_with_the_pad_value_around_the_whole_frame():
    plan = Geometry(64, "letterbox", pad_value=7).plan(400, 200)
    assert plan.decode_size == (64, 32) and plan.offset == (0, 16)
    image = plan.apply(np.full((32, 64, 3), 200, dtype=np.uint8))
    assert (image[:16] == 7).all() and (image[48:] == 7).all() and (image[16:48] == 200).all()
    # the whole source frame is inside the model image
    np.testing.assert_allclose(plan.transform.to_source(np.array([0, 16, 64, 48])), [0, 0, 400, 200])


def test_roi_covers_the_region_on_its_short_side_and_its_centre_on_the_long_one():
    plan = Geometry(100, "roi", (200, 50, 300, 100)).plan(1000, 600)
    assert plan.decode_size == (1000, 600)  # the region's short side is already 100
    np.testing.assert_allclose(plan.transform.to_source(np.array([0, 0, 100, 100])), [300, 50, 400, 150])


@needs_videos
@pytest.mark.parametrize("name", ["arm_wrestling_h264_340x256.mp4", "keyboard_rotated90_h264_568x320.mov"])
def test_crop_gives_the_frames_of_the_test_time_clip(name):
    """A frame through Geometry(crop) is exactly what data.clips.video_clip feeds the model."""
    path = VIDEOS / name
    size = 48
    with open_video(path) as reader:
        plan = Geometry(size).plan(*reader.size)
        images = [plan.apply(f.image) for f in reader.frames(size=plan.decode_size)]
    clip = video_clip(path, 3, size, 1.0)  # [3, T, S, S]
    for t in range(clip.shape[1]):
        wanted = clip[:, t].transpose(1, 2, 0)
        assert any(np.array_equal(wanted, image) for image in images), f"frame {t} of the clip"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "model image size"),
        ((112.0,), "model image size"),
        ((112, "stretch"), "geometry must be one of"),
        ((112, "roi"), "roi"),
        ((112, "crop", (0, 0, 10, 10)), "roi"),
        ((112, "roi", (0, 0, 10)), "roi must be"),
        ((112, "roi", (0, 0, 0, 10)), "roi width"),
        ((112, "roi", (0, 0, 10, 10.5)), "roi height"),
        ((112, "letterbox", None, 256), "pad value"),
    ],
)
def test_bad_geometry_is_one_clear_line(args, message):
    with pytest.raises(StrgError, match=message) as caught:
        Geometry(*args)
    assert "\n" not in str(caught.value)


def test_bad_roi_for_the_frame_and_bad_inputs():
    with pytest.raises(StrgError, match="lies outside the 640x360 frame"):
        Geometry(64, "roi", (700, 10, 50, 50)).plan(640, 360)
    with pytest.raises(StrgError, match="lies outside"):
        Geometry(64, "roi", (-60, 10, 50, 50)).plan(640, 360)
    with pytest.raises(StrgError, match="too small.*at least"):
        Geometry(224, "roi", (10, 10, 4, 4)).plan(3840, 2160)
    with pytest.raises(StrgError, match="source width"):
        Geometry(64).plan(0, 360)
    plan = Geometry(64).plan(640, 360)
    with pytest.raises(StrgError, match=r"expected shape \[64, 114, 3\]"):
        plan.apply(np.zeros((64, 113, 3), np.uint8))
    assert parse_roi(" 10, 20,30 ,40") == (10, 20, 30, 40)
    with pytest.raises(StrgError, match="x,y,width,height"):
        parse_roi("10,20,30")
    assert GEOMETRIES == ("crop", "letterbox", "roi")


# -------------------------------------------------------------------------------------------- windows


def _frame(index: int, time: float, size: int = 2) -> Frame:
    """A frame whose pixel (0, 0) spells its index (channels 0 and 1: low and high byte)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[0, 0, 0], image[0, 0, 1] = index % 256, index // 256
    return Frame("cam", image, time, 1000.0 + time, index, Transform(2.0, float(index), 2.0, 0.0), (index, 1))


def _indices(window) -> list[int]:
    """The frame indices a window's clip [3, T, S, S] was sampled from."""
    return (window.clip[0, :, 0, 0].astype(int) + 256 * window.clip[1, :, 0, 0].astype(int)).tolist()


def _expected(times: np.ndarray, start: float, span: float, frames: int) -> list[int]:
    """Brute force: the nearest frame (ties: the earlier) to each centre of ``frames`` equal parts."""
    out = []
    for i in range(frames):
        t = start + (i + 0.5) * (span / frames)
        out.append(min(range(len(times)), key=lambda j: (abs(times[j] - t), j)))
    return out


def _run(builder: WindowBuilder, times) -> list:
    windows = []
    for i, t in enumerate(times):
        windows.extend(builder.push(_frame(i, float(t))))
    return windows


def test_constant_rate_windows_start_every_stride_and_take_the_centres():
    builder = WindowBuilder("cam", 4, 2.0, 1.0)
    times = np.arange(100) / 10.0  # 10 fps, 0 .. 9.9 s
    windows = _run(builder, times)
    assert [(w.start, w.end) for w in windows] == [(k, k + 2.0) for k in range(8)]
    assert [w.sequence for w in windows] == list(range(8))
    # centres 0.25, 0.75, 1.25, 1.75 s: frames 2 or 3 (tie -> 2), 7 or 8 (-> 7), ...
    assert _indices(windows[0]) == [2, 7, 12, 17]
    assert _indices(windows[3]) == [32, 37, 42, 47]
    assert windows[0].clip.shape == (3, 4, 2, 2) and windows[0].clip.flags.c_contiguous
    # completed by the frame at 2.0 s (index 20); transform and size from the newest sampled frame
    assert windows[0].wall_end == 1002.0
    assert windows[0].transform == Transform(2.0, 17.0, 2.0, 0.0) and windows[0].source_size == (17, 1)
    assert builder.pending_frames < 25


@pytest.mark.parametrize(
    ("per_window", "after_first"),
    [
        (8, 12),  # samples 4.25, 4.75, ..., 9.75 s fall on frames
        (16, 24),  # samples 4.125, 4.375, ..., 9.875 s fall halfway between two frames: the earlier takes it
    ],
)
def test_frames_are_converted_only_when_kept_and_at_most_the_newest_waits(per_window, after_first):
    converted: list[int] = []

    def deferred(index: int, time: float) -> Frame:
        eager = _frame(index, time)

        def image() -> np.ndarray:
            converted.append(index)
            return eager.image

        return Frame("cam", image, time, eager.wall_time, index, eager.transform, eager.source_size)

    times = np.arange(120) / 12.0  # 12 fps, 10 s: windows of 4 s every 2 s
    lazy, eager = WindowBuilder("cam", per_window, 4.0, 2.0), WindowBuilder("cam", per_window, 4.0, 2.0)
    lazy_windows, eager_windows = [], []
    for i, t in enumerate(times):
        lazy_windows += lazy.push(deferred(i, float(t)))
        eager_windows += eager.push(_frame(i, float(t)))
        assert sum(callable(f.pixels) for f in lazy._held) <= 1  # only the newest is unconverted
    lazy_windows += lazy.flush()
    eager_windows += eager.flush()
    assert [_indices(w) for w in lazy_windows] == [_indices(w) for w in eager_windows]
    assert len(lazy_windows) == 4
    sampled = {i for w in lazy_windows for i in _indices(w)}
    assert len(converted) == len(set(converted))  # each at most once
    # before the first window every frame is kept (0 .. 46; frame 48 at 4.0 s completes it, and 47,
    # still the newest then, is dropped unconverted); after it, only sampled frames are converted
    assert set(converted) == set(range(47)) | sampled
    assert len(converted) == 47 + after_first


@pytest.mark.parametrize("seed", range(6))
def test_variable_rate_samples_the_nearest_frame_of_all_frames(seed):
    """Jittery, bursty and repeated timestamps: every window equals brute force over all frames, so the
    frames the builder dropped to save memory were never needed."""
    rng = np.random.default_rng(seed)
    steps = rng.choice(
        [0.0, 0.001, 0.01, 0.033, 0.05, 0.25, 0.7], size=600, p=[0.05, 0.2, 0.2, 0.3, 0.1, 0.1, 0.05]
    )
    times = np.round(np.cumsum(steps) - steps[0], 3)
    frames, window, stride = (
        int(rng.integers(1, 9)),
        float(rng.choice([0.5, 1.0, 2.4])),
        float(rng.choice([0.3, 1.0, 3.0])),
    )
    builder = WindowBuilder("cam", frames, window, stride)
    windows = _run(builder, times)
    assert windows, "the test needs windows"
    for w in windows:
        k = round(w.start / stride)
        assert (w.start, w.end) == (k * stride, k * stride + window)
        assert _indices(w) == _expected(times, w.start, window, frames), (w.start, frames, window, stride)
    assert [w.sequence for w in windows] == list(range(len(windows)))


def test_windows_inside_a_gap_are_skipped_and_its_edges_take_the_nearest_frames():
    times = np.concatenate([np.arange(0, 30) / 10.0, 10.0 + np.arange(0, 30) / 10.0])  # 0 .. 2.9, 10 .. 12.9
    windows = _run(WindowBuilder("cam", 4, 2.0, 1.0), times)
    assert [w.start for w in windows] == [0.0, 1.0, 2.0, 8.0, 9.0, 10.0]
    assert _indices(windows[3]) == [30, 30, 30, 30]  # [8, 10] is sampled from the first frame after it
    assert _indices(windows[2])[2:] == [29, 29]  # [2, 4]: 3.25 and 3.75 s take the last frame before it
    for w in windows:
        assert _indices(w) == _expected(times, w.start, 2.0, 4)
    # a jump of the clock far ahead: the windows holding the last frame, then the one it ends
    builder = WindowBuilder("cam", 4, 2.0, 1.0)
    _run(builder, times)
    jumped = builder.push(_frame(60, 1e9))
    assert [(w.start, w.end) for w in jumped] == [(11.0, 13.0), (12.0, 14.0), (1e9 - 2.0, 1e9)]
    for w in jumped[:2]:
        assert _indices(w) == _expected(np.append(times, 1e9), w.start, 2.0, 4)
    assert _indices(jumped[1])[-2:] == [59, 59] and _indices(jumped[2]) == [60, 60, 60, 60]


def test_memory_stays_bounded_over_ten_thousand_frames():
    for fps, frames in ((30.0, 8), (1000.0, 4)):
        builder = WindowBuilder("cam", frames, 2.0, 0.5)
        most = 0
        emitted = 0
        for i in range(10_000):
            emitted += len(builder.push(_frame(i, i / fps)))
            if emitted:
                most = max(most, builder.pending_frames)
        # four windows are open at once (2 s / 0.5 s), each takes `frames` frames, plus the newest ones
        assert most <= 5 * frames + 2, (fps, most)
        assert emitted == int((10_000 - 1) / fps / 0.5) - 3


def test_flush_a_file_shorter_than_a_window_gets_one_window_over_its_length():
    builder = WindowBuilder("cam", 4, 4.0, 2.0)
    times = np.arange(20) / 10.0  # 0 .. 1.9 s
    assert _run(builder, times) == []
    (window,) = builder.flush()
    assert (window.start, window.end, window.sequence) == (0.0, 1.9, 0)
    assert _indices(window) == _expected(times, 0.0, 1.9, 4)
    assert window.wall_end == 1001.9
    assert builder.flush() == [] and builder.pending_frames == 0
    with pytest.raises(RuntimeError, match="after flush"):
        builder.push(_frame(99, 5.0))


def test_flush_emits_the_next_window_only_when_frames_cover_half_of_it():
    times = np.arange(0, 61) / 10.0  # 0 .. 6.0 s: windows [0, 4] and [2, 6] complete, [4, 8] next
    builder = WindowBuilder("cam", 4, 4.0, 2.0)
    assert [w.start for w in _run(builder, times)] == [0.0, 2.0]
    (window,) = builder.flush()  # frames up to 6.0 cover half of [4, 8]
    assert (window.start, window.end, window.sequence) == (4.0, 8.0, 2)
    assert _indices(window) == [45, 55, 60, 60]
    builder = WindowBuilder("cam", 4, 4.0, 3.0)
    assert [w.start for w in _run(builder, times[:50])] == [0.0]  # up to 4.9 s
    assert builder.flush() == []  # less than half of [3, 7]
    builder = WindowBuilder("cam", 4, 4.0, 3.0)
    assert [w.start for w in _run(builder, times[:51])] == [0.0]  # up to 5.0 s
    assert [(w.start, w.end) for w in builder.flush()] == [(3.0, 7.0)]  # half of [3, 7]
    assert WindowBuilder("cam", 4, 4.0, 2.0).flush() == []  # no frame at all
    single = WindowBuilder("cam", 3, 4.0, 2.0)
    single.push(_frame(0, 0.0))
    (window,) = single.flush()
    assert (window.start, window.end) == (0.0, 0.0) and _indices(window) == [0, 0, 0]


def test_the_same_frames_give_the_same_windows_and_late_frames_are_ignored():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.0, 0.1, 300))

    def run():
        builder = WindowBuilder("cam", 8, 1.5, 0.7)
        windows = _run(builder, times) + builder.flush()
        return [(w.sequence, w.start, w.end, w.wall_end, w.clip.tobytes()) for w in windows]

    assert run() == run()
    builder = WindowBuilder("cam", 2, 1.0, 1.0)
    builder.push(_frame(0, 0.5))
    assert builder.push(_frame(1, 0.2)) == [] and builder.pending_frames == 1


def test_nearest_prefers_the_earlier_frame_on_ties_and_repeats():
    times = np.array([0.0, 1.0, 1.0, 2.0])
    assert nearest(times, np.array([-1.0, 0.5, 1.0, 1.4, 1.5, 3.0])).tolist() == [0, 0, 1, 1, 1, 3]
    assert nearest(np.array([0.0, 5.0, 5.0]), np.array([6.0])).tolist() == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 1.0, 1.0), "frames per window"), ((4, 0.0, 1.0), "window"), ((4, 1.0, math.nan), "stride")],
)
def test_bad_window_settings_are_one_clear_line(args, message):
    with pytest.raises(StrgError, match=message):
        WindowBuilder("cam", *args)


def test_geometry_and_windows_import_no_torch():
    code = (
        "import sys, strg_deploy.stream.geometry, strg_deploy.stream.windows; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- real clips


def _windows_of(path: Path, frames: int, window: float, stride: float, stream: int | None = None, keep=None):
    """Decode ``path`` through Geometry(crop) to Frames (media time from the first frame) and window them.
    ``keep(index) -> bool`` drops frames (a variable frame rate). -> (windows, last media time, size)."""
    builder = WindowBuilder(path.name, frames, window, stride)
    windows, first, last = [], None, 0.0
    with open_video(path, stream) as reader:
        plan = Geometry(32).plan(*reader.size)
        for index, decoded in enumerate(reader.frames(size=plan.decode_size)):
            if keep is not None and not keep(index):
                continue
            first = decoded.time if first is None else first
            last = decoded.time - first
            frame = Frame(path.name, plan.apply(decoded.image), last, 0.0, index, plan.transform, reader.size)
            windows.extend(builder.push(frame))
    return windows + builder.flush(), last, reader.size


def _expected_spans(last: float, window: float, stride: float) -> list[tuple[float, float]]:
    if last < window:
        return [(0.0, last)]
    complete = math.floor((last - window) / stride + 1e-9) + 1
    spans = [(k * stride, k * stride + window) for k in range(complete)]
    if last >= complete * stride + window / 2:
        spans.append((complete * stride, complete * stride + window))
    return spans


@needs_videos
@pytest.mark.parametrize(
    ("name", "stream", "keep"),
    [
        ("arm_wrestling_h264_340x256.mp4", None, None),  # 28 fps, 10 s
        ("arm_wrestling_h264_340x256.mp4", None, lambda i: (i * 7919) % 13 < 5),  # a variable rate
        ("flower_vp8_vorbis_960x540.webm", None, None),  # WebM, millisecond timestamps, audio
        ("eye_makeup_mpeg4_mp3_320x240.avi", None, None),  # the first frame is at 0.04 s
        ("nasa_two_video_streams.mp4", 0, None),  # 320x180 at 25 fps
        ("nasa_two_video_streams.mp4", 1, None),  # 480x270 at 29.97 fps
    ],
)
def test_real_clips_give_windows_at_the_times_their_duration_implies(name, stream, keep):
    windows, last, size = _windows_of(VIDEOS / name, 4, 2.0, 1.5, stream, keep)
    assert last > 2.0
    assert [(w.start, w.end) for w in windows] == pytest.approx(_expected_spans(last, 2.0, 1.5))
    assert all(w.clip.shape == (3, 4, 32, 32) and w.source_size == size for w in windows)
    assert len({w.clip[:, 0].tobytes() for w in windows}) == len(windows)  # the video moves on


@needs_videos
def test_a_rotated_clip_shorter_than_a_window_gives_one_portrait_window():
    windows, last, size = _windows_of(VIDEOS / "keyboard_rotated90_h264_568x320.mov", 4, 2.0, 1.0)
    assert size == (320, 568)
    (window,) = windows
    assert (window.start, window.end) == (0.0, pytest.approx(last)) and last == pytest.approx(2 / 30)
    assert window.source_size == (320, 568)
    # the crop's corners map inside the portrait frame: full width, centred vertically
    corners = window.transform.to_source(np.array([0, 0, 32, 32]))
    np.testing.assert_allclose(corners, [0, (568 - 320) / 2, 320, (568 + 320) / 2], atol=10)
