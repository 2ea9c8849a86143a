"""Training the rpn network on ground-truth boxes: batch norm frozen <-> trainable, the detector file,
torchvision's anchor targets and losses, recall at N, and a short run that learns."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision
from safetensors import safe_open
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from strg_deploy.config import preset
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.errors import StrgError
from strg_deploy.models.proposals import Proposals, RegionProposer
from strg_deploy.models.state_dicts import read_state_dict
from strg_deploy.models.weights import load_detector_weights
from strg_deploy.train.data import ClipDataset
from strg_deploy.train.loop import TrainOptions
from strg_deploy.train.optim import make_optimizer
from strg_deploy.train.proposer import (
    DETECTOR_FILE,
    anchor_targets,
    anchors_of,
    detector_state,
    fit_proposer,
    frozen,
    loader_recall,
    proposal_recall,
    recall_counts,
    rpn_losses,
    save_detector,
    trainable,
    training_rules,
    update_norm_statistics,
)

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The steps here are small: on a busy 2-core machine one thread runs them fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**proposals):
    """The tiny preset with torchvision's own RPN layout (what COCO detector files fit) unless overridden."""
    cfg = preset("tiny")
    proposals = {"returned_layers": (), "anchor_sizes": (), **proposals}
    return cfg.replace(proposals=dataclasses.replace(cfg.proposals, **proposals))


