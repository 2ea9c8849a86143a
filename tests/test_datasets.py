"""Dataset readers on small look-alike annotation files built here (the real ones are non-commercial)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strg_deploy.data.datasets import (
    BAD_ENTRY,
    DUPLICATE_ID,
    MISSING_VIDEO,
    NOT_A_VIDEO,
    OUTSIDE_CLASS,
    READERS,
    SEGMENT_NEGATIVE,
    SEGMENT_OUTSIDE,
    SEGMENT_PAST_END,
    SEGMENT_REVERSED,
    UNKNOWN_LABEL,
    Dataset,
    Segment,
    VideoRecord,
    read_box_tracks,
    read_charades,
    read_charades_classes,
    read_folders,
    read_something_something_v1,
    read_something_something_v2,
    ssv2_class_of_template,
)
from strg_deploy.errors import StrgError

# ---------------------------------------------------------------------------------------------------
# Fixture builders


def write_crlf_json(path: Path, data: object) -> None:
    """JSON as the official Something-Something files are: indented, CRLF line endings, raw UTF-8."""
    text = json.dumps(data, indent=1, ensure_ascii=False).replace("\n", "\r\n")
    path.write_bytes(text.encode("utf-8"))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


SSV2_CLASSES = {
    "Pushing something from left to right": "0",
    "Pushing something from right to left": "1",
    "Putting something on a surface": "2",
}


def ssv2_entry(vid: str, template: str, placeholders: list[str]) -> dict:
    text = template
    for p in placeholders:
        text = text.replace("[something]", p, 1)
    return {"id": vid, "label": text.lower(), "template": template, "placeholders": placeholders}


def make_ssv2(root: Path, ext: str = ".webm", videos: str = "videos", labels: str = "") -> Path:
    """Labels, train (6 entries: 4 usable, 1 unknown label, 1 missing video), validation, test."""
    ann = root / labels if labels else root
    ann.mkdir(parents=True, exist_ok=True)
    write_crlf_json(ann / "something-something-v2-labels.json", SSV2_CLASSES)
    train = [
        ssv2_entry("1", "Pushing [something] from left to right", ["tasse à café"]),
        ssv2_entry("2", "Pushing [something] from right to left", ["Äpfel"]),
        ssv2_entry("3", "Putting [something] on a surface", ["杯子"]),
        ssv2_entry("4", "Pushing [something] from left to right", ["a pen"]),
        ssv2_entry("5", "Juggling [something]", ["balls"]),  # not in the label list
        ssv2_entry("6", "Putting [something] on a surface", ["a cup"]),  # video missing
    ]
    write_crlf_json(ann / "something-something-v2-train.json", train)
    validation = [
        ssv2_entry("7", "Pushing [something] from right to left", ["crème brûlée"]),
        ssv2_entry("8", "Putting [something] on a surface", ["a box"]),
    ]
    write_crlf_json(ann / "something-something-v2-validation.json", validation)
    write_crlf_json(ann / "something-something-v2-test.json", [{"id": "9"}, {"id": "10"}])
    vdir = root / videos if videos else root
    for vid in ("1", "2", "3", "4", "5", "7", "8", "9", "10"):
        touch(vdir / f"{vid}{ext}")
    return root


SSV1_CLASSES = [
    "Pushing something from left to right",
    "Pushing something from right to left",
    "Holding something",
]


def make_ssv1(root: Path) -> Path:
    (root / "something-something-v1-labels.csv").write_bytes(("\r\n".join(SSV1_CLASSES) + "\r\n").encode())
    rows = [
        "100;Pushing something from left to right",
        "101;Holding something",
        "102;Pushing something from right to left",
        "",
        "103;Spinning something",  # unknown label
        "104 Holding something",  # no separator
        "105;Holding something",  # no frame folder
    ]
    (root / "something-something-v1-train.csv").write_bytes("\r\n".join(rows).encode())
    (root / "something-something-v1-validation.csv").write_text("106;Holding something\n", encoding="utf-8")
    (root / "something-something-v1-test.csv").write_text("107\n108\n", encoding="utf-8")
    for vid in ("100", "101", "102", "103", "104", "106", "107", "108"):
        for i in (1, 2, 3):
            touch(root / "20bn-something-something-v1" / vid / f"{i:05d}.jpg")
    return root


CHARADES_HEADER = [
    "id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
    "actions", "length",
]  # fmt: skip


def charades_row(vid: str, actions: str, length: str, description: str = "A person, then another.") -> list:
    script = "A person opens a door, and walks in."
    return [vid, "S1", "Kitchen", "6", "7", "Yes", script, "door;cup", description, actions, length]


def make_charades(root: Path, frames: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"c{i:03d} Class {i}, number {i}" for i in range(157)]
    (root / "Charades_v1_classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = [
        # c001 1-5 kept; c002 3->2 ends before it starts (dropped); c003 20-40 past length 30 (clipped)
        charades_row("AAA01", "c001 1.00 5.00;c002 3.00 2.00;c003 20.00 40.00", "30.00"),
        charades_row("BBB02", "", "12.5"),  # no actions: kept, all-zero target
        charades_row(
            "CCC03", "c156 0.00 12.60;c005 40.0 45.0;c006 -1.0 2.0", "20"
        ),  # start > length, start < 0
        charades_row("DDD04", "c999 1.0 2.0", "10"),  # unknown class code
        charades_row("EEE05", "c001 1.0", "10"),  # malformed action
        charades_row("FFF06", "c001 1.0 2.0", "n/a"),  # bad length
        charades_row("GGG07", "c010 0.5 3.5", "8.0"),  # no video
        charades_row("HHH08", "c010 0.5 3.5;c011 2.0 7.0", "8.0"),
        charades_row("III09", "c020 1.0 2.0", "9.0"),
        charades_row("JJJ10", "c020 1.0 2.0", "9.0"),
        charades_row("KKK11", "c021 1.0 2.0", "9.0"),
        charades_row("LLL12", "c022 1.0 2.0", "9.0"),
        charades_row("MMM13", "c023 1.0 2.0", "9.0"),
    ]
    test = [
        charades_row("TTT01", "c007 2.0 4.0", "10.0", description="Two lines,\nwith a comma."),
        charades_row("TTT02", "", "5.0"),
    ]
    for name, rows in (("Charades_v1_train.csv", train), ("Charades_v1_test.csv", test)):
        buf = io.StringIO()
        writer = csv.writer(buf)  # CRLF rows, quotes around fields with commas
        writer.writerow(CHARADES_HEADER)
        writer.writerows(rows)
        (root / name).write_bytes(buf.getvalue().encode("utf-8"))
    for vid in ("AAA01", "BBB02", "CCC03", "DDD04", "EEE05", "FFF06", "HHH08", "III09", "JJJ10", "KKK11",
                "LLL12", "MMM13", "TTT01", "TTT02"):  # fmt: skip
        if frames:
            touch(root / "Charades_v1_rgb" / vid / f"{vid}-000001.jpg")
        else:
            touch(root / "Charades_v1" / f"{vid}.mp4")
    return root


def box_line(vid: str, frames: int, objects: list[list]) -> str:
    return json.dumps(
        {
            "id": vid,
            "fps": 12.0,
            "width": 112,
            "height": 112,
            "frames": frames,
            "objects": [
                {"track": k, "role": "AB"[k % 2], "shape": "square", "boxes": boxes}
                for k, boxes in enumerate(objects)
            ],
        }
    )


# ---------------------------------------------------------------------------------------------------
# Something-Something v2


def test_ssv2_fixture_has_crlf_and_non_ascii(tmp_path):
    make_ssv2(tmp_path)
    raw = (tmp_path / "something-something-v2-train.json").read_bytes()
    assert b"\r\n" in raw and "tasse à café".encode() in raw


def test_ssv2_train(tmp_path):
    make_ssv2(tmp_path)
    ds = read_something_something_v2(tmp_path, "train")
    assert ds.name == "something-something-v2" and ds.split == "train"
    assert ds.classes == tuple(SSV2_CLASSES)
    assert not ds.multi_label and not ds.allow_flip
    assert [r.video_id for r in ds.records] == ["1", "2", "3", "4"]
    assert [r.label for r in ds.records] == [0, 1, 2, 0]
    first = ds.record("1")
    assert first.source == str(tmp_path / "videos" / "1.webm")
    assert first.text == "pushing tasse à café from left to right"
    assert ds.record("3").text == "putting 杯子 on a surface"
    assert first.fps is None and not first.is_frame_folder
    assert ds.skip_counts() == {UNKNOWN_LABEL: 1, MISSING_VIDEO: 1}
    unknown = next(s for s in ds.skipped if s.reason == UNKNOWN_LABEL)
    assert (unknown.entry, unknown.detail) == ("5", "Juggling something")
    target = ds.targets(ds.record("2"), 0.0, 1.0)
    assert target.dtype == np.int64 and target.shape == () and int(target) == 1
    summary = ds.summary()
    assert "4 of 6 videos usable" in summary
    assert "1 x unknown label" in summary and "1 x missing video file" in summary
    with pytest.raises(StrgError, match="no video with id"):
        ds.record("5")


def test_ssv2_validation_and_test(tmp_path):
    make_ssv2(tmp_path)
    val = read_something_something_v2(tmp_path, "validation")
    assert [(r.video_id, r.label) for r in val.records] == [("7", 1), ("8", 2)]
    assert val.records[0].text == "pushing crème brûlée from right to left"
    test = read_something_something_v2(tmp_path, "test")
    assert [(r.video_id, r.label) for r in test.records] == [("9", None), ("10", None)]
    assert test.skipped == ()
    with pytest.raises(StrgError, match="has no label"):
        test.targets(test.records[0])


def test_ssv2_strict_raises_on_unknown_label(tmp_path):
    make_ssv2(tmp_path)
    with pytest.raises(StrgError, match="unknown label.*Juggling something"):
        read_something_something_v2(tmp_path, "train", strict=True)


def test_ssv2_synthetic_layout_mp4(tmp_path):
    """Annotations under labels/, mp4 videos in videos/: auto-detected or named."""
    make_ssv2(tmp_path, ext=".mp4", labels="labels")
    auto = read_something_something_v2(tmp_path, "train")
    assert auto.records[0].source == str(tmp_path / "videos" / "1.mp4")
    named = read_something_something_v2(tmp_path, "train", video_ext="mp4")
    assert [r.source for r in named.records] == [r.source for r in auto.records]
    # the official extension finds none of them
    with pytest.raises(StrgError, match="6 of 6 entries .* unreadable"):
        read_something_something_v2(tmp_path, "train", video_ext=".webm")


def test_ssv2_prefers_webm_and_custom_dirs(tmp_path):
    make_ssv2(tmp_path, videos="clips")
    touch(tmp_path / "clips" / "1.mp4")
    ds = read_something_something_v2(tmp_path, "train", videos_dir=tmp_path / "clips")
    assert ds.record("1").source == str(tmp_path / "clips" / "1.webm")
    unchecked = read_something_something_v2(
        tmp_path, "train", videos_dir=tmp_path / "none", check_videos=False
    )
    assert len(unchecked) == 5 and unchecked.record("6").source == str(tmp_path / "none" / "6.webm")


def test_ssv2_file_errors(tmp_path):
    with pytest.raises(StrgError, match="something-something-v2-labels.json"):
        read_something_something_v2(tmp_path, "train")
    make_ssv2(tmp_path)
    (tmp_path / "something-something-v2-validation.json").write_text('[{"id": "7",', encoding="utf-8")
    with pytest.raises(StrgError, match=r"malformed JSON in .*something-something-v2-validation.json"):
        read_something_something_v2(tmp_path, "validation")
    write_crlf_json(tmp_path / "something-something-v2-labels.json", {"a": "0", "b": "2"})
    with pytest.raises(StrgError, match="indices are not 0..1"):
        read_something_something_v2(tmp_path, "train")
    write_crlf_json(tmp_path / "something-something-v2-labels.json", {"a": "zero"})
    with pytest.raises(StrgError, match="not a number"):
        read_something_something_v2(tmp_path, "train")
    make_ssv2(tmp_path)
    with pytest.raises(StrgError, match="videos folder not found"):
        read_something_something_v2(tmp_path, "train", videos_dir=tmp_path / "nowhere")
    with pytest.raises(StrgError, match="unknown split"):
        read_something_something_v2(tmp_path, "val")


def test_ssv2_malformed_and_duplicate_entries(tmp_path):
    make_ssv2(tmp_path)
    entries = [
        ssv2_entry("1", "Pushing [something] from left to right", ["x"]),
        ssv2_entry("1", "Pushing [something] from left to right", ["x"]),
        {"id": "2"},
        "not an entry",
        ssv2_entry("3", "Putting [something] on a surface", ["y"]),
    ]
    write_crlf_json(tmp_path / "something-something-v2-train.json", entries)
    ds = read_something_something_v2(tmp_path, "train", max_skipped_fraction=0.6)
    assert [r.video_id for r in ds.records] == ["1", "3"]
    assert ds.skip_counts() == {BAD_ENTRY: 2, DUPLICATE_ID: 1}


def test_most_entries_unreadable_fails(tmp_path):
    make_ssv2(tmp_path)
    for vid in ("2", "3", "4"):
        (tmp_path / "videos" / f"{vid}.webm").unlink()
    # 5 of 6 unreadable: 4 missing videos, 1 unknown label
    with pytest.raises(StrgError) as err:
        read_something_something_v2(tmp_path, "train")
    message = str(err.value)
    assert (
        "5 of 6 entries" in message and "missing video file: 4" in message and "unknown label: 1" in message
    )
    # a caller may accept more
    ds = read_something_something_v2(tmp_path, "train", max_skipped_fraction=0.9)
    assert len(ds) == 1
    # exactly half is still allowed
    touch(tmp_path / "videos" / "2.webm")
    touch(tmp_path / "videos" / "3.webm")
    assert len(read_something_something_v2(tmp_path, "train")) == 3
    with pytest.raises(StrgError, match="max_skipped_fraction"):
        read_something_something_v2(tmp_path, "train", max_skipped_fraction=1.5)


def test_template_to_class():
    assert (
        ssv2_class_of_template("Pushing [something] from left to right")
        == "Pushing something from left to right"
    )
    assert ssv2_class_of_template("Putting [something] onto [something else]") == (
        "Putting something onto something else"
    )


# ---------------------------------------------------------------------------------------------------
# Something-Something v1


def test_ssv1(tmp_path):
    make_ssv1(tmp_path)
    ds = read_something_something_v1(tmp_path, "train")
    assert ds.classes == tuple(SSV1_CLASSES) and not ds.allow_flip and not ds.multi_label
    assert [(r.video_id, r.label) for r in ds.records] == [("100", 0), ("101", 2), ("102", 1)]
    rec = ds.records[0]
    assert rec.fps == 12.0 and rec.first_frame == 1 and rec.is_frame_folder
    assert rec.source == str(tmp_path / "20bn-something-something-v1" / "100" / "%05d.jpg")
    assert Path(rec.source % rec.first_frame).is_file()
    assert ds.skip_counts() == {UNKNOWN_LABEL: 1, BAD_ENTRY: 1, MISSING_VIDEO: 1}
    bad = next(s for s in ds.skipped if s.reason == BAD_ENTRY)
    assert bad.entry == "something-something-v1-train.csv:6"
    val = read_something_something_v1(tmp_path, "validation")
    assert [(r.video_id, r.label) for r in val.records] == [("106", 2)]
    test = read_something_something_v1(tmp_path, "test")
    assert [(r.video_id, r.label) for r in test.records] == [("107", None), ("108", None)]


def test_ssv1_class_list_errors(tmp_path):
    make_ssv1(tmp_path)
    (tmp_path / "something-something-v1-labels.csv").write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(StrgError, match="line 2 is blank"):
        read_something_something_v1(tmp_path, "train")
    (tmp_path / "something-something-v1-labels.csv").write_text("a\nb\na\n", encoding="utf-8")
    with pytest.raises(StrgError, match="line 3 repeats line 1"):
        read_something_something_v1(tmp_path, "train")
    (tmp_path / "something-something-v1-labels.csv").unlink()
    with pytest.raises(StrgError, match="something-something-v1-labels.csv"):
        read_something_something_v1(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------
# Charades


def test_charades_fixture_quotes_commas(tmp_path):
    make_charades(tmp_path)
    raw = (tmp_path / "Charades_v1_train.csv").read_bytes()
    assert b'"A person, then another."' in raw and b"\r\n" in raw


def test_charades_train(tmp_path):
    make_charades(tmp_path)
    ds = read_charades(tmp_path, "train")
    assert ds.multi_label and ds.allow_flip and ds.num_classes == 157
    assert ds.classes[3] == "Class 3, number 3"
    ids = [r.video_id for r in ds.records]
    assert ids == ["AAA01", "BBB02", "CCC03", "HHH08", "III09", "JJJ10", "KKK11", "LLL12", "MMM13"]
    a = ds.record("AAA01")
    assert a.segments == (Segment(1, 1.0, 5.0), Segment(3, 20.0, 30.0))
    assert a.duration == 30.0 and a.label is None and a.fps is None
    assert a.source == str(tmp_path / "Charades_v1" / "AAA01.mp4")
    assert a.text == "A person, then another."
    assert ds.record("BBB02").segments == ()
    assert ds.record("CCC03").segments == (Segment(156, 0.0, 12.6), Segment(6, 0.0, 2.0))
    assert ds.skip_counts() == {UNKNOWN_LABEL: 1, BAD_ENTRY: 2, MISSING_VIDEO: 1}
    assert ds.repair_counts() == {
        SEGMENT_REVERSED: 1,
        SEGMENT_PAST_END: 1,
        SEGMENT_OUTSIDE: 1,
        SEGMENT_NEGATIVE: 1,
    }
    reversed_ = next(s for s in ds.repaired if s.reason == SEGMENT_REVERSED)
    assert (reversed_.entry, reversed_.detail) == ("AAA01", "c002 3.00 2.00")
    assert "repaired 4" in ds.summary()


def test_charades_targets(tmp_path):
    make_charades(tmp_path)
    ds = read_charades(tmp_path, "train")
    a = ds.record("AAA01")  # c001 [1, 5], c003 [20, 30]

    def positives(start, end):
        t = ds.targets(a, start, end)
        assert t.dtype == np.float32 and t.shape == (157,)
        assert set(np.unique(t)) <= {0.0, 1.0}
        return np.flatnonzero(t).tolist()

    assert positives(4.0, 6.0) == [1]
    assert positives(6.0, 19.0) == []
    assert positives(5.0, 5.0) == [1]  # touching the segment's end counts
    assert positives(4.9, 20.1) == [1, 3]
    assert positives(29.0, 35.0) == [3]
    assert positives(None, None) == [1, 3]  # the whole video
    h = ds.record("HHH08")  # c010 [0.5, 3.5], c011 [2, 7]
    assert np.flatnonzero(ds.targets(h, 3.0, 4.0)).tolist() == [10, 11]
    assert np.flatnonzero(ds.targets(h, 0.0, 0.4)).tolist() == []
    assert not ds.targets(ds.record("BBB02"), 0.0, 12.5).any()
    with pytest.raises(StrgError, match="ends before it starts"):
        ds.targets(a, 3.0, 2.0)


def test_charades_test_split_and_frames(tmp_path):
    make_charades(tmp_path, frames=True)
    for split in ("test", "validation"):
        ds = read_charades(tmp_path, split, frames=True)
        assert [r.video_id for r in ds.records] == ["TTT01", "TTT02"]
    rec = ds.record("TTT01")
    assert rec.fps == 24.0 and rec.first_frame == 1
    assert rec.text == "Two lines,\nwith a comma."  # a quoted field may hold a line break
    assert rec.source == str(tmp_path / "Charades_v1_rgb" / "TTT01" / "TTT01-%06d.jpg")
    assert Path(rec.source % 1).is_file()
    assert np.flatnonzero(ds.targets(rec, 3.9, 8.0)).tolist() == [7]
    # no mp4 files next to the frames: every video is missing
    with pytest.raises(StrgError, match="2 of 2 entries"):
        read_charades(tmp_path, "test")


def test_charades_file_errors(tmp_path):
    make_charades(tmp_path)
    (tmp_path / "Charades_v1_test.csv").write_text("id,length\nX,3\n", encoding="utf-8")
    with pytest.raises(StrgError, match="header lacks actions"):
        read_charades(tmp_path, "test")
    (tmp_path / "Charades_v1_classes.txt").write_text("c000 Holding\nc001\n", encoding="utf-8")
    with pytest.raises(StrgError, match="line 2 is not 'c000 name'"):
        read_charades_classes(tmp_path / "Charades_v1_classes.txt")
    (tmp_path / "Charades_v1_classes.txt").unlink()
    with pytest.raises(StrgError, match="Charades_v1_classes.txt"):
        read_charades(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------
# A folder per class


def test_folders_with_splits(tmp_path):
    for path in ("train/walk/a.mp4", "train/walk/b.MKV", "train/run/c.avi", "train/run/notes.txt",
                 "train/run/.DS_Store", "train/stray.mp4", "val/walk/d.webm", "val/jump/e.mov",
                 "val/jump/f.m4v"):  # fmt: skip
        touch(tmp_path / path)
    train = read_folders(tmp_path, "train")
    assert train.classes == ("jump", "run", "walk")  # union over splits, sorted
    assert train.allow_flip and not train.multi_label and train.split == "train"
    assert [(r.video_id, r.label) for r in train.records] == [("run/c", 1), ("walk/a", 2), ("walk/b", 2)]
    assert train.record("walk/b").source == str(tmp_path / "train" / "walk" / "b.MKV")
    assert train.skip_counts() == {OUTSIDE_CLASS: 1, NOT_A_VIDEO: 1}
    val = read_folders(tmp_path, "validation", allow_flip=False)
    assert not val.allow_flip
    assert [(r.video_id, r.label) for r in val.records] == [("jump/e", 0), ("jump/f", 0), ("walk/d", 2)]
    with pytest.raises(StrgError, match="split folder not found"):
        read_folders(tmp_path, "test")


def test_folders_without_splits_and_fixed_classes(tmp_path):
    for path in ("b/1.mp4", "a/2.mp4", "a/3.mp4", "c/4.mp4"):
        touch(tmp_path / path)
    ds = read_folders(tmp_path)
    assert ds.classes == ("a", "b", "c")
    assert [(r.video_id, r.label) for r in ds.records] == [("a/2", 0), ("a/3", 0), ("b/1", 1), ("c/4", 2)]
    fixed = read_folders(tmp_path, classes=["b", "a"])
    assert [(r.video_id, r.label) for r in fixed.records] == [("a/2", 1), ("a/3", 1), ("b/1", 0)]
    assert fixed.skip_counts() == {UNKNOWN_LABEL: 1}
    with pytest.raises(StrgError, match="dataset folder not found"):
        read_folders(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StrgError, match="no class folders"):
        read_folders(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------
# Box tracks


def test_box_tracks_round_trip(tmp_path):
    a = [[1.0, 2.0, 11.0, 12.5], None, [3.0, 4.0, 13.0, 14.0], [5, 6, 15, 16]]
    b = [None, [50.0, 50.0, 60.0, 70.0], [51.0, 50.0, 61.0, 70.0], None]
    path = tmp_path / "boxes.jsonl"
    path.write_text(box_line("v1", 4, [a, b]) + "\n\n" + box_line("v2", 3, []) + "\n", encoding="utf-8")
    tracks = read_box_tracks(path)
    assert list(tracks) == ["v1", "v2"]
    t = tracks["v1"]
    assert (t.fps, t.width, t.height, t.num_frames, t.num_objects) == (12.0, 112, 112, 4, 2)
    assert t.objects[1] == {"track": 1, "role": "B", "shape": "square"}
    boxes, valid = t.boxes_at([0, 2, 3])
    assert boxes.dtype == np.float32 and boxes.shape == (3, 2, 4)
    assert valid.dtype == bool and valid.tolist() == [[True, False], [True, True], [True, False]]
    np.testing.assert_array_equal(boxes[0, 0], [1.0, 2.0, 11.0, 12.5])
    np.testing.assert_array_equal(boxes[1, 1], [51.0, 50.0, 61.0, 70.0])
    np.testing.assert_array_equal(boxes[2, 0], [5, 6, 15, 16])
    assert not boxes[0, 1].any()  # invalid boxes are zero
    boxes, valid = t.boxes_at(np.array([1]))
    assert valid.tolist() == [[False, True]]
    # frame i is at i / fps: 0.09 s -> frame 1, 0.2 s -> frame 2, beyond the end -> the last frame
    _, valid = t.boxes_at_times([0.0, 0.09, 0.2, 5.0])
    assert valid.tolist() == [[True, False], [False, True], [True, True], [True, False]]
    empty, empty_valid = tracks["v2"].boxes_at([0, 1, 2])
    assert empty.shape == (3, 0, 4) and empty_valid.shape == (3, 0)
    with pytest.raises(StrgError, match="frame index 4 outside 0..3"):
        t.boxes_at([0, 4])


def test_box_tracks_errors(tmp_path):
    path = tmp_path / "boxes.jsonl"
    good = box_line("v1", 2, [[[0, 0, 1, 1], None]])
    path.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(StrgError, match=r"boxes.jsonl:2"):
        read_box_tracks(path)
    path.write_text(box_line("v1", 3, [[[0, 0, 1, 1], None]]) + "\n", encoding="utf-8")
    with pytest.raises(StrgError, match="2 boxes for 3 frames"):
        read_box_tracks(path)
    path.write_text(box_line("v1", 1, [[[0, 0, 1]]]) + "\n", encoding="utf-8")
    with pytest.raises(StrgError, match=r"expected \[x1, y1, x2, y2\] or null"):
        read_box_tracks(path)
    path.write_text(good + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(StrgError, match="appears twice"):
        read_box_tracks(path)
    path.write_text('{"id": "v1", "fps": 12}\n', encoding="utf-8")
    with pytest.raises(StrgError, match="missing field 'width'"):
        read_box_tracks(path)
    with pytest.raises(StrgError, match="annotation file not found"):
        read_box_tracks(tmp_path / "none.jsonl")


# ---------------------------------------------------------------------------------------------------
# Shared


def test_readers_registry_and_records_are_frozen(tmp_path):
    assert READERS["something-something-v2"] is read_something_something_v2
    assert set(READERS) == {"something-something-v2", "something-something-v1", "charades", "folders"}
    rec = VideoRecord("x", "x.mp4", label=0)
    with pytest.raises(AttributeError):
        rec.label = 1  # type: ignore[misc]
    ds = Dataset("d", "train", ("a",), False, True, (rec,))
    assert len(ds) == 1 and ds.record("x") is rec and ds.summary().startswith("d train: 1 of 1")


def test_no_torch_import():
    code = "import sys, strg_deploy.data.datasets; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
