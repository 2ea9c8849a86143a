"""Synthetic relational benchmark: determinism, files, boxes, motion and single-frame marginals."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from strg_deploy.data import synthetic as synth
from strg_deploy.errors import StrgError

SIZE, FRAMES, FPS, SEED = 64, 16, 12.0, 3
TRAIN, VALIDATION = 28, 14  # two and one video per class
LUMA = np.array([0.299, 0.587, 0.114])
ANNOTATION_FILES = (synth.LABELS_FILE, *synth.SPLIT_FILES.values(), synth.BOXES_FILE)


def decode(path: Path) -> tuple[np.ndarray, dict]:
    """uint8 [T, H, W, 3] frames of a video and facts about its stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = []
        keyframes = 0
        for packet in container.demux(stream):
            keyframes += packet.is_keyframe and packet.size > 0
            frames.extend(frame.to_ndarray(format="rgb24") for frame in packet.decode())
        facts = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": stream.average_rate,
            "keyframes": keyframes,
        }
    return np.stack(frames), facts


def ks_statistic(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    first, second = np.sort(first), np.sort(second)
    values = np.concatenate([first, second])
    cdf_first = np.searchsorted(first, values, side="right") / len(first)
    cdf_second = np.searchsorted(second, values, side="right") / len(second)
    return float(np.abs(cdf_first - cdf_second).max())


def scene_of(video_id: str, label: int, *, size: int = SIZE, frames: int = FRAMES) -> synth.Scene:
    """The scene ``generate`` drew for a video (ids: training from 1, validation after them)."""
    number = int(video_id)
    split, index = ("train", number - 1) if number <= TRAIN else ("validation", number - TRAIN - 1)
    return synth.sample_scene(label, synth.video_rng(SEED, split, index), size, frames)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same benchmark generated twice, in one process and with two workers."""
    calls: list[tuple[int, int]] = []
    first = tmp_path_factory.mktemp("synth_one")
    second = tmp_path_factory.mktemp("synth_two")
    common = dict(
        videos_train=TRAIN, videos_validation=VALIDATION, size=SIZE, frames=FRAMES, fps=FPS, seed=SEED
    )
    summary = synth.generate(
        first, workers=1, progress=lambda done, total: calls.append((done, total)), **common
    )
    synth.generate(second, workers=2, **common)
    return first, second, summary, calls


def test_module_does_not_import_torch():
    code = "import sys, strg_deploy.data.synthetic; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_seed_gives_the_same_files_and_frames(generated):
    first, second, _, _ = generated
    for name in ANNOTATION_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    videos = sorted((first / synth.VIDEOS_DIR).iterdir())
    assert len(videos) == TRAIN + VALIDATION
    for path in videos:
        assert path.read_bytes() == (second / synth.VIDEOS_DIR / path.name).read_bytes()
    for path in videos[:6]:
        np.testing.assert_array_equal(decode(path)[0], decode(second / synth.VIDEOS_DIR / path.name)[0])


def test_another_seed_gives_other_videos():
    assert not np.array_equal(synth.split_labels(0, "train", 50), synth.split_labels(1, "train", 50))
    one = synth.sample_scene(0, synth.video_rng(0, "train", 0), SIZE, FRAMES)
    other = synth.sample_scene(0, synth.video_rng(1, "train", 0), SIZE, FRAMES)
    assert not np.allclose(one.tracks[0].centres, other.tracks[0].centres)


def test_a_second_run_into_the_same_folder_rewrites_the_same_bytes(tmp_path):
    args = dict(videos_train=3, videos_validation=1, size=32, frames=4, seed=5, workers=1)
    synth.generate(tmp_path, **args)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    synth.generate(tmp_path, **args)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after
    assert len(before) == 4 + 4 and not [p for p in before if p.name.endswith(".tmp")]


def test_progress_counts_every_video(generated):
    _, _, summary, calls = generated
    total = TRAIN + VALIDATION
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == list(range(total + 1))
    assert summary.videos == total and summary.bytes_written > 0


def test_annotations_are_something_something_v2_style_with_balanced_classes(generated):
    first, _, summary, _ = generated
    labels = json.loads((first / synth.LABELS_FILE).read_text(encoding="utf-8"))
    assert len(labels) == len(synth.TEMPLATES) >= 12
    assert labels == {name: str(index) for index, name in enumerate(synth.CLASS_NAMES)}
    assert labels["Moving something from left to right"] == "0"
    ids = set()
    for split, count in (("train", TRAIN), ("validation", VALIDATION)):
        entries = json.loads((first / synth.SPLIT_FILES[split]).read_text(encoding="utf-8"))
        assert len(entries) == count
        per_class = np.bincount([synth.TEMPLATES.index(e["template"]) for e in entries], minlength=14)
        assert per_class.tolist() == [count // len(synth.TEMPLATES)] * len(synth.TEMPLATES)
        assert summary.class_counts[split] == dict.fromkeys(synth.CLASS_NAMES, count // 14)
        for entry in entries:
            assert set(entry) == {"id", "label", "template", "placeholders"}
            template = entry["template"]
            assert template.count("[") == len(entry["placeholders"]) >= 1
            label = template
            for name in entry["placeholders"]:
                start, end = label.index("["), label.index("]")
                label = label[:start] + (name.capitalize() if start == 0 else name) + label[end + 1 :]
            assert entry["label"] == label
            colour, shape = entry["placeholders"][0].split()
            assert colour in synth.COLOURS and shape in synth.SHAPES
            ids.add(entry["id"])
    assert ids == {str(i) for i in range(1, TRAIN + VALIDATION + 1)}


def test_videos_decode_to_the_requested_frames_size_and_rate(generated):
    first, _, _, _ = generated
    for path in sorted((first / synth.VIDEOS_DIR).iterdir())[::5]:
        frames, facts = decode(path)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
        assert facts["rate"] == FPS
        assert facts["keyframes"] == FRAMES  # every frame coded on its own


def test_boxes_file_has_a_track_per_object_and_a_box_per_frame(generated):
    first, _, _, _ = generated
    records = read_lines(first / synth.BOXES_FILE)
    entries = [
        e
        for split in ("train", "validation")
        for e in json.loads((first / synth.SPLIT_FILES[split]).read_text())
    ]
    assert [r["id"] for r in records] == [e["id"] for e in entries]
    for record, entry in zip(records, entries, strict=True):
        assert (record["fps"], record["width"], record["height"], record["frames"]) == (
            FPS,
            SIZE,
            SIZE,
            FRAMES,
        )
        objects = record["objects"]
        roles = [o["role"] for o in objects]
        main = len(entry["placeholders"])
        assert roles[:main] == ["A", "B"][:main] and 1 <= roles.count("distractor") == len(roles) - main <= 3
        assert [o["track"] for o in objects] == list(range(len(objects)))
        for obj in objects:
            assert obj["shape"] in synth.SHAPES and len(obj["boxes"]) == FRAMES
            for box in obj["boxes"]:
                if box is not None:
                    x1, y1, x2, y2 = box
                    assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        a_boxes = objects[0]["boxes"]
        if entry["template"].startswith("Hiding"):
            assert a_boxes[0] is not None and a_boxes[-1] is None  # ends wholly behind B
        if entry["template"] == "[Something] appearing":
            assert a_boxes[0] is None and a_boxes[-1] is not None
        if entry["template"] == "[Something] disappearing":
            assert a_boxes[0] is not None and a_boxes[-1] is None


def object_weight(scene: synth.Scene, index: int) -> np.ndarray:
    """float [T, H, W]: how much of each pixel shows track ``index`` (from two renders that differ only in
    that track's colour)."""
    tracks = list(scene.tracks)
    frames = []
    for colour in ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)):
        tracks[index] = replace(scene.tracks[index], colour=colour)
        frames.append(synth.render(replace(scene, tracks=tuple(tracks)))[0].astype(np.float64))
    return (frames[1] - frames[0]).mean(-1) / 255.0


