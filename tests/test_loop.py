"""The training loop: a tiny run trains and validates; a stopped run resumes to the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.errors import StrgError
from strg_deploy.models.serialization import load_pretrained
from strg_deploy.models.strg import build_model
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import EpochSampler, TrainOptions, fit

OPTIONS = TrainOptions(epochs=2, batch_size=4, lr=0.05, workers=0, seed=7, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, videos_train=12, videos_validation=4, size=64, frames=16, workers=1, seed=1)
    train = read_something_something_v2(root, "train")
    val = read_something_something_v2(root, "validation")
    tracks = read_box_tracks(root / "boxes.jsonl")
    cfg = preset("tiny").with_classes(train.classes)
    return cfg, train, val, tracks


def datasets(data, cache):
    cfg, train, val, tracks = data
    return (
        ClipDataset(train, cfg, train=True, tracks=tracks, cache=cache, seed=OPTIONS.seed),
        ClipDataset(val, cfg, train=False, tracks=tracks, cache=cache, loader=LoaderConfig(temporal_clips=2)),
    )


def fresh_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_sampler_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(10, 3, 1), EpochSampler(10, 3, 1, start=4)
    assert sorted(a) == list(range(10)) and list(b) == list(a)[4:]
    assert list(EpochSampler(10, 3, 2)) != list(a)


def test_tiny_run_trains_validates_and_writes_checkpoints(data, tmp_path):
    cfg = data[0]
    train_set, val_set = datasets(data, tmp_path / "cache")
    model = fresh_model(cfg)
    before = [p.detach().clone() for p in model.head.parameters()]
    losses, reported = [], []
    position = fit(
        model,
        train_set,
        val_set,
        tmp_path / "run",
        OPTIONS,
        on_step=lambda step, total, loss: losses.append(loss),
        on_epoch=reported.append,
    )
    assert (position.epoch, position.global_step) == (2, 6)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and all(0.0 <= m["top1"] <= 1.0 for m in lines)
    assert lines == json.loads(json.dumps(reported))
    for epoch, line in enumerate(lines):  # the epoch's mean loss over equal batches; wall time covered
        assert line["train_loss"] == pytest.approx(sum(losses[3 * epoch : 3 * epoch + 3]) / 3, rel=1e-6)
        assert line["epoch_seconds"] > 0
    assert lines[0]["num_videos"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))
    reloaded = load_pretrained(tmp_path / "run" / "last")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_pretrained(tmp_path / "run" / "best").cfg == cfg


def test_a_stopped_run_resumes_to_the_same_weights(data, tmp_path):
    cfg = data[0]
    train_set, _ = datasets(data, tmp_path / "cache")
    straight = fresh_model(cfg)
    fit(straight, train_set, None, tmp_path / "straight", OPTIONS)

    stopped = fresh_model(cfg)
    options = TrainOptions(**{**OPTIONS.__dict__, "max_steps": 4})
    position = fit(stopped, train_set, None, tmp_path / "stopped", options)
    assert (position.epoch, position.step) == (1, 1)  # killed inside the second epoch
    torch.manual_seed(123)  # the process that resumes starts from other RNG states
    resumed = build_model(cfg)
    fit(resumed, train_set, None, tmp_path / "stopped", OPTIONS, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_unreadable_videos_are_skipped_counted_and_bounded(tmp_path):
    root = tmp_path / "synth"
    generate(root, videos_train=8, videos_validation=2, size=64, frames=16, workers=1, seed=2)
    (root / "videos" / "3.mp4").write_bytes(b"damaged beyond repair")
    train = read_something_something_v2(root, "train")
    cfg = preset("tiny").with_classes(train.classes)
    dataset = ClipDataset(train, cfg, train=True, tracks=read_box_tracks(root / "boxes.jsonl"))
    broken = [r.video_id for r in train.records].index("3")
    assert int(dataset[broken]["skipped"]) == 1 and int(dataset[broken]["video"]) == broken + 1
    options = TrainOptions(epochs=1, batch_size=4, workers=0, max_unreadable=0.5)
    fit(fresh_model(cfg), dataset, None, tmp_path / "run", options)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["unreadable_videos"] == 1  # once per unreadable video, not per item that passed it over
    strict = TrainOptions(epochs=1, batch_size=4, workers=0, max_unreadable=0.0)
    message = r"1 of the 8 videos read in epoch 1 could not be decoded \(more than max_unreadable = 0%\)"
    with pytest.raises(StrgError, match=message):
        fit(fresh_model(cfg), dataset, None, tmp_path / "strict", strict)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="mixed precision runs on CUDA only: needs a CUDA GPU"
)
def test_cuda_mixed_precision_trains_and_saves_the_scaler(data, tmp_path):
    cfg = data[0]
    train_set, _ = datasets(data, tmp_path / "cache")
    options = TrainOptions(**{**OPTIONS.__dict__, "device": "cuda", "max_steps": 2})
    model = fresh_model(cfg)
    fit(model, train_set, None, tmp_path / "run", options)
    state = torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=True)
    assert state["scaler"] is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_metrics_also_go_to_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = data[0]
    train_set, val_set = datasets(data, tmp_path / "cache")
    options = TrainOptions(**{**OPTIONS.__dict__, "epochs": 1})
    fit(fresh_model(cfg), train_set, val_set, tmp_path / "run", options)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"top1", "lr", "train_clips_per_second"} <= set(events.Tags()["scalars"])
    assert events.Scalars("top1")[0].step == 3
