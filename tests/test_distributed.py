"""Two gloo processes train like one process with the same global batch (BatchNorm frozen)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from strg_deploy.config import preset
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.models.strg import build_model
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import EpochSampler, TrainOptions, fit

# BatchNorm statistics would differ per process (SyncBatchNorm does not run on the CPU): frozen here.
OPTIONS = TrainOptions(epochs=1, batch_size=4, lr=0.05, workers=0, seed=3, freeze_bn=True, warmup_epochs=0.5)
TOLERANCE = 1e-5  # the gradient all-reduce sums in another order than one process does


def run(root, run_dir, rank: int = 0, world: int = 1, init: str | None = None):
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        train = read_something_something_v2(root, "train")
        validation = read_something_something_v2(root, "validation")
        cfg = preset("tiny").with_classes(train.classes)
        tracks = read_box_tracks(root / "boxes.jsonl")
        dataset = ClipDataset(train, cfg, train=True, tracks=tracks, seed=3)
        val_set = ClipDataset(
            validation, cfg, train=False, tracks=tracks, loader=LoaderConfig(temporal_clips=2)
        )
        torch.manual_seed(0)
        model = build_model(cfg)
        fit(model, dataset, val_set, run_dir, OPTIONS)
        return model.state_dict()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _worker(rank, root, run_dir, init):
    run(root, run_dir, rank, 2, init)


def test_batches_split_over_processes_cover_the_single_process_batches():
    single = list(EpochSampler(12, 1, 0, batch_size=4))
    parts = [list(EpochSampler(12, 1, 0, batch_size=4, rank=r, world=2)) for r in range(2)]
    for k in range(3):
        assert sorted(parts[0][2 * k : 2 * k + 2] + parts[1][2 * k : 2 * k + 2]) == sorted(
            single[4 * k : 4 * k + 4]
        )
    with pytest.raises(Exception, match="does not split"):
        EpochSampler(12, 1, 0, batch_size=3, world=2)


def test_two_gloo_processes_match_one(tmp_path):
    root = tmp_path / "synth"
    # 5 validation videos x 2 views: each process scores one view of every video; the sums are merged
    generate(root, videos_train=8, videos_validation=5, size=64, frames=16, workers=1, seed=4)
    expected = run(root, tmp_path / "one")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(root, tmp_path / "two", init), nprocs=2, join=True)
    from strg_deploy.models.serialization import load_pretrained

    got = load_pretrained(tmp_path / "two" / "last").state_dict()
    torch.manual_seed(0)
    initial = build_model(preset("tiny").with_classes(read_something_something_v2(root, "train").classes))
    moved = [n for n, v in initial.state_dict().items() if not torch.equal(v, expected[n])]
    assert any(n.startswith("backbone.resnet.layer") for n in moved) and any(
        n.startswith("head.") for n in moved
    )
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=name)
    # metrics are reduced over the processes: the whole validation split and every training clip
    one, two = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("one", "two"))
    assert two["num_videos"] == one["num_videos"] == 5
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert two[key] == pytest.approx(one[key], abs=1e-9), key
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