@pytest.mark.parametrize("label", range(len(synth.TEMPLATES)))
def test_ground_truth_boxes_cover_the_rendered_objects(label):
    scene = synth.sample_scene(label, np.random.default_rng([label, 11]), 80, 16, pan=label % 3 == 0)
    _, visible = synth.render(scene)
    boxes = synth.boxes(scene, visible)
    centres = np.arange(80) + 0.5
    for index in range(len(scene.tracks)):
        weight = object_weight(scene, index)
        np.testing.assert_allclose(weight.sum((1, 2)), visible[:, index], rtol=0.02, atol=0.5)
        for t, box in enumerate(boxes[index]):
            ys, xs = np.nonzero(weight[t] > 0.02)
            if box is None:
                assert weight[t].sum() < 1.0
                continue
            x1, y1, x2, y2 = box
            # anti-aliasing reaches half a pixel beyond the outline
            assert centres[xs].min() >= x1 - 0.5 and centres[xs].max() <= x2 + 0.5
            assert centres[ys].min() >= y1 - 0.5 and centres[ys].max() <= y2 + 0.5
    if label in (0, 1):  # A is never covered: its box is tight around its pixels
        weight = object_weight(scene, 0)
        for t, box in enumerate(boxes[0]):
            ys, xs = np.nonzero(weight[t] > 0.5)
            if box is not None and 0 < box[0] and box[2] < 80:
                assert abs(centres[xs].min() - box[0]) < 1.5 and abs(centres[xs].max() - box[2]) < 1.5


