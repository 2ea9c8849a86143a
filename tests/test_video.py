"""Video decoding: the real clips in ../shared/videos, seeking, colours, frame folders and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from strg_deploy.data.info import info_rows, video_info
from strg_deploy.data.video import Clip, DecodedFrame, open_video
from strg_deploy.errors import StrgError

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")

# name: (frames decoded, (width, height) after rotation, nominal fps, declared frames, codec)
CLIPS = {
    "arm_wrestling_h264_340x256.mp4": (280, (340, 256), 28.0, 280, "h264"),
    "av1_640x360.mkv": (125, (640, 360), 25.0, 0, "av1"),
    "corrupted_packet_1280x720.mp4": (49, (1280, 720), 10.0, 50, "h264"),
    "eye_makeup_mpeg4_mp3_320x240.avi": (164, (320, 240), 25.0, 164, "mpeg4"),
    "flower_vp8_vorbis_960x540.webm": (150, (960, 540), 30000 / 1001, 0, "vp8"),
    "h264_10bit_200x200.mp4": (30, (200, 200), 30.0, 30, "h264"),
    "hevc_128x128.mp4": (10, (128, 128), 10.0, 10, "hevc"),
    "keyboard_rotated90_h264_568x320.mov": (3, (320, 568), 30.0, 3, "h264"),
    "nasa_two_video_streams.mp4": (325, (320, 180), 25.0, 325, "h264"),
    "out_of_order_pts_50x50.mov": (4, (50, 50), 32.0, 4, "h264"),
    "people_bw_film_h264_aac_640x480.mp4": (185, (640, 480), 30.0, 185, "h264"),
    "sign_language_h264_yuvj420p_640x480.mkv": (77, (640, 480), 30.0, 0, "h264"),
}
SMALL = (40, 30)


def clip_path(name: str) -> Path:
    return VIDEOS / name


def decode_all(name: str, size=SMALL, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    with open_video(clip_path(name), **kwargs) as video:
        frames = list(video.frames(size=size))
    return np.array([f.time for f in frames]), np.stack([f.image for f in frames])


@needs_videos
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_every_clip_decodes_with_its_frame_count_size_and_times(name):
    count, size, fps, declared, codec = CLIPS[name]
    with open_video(clip_path(name)) as video:
        assert video.size == size  # read before any frame: decoded once for the rotation, then reused
        assert video.codec == codec
        assert video.declared_frames == declared
        assert video.nominal_fps == pytest.approx(fps)
        frames = list(video.frames(size=SMALL))
        damaged = video.damaged_frames
    assert len(frames) == count
    assert all(isinstance(f, DecodedFrame) for f in frames)
    assert all(f.image.shape == (SMALL[1], SMALL[0], 3) and f.image.dtype == np.uint8 for f in frames)
    times = np.array([f.time for f in frames])
    assert np.all(np.diff(times) > 0)
    index = np.round(times * fps).astype(int)
    # Matroska and WebM store milliseconds: times are k / fps to within a millisecond.
    np.testing.assert_allclose(times, index / fps, atol=1.5e-3)
    expected_index = np.arange(count)
    if name.startswith("corrupted"):
        expected_index = np.delete(np.arange(50), 30)  # the damaged packet is the frame at 3.0 s
    if name.endswith(".avi"):
        expected_index = np.arange(1, count + 1)  # the AVI demuxer presents the first frame at pts 1
    np.testing.assert_array_equal(index, expected_index)
    assert damaged == (1 if name.startswith("corrupted") else 0)


@needs_videos
def test_out_of_order_packets_give_sorted_times():
    times, _ = decode_all("out_of_order_pts_50x50.mov")
    np.testing.assert_allclose(times, [0.0, 0.03125, 0.0625, 0.09375], atol=1e-9)
    demuxed = [p.pts for p in av.open(str(clip_path("out_of_order_pts_50x50.mov"))).demux(video=0) if p.size]
    assert demuxed != sorted(demuxed)  # the file really stores them out of order


@needs_videos
def test_frames_keep_the_decoders_presentation_order_when_pts_are_unreliable():
    # AVI timestamps are guessed by the demuxer; with this XviD stream its pts go 1, 2, 4, 3, 5, 7, 6...
    # The decoder's output order is the display order (consecutive frames differ least in it); sorting by
    # those pts would shuffle the pictures. The reader takes the dts there, as FFmpeg's best effort does.
    name = "eye_makeup_mpeg4_mp3_320x240.avi"
    raw = list(av.open(str(clip_path(name))).decode(video=0))
    assert [f.pts for f in raw[:7]] == [1, 2, 4, 3, 5, 7, 6]
    decoder_order = np.stack([f.to_ndarray(format="rgb24") for f in raw]).astype(np.int16)
    by_pts = decoder_order[np.argsort([f.pts for f in raw], kind="stable")]

    def roughness(images):
        return np.abs(np.diff(images, axis=0)).mean()

    assert roughness(decoder_order) < 0.8 * roughness(by_pts)
    times, images = decode_all(name, size=None)
    np.testing.assert_array_equal(images, decoder_order)
    np.testing.assert_allclose(times, np.arange(1, 165) / 25, atol=1e-9)


@needs_videos
def test_arm_wrestling_times_are_k_over_28():
    times, _ = decode_all("arm_wrestling_h264_340x256.mp4")
    assert len(times) == 280
    np.testing.assert_allclose(times, np.arange(280) / 28, atol=1e-3)
    with open_video(clip_path("arm_wrestling_h264_340x256.mp4")) as video:
        np.testing.assert_allclose(video.frame_times(), times, atol=1e-9)  # from packets, no decoding
        counted = video.count_frames()
        assert video.duration == pytest.approx(10.0)
    assert (counted.frames, counted.damaged) == (280, 0)
    assert counted.measured_fps == pytest.approx(28.0)


@needs_videos
def test_deferred_frames_convert_to_the_same_images_in_any_order():
    path = clip_path("keyboard_rotated90_h264_568x320.mov")  # rotation applies when converting
    with open_video(path) as video:
        eager = list(video.frames(size=(40, 72)))
        deferred = list(video.deferred_frames(size=(40, 72)))
    assert [d.time for d in deferred] == [e.time for e in eager]
    for d, e in reversed(list(zip(deferred, eager, strict=True))):  # after the reader moved on and closed
        np.testing.assert_array_equal(d.image(), e.image)
    assert deferred[0].image().shape == (72, 40, 3)


@needs_videos
def test_second_video_stream_and_bad_stream_index():
    path = clip_path("nasa_two_video_streams.mp4")
    with open_video(path, stream=1) as video:
        assert video.size == (480, 270)
        assert video.stream_index == 1
        assert video.nominal_fps == pytest.approx(30000 / 1001)
    with open_video(path) as video:
        assert video.size == (320, 180)
    for bad in (2, -1):
        with pytest.raises(StrgError, match=r"has 2 video streams.*no video stream"):
            open_video(path, stream=bad)


@needs_videos
def test_damaged_packet_costs_one_frame_and_decoding_goes_on():
    with open_video(clip_path("corrupted_packet_1280x720.mp4"), threads=1) as video:
        times = np.array([f.time for f in video.frames(size=(32, 18))])
        assert video.damaged_frames == 1
        ((damaged_time, position),) = video.damaged_at
    assert len(times) == 49
    assert damaged_time == pytest.approx(3.0) and position > 0
    assert not np.any(np.isclose(times, 3.0)) and np.isclose(times, 3.1).any()
    assert times[-1] == pytest.approx(4.9)  # frames after the damaged one still decode


@needs_videos
def test_rotation_is_applied_after_scaling_at_the_pre_rotation_size():
    name = "keyboard_rotated90_h264_568x320.mov"
    with open_video(clip_path(name)) as video:
        assert video.rotation == -90 and video.coded_size == (568, 320)
        full = next(iter(video.frames())).image
        half = next(iter(video.frames(size=(160, 284)))).image
    assert full.shape == (568, 320, 3) and half.shape == (284, 160, 3)
    coded = next(av.open(str(clip_path(name))).decode(video=0)).to_ndarray(format="rgb24")
    np.testing.assert_array_equal(full, np.rot90(coded, -1))  # -90: a quarter turn clockwise
    pooled = full.reshape(284, 2, 160, 2, 3).mean(axis=(1, 3))
    error = np.abs(half - pooled).mean()
    assert error < 3.0
    assert error < np.abs(half - pooled[::-1, ::-1]).mean() / 4


def luma_slope(name: str) -> float:
    """Slope of the decoded RGB's BT.601 luma against the stored luma plane (8-bit units)."""
    frame = next(av.open(str(clip_path(name))).decode(video=0))
    plane = frame.planes[0]
    if frame.format.name.endswith("10le"):
        y = np.frombuffer(plane, np.uint16).reshape(frame.height, -1)[:, : frame.width] / 4.0
    else:
        y = np.frombuffer(plane, np.uint8).reshape(frame.height, -1)[:, : frame.width].astype(np.float64)
    with open_video(clip_path(name)) as video:
        rgb = next(iter(video.frames())).image.astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    keep = (luma > 8) & (luma < 247)  # away from clipping
    return float(np.polyfit(y[keep], luma[keep], 1)[0])


