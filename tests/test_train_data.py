"""Training data loading: items, determinism, the decoded cache, views, workers, real clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.data.cache import CacheError
from strg_deploy.data.datasets import read_box_tracks, read_folders, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.errors import StrgError
from strg_deploy.train.data import ClipDataset, LoaderConfig, make_loader

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, videos_train=14, videos_validation=4, size=64, frames=16, workers=1, seed=3)
    data = read_something_something_v2(root, "train")
    return data, read_box_tracks(root / "boxes.jsonl"), preset("tiny").with_classes(data.classes)


def test_items_follow_the_model_contract(synth):
    data, tracks, cfg = synth
    item = ClipDataset(data, cfg, train=True, tracks=tracks)[3]
    assert item["clip"].dtype == torch.uint8 and item["clip"].shape == (3, cfg.frames, cfg.size, cfg.size)
    n, tf = cfg.proposals.num_boxes, cfg.feature_frames
    assert item["boxes"].shape == (tf, n, 4) and item["mask"].shape == (tf, n)
    assert item["target"].dtype == torch.int64 and int(item["target"]) == data.records[3].label
    valid = item["boxes"][item["mask"]]
    assert (valid >= 0).all() and (valid <= cfg.size).all()
    assert (valid[:, 2:] > valid[:, :2]).all()
    assert (item["boxes"][~item["mask"]] == 0).all()


def test_eval_boxes_are_the_tracks_through_resize_and_centre_crop(synth):
    data, tracks, cfg = synth
    dataset = ClipDataset(data, cfg, train=False, tracks=tracks, loader=LoaderConfig(short_side=64))
    item = dataset[0]
    track = tracks[data.records[0].video_id]
    # short side 64 = the stored size: no resize, no crop, so boxes are the tracks at the picked frames
    duration = track.num_frames / track.fps
    times = dataset._view(duration, 0).times[:: cfg.backbone.temporal_stride]
    expected, valid = track.boxes_at_times(times)
    count = min(valid.shape[1], cfg.proposals.num_boxes)
    torch.testing.assert_close(
        item["boxes"][:, :count][item["mask"][:, :count]],
        torch.from_numpy(expected[:, :count][valid[:, :count]]),
    )


def test_randomness_is_per_seed_epoch_and_item(synth):
    data, tracks, cfg = synth
    a = ClipDataset(data, cfg, train=True, tracks=tracks, seed=1)
    b = ClipDataset(data, cfg, train=True, tracks=tracks, seed=1)
    assert torch.equal(a[2]["clip"], b[2]["clip"]) and torch.equal(a[2]["boxes"], b[2]["boxes"])
    b.set_epoch(1)
    assert not torch.equal(a[2]["clip"], b[2]["clip"])


def test_cache_gives_the_same_items_as_decoding(synth, tmp_path):
    data, tracks, cfg = synth
    direct = ClipDataset(data, cfg, train=True, tracks=tracks)
    cached = ClipDataset(data, cfg, train=True, tracks=tracks, cache=tmp_path / "cache")
    for index in (0, 5):
        first, built, mapped = direct[index], cached[index], cached[index]
        assert torch.equal(first["clip"], built["clip"]) and torch.equal(built["clip"], mapped["clip"])
        assert torch.equal(first["boxes"], mapped["boxes"])
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 4 and all(not name.endswith(".tmp") for name in entries)


def test_eval_views_cover_every_video(synth):
    data, tracks, cfg = synth
    cfg = cfg.replace(span_seconds=0.5)  # the videos last 1.33 s: two half-second clips differ
    dataset = ClipDataset(data, cfg, train=False, loader=LoaderConfig(temporal_clips=2, spatial_crops=3))
    assert len(dataset) == len(data.records) * 6
    videos = [int(dataset[i]["video"]) for i in range(0, len(dataset), 5)]
    assert videos == [i // 6 for i in range(0, len(dataset), 5)]
    assert not torch.equal(dataset[0]["clip"], dataset[3]["clip"])  # another temporal clip


def test_workers_do_not_change_the_batches(synth):
    data, tracks, cfg = synth
    dataset = ClipDataset(data, cfg, train=True, tracks=tracks, seed=5)
    serial = next(iter(make_loader(dataset, 4, workers=0, seed=2)))
    parallel = next(iter(make_loader(dataset, 4, workers=2, seed=2)))
    for key in serial:
        assert torch.equal(serial[key], parallel[key]), key


def test_class_count_must_match_the_model_and_tracks_cover_the_videos(synth):
    data, tracks, cfg = synth
    with pytest.raises(StrgError, match="with_classes"):
        ClipDataset(data, preset("tiny"), train=True)
    partial = {k: v for k, v in tracks.items() if k != data.records[0].video_id}
    with pytest.raises(
        StrgError, match=f"the box tracks lack 1 of the 14 videos \\({data.records[0].video_id}\\)"
    ):
        ClipDataset(data, cfg, train=True, tracks=partial)


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")
def test_real_clips_load_through_a_folder_dataset(tmp_path):
    clips = {
        "camera": ["arm_wrestling_h264_340x256.mp4", "people_bw_film_h264_aac_640x480.mp4"],
        "patterns": ["hevc_128x128.mp4", "sign_language_h264_yuvj420p_640x480.mkv"],
    }
    for label, names in clips.items():
        (tmp_path / label).mkdir()
        for name in names:
            os.symlink(VIDEOS / name, tmp_path / label / name)
    data = read_folders(tmp_path)
    cfg = preset("tiny").with_classes(data.classes)
    dataset = ClipDataset(data, cfg, train=True)
    for index in range(len(data.records)):
        item = dataset[index]
        assert item["clip"].shape == (3, cfg.frames, cfg.size, cfg.size)
        assert item["clip"].float().std() > 1.0  # real content, not a blank frame
    assert "boxes" not in item


def folder_dataset(root: Path, sources: list[Path], broken: dict[int, bytes | Path]):
    """A one-class folder dataset of ``sources`` (symlinked) where position i in ``broken`` holds those
    bytes (or that file's bytes) instead; the records keep the order of ``sources``."""
    (root / "a").mkdir(parents=True)
    for i, source in enumerate(sources):
        path = root / "a" / f"{i:02d}.mp4"
        bad = broken.get(i)
        if bad is None:
            os.symlink(source, path)
        else:
            path.write_bytes(bad.read_bytes() if isinstance(bad, Path) else bad)
    data = read_folders(root)
    return data, preset("tiny").with_classes(data.classes)


def test_each_unreadable_video_counts_once_per_epoch(synth, tmp_path):
    data, _, _ = synth
    sources = [Path(r.source) for r in data.records[:8]]
    broken = {i: b"damaged beyond repair" for i in (2, 3, 4)}  # a run of three: items 2, 3, 4 pass over it
    folders, cfg = folder_dataset(tmp_path / "data", sources, broken)
    dataset = ClipDataset(folders, cfg, train=True)
    skipped = [int(dataset[i]["skipped"]) for i in range(len(dataset))]
    assert skipped == [0, 0, 1, 1, 1, 0, 0, 0]  # 3 unreadable videos, not 3 + 2 + 1 passes over them
    assert int(dataset[2]["video"]) == 5  # replaced by the next readable video
    with pytest.raises(StrgError, match="cannot open video"):
        ClipDataset(folders, cfg, train=False)[2]


def test_still_images_are_not_training_videos(synth, tmp_path):
    from test_data_inputs import still_as_mp4

    data, _, _ = synth
    still = still_as_mp4(tmp_path)
    folders, cfg = folder_dataset(tmp_path / "data", [Path(r.source) for r in data.records[:3]], {1: still})
    for cache in (None, tmp_path / "cache"):
        dataset = ClipDataset(folders, cfg, train=True, cache=cache)
        assert [int(dataset[i]["skipped"]) for i in range(3)] == [0, 1, 0]
        with pytest.raises(StrgError, match=r"a\W01\.mp4: it is a still image \(png"):
            ClipDataset(folders, cfg, train=False, cache=cache)[1]
    only_stills, cfg = folder_dataset(tmp_path / "stills", [still] * 2, {0: still, 1: still})
    with pytest.raises(StrgError, match="it is a still image"):
        ClipDataset(only_stills, cfg, train=True)[0]


def test_a_corrupt_cache_entry_is_rebuilt_and_reported_once(synth, tmp_path):
    data, tracks, cfg = synth
    notices: list[str] = []
    direct = ClipDataset(data, cfg, train=True, tracks=tracks)
    cached = ClipDataset(
        data, cfg, train=True, tracks=tracks, cache=tmp_path / "cache", on_notice=notices.append
    )
    items = range(5)
    expected = [direct[i]["clip"] for i in items]
    for i in items:
        cached[i]  # builds the entries
    cache = cached.cache
    paths = [cache.paths(data.records[i].source) for i in items]
    frames0 = paths[0][0]
    frames0.write_bytes(frames0.read_bytes()[:1000])  # truncated frames
    paths[1][1].write_bytes(b"")  # an empty sidecar
    paths[2][0].write_bytes(os.urandom(4096))  # garbage
    np.save(paths[3][1], np.arange(3.0))  # a whole file, but 3 times for 16 frames
    for i in items:
        assert torch.equal(cached[i]["clip"], expected[i]), i
    assert cache.rebuilt == 4 and len(notices) == 1  # entry 4 was whole; said once
    assert notices[0].startswith(f"cache entry {frames0} could not be read (mmap length is greater than")
    assert f"rebuilt it from {data.records[0].source} (other unreadable entries" in notices[0]
    for i in items:  # whole again: memory-mapped
        assert torch.equal(cached[i]["clip"], expected[i])
        assert isinstance(cache.load(data.records[i].source).frames, np.memmap)
    assert cache.rebuilt == 4
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_a_cache_that_cannot_be_written_is_not_blamed_on_the_videos(synth, tmp_path):
    data, tracks, cfg = synth
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    dataset = ClipDataset(data, cfg, train=True, tracks=tracks, cache=blocked)
    with pytest.raises(CacheError, match=f"decoded-clip cache {blocked}: cannot write .*--cache") as caught:
        dataset[0]  # raised at once, not passed over as 14 unreadable videos
    assert "\n" not in str(caught.value)
