"""`strg data info` and `strg data synth` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
runner = CliRunner()


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")
def test_data_info_rows_and_errors_as_rows(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    clips = [VIDEOS / "keyboard_rotated90_h264_568x320.mov", VIDEOS / "corrupted_packet_1280x720.mp4", bad]
    result = runner.invoke(app, ["data", "info", "--json", *map(str, clips)])
    assert result.exit_code == 1  # one row has an error
    rows = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in rows] == [c.name for c in clips]
    rotated, damaged, error = rows
    assert (rotated["width"], rotated["height"], rotated["frames_decoded"]) == (320, 568, 3)
    assert (damaged["frames_decoded"], damaged["damaged_frames"]) == (49, 1)
    assert error["error"].startswith(f"cannot open video {bad}")
    table = runner.invoke(app, ["data", "info", str(clips[0])])
    assert table.exit_code == 0 and "320x568" in table.stdout


def test_data_synth_writes_a_readable_benchmark(tmp_path):
    out = tmp_path / "synth"
    args = ["data", "synth", str(out), "--train", "6", "--validation", "2", "--size", "48", "--frames", "8"]
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 training and 2 validation videos" in result.stdout
    train = read_something_something_v2(out, "train")
    assert len(train.records) == 6 and not train.allow_flip
    tracks = read_box_tracks(out / "boxes.jsonl")
    assert len(tracks) == 8 and all(t.num_frames == 8 for t in tracks.values())


def test_data_synth_bad_size_is_one_line(tmp_path):
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--train", "1", "--size", "4"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")
def test_data_info_refuses_stills_and_flags_truncated_files(tmp_path):
    from test_data_inputs import still_as_mp4, truncated_film

    still, cut = still_as_mp4(tmp_path), truncated_film(tmp_path)
    result = runner.invoke(app, ["data", "info", "--json", str(cut), str(still)])
    assert result.exit_code == 1  # the still is an error row
    short, error = json.loads(result.stdout)
    assert (short["frames_decoded"], short["declared_frames"], short["missing_frames"]) == (58, 185, 127)
    assert short["truncated"] is True
    assert error["path"] == str(still) and "it is a still image (png" in error["error"]

    table = runner.invoke(app, ["data", "info", str(cut), str(still)])
    assert table.exit_code == 1 and "58/185!" in table.stdout
    lines = table.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"warning: {cut}: 127 of the 185 frames it declares")
    assert lines[1].startswith(f"error: cannot open video {still}: it is a still image")
    alone = runner.invoke(app, ["data", "info", str(cut)])
    assert alone.exit_code == 0 and "truncated" in alone.stderr  # a warning, not an error


def test_data_info_fps_reads_frame_patterns(tmp_path):
    for i in range(6):
        image = np.full((48, 64, 3), 40 * i, dtype=np.uint8)
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(tmp_path / f"{i + 1:05d}.jpg"))
    pattern = str(tmp_path / "%05d.jpg")
    missing = runner.invoke(app, ["data", "info", pattern])
    assert missing.exit_code == 1
    assert missing.stderr.strip().endswith(
        "a frame-folder pattern needs its frame rate: pass --fps "
        "(e.g. 12 for Something-Something v1 frames, 24 for Charades)"
    )
    result = runner.invoke(app, ["data", "info", "--json", "--fps", "24", pattern])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["frames_decoded"] == 6 and row["nominal_fps"] == pytest.approx(24.0)
    assert row["last_time"] == pytest.approx(5 / 24)