def scene(count: int, seed: int, objects: int = 2, sizes: tuple[int, int] = (24, 40)):
    """Frames uint8 [count, 3, 64, 64] of grey noise with ``objects`` squares of random colour and side,
    and their boxes float32 [count, objects, 4] with mask bool [count, objects] (all True)."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.full((count, 3, SIZE, SIZE), 110.0) + 20 * torch.randn(count, 3, SIZE, SIZE, generator=gen)
    boxes = torch.zeros(count, objects, 4)
    for f in range(count):
        for k in range(objects):
            side = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=gen))
            x, y = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=gen))
            frames[f, :, y : y + side, x : x + side] = torch.rand(3, 1, 1, generator=gen) * 255
            boxes[f, k] = torch.tensor([x, y, x + side, y + side], dtype=torch.float32)
    return frames.clamp(0, 255).to(torch.uint8), boxes, torch.ones(count, objects, dtype=torch.bool)


def train_steps(proposer, frames, boxes, mask, steps: int, lr: float = 0.1) -> list[tuple[float, float]]:
    optimizer = make_optimizer(proposer, lr)
    proposer.train()
    losses = []
    for _ in range(steps):
        objectness_loss, box_loss = rpn_losses(proposer, frames, boxes, mask)
        optimizer.zero_grad()
        (objectness_loss + box_loss).backward()
        torch.nn.utils.clip_grad_norm_(proposer.parameters(), 10.0)
        optimizer.step()
        losses.append((float(objectness_loss.detach()), float(box_loss.detach())))
    return losses


def assert_same_proposals(a: Proposals, b: Proposals, atol: float = 1e-5) -> None:
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=atol)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def trained():
    """A tiny proposer after a few training steps, with batch-norm statistics measured on the frames."""
    torch.manual_seed(0)
    frames, boxes, mask = scene(4, seed=3)
    proposer = trainable(RegionProposer(tiny_cfg()))
    train_steps(proposer, frames, boxes, mask, steps=3)
    update_norm_statistics(proposer, [frames])
    return proposer.eval(), frames


# ---------------------------------------------------------------------------------------------------
# Batch norm and the detector file


def test_trainable_swaps_every_frozen_norm_and_keeps_the_function():
    torch.manual_seed(0)
    original = RegionProposer(tiny_cfg())
    frozen_count = sum(isinstance(m, FrozenBatchNorm2d) for m in original.modules())
    frames, _, _ = scene(2, seed=1)
    with torch.no_grad():
        expected = original.eval()(frames)
    model = trainable(original)
    assert model is original and frozen_count > 0
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == frozen_count
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert_same_proposals(model.eval()(frames), expected)


def test_frozen_state_loads_strictly_and_gives_the_trained_proposals(trained):
    model, frames = trained
    assert model.training is False
    state = frozen(model).state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in state)
    fresh = RegionProposer(tiny_cfg())
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(frames)
        assert_same_proposals(fresh.eval()(frames), out)
        # another epsilon: the difference moves into the running variance
        zero_eps = RegionProposer(tiny_cfg(), norm_eps=0.0)
        zero_eps.load_state_dict(frozen(model, norm_eps=0.0).state_dict(), strict=True)
        assert_same_proposals(zero_eps.eval()(frames), out)
    assert not torch.equal(out.boxes[0], out.boxes[1])  # measured statistics: proposals follow the frame
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # frozen() made a copy


def test_update_norm_statistics_averages_over_the_batches():
    torch.manual_seed(0)
    model = trainable(RegionProposer(tiny_cfg()))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first.register_forward_pre_hook(lambda _module, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    batches = [scene(2, seed=s)[0] for s in (1, 2)]
    update_norm_statistics(model.eval(), batches)
    hook.remove()
    assert int(first.num_batches_tracked) == 2 and first.momentum == 0.1 and not model.training
    torch.testing.assert_close(first.running_mean, (seen[0] + seen[1]) / 2)


def test_detector_file_loads_strictly_into_a_proposer_and_a_torchvision_detector(trained, tmp_path):
    model, frames = trained
    path = save_detector(model, tmp_path / "out" / DETECTOR_FILE)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "strg-detector", "detector": "mobilenet_v3_large_fpn", "size": "64"}
    assert sorted(p.name for p in path.parent.iterdir()) == [DETECTOR_FILE]  # no temporary file left
    loaded = load_detector_weights(RegionProposer(tiny_cfg()), path).eval()
    with torch.no_grad():
        assert_same_proposals(loaded(frames), model(frames))
    state = detector_state(model)
    assert all(k.startswith(("backbone.", "rpn.head.")) for k in state)
    detector = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=2)
    result = detector.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and all(k.startswith("roi_heads.") for k in result.missing_keys)


# ---------------------------------------------------------------------------------------------------
# Anchor targets and losses


def test_anchors_are_torchvision_s_in_head_order():
    proposer = RegionProposer(tiny_cfg()).eval()
    frames, _, _ = scene(2, seed=1)
    with torch.no_grad():
        x = proposer.normalize(frames)
        features = list(proposer.backbone(x).values())
        logits, _ = proposer.head(features)
        expected = proposer.anchor_generator(ImageList(x, [(SIZE, SIZE)] * 2), features)
    anchors = anchors_of(proposer, logits, (SIZE, SIZE))
    assert (
        anchors.shape == (sum(level[0].numel() for level in logits), 4) == (2 * 2 * 15 + 2 * 2 * 15 + 15, 4)
    )
    torch.testing.assert_close(anchors, expected[0], rtol=0, atol=0)


def test_anchor_targets_follow_torchvision_s_rules():
    proposer = RegionProposer(tiny_cfg())
    anchors = anchors_of(
        proposer, [torch.zeros(1, 15, 2, 2), torch.zeros(1, 15, 2, 2), torch.zeros(1, 15, 1, 1)], (64, 64)
    )
    # level 0 (stride 32), cell (y=1, x=1), anchor 5 of 15 (ratio 1, size 32, ratio-major): centre (32, 32)
    index = 15 * 3 + 5
    gt = anchors[index]
    torch.testing.assert_close(gt, torch.tensor([16.0, 16.0, 48.0, 48.0]))
    boxes = torch.stack([torch.stack([gt, torch.tensor([40.0, 40.0, 60.0, 60.0])]), torch.zeros(2, 4)])
    boxes[1, 0] = torch.tensor([10.0, 10.0, 30.0, 30.0])  # masked: padding, not a target
    mask = torch.tensor([[True, False], [False, False]])
    labels, targets = anchor_targets(training_rules(proposer), anchors, boxes, mask)
    assert [t.shape for t in labels] == [(anchors.shape[0],)] * 2 and targets[0].shape == (
        anchors.shape[0],
        4,
    )
    # frame 0: torchvision's rules by hand (IoU >= 0.7 foreground, < 0.3 background, else ignored;
    # the anchor with the box's highest IoU is foreground whatever its IoU)
    iou = torchvision.ops.box_iou(gt[None], anchors)[0]
    expected = torch.full_like(iou, -1.0)
    expected[iou < 0.3] = 0.0
    expected[(iou >= 0.7) | (iou == iou.max())] = 1.0
    torch.testing.assert_close(labels[0], expected, rtol=0, atol=0)
    assert labels[0][index] == 1 and torch.all(targets[0][index] == 0)  # the box is the anchor itself
    positive = labels[0] == 1
    torch.testing.assert_close(
        targets[0][positive],
        training_rules(proposer).box_coder.encode_single(
            gt.expand(int(positive.sum()), 4), anchors[positive]
        ),
    )
    # frame 1: only a masked box, so every anchor is background
    assert torch.all(labels[1] == 0)


def test_rpn_losses_check_shapes_and_handle_frames_without_boxes():
    torch.manual_seed(0)
    proposer = trainable(RegionProposer(tiny_cfg()))
    frames, boxes, mask = scene(2, seed=1)
    mask[1] = False  # a frame without boxes: all background, no box loss from it
    objectness_loss, box_loss = rpn_losses(proposer, frames, boxes, mask)
    assert objectness_loss.ndim == 0 and torch.isfinite(objectness_loss) and torch.isfinite(box_loss)
    objectness_loss.backward()
    assert proposer.head.cls_logits.weight.grad is not None
    with pytest.raises(StrgError, match=r"ground-truth boxes: expected shape \[2, K, 4\], got \[3, 2, 4\]"):
        rpn_losses(proposer, frames, torch.zeros(3, 2, 4), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(StrgError, match=r"ground-truth box mask: expected shape \[2, 2\], got \[2, 3\]"):
        rpn_losses(proposer, frames, boxes, torch.ones(2, 3, dtype=torch.bool))


def test_a_few_dozen_steps_raise_recall_well_above_the_random_rpn():
    torch.manual_seed(0)
    frames, boxes, mask = scene(6, seed=4)
    proposer = trainable(RegionProposer(tiny_cfg()))
    with torch.no_grad():
        random = proposer.eval()(frames)
    before = recall_counts(random, boxes, mask)
    losses = train_steps(proposer, frames, boxes, mask, steps=30)
    update_norm_statistics(proposer, [frames])
    after = proposal_recall(proposer.eval(), frames, boxes, mask)
    assert before[1] == after[1] == 12
    assert after[0] / 12 >= 0.5 and after[0] - before[0] >= 3, (before, after)
    assert all(torch.isfinite(torch.tensor(step)).all() for step in losses)
    assert sum(o for o, _ in losses[-5:]) < 0.5 * sum(o for o, _ in losses[:5])
    assert sum(b for _, b in losses[-5:]) < sum(b for _, b in losses[:5])


# ---------------------------------------------------------------------------------------------------
# Recall


def test_recall_counts_hand_made_proposals():
    truth = torch.tensor(
        [
            [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [5.0, 5.0, 5.0, 9.0]],  # last: degenerate
            [[30.0, 30.0, 50.0, 50.0], [50.0, 0.0, 60.0, 10.0], [0.0, 0.0, 0.0, 0.0]],  # last: padding
        ]
    )
    truth_mask = torch.tensor([[True, True, True], [True, True, False]])
    proposals = Proposals(
        boxes=torch.tensor(
            [
                [[0.0, 0.0, 10.0, 20.0], [20.0, 20.0, 40.0, 40.0], [50.0, 0.0, 60.0, 10.0]],
                [[31.0, 31.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
            ]
        ),
        scores=torch.ones(2, 3),
        mask=torch.tensor([[True, False, True], [True, False, False]]),
    )
    # frame 0: box 0 has IoU exactly 0.5 (counts), box 1's twin is masked out; frame 1: box 0 IoU 0.9025,
    # box 1 matches a proposal of frame 0 only (does not count)
    assert recall_counts(proposals, truth, truth_mask) == (2, 4)
    assert recall_counts(proposals, truth, truth_mask, iou=0.6) == (1, 4)
    assert recall_counts(proposals, truth, torch.zeros(2, 3, dtype=torch.bool)) == (0, 0)

    class Fixed(torch.nn.Module):
        num_boxes = 3

        def forward(self, frames):
            return proposals

    frames = torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8)
    assert proposal_recall(Fixed(), frames, truth, truth_mask) == (2, 4)
    clip = torch.zeros(1, 3, 4, SIZE, SIZE, dtype=torch.uint8)  # T = 4, stride 2: the RPN sees 2 frames
    batch = {"clip": clip, "boxes": truth[None], "mask": truth_mask[None]}
    result = loader_recall(Fixed().train(), [batch, batch], temporal_stride=2)
    assert result == {"recall": 0.5, "matched": 4, "num_gt_boxes": 8, "frames": 4}


# ---------------------------------------------------------------------------------------------------
# fit_proposer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, videos_train=8, videos_validation=4, size=SIZE, frames=16, workers=1, seed=1)
    train = read_something_something_v2(root, "train")
    val = read_something_something_v2(root, "validation")
    cfg = preset("tiny").with_classes(train.classes)
    return cfg, train, val, read_box_tracks(root / "boxes.jsonl")


def test_fit_proposer_writes_a_loadable_detector_and_metrics(synthetic, tmp_path):
    cfg, train, val, tracks = synthetic
    train_set = ClipDataset(train, cfg, train=True, tracks=tracks, seed=3)
    val_set = ClipDataset(val, cfg, train=False, tracks=tracks)
    options = TrainOptions(epochs=2, batch_size=4, lr=0.05, workers=0, seed=3, warmup_epochs=0.5)
    steps = []
    metrics = fit_proposer(
        cfg, train_set, val_set, tmp_path / "run", options, on_step=lambda *a: steps.append(a)
    )
    assert [s[:2] for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1] == metrics and [m["epoch"] for m in lines] == [1, 2]
    fields = {
        "epoch",
        "global_step",
        "lr",
        "objectness_loss",
        "box_loss",
        "recall",
        "iou",
        "num_boxes",
        "train_frames_per_second",
    }
    assert fields <= set(metrics) and metrics["global_step"] == 4 and metrics["num_boxes"] == 4
    assert 0.0 <= metrics["recall"] <= 1.0 and metrics["iou"] == 0.5 and metrics["num_gt_boxes"] > 0
    assert all(m["objectness_loss"] > 0 and m["train_frames_per_second"] > 0 for m in lines)
    path = tmp_path / "run" / DETECTOR_FILE
    proposer = load_detector_weights(RegionProposer(cfg), path).eval()
    batch = {key: torch.stack([val_set[i][key] for i in range(4)]) for key in ("clip", "boxes", "mask")}
    result = loader_recall(proposer, [batch], cfg.backbone.temporal_stride)
    assert result["num_gt_boxes"] == metrics["num_gt_boxes"] and result["recall"] == pytest.approx(
        metrics["recall"]
    )


def test_fit_proposer_resumed_after_an_epoch_ends_as_an_uninterrupted_run(synthetic, tmp_path):
    cfg, train, val, tracks = synthetic
    options = TrainOptions(epochs=2, batch_size=4, lr=0.05, workers=0, seed=5, warmup_epochs=0.5)

    def run(out, options, resume=False):
        train_set = ClipDataset(train, cfg, train=True, tracks=tracks, seed=5)
        val_set = ClipDataset(val, cfg, train=False, tracks=tracks)
        return fit_proposer(cfg, train_set, val_set, out, options, resume=resume)

    whole = run(tmp_path / "whole", options)

    class Killed(Exception):
        pass

    def kill_in_epoch_two(step, total, loss):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):  # killed one step into epoch 2: last/ holds epoch 1
        train_set = ClipDataset(train, cfg, train=True, tracks=tracks, seed=5)
        val_set = ClipDataset(val, cfg, train=False, tracks=tracks)
        fit_proposer(cfg, train_set, val_set, tmp_path / "parts", options, on_step=kill_in_epoch_two)
    steps = []
    train_set = ClipDataset(train, cfg, train=True, tracks=tracks, seed=5)
    val_set = ClipDataset(val, cfg, train=False, tracks=tracks)
    parts = fit_proposer(
        cfg, train_set, val_set, tmp_path / "parts", options, resume=True, on_step=lambda *a: steps.append(a)
    )
    assert [s[:2] for s in steps] == [(3, 4), (4, 4)]  # only the second epoch ran
    volatile = {"train_frames_per_second", "train_clips_per_second", "loader_share", "epoch_seconds"}
    assert {k: v for k, v in parts.items() if k not in volatile} == {
        k: v for k, v in whole.items() if k not in volatile
    }
    lines = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    a = read_state_dict(tmp_path / "whole" / DETECTOR_FILE)
    b = read_state_dict(tmp_path / "parts" / DETECTOR_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed again trains nothing and returns its last metrics
    assert run(tmp_path / "parts", options, resume=True)["recall"] == parts["recall"]


def test_fit_proposer_needs_box_tracks(synthetic, tmp_path):
    cfg, train, val, tracks = synthetic
    options = TrainOptions(epochs=1, batch_size=4, workers=0)
    with pytest.raises(StrgError, match="needs ground-truth boxes, and the training data has no box tracks"):
        fit_proposer(
            cfg, ClipDataset(train, cfg, train=True), ClipDataset(val, cfg, train=False), tmp_path, options
        )
    with pytest.raises(StrgError, match="the validation data has no box tracks"):
        fit_proposer(
            cfg,
            ClipDataset(train, cfg, train=True, tracks=tracks),
            ClipDataset(val, cfg, train=False),
            tmp_path,
            options,
        )
    assert not (tmp_path / DETECTOR_FILE).exists()