@needs_videos
def test_full_range_and_10_bit_convert_with_their_own_range():
    assert luma_slope("sign_language_h264_yuvj420p_640x480.mkv") == pytest.approx(1.0, abs=0.02)
    assert luma_slope("arm_wrestling_h264_340x256.mp4") == pytest.approx(255 / 219, abs=0.02)
    assert luma_slope("h264_10bit_200x200.mp4") == pytest.approx(255 / 219, abs=0.02)
    for name in ("sign_language_h264_yuvj420p_640x480.mkv", "h264_10bit_200x200.mp4"):
        reference = next(av.open(str(clip_path(name))).decode(video=0)).to_ndarray(format="rgb24")
        with open_video(clip_path(name)) as video:
            np.testing.assert_array_equal(next(iter(video.frames())).image, reference)


@needs_videos
def test_colours_are_sensible():
    _, pattern = decode_all("hevc_128x128.mp4", size=(64, 64))
    pixels = pattern.reshape(-1, 3).astype(int)
    assert (pixels.max(axis=1) - pixels.min(axis=1) > 150).mean() > 0.5  # saturated test pattern
    _, film = decode_all("people_bw_film_h264_aac_640x480.mp4", size=(64, 48))
    film = film[::20].astype(int)
    assert np.abs(film[..., 0] - film[..., 1]).mean() < 2 and np.abs(film[..., 1] - film[..., 2]).mean() < 2
    assert 30 < film.mean() < 200