def test_decoded_frames_show_the_objects_inside_their_boxes(generated):
    first, _, _, _ = generated
    records = {r["id"]: r for r in read_lines(first / synth.BOXES_FILE)}
    entries = json.loads((first / synth.SPLIT_FILES["train"]).read_text())
    for entry in entries[:10]:
        label = synth.TEMPLATES.index(entry["template"])
        scene = scene_of(entry["id"], label)
        assert scene.placeholders == entry["placeholders"]
        decoded, _ = decode(first / synth.VIDEOS_DIR / f"{entry['id']}.mp4")
        rendered, _ = synth.render(scene)
        # codec error only (in luma: 4:2:0 halves the colour resolution of fine coloured textures)
        assert np.abs((decoded.astype(float) - rendered) @ LUMA).mean() < 3.0
        weight = object_weight(scene, 0)
        colour = np.array(scene.tracks[0].colour)
        for t, box in enumerate(records[entry["id"]]["objects"][0]["boxes"]):
            solid = weight[t] > 0.99
            if box is None or not solid.any():
                continue
            ys, xs = np.nonzero(solid)
            assert xs.min() + 0.5 >= box[0] and xs.max() + 0.5 <= box[2]
            assert ys.min() + 0.5 >= box[1] and ys.max() + 0.5 <= box[3]
            # away from the outline (4:2:0 shares colour between 2 x 2 pixels), the decoded colour is A's
            core = solid.copy()
            core[1:-1, 1:-1] &= solid[:-2, 1:-1] & solid[2:, 1:-1] & solid[1:-1, :-2] & solid[1:-1, 2:]
            core[[0, -1]] = core[:, [0, -1]] = False
            if core.sum() >= 4:
                inside = np.median(decoded[t][core].astype(float), axis=0)
                assert np.abs(inside - colour).max() < 20 and abs((inside - colour) @ LUMA) < 8
                outside = np.median(decoded[t][weight[t] < 0.01].astype(float), axis=0)
                assert np.abs(inside - colour).sum() < np.abs(outside - colour).sum()


@pytest.mark.parametrize("pan", [False, True])
def test_left_to_right_moves_right_and_its_reverse_moves_left(pan):
    rng = np.random.default_rng(21)
    for _ in range(40):
        for label, sign in ((0, 1), (1, -1)):
            scene = synth.sample_scene(label, rng, 112, 32, pan=pan)
            image = scene.image_centres("A")[:, 0] * sign
            world = scene.track("A").centres[:, 0] * sign
            assert world[-1] - world[0] > 0.2 * 112 and (np.diff(world) >= 0).all()
            # the camera moves less than the object: on screen it goes the same way
            assert image[-1] - image[0] > (0.1 if pan else 0.2) * 112
            if not pan:
                np.testing.assert_array_equal(image, world)


