"""Sources of `strg infer`: URL masking, the redactor, files, globs, RTSP URLs and the sources file."""

from __future__ import annotations

from pathlib import Path

import pytest

from strg_deploy.errors import StrgError
from strg_deploy.stream.sources import Redactor, is_live_url, mask_url, parse_sources


def test_mask_url_hides_user_and_password_only():
    assert mask_url("rtsp://admin:s3cret@10.0.0.5:554/h264?ch=1") == "rtsp://***:***@10.0.0.5:554/h264?ch=1"
    assert mask_url("rtsp://admin@cam/x") == "rtsp://***@cam/x"
    assert mask_url("rtsps://u:p%40ss@cam/a@b") == "rtsps://***:***@cam/a@b"  # an @ in the path stays
    assert mask_url("rtsp://cam.local/live") == "rtsp://cam.local/live"
    assert mask_url("clips/a@b.mp4") == "clips/a@b.mp4"
    assert mask_url("/videos/x.mp4") == "/videos/x.mp4"


def test_redactor_masks_url_userinfo_password_and_unknown_logins():
    url = "rtsp://admin:p%40ss:w0rd@10.0.0.5/live"  # password "p@ss:w0rd", percent-encoded
    redact = Redactor([url, "clips/a.mp4", "rtsp://cam/x"], plain=["plain-token"])
    message = (
        f"Server returned 401 Unauthorized: '{url}'; decoded rtsp://admin:p@ss:w0rd@10.0.0.5/live; "
        "userinfo admin:p%40ss:w0rd; password p@ss:w0rd and p%40ss:w0rd; token plain-token; "
        "other rtsp://bob:hunter2@cam2/x"
    )
    out = redact.text(message)
    for secret in ("p%40ss", "p@ss", "w0rd", "plain-token", "hunter2", "bob"):
        assert secret not in out
    assert "'rtsp://***:***@10.0.0.5/live'" in out
    assert "rtsp://***:***@cam2/x" in out
    assert (
        redact("no secret here: rtsp://cam/live clips/a.mp4") == "no secret here: rtsp://cam/live clips/a.mp4"
    )


def test_files_globs_urls_names_and_order(tmp_path: Path):
    for name in ("b.mp4", "a.mp4", "c.avi"):
        (tmp_path / name).write_bytes(b"x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.mp4").write_bytes(b"x")
    specs, problems = parse_sources(
        [
            str(tmp_path / "*.mp4"),
            str(other / "a.mp4"),
            "rtsp://u:pw@cam.local:554/streams/main",
            "rtsp://cam2/",
        ]
    )
    assert problems == []
    assert [s.name for s in specs] == ["a", "b", "a-2", "cam.local_streams_main", "cam2"]
    assert [s.url for s in specs[:3]] == [
        str(tmp_path / "a.mp4"),
        str(tmp_path / "b.mp4"),
        str(other / "a.mp4"),
    ]
    assert [s.live for s in specs] == [False, False, False, True, True]
    assert specs[3].url == "rtsp://u:pw@cam.local:554/streams/main"
    assert specs[3].display == "rtsp://***:***@cam.local:554/streams/main"
    assert all(s.options == {} for s in specs)
    assert is_live_url("RTSP://cam/x") and not is_live_url("http://host/x.mp4")


def test_realtime_files_are_live(tmp_path: Path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    specs, _ = parse_sources([str(tmp_path / "a.mp4")], realtime=True)
    assert specs[0].live


def test_missing_file_empty_glob_folder_and_scheme_are_problems(tmp_path: Path):
    (tmp_path / "ok.mp4").write_bytes(b"x")
    specs, problems = parse_sources(
        [
            str(tmp_path / "missing.mp4"),
            str(tmp_path / "*.mkv"),
            str(tmp_path),
            "udp://u:pw@239.0.0.1:1234",
            str(tmp_path / "ok.mp4"),
        ]
    )
    assert [s.name for s in specs] == ["ok"]
    assert len(problems) == 4
    assert "missing.mp4: no such file" in problems[0]
    assert "*.mkv: no file matches" in problems[1]
    assert "is a folder" in problems[2]
    assert "unsupported URL scheme 'udp'" in problems[3] and "pw" not in problems[3]


SOURCES = """\
# cameras
name=door  rtsp://${CAM_USER}:${CAM_PW}@10.0.0.5:554/h264   geometry=letterbox

name=yard  rtsp://10.0.0.6/live  user_env=YARD_USER password_env=YARD_PW
  clips/*.mp4   roi=0,10,64,32
"my clip.mp4"  geometry=crop
rtsp://10.0.0.7/live  password=oops
name=bad/name  clips/a.mp4
rtsp://${NOPE}@10.0.0.8/x
rtsp://10.0.0.9/x  geometry=fisheye
clips/a.mp4  geometry=roi
"""


def test_sources_file(tmp_path: Path):
    (tmp_path / "clips").mkdir()
    for name in ("clips/a.mp4", "clips/b.mp4", "my clip.mp4"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "cams.txt"
    listing.write_text(SOURCES)
    environ = {"CAM_USER": "admin", "CAM_PW": "p@ss/word", "YARD_USER": "yard", "YARD_PW": "s3cret:x"}
    specs, problems = parse_sources(["rtsp://10.0.0.5:554/h264"], listing, environ=environ)
    assert [s.name for s in specs] == ["10.0.0.5_h264", "door", "yard", "a", "b", "my_clip"]
    door, yard = specs[1], specs[2]
    assert door.url == "rtsp://admin:p%40ss%2Fword@10.0.0.5:554/h264"  # percent-encoded in the userinfo
    assert door.display == "rtsp://***:***@10.0.0.5:554/h264"
    assert door.options == {"geometry": "letterbox"} and door.live
    assert yard.url == "rtsp://yard:s3cret%3Ax@10.0.0.6/live"
    assert specs[3].url == str(tmp_path / "clips" / "a.mp4")  # relative to the sources file
    assert specs[3].options == {"geometry": "roi", "roi": (0, 10, 64, 32)}
    assert specs[5].options == {"geometry": "crop"}
    assert len(problems) == 5
    assert problems[0].startswith(f"{listing}:7: unknown option 'password'") and "oops" not in problems[0]
    assert problems[1].startswith(f"{listing}:8: stream name 'bad/name'")
    assert problems[2].startswith(f"{listing}:9: ") and "NOPE is not set" in problems[2]
    assert problems[3].startswith(f"{listing}:10: ") and "geometry must be one of" in problems[3]
    assert problems[4].startswith(f"{listing}:11: ") and "geometry=roi needs roi=" in problems[4]
    for line in problems:
        assert "p@ss" not in line and "s3cret" not in line


def test_missing_login_variables_are_problems(tmp_path: Path):
    listing = tmp_path / "cams.txt"
    listing.write_text("rtsp://cam/x user_env=U password_env=P\nrtsp://cam/y password_env=P\n")
    specs, problems = parse_sources([], listing, environ={"U": "me"})
    assert specs == []
    assert "environment variable P is not set" in problems[0]
    assert "password_env needs user_env" in problems[1]


def test_unreadable_sources_file_raises(tmp_path: Path):
    with pytest.raises(StrgError, match="cannot read sources file"):
        parse_sources([], tmp_path / "nope.txt")
