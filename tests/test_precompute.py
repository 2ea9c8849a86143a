"""Precomputed proposals: one file for a dataset, read back as box tracks that ClipDataset trains from."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torchvision.ops.misc import FrozenBatchNorm2d

from strg_deploy.config import preset
from strg_deploy.data.datasets import VideoRecord, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.models.proposals import RegionProposer
from strg_deploy.train.data import ClipDataset, LoaderConfig, make_loader
from strg_deploy.train.precompute import (
    PrecomputedBoxes,
    precompute_proposals,
    precomputed_tracks,
    write_precomputed,
)

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
FPS = 12.0


def informative(proposer: RegionProposer) -> RegionProposer:
    """A randomly initialised proposer whose boxes and scores differ from frame to frame: batch-norm
    statistics calibrated on random frames (with identity statistics a random MobileNetV3's features
    vanish) and head weights large enough that objectness scores and box offsets vary."""
    gen = torch.Generator().manual_seed(0)

    def calibrate(module: FrozenBatchNorm2d, args: tuple[torch.Tensor]) -> None:
        module.running_mean.copy_(args[0].mean(dim=(0, 2, 3)))
        module.running_var.copy_(args[0].var(dim=(0, 2, 3)))

    hooks = [
        m.register_forward_pre_hook(calibrate) for m in proposer.modules() if isinstance(m, FrozenBatchNorm2d)
    ]
    frames = torch.randint(0, 256, (8, 3, proposer.size, proposer.size), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        proposer.backbone(proposer.normalize(frames))
        for hook in hooks:
            hook.remove()
        for conv, std in ((proposer.head.cls_logits, 0.05), (proposer.head.bbox_pred, 0.01)):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * std)
    return proposer


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, videos_train=4, videos_validation=2, size=64, frames=12, fps=FPS, workers=1, seed=5)
    train = read_something_something_v2(root, "train")
    val = read_something_something_v2(root, "validation")
    cfg = preset("tiny").with_classes(train.classes)
    torch.manual_seed(0)
    proposer = informative(RegionProposer(cfg))
    calls = []
    records = train.records + val.records + train.records[:1]  # a repeated id is computed once
    path = precompute_proposals(
        records, proposer, root / "proposals.safetensors", batch_frames=5, on_video=lambda *a: calls.append(a)
    )
    return train, val, cfg, proposer, path, calls


def decoded(source: str, side: int) -> torch.Tensor:
    """Every frame of a video resized to side x side: uint8 [F, 3, side, side]."""
    with open_video(source) as reader:
        images = [frame.image for frame in reader.frames(size=(side, side))]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def stored(path: Path, video_id: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        names = ("frame_index", "boxes", "scores", "mask", "fps", "size")
        return {name: f.get_tensor(f"{video_id}/{name}") for name in names}


def test_the_file_holds_every_frames_proposals(synth):
    train, val, cfg, proposer, path, calls = synth
    ids = [r.video_id for r in train.records + val.records]
    assert calls == [(i, 6) for i in range(1, 7)]
    source = PrecomputedBoxes(path, cfg.proposals.num_boxes)
    assert source.version == "2" and source.videos == tuple(sorted(ids))

    record = val.records[0]  # by hand: the proposer on all 12 frames at once (the file used batches of 5)
    frames = decoded(record.source, cfg.size)
    with torch.no_grad():
        expected = proposer(frames)
    entry = stored(path, record.video_id)
    assert entry["frame_index"].tolist() == list(range(12))
    assert entry["fps"].tolist() == [FPS] and entry["size"].tolist() == [64, 64]
    torch.testing.assert_close(entry["boxes"], expected.boxes, atol=1e-4, rtol=0)
    torch.testing.assert_close(entry["scores"], expected.scores, atol=1e-5, rtol=0)
    assert torch.equal(entry["mask"], expected.mask) and bool(entry["mask"].all())
    assert not torch.equal(entry["boxes"][0], entry["boxes"][6])  # frames differ: boxes differ

    tracks = precomputed_tracks(path, cfg.proposals.num_boxes)
    assert len(tracks) == 6 and sorted(tracks) == sorted(ids) and ids[0] in tracks
    track = tracks[record.video_id]
    assert (track.video_id, track.fps, track.width, track.height, track.objects) == (
        record.video_id,
        FPS,
        64,
        64,
        (),
    )
    assert track.boxes.dtype == np.float32 and track.boxes.shape == (12, cfg.proposals.num_boxes, 4)
    assert track.valid.dtype == bool and track.valid.shape == (12, cfg.proposals.num_boxes)
    np.testing.assert_array_equal(track.boxes, entry["boxes"].numpy())
    two = precomputed_tracks(path, 2)[record.video_id]  # fewer boxes: each frame's best two
    np.testing.assert_array_equal(two.boxes, entry["boxes"][:, :2].numpy())


def test_a_frame_missing_from_the_file_takes_the_boxes_of_the_frame_before(tmp_path):
    boxes = torch.tensor([[[0, 0, 4, 4]], [[1, 1, 5, 5]], [[2, 2, 6, 6]]], dtype=torch.float32)
    entry = {"frame_index": [0, 2, 3], "boxes": boxes, "fps": 10.0, "size": (20, 10)}
    path = write_precomputed(tmp_path / "gap.safetensors", {"v": entry})
    track = precomputed_tracks(path, 2)["v"]
    assert track.boxes[:, 0, 0].tolist() == [0, 0, 1, 2] and track.valid.tolist() == [[True, False]] * 4
    assert (track.width, track.height, track.fps) == (20, 10, 10.0)


@pytest.mark.skipif(not (VIDEOS / "keyboard_rotated90_h264_568x320.mov").is_file(), reason="clip not found")
def test_a_non_square_video_gets_boxes_in_its_own_pixels(synth, tmp_path):
    cfg, proposer = synth[2], synth[3]
    source = str(VIDEOS / "keyboard_rotated90_h264_568x320.mov")  # shown 320 wide, 568 high, 30 fps
    path = precompute_proposals([VideoRecord("keys", source)], proposer, tmp_path / "p.safetensors")
    with torch.no_grad():
        expected = proposer(decoded(source, cfg.size))
    entry = stored(path, "keys")
    assert entry["size"].tolist() == [320, 568] and entry["fps"].tolist() == [30.0]
    assert entry["frame_index"].tolist() == [0, 1, 2]
    scale = torch.tensor([320 / 64, 568 / 64, 320 / 64, 568 / 64])
    torch.testing.assert_close(entry["boxes"], expected.boxes * scale, atol=1e-3, rtol=0)
    assert entry["boxes"][..., 3].max() > 64 * 320 / 64  # y reaches past what x's factor allows
    track = precomputed_tracks(path, cfg.proposals.num_boxes)["keys"]
    assert (track.width, track.height) == (320, 568)


def test_clip_items_carry_the_proposals_of_the_sampled_frames(synth):
    train, val, cfg, _, path, _ = synth
    tracks = precomputed_tracks(path, cfg.proposals.num_boxes)
    # short side 64 = the stored size: the eval transform neither resizes nor crops
    dataset = ClipDataset(val, cfg, train=False, tracks=tracks, loader=LoaderConfig(short_side=64))
    n, tf = cfg.proposals.num_boxes, cfg.feature_frames
    for index, record in enumerate(val.records):
        item = dataset[index]
        assert item["boxes"].shape == (tf, n, 4) and item["mask"].shape == (tf, n)
        times = dataset._view(12 / FPS, 0).times[:: cfg.backbone.temporal_stride]
        with open_video(record.source) as reader:
            shown = reader.read_at(times).times  # the frames the clip holds
        frames = np.rint(shown * FPS).astype(int)
        entry = stored(path, record.video_id)
        torch.testing.assert_close(item["boxes"], entry["boxes"][frames], atol=1e-5, rtol=0)
        assert torch.equal(item["mask"], entry["mask"][frames])

    item = ClipDataset(train, cfg, train=True, tracks=tracks, seed=3)[1]  # random crop and flip
    assert item["boxes"].shape == (tf, n, 4) and item["mask"].shape == (tf, n) and item["mask"].any()
    valid = item["boxes"][item["mask"]]
    assert (valid >= 0).all() and (valid <= cfg.size).all() and (valid[:, 2:] > valid[:, :2]).all()


def test_two_loader_workers_read_the_file(synth):
    train, _, cfg, _, path, _ = synth
    tracks = precomputed_tracks(path, cfg.proposals.num_boxes)
    copy = pickle.loads(pickle.dumps(tracks))
    np.testing.assert_array_equal(copy["2"].boxes, tracks["2"].boxes)
    dataset = ClipDataset(train, cfg, train=True, tracks=tracks, seed=4)
    serial = list(make_loader(dataset, 2, workers=0, seed=1))
    parallel = list(make_loader(dataset, 2, workers=2, seed=1))
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel, strict=True):
        assert a["boxes"].shape == (2, cfg.feature_frames, cfg.proposals.num_boxes, 4)
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_bad_inputs_are_one_line_errors(synth, tmp_path):
    train, _, cfg, proposer, path, _ = synth
    with pytest.raises(StrgError, match="not found"):
        precomputed_tracks(tmp_path / "absent.safetensors", 4)
    old = write_precomputed(
        tmp_path / "v1.safetensors", {"a": {"frame_index": [0], "boxes": torch.ones(1, 1, 4)}}
    )
    assert PrecomputedBoxes(old, 4).version == "1"
    with pytest.raises(StrgError, match=r"format version 1, .*recompute them \(strg proposals"):
        precomputed_tracks(old, 4)
    tracks = precomputed_tracks(path, 4)
    with pytest.raises(StrgError, match=r"^precomputed boxes \S+ have no video 'nope'$"):  # unquoted
        tracks["nope"]
    assert "nope" not in tracks and tracks.get("nope") is None

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    records = [train.records[0], VideoRecord("bad one", str(broken))]
    out = tmp_path / "out.safetensors"
    with pytest.raises(
        StrgError, match="cannot compute proposals of video 'bad one': cannot open video"
    ) as err:
        precompute_proposals(records, proposer, out)
    assert "\n" not in str(err.value) and not out.exists()
    with pytest.raises(StrgError, match="batch_frames must be >= 1"):
        precompute_proposals(records, proposer, out, batch_frames=0)
    with pytest.raises(StrgError, match="for every video or for none"):
        write_precomputed(
            out,
            {
                "a": {"frame_index": [0], "boxes": torch.ones(1, 1, 4), "fps": 1.0, "size": (2, 2)},
                "b": {"frame_index": [0], "boxes": torch.ones(1, 1, 4)},
            },
        )
