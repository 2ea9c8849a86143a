"""Two gloo processes train like one process with the same global batch (BatchNorm frozen), even when
they are stopped mid-epoch and resume: the action model (`fit`) and the RPN (`fit_proposer`)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.multiprocessing as mp

from strg_deploy.config import preset
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.models.proposals import RegionProposer
from strg_deploy.models.state_dicts import read_state_dict
from strg_deploy.models.strg import build_model
from strg_deploy.train import proposer
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import EpochSampler, TrainOptions, fit

# BatchNorm statistics would differ per process (SyncBatchNorm does not run on the CPU): frozen here.
OPTIONS = TrainOptions(epochs=1, batch_size=4, lr=0.05, workers=0, seed=3, freeze_bn=True, warmup_epochs=0.5)
TOLERANCE = 1e-5  # the gradient all-reduce sums in another order than one process does


def run(root, run_dir, rank: int = 0, world: int = 1, init: str | None = None, stop_at: int | None = None):
    """fit on the synthetic set; with ``stop_at`` stopped after that step (max_steps) and resumed."""
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
        if stop_at is not None:
            fit(model, dataset, val_set, run_dir, dataclasses.replace(OPTIONS, max_steps=stop_at))
            model = build_model(cfg)  # other weights: the resume loads them
        fit(model, dataset, val_set, run_dir, OPTIONS, resume=stop_at is not None)
        return model.state_dict()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _worker(rank, root, run_dir, init):
    run(root, run_dir, rank, 2, init, stop_at=1)  # one step of the epoch's two, then the resume


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    # 5 validation videos x 2 views: each process scores one view of every video; the sums are merged
    generate(root, videos_train=8, videos_validation=5, size=64, frames=16, workers=1, seed=4)
    return root


def test_batches_split_over_processes_cover_the_single_process_batches():
    single = list(EpochSampler(12, 1, 0, batch_size=4))
    parts = [list(EpochSampler(12, 1, 0, batch_size=4, rank=r, world=2)) for r in range(2)]
    for k in range(3):
        assert sorted(parts[0][2 * k : 2 * k + 2] + parts[1][2 * k : 2 * k + 2]) == sorted(
            single[4 * k : 4 * k + 4]
        )
    with pytest.raises(Exception, match="does not split"):
        EpochSampler(12, 1, 0, batch_size=3, world=2)


def test_two_gloo_processes_match_one(synthetic, tmp_path):
    root = synthetic
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


# ---------------------------------------------------------------------------------------------------
# The RPN (`strg train --task proposals` under torchrun)


def run_proposer(
    root, run_dir, rank: int = 0, world: int = 1, init: str | None = None, stop_at: int | None = None
) -> dict:
    """fit_proposer with every anchor labelled and sampled: then each process's loss is a mean over as many
    anchors as the other's, and the average of the two is the one-process loss (with torchvision's 256
    random anchors per frame the draws depend on how the frames are split). With ``stop_at`` stopped
    after that step (max_steps) and resumed."""
    torch.set_num_threads(1)
    proposer.FG_IOU = proposer.BG_IOU = 0.5  # no anchor between the thresholds (ignored)
    proposer.ANCHORS_PER_IMAGE = 10**9  # every labelled anchor sampled
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        train = read_something_something_v2(root, "train")
        cfg = preset("tiny").with_classes(train.classes)
        tracks = read_box_tracks(root / "boxes.jsonl")
        train_set = ClipDataset(train, cfg, train=True, tracks=tracks, seed=3)
        val_set = ClipDataset(
            read_something_something_v2(root, "validation"), cfg, train=False, tracks=tracks
        )
        options = dataclasses.replace(OPTIONS, epochs=2)
        if stop_at is not None:
            stopped = dataclasses.replace(options, max_steps=stop_at)
            proposer.fit_proposer(cfg, train_set, val_set, run_dir, stopped)
        return proposer.fit_proposer(cfg, train_set, val_set, run_dir, options, resume=stop_at is not None)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _proposer_worker(rank, root, run_dir, init):
    run_proposer(root, run_dir, rank, 2, init, stop_at=3)  # inside the second epoch, then the resume


def test_two_gloo_processes_fine_tune_the_rpn_like_one(synthetic, tmp_path, monkeypatch):
    for name in ("FG_IOU", "BG_IOU", "ANCHORS_PER_IMAGE"):  # run_proposer changes them in this process
        monkeypatch.setattr(proposer, name, getattr(proposer, name))
    expected = run_proposer(synthetic, tmp_path / "one")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_proposer_worker, args=(synthetic, tmp_path / "two", init), nprocs=2, join=True)
    one, two = (read_state_dict(tmp_path / d / proposer.DETECTOR_FILE) for d in ("one", "two"))
    cfg = preset("tiny").with_classes(read_something_something_v2(synthetic, "train").classes)
    torch.manual_seed(OPTIONS.seed)
    initial = proposer.detector_state(RegionProposer(cfg))
    moved = [name for name, value in one.items() if not torch.equal(initial[name], value)]
    assert any(n.startswith("rpn.head.") for n in moved) and any(
        n.startswith("backbone.body.") for n in moved
    )
    assert one.keys() == two.keys()
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=TOLERANCE, atol=TOLERANCE, msg=name)
    got = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert got["epoch"] == 2 and got["num_gt_boxes"] == expected["num_gt_boxes"] > 0
    assert got["recall"] == pytest.approx(expected["recall"], abs=1e-9)
    for key in ("objectness_loss", "box_loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4), key
    assert (tmp_path / "two" / "last").is_dir()