READ_AT_CLIPS = [
    "arm_wrestling_h264_340x256.mp4",
    "flower_vp8_vorbis_960x540.webm",
    "sign_language_h264_yuvj420p_640x480.mkv",
    "av1_640x360.mkv",
    "eye_makeup_mpeg4_mp3_320x240.avi",
    "hevc_128x128.mp4",
    "people_bw_film_h264_aac_640x480.mp4",
]


@needs_videos
@pytest.mark.parametrize("name", READ_AT_CLIPS)
def test_read_at_equals_picking_from_a_full_decode(name):
    times, images = decode_all(name)
    rng = np.random.default_rng(len(name))
    requests = [
        rng.uniform(-0.1, times[-1] + 0.3, size=6),  # unsorted, some before the start or past the end
        np.sort(rng.uniform(0, times[-1], size=8)),
        np.linspace(0.6 * times[-1], times[-1], 5),  # starts late: a seek
        times[[len(times) - 1, 0, len(times) // 2, len(times) // 2]],  # exact times, repeated, reversed
    ]
    with open_video(clip_path(name)) as video:
        for wanted in requests:
            clip = video.read_at(wanted, size=SMALL)
            expected = np.maximum(np.searchsorted(times, wanted + 1e-4, side="right") - 1, 0)
            assert isinstance(clip, Clip) and clip.damaged == 0
            assert clip.images.shape == (len(wanted), SMALL[1], SMALL[0], 3)
            np.testing.assert_array_equal(clip.times, times[expected])
            np.testing.assert_array_equal(clip.images, images[expected])


@needs_videos
def test_read_at_clamps_keeps_request_order_and_accepts_no_times():
    with open_video(clip_path("arm_wrestling_h264_340x256.mp4")) as video:
        clip = video.read_at([1e6, -5.0, 5.0])
        np.testing.assert_allclose(clip.times, [279 / 28, 0.0, 5.0], atol=1e-9)
        assert clip.images.shape == (3, 256, 340, 3)
        assert video.read_at([], size=SMALL).images.shape == (0, SMALL[1], SMALL[0], 3)
        with pytest.raises(StrgError, match="finite"):
            video.read_at([0.0, float("nan")])
        with pytest.raises(StrgError, match="width, height"):
            video.read_at([0.0], size=(0, 10))


@needs_videos
def test_a_new_read_ends_a_running_iterator():
    with open_video(clip_path("hevc_128x128.mp4")) as video:
        frames = video.frames(size=SMALL)
        next(frames)
        video.read_at([0.5])
        with pytest.raises(RuntimeError, match="another read"):
            next(frames)
        assert len(list(video.frames(size=SMALL))) == 10


@needs_videos
def test_unreadable_files_raise_with_path_and_reason(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip_path("arm_wrestling_h264_340x256.mp4").read_bytes()[:2048])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    for path in (empty, truncated, text, tmp_path / "missing.mp4"):
        with pytest.raises(StrgError, match=r"cannot open video .*: \S") as caught:
            open_video(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(StrgError, match="No such file"):
        open_video(tmp_path / "missing.mp4")


def test_a_file_without_video_raises(tmp_path):
    import wave

    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 800)
    with pytest.raises(StrgError, match="no video stream"):
        open_video(path)


def write_frames(folder: Path, first: int, colours: list[tuple[int, int, int]]) -> None:
    for i, colour in enumerate(colours):
        image = np.empty((48, 64, 3), dtype=np.uint8)
        image[:] = colour
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(folder / f"{first + i:05d}.jpg"))


def test_frame_folder_pattern(tmp_path):
    colours = [(200, 200, 200), (30, 30, 30), (180, 60, 40), (40, 160, 60), (128, 128, 128)]
    write_frames(tmp_path, 3, colours)  # numbering starts at 3: found, not assumed
    pattern = str(tmp_path / "%05d.jpg")
    with pytest.raises(StrgError, match="needs its frame rate"):
        open_video(pattern)
    with pytest.raises(StrgError, match="no file"):
        open_video(str(tmp_path / "%04d.png"), fps=12)
    with open_video(pattern, fps=12) as video:
        assert video.size == (64, 48) and video.nominal_fps == 12.0 and video.codec == "mjpeg"
        frames = list(video.frames())
        np.testing.assert_allclose(video.frame_times(), np.arange(5) / 12, atol=1e-9)
        clip = video.read_at([0.25, 0.0], size=(32, 24))
    np.testing.assert_allclose([f.time for f in frames], np.arange(5) / 12, atol=1e-9)
    means = np.array([f.image.reshape(-1, 3).mean(axis=0) for f in frames])
    np.testing.assert_allclose(means, colours, atol=6)  # full-range JPEG: no range squeeze or stretch
    np.testing.assert_allclose(clip.times, [3 / 12, 0.0], atol=1e-9)
    np.testing.assert_allclose(clip.images.reshape(2, -1, 3).mean(axis=1), [colours[3], colours[0]], atol=6)


@needs_videos
def test_info_rows_describe_videos_and_turn_errors_into_rows(tmp_path):
    rows = info_rows([clip_path("keyboard_rotated90_h264_568x320.mov"), tmp_path / "missing.mp4"])
    row, error = rows
    assert (row["width"], row["height"], row["coded_width"], row["coded_height"]) == (320, 568, 568, 320)
    assert row["rotation"] == -90 and row["codec"] == "h264" and row["pixel_format"] == "yuv420p"
    assert row["frames_decoded"] == 3 and row["damaged_frames"] == 0
    assert row["measured_fps"] == pytest.approx(30.0) and row["nominal_fps"] == pytest.approx(30.0)
    assert error["path"] == str(tmp_path / "missing.mp4") and "No such file" in error["error"]
    damaged = video_info(clip_path("corrupted_packet_1280x720.mp4"))
    assert (damaged["frames_decoded"], damaged["damaged_frames"], damaged["declared_frames"]) == (49, 1, 50)
    assert damaged["container"].startswith("mov") and damaged["duration"] == pytest.approx(5.0)


def test_video_modules_do_not_import_torch():
    code = (
        "import sys\nimport strg_deploy.data.video, strg_deploy.data.info\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@needs_videos
def test_without_a_reorder_window_each_frame_leaves_as_it_is_decoded():
    """Live streams set reorder_window = 0: the first frame comes out after one decoded frame, not five,
    and the times are those of the default reader (this clip's decoder already gives presentation order)."""
    path = VIDEOS / "arm_wrestling_h264_340x256.mp4"
    with open_video(path, threads=1) as video:
        default = [f.time for f in video.frames(size=(34, 26))]
    with open_video(path, threads=1) as video:
        video.reorder_window = 0
        decoded = []
        original = video._from_start

        def counting():
            for frame in original():
                decoded.append(frame)
                yield frame

        video._from_start = counting
        frames = video.frames(size=(34, 26))
        next(frames)
        assert len(decoded) == 1
        times = [default[0]] + [f.time for f in frames]
    assert times == default


def test_a_camera_opens_without_stream_probing_and_knows_its_size(rtsp_server):
    """rtsp:// sources skip FFmpeg's probing (RTSP_OPTIONS): the session description gives codec and size."""
    server = rtsp_server()
    with open_video(server.url("live"), timeout=(5, 5), threads=1) as video:
        assert video.open_options["probesize"] == "32" and video.open_options["rtsp_transport"] == "tcp"
        assert video.size == (320, 240)
        frames = video.frames(size=(32, 24))
        times = [next(frames).time for _ in range(3)]
    assert times == sorted(times) and times[0] == 0.0
