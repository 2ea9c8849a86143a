"""Inputs that are not whole videos: still images under a video's name, truncated MP4s, frame patterns."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from strg_deploy.data.info import info_rows, row_warning, video_info
from strg_deploy.data.video import is_frame_pattern, open_video
from strg_deploy.errors import StrgError

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")
FILM = "people_bw_film_h264_aac_640x480.mp4"  # 185 frames declared, its moov index at the front


def picture(seed: int = 0) -> np.ndarray:
    """uint8 [48, 64, 3]: a random RGB picture."""
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


# extension: (FFmpeg muxer, encoder, pixel format)
IMAGE_CODECS = {
    "png": ("image2", "png", "rgb24"),
    "jpg": ("image2", "mjpeg", "yuvj420p"),
    "bmp": ("image2", "bmp", "bgr24"),
    "gif": ("gif", "gif", "rgb8"),
}


def write_pictures(path: Path, frames: int = 1) -> Path:
    """Encode ``frames`` pictures with FFmpeg (through PyAV) into one image file, as its extension says."""
    muxer, codec, pix_fmt = IMAGE_CODECS[path.suffix[1:]]
    with av.open(str(path), "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture(i), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def still_as_mp4(folder: Path, ext: str = "png") -> Path:
    """A real image file renamed to ``.mp4``."""
    renamed = folder / f"still_{ext}.mp4"
    os.replace(write_pictures(folder / f"still.{ext}"), renamed)
    return renamed


def truncated_film(folder: Path, fraction: float = 0.3) -> Path:
    data = (VIDEOS / FILM).read_bytes()
    path = folder / "film_cut.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "gif"])
def test_a_still_image_is_not_a_video_whatever_its_name(tmp_path, ext):
    renamed = still_as_mp4(tmp_path, ext)
    with pytest.raises(StrgError, match="it is a still image") as caught:
        open_video(renamed)
    message = str(caught.value)
    assert message.startswith(f"cannot open video {renamed}: ") and "\n" not in message
    assert "%05d.jpg" in message  # says how frames are read instead
    named = tmp_path / f"plain.{ext}"
    os.replace(renamed, named)
    with pytest.raises(StrgError, match="it is a still image"):
        open_video(named)


def test_animations_and_frame_folders_stay_videos(tmp_path):
    with pytest.raises(StrgError, match="still image"):
        open_video(write_pictures(tmp_path / "one.gif", 1))
    with open_video(write_pictures(tmp_path / "three.gif", 3)) as video:
        assert video.count_frames().frames == 3
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        av.VideoFrame.from_ndarray(picture(i), format="rgb24").save(str(folder / f"{i + 1:05d}.png"))
    pattern = str(folder / "%05d.png")
    assert is_frame_pattern(pattern) and not is_frame_pattern(folder / "00001.png")
    with open_video(pattern, fps=12) as video:
        assert video.count_frames().frames == 4 and video.container_format == "image2"


@needs_videos
def test_a_truncated_mp4_is_flagged_and_its_duration_is_what_it_holds(tmp_path):
    cut = truncated_film(tmp_path)
    with open_video(cut) as video:
        assert video.truncated and video.declared_frames == 185
        assert video.declared_duration == pytest.approx(6.166, abs=1e-3)
        counted = video.count_frames()
        assert (counted.frames, counted.damaged) == (58, 0)
        # the sampling of a training clip reads duration: the 2 s there, not the 6.2 s declared
        assert counted.last_time < video.duration < counted.last_time + 0.2
    with open_video(VIDEOS / FILM) as whole:
        assert not whole.truncated and whole.duration == whole.declared_duration

    row = video_info(cut)
    assert (row["frames_decoded"], row["declared_frames"], row["missing_frames"]) == (58, 185, 127)
    assert row["truncated"] is True and row["damaged_frames"] == 0
    warning = row_warning(row)
    assert warning.startswith(f"{cut}: 127 of the 185 frames it declares are missing (58 decoded)")
    assert warning.endswith(
        "; the file is truncated (it ends before the data its index points to); "
        "training reads the frames that decode"
    )
    damaged = video_info(VIDEOS / "corrupted_packet_1280x720.mp4")  # 50 declared: 49 decoded + 1 damaged
    assert (damaged["missing_frames"], damaged["truncated"], row_warning(damaged)) == (0, False, None)


def test_info_asks_for_fps_on_frame_patterns(tmp_path):
    for i in range(5):
        av.VideoFrame.from_ndarray(picture(i), format="rgb24").save(str(tmp_path / f"{i:05d}.jpg"))
    pattern = str(tmp_path / "%05d.jpg")
    (error,) = info_rows([pattern])
    assert error["error"].startswith(f"cannot open video {pattern}: ") and "pass --fps" in error["error"]
    (row,) = info_rows([pattern], fps=12)
    assert row["frames_decoded"] == 5 and row["nominal_fps"] == pytest.approx(12.0)
    assert row["measured_fps"] == pytest.approx(12.0) and row["missing_frames"] == 0