def test_moving_objects_in_the_generated_boxes(generated):
    first, _, _, _ = generated
    records = {r["id"]: r for r in read_lines(first / synth.BOXES_FILE)}
    entries = json.loads((first / synth.SPLIT_FILES["train"]).read_text())
    seen = set()
    for entry in entries:
        if "from left to right" in entry["template"] or "from right to left" in entry["template"]:
            box = np.array(records[entry["id"]]["objects"][0]["boxes"], float)
            centre = (box[:, 0] + box[:, 2]) / 2
            sign = 1 if "left to right" in entry["template"] else -1
            assert sign * (centre[-1] - centre[0]) > 0.2 * SIZE
            seen.add(sign)
    assert seen == {1, -1}


def test_reversed_scene_renders_the_frames_backwards_and_the_codec_keeps_them():
    scene = synth.sample_scene(10, np.random.default_rng(4), SIZE, FRAMES, pan=True)
    frames, visible = synth.render(scene)
    backwards, visible_backwards = synth.render(scene.reversed())
    np.testing.assert_array_equal(backwards, frames[::-1])
    np.testing.assert_array_equal(visible_backwards, visible[::-1])
    # every frame is coded on its own: decoding is the same frame whichever way the clip runs
    decoded = []
    for clip in (frames, frames[::-1].copy()):
        with av.open(io.BytesIO(synth.encode_mp4(clip, FPS))) as container:
            decoded.append(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    np.testing.assert_array_equal(decoded[1], decoded[0][::-1])


def frame_statistics(scene: synth.Scene, t: int) -> dict[str, float]:
    """What one frame shows of the main objects: positions, distance, opacity."""
    a = scene.image_centres("A")[t]
    stats = {"A x": a[0], "A y": a[1], "A opacity": scene.track("A").opacity[t]}
    if any(track.role == "B" for track in scene.tracks):
        b = scene.image_centres("B")[t]
        stats.update({"B x": b[0], "B y": b[1], "A-B distance": float(np.hypot(*(a - b)))})
    return stats


KEY_STATISTIC = {0: "A x", 2: "A-B distance", 4: "A-B distance", 6: "A-B distance", 8: "A-B distance"}
KEY_STATISTIC |= {10: "A-B distance", 12: "A opacity"}


@pytest.mark.parametrize("pair", synth.PAIRS, ids=lambda pair: synth.CLASS_NAMES[pair[0]])
def test_a_single_frame_does_not_tell_a_pair_apart(pair):
    count = 300
    random_frame, first_frame = {}, {}
    for label in pair:
        rng = np.random.default_rng([label, 2024])
        scenes = [synth.sample_scene(label, rng, SIZE, FRAMES) for _ in range(count)]
        frames = rng.integers(0, FRAMES, count)
        random_frame[label] = [frame_statistics(s, int(t)) for s, t in zip(scenes, frames, strict=True)]
        first_frame[label] = [frame_statistics(s, 0) for s in scenes]
    # critical value of the two-sample KS test at the 0.1 % level
    critical = 1.95 * np.sqrt(2 / count)
    for name in random_frame[pair[0]][0]:
        at_random = [np.array([stats[name] for stats in random_frame[label]]) for label in pair]
        assert ks_statistic(*at_random) < critical, name
    # the test has power: at a known frame index the classes differ (the baseline must not know it)
    key = KEY_STATISTIC[pair[0]]
    at_start = [np.array([stats[key] for stats in first_frame[label]]) for label in pair]
    assert ks_statistic(*at_start) > 0.4


def test_classes_come_in_reversal_pairs():
    assert len(synth.TEMPLATES) == len(synth.CLASS_NAMES) >= 12
    assert [index for pair in synth.PAIRS for index in pair] == list(range(len(synth.TEMPLATES)))
    for label in range(len(synth.TEMPLATES)):
        scene = synth.sample_scene(label, np.random.default_rng(label), SIZE, FRAMES)
        assert scene.label == label
        assert scene.label_text.count(" ") >= 2 and "[" not in scene.label_text


@pytest.mark.parametrize(
    "args",
    [
        dict(size=63),
        dict(size=16),
        dict(frames=2),
        dict(videos_train=0, videos_validation=0),
        dict(fps=0.0),
        dict(workers=0),
        dict(seed=-1),
    ],
)
def test_bad_arguments_raise_the_library_error(tmp_path, args):
    kwargs = dict(videos_train=1, videos_validation=0) | args
    with pytest.raises(StrgError):
        synth.generate(tmp_path, **kwargs)
    assert not (tmp_path / synth.LABELS_FILE).exists()


# ------------------------------------------------------------------ checks before any work, stale files


def test_a_size_beyond_the_codec_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StrgError, match=f"from 32 to {synth.MAX_SIZE}"):
        synth.generate(out, videos_train=1, videos_validation=0, size=100_000)
    assert not out.exists()
    from typer.testing import CliRunner

    from strg_deploy.cli import app

    result = CliRunner().invoke(app, ["data", "synth", str(out), "--size", "100000"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: size must be an even number") and not out.exists()


def test_videos_that_do_not_fit_in_memory_are_refused_before_any_work(tmp_path, monkeypatch):
    assert synth.available_memory() > 0  # read from the machine (/proc/meminfo here)
    out = tmp_path / "out"
    # no machine holds a 5968 x 5968 video of ten million frames (1.7e16 bytes)
    with pytest.raises(StrgError, match=r"needs about .* of memory to render"):
        synth.generate(out, videos_train=1, videos_validation=0, size=synth.MAX_SIZE, frames=10_000_000)
    assert not out.exists()
    monkeypatch.setattr(synth, "available_memory", lambda: 2**30)
    assert synth.render_bytes(512, 32) == 48 * 512 * 512 * 32  # 0.375 GiB: two fit in 1 GiB
    with pytest.raises(StrgError, match="4 workers .* need about 1.5 GiB .* use --workers 2"):
        synth.generate(out, videos_train=4, videos_validation=0, size=512, frames=32, workers=4)
    assert synth._fit_workers(512, 32, 4, chosen=False) == 2  # the default count shrinks to what fits
    assert synth._fit_workers(512, 32, 2, chosen=True) == 2
    assert not out.exists()


def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from strg_deploy.cli import app

    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (afile, afile / "below"):
        with pytest.raises(StrgError, match="is not a folder"):
            synth.generate(out, videos_train=1, videos_validation=0, size=32, frames=4, workers=1)
        result = CliRunner().invoke(app, ["data", "synth", str(out), "--train", "1", "--size", "32"])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"error: cannot write to {out}")
    assert afile.read_text() == "keep"


def test_temporary_files_of_a_killed_run_are_removed(tmp_path):
    stale = [tmp_path / "videos" / ".3.mp4.k2j4x.tmp", tmp_path / f".{synth.BOXES_FILE}.a8c1.tmp"]
    stale[0].parent.mkdir()
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / "videos" / "notes.tmp").write_text("not ours")
    synth.generate(tmp_path, videos_train=2, videos_validation=0, size=32, frames=4, workers=1)
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "videos" / "notes.tmp").exists() and (tmp_path / synth.BOXES_FILE).exists()


def _die(job):
    import os

    os._exit(3)


def test_a_worker_that_dies_is_one_error_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_make_video", _die)  # inherited by the forked workers
    with pytest.raises(StrgError, match="a rendering process ended unexpectedly"):
        synth.generate(tmp_path, videos_train=4, videos_validation=0, size=32, frames=4, workers=2)
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / synth.BOXES_FILE).exists()
