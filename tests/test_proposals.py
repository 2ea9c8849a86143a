"""Region proposals: the rpn network's contract, NMS and padding, detector weights, given and
precomputed boxes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from strg_deploy.config import preset
from strg_deploy.errors import StrgError
from strg_deploy.models.proposals import (
    GivenBoxes,
    Proposals,
    ProposalSource,
    RegionProposer,
    _nms_top_n,
    pad_to_n,
    tie_free_scores,
)
from strg_deploy.models.weights import detector_state_for_proposer, load_detector_weights
from strg_deploy.train.precompute import PrecomputedBoxes, write_precomputed

SIZE = 64


def tiny_cfg(**proposals):
    """The tiny preset with torchvision's own RPN layout (what COCO detector files fit) unless overridden."""
    cfg = preset("tiny")
    proposals = {"returned_layers": (), "anchor_sizes": (), **proposals}
    return cfg.replace(proposals=dataclasses.replace(cfg.proposals, **proposals))


def spread_head(proposer: RegionProposer, seed: int = 0) -> RegionProposer:
    """Make a randomly initialised proposer's outputs informative: batch-norm statistics calibrated on
    random frames (with identity statistics the features of a random MobileNetV3 vanish), and head
    weights large enough that objectness scores differ (no ties) and boxes move."""
    gen = torch.Generator().manual_seed(seed)

    def calibrate(module: FrozenBatchNorm2d, args: tuple[torch.Tensor]) -> None:
        module.running_mean.copy_(args[0].mean(dim=(0, 2, 3)))
        module.running_var.copy_(args[0].var(dim=(0, 2, 3)))

    norms = [m for m in proposer.modules() if isinstance(m, FrozenBatchNorm2d)]
    hooks = [m.register_forward_pre_hook(calibrate) for m in norms]
    frames = torch.randint(0, 256, (8, 3, proposer.size, proposer.size), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        proposer.backbone(proposer.normalize(frames))
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for conv, std in ((proposer.head.cls_logits, 0.05), (proposer.head.bbox_pred, 0.01)):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * std)
    return proposer.eval()


def make_proposer(**proposals) -> RegionProposer:
    torch.manual_seed(0)
    return spread_head(RegionProposer(tiny_cfg(**proposals)))


def random_frames(count: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torchvision.ops.box_iou(a, b)


@pytest.fixture(scope="module")
def proposer() -> RegionProposer:
    return make_proposer()


# ---------------------------------------------------------------------------------------------------
# The rpn network


def check_contract(out: Proposals, frames: int, n: int, size: int = SIZE) -> None:
    assert isinstance(out, Proposals)
    assert out.boxes.shape == (frames, n, 4) and out.boxes.dtype == torch.float32
    assert out.scores.shape == (frames, n) and out.scores.dtype == torch.float32
    assert out.mask.shape == (frames, n) and out.mask.dtype == torch.bool
    assert torch.all(out.boxes[~out.mask] == 0) and torch.all(out.scores[~out.mask] == 0)
    assert out.boxes.min() >= 0 and out.boxes.max() <= size
    x1, y1, x2, y2 = out.boxes[out.mask].unbind(-1)
    assert torch.all(x2 > x1) and torch.all(y2 > y1)
    for f in range(frames):
        k = int(out.mask[f].sum())
        assert torch.all(out.mask[f, :k]) and not torch.any(out.mask[f, k:])  # valid entries come first
        assert torch.all(out.scores[f, :k].diff() <= 0)


def test_contract_shapes_dtypes_and_order(proposer):
    with torch.no_grad():
        out = proposer(random_frames(3))
    check_contract(out, 3, 4)
    assert torch.all(out.mask)  # 115 candidates for N = 4
    assert isinstance(proposer, ProposalSource) and proposer.num_boxes == 4


def test_forward_is_nms_of_candidates_and_pads_when_few_survive():
    proposer = make_proposer(num_boxes=150, nms_threshold=0.5)  # more than the 115 candidates per frame
    frames = random_frames(2)
    with torch.no_grad():
        out = proposer(frames)
        boxes, scores, valid = proposer.candidates(frames)
    check_contract(out, 2, 150)
    assert boxes.shape == (2, 50 + 50 + 15, 4)  # per level min(pre_nms_top_n=50, anchors): 4*4*15, 2*2*15, 15
    for f in range(2):
        keep = torchvision.ops.nms(boxes[f][valid[f]], scores[f][valid[f]], 0.5)
        k = keep.numel()
        assert 0 < k < 150 and int(out.mask[f].sum()) == k
        torch.testing.assert_close(out.boxes[f, :k], boxes[f][valid[f]][keep])
        torch.testing.assert_close(out.scores[f, :k], scores[f][valid[f]][keep])
        overlaps = iou(out.boxes[f, :k], out.boxes[f, :k]).fill_diagonal_(0)
        assert overlaps.max() <= 0.5


def test_frames_are_independent_of_their_batch(proposer):
    frames = random_frames(4, seed=2)
    frames[1] = 0  # a black frame among textured ones
    with torch.no_grad():
        batched = proposer(frames)
        for f in range(4):
            alone = proposer(frames[f : f + 1])
            assert torch.equal(alone.mask[0], batched.mask[f])
            # convolution kernels round differently for other batch sizes: equal up to float error
            torch.testing.assert_close(alone.boxes[0], batched.boxes[f], atol=0.05, rtol=2e-3)
            torch.testing.assert_close(alone.scores[0], batched.scores[f], atol=2e-3, rtol=0)


def test_score_threshold_masks_instead_of_shifting():
    proposer = make_proposer(num_boxes=8, score_threshold=0.5)
    frames = random_frames(3, seed=3)
    with torch.no_grad():
        out = proposer(frames)
        _, scores, _ = proposer.candidates(frames)
    check_contract(out, 3, 8)
    assert torch.all(out.scores[out.mask] >= 0.5)
    for f in range(3):
        with torch.no_grad():
            alone = proposer(frames[f : f + 1])
        assert torch.equal(alone.mask[0], out.mask[f])
        torch.testing.assert_close(alone.boxes[0], out.boxes[f], atol=0.05, rtol=2e-3)
        assert int(out.mask[f].sum()) <= int((scores[f] >= 0.5).sum())


def test_input_validation(proposer):
    good = random_frames(1)
    bad_inputs = [
        good.float(),
        good[0],
        good[:, :2],
        torch.zeros(1, 3, SIZE, SIZE + 16, dtype=torch.uint8),
        torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
    ]
    for bad in bad_inputs:
        with pytest.raises(StrgError, match=r"rpn frames: expected .*\[F, 3, 64, 64\]"):
            proposer(bad)
    check_contract(proposer(torch.zeros(5, 3, SIZE, SIZE, dtype=torch.uint8)), 5, 4)  # any batch size


def test_normalisation_happens_inside(proposer):
    frames = random_frames(2, seed=4)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    manual = (frames.float() / 255 - mean) / std
    torch.testing.assert_close(proposer.normalize(frames), manual)
    with torch.no_grad():
        ours = proposer.backbone(proposer.normalize(frames))
        theirs = proposer.backbone(manual)
    for key in ("0", "1", "pool"):
        torch.testing.assert_close(ours[key], theirs[key])
    # torchvision's MobileNetV3 FPN takes both levels at stride 32, plus the max-pooled stride-64 level
    assert [tuple(v.shape[-2:]) for v in theirs.values()] == [(2, 2), (2, 2), (1, 1)]


def test_matches_torchvision_rpn_without_nms():
    """With NMS disabled (threshold 1) and torchvision's min_size, the module's output from uint8
    frames equals torchvision's RegionProposalNetwork fed the manually normalised frames."""
    n = 20
    proposer = make_proposer(num_boxes=n, nms_threshold=1.0, min_size=1e-3)
    frames = random_frames(3, seed=5)
    manual = (frames.float() / 255 - proposer.mean) / proposer.std
    rpn = RegionProposalNetwork(
        proposer.anchor_generator, proposer.head, 0.7, 0.3, 256, 0.5,
        pre_nms_top_n={"training": 50, "testing": 50}, post_nms_top_n={"training": n, "testing": n},
        nms_thresh=1.0,
    ).eval()  # fmt: skip
    with torch.no_grad():
        out = proposer(frames)
        features = proposer.backbone(manual)
        reference, _ = rpn(ImageList(manual, [(SIZE, SIZE)] * 3), features)
    assert torch.all(out.mask)
    for f in range(3):
        torch.testing.assert_close(out.boxes[f], reference[f], atol=1e-4, rtol=0)


def test_sizes_not_divisible_by_32_are_padded_like_torchvision():
    cfg = tiny_cfg()
    cfg = cfg.replace(size=80)
    torch.manual_seed(0)
    proposer = spread_head(RegionProposer(cfg))
    frames = torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8)
    assert proposer.normalize(frames).shape == (2, 3, 96, 96)
    with torch.no_grad():
        check_contract(proposer(frames), 2, 4, size=80)


# ---------------------------------------------------------------------------------------------------
# NMS and padding


def test_nms_top_n_on_hand_made_boxes():
    boxes = torch.tensor(
        [
            [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0], [40, 40, 50, 50]],
            [[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 1, 1], [2, 2, 3, 3], [9, 9, 10, 10.0]],
            [[0, 0, 10, 10], [1, 1, 9, 9], [0, 0, 2, 2], [3, 3, 4, 4], [5, 5, 6, 6.0]],
        ]
    )
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.95, 0.6], [0.5, 0.6, 0.1, 0.2, 0.3], [0.9] * 5])
    valid = torch.tensor([[True, True, True, False, True], [True] * 5, [False] * 5])
    # frame 0: box 1 overlaps box 0 with IoU 90/110 = 0.818 > 0.8 and goes; box 3 is invalid.
    # frame 1: boxes 0 and 1 overlap with IoU 1/3: both stay at threshold 0.8, box 0 goes at 0.3.
    # frame 2: no valid box.
    out = _nms_top_n(boxes, scores, valid, 0.8, 4)
    assert [t.shape for t in out] == [(3, 4, 4), (3, 4), (3, 4)]
    out_boxes, out_scores, mask = out
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True], [False] * 4]
    assert out_boxes[0, :3].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    torch.testing.assert_close(out_scores[0], torch.tensor([0.9, 0.7, 0.6, 0.0]))
    assert out_boxes[1].tolist() == [[5, 0, 15, 10], [0, 0, 10, 10], [9, 9, 10, 10], [2, 2, 3, 3]]
    assert torch.all(out_boxes[2] == 0) and torch.all(out_scores[2] == 0)
    assert torch.all(out_boxes[0, 3] == 0)

    strict = _nms_top_n(boxes, scores, valid, 0.3, 6)  # IoU 1/3 > 0.3 suppresses; N above K pads
    assert strict[0].shape == (3, 6, 4)
    assert strict[2][1].tolist() == [True, True, True, True, False, False]
    assert strict[0][1, :4].tolist() == [[5, 0, 15, 10], [9, 9, 10, 10], [2, 2, 3, 3], [0, 0, 1, 1]]


def test_nms_top_n_breaks_ties_by_candidate_index():
    boxes = torch.tensor(
        [[[0, 0, 10, 10], [30, 30, 40, 40], [1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60.0]]]
    )
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5, 0.5]])  # four-way tie below the best
    valid = torch.tensor([[True, True, True, True, True]])
    ranking = tie_free_scores(scores, valid)
    assert ranking.tolist() == [[4.0, 5.0, 3.0, 2.0, 1.0]]  # K - rank: 1 first, then 0, 2, 3, 4
    assert tie_free_scores(scores, ~valid).tolist() == [[-1.0] * 5]
    # box 2 overlaps box 0 (IoU 0.818) with the same score: the earlier candidate, 0, stays;
    # the cut at three boxes takes the earlier of the tied boxes 3 and 4
    out_boxes, out_scores, mask = _nms_top_n(boxes, scores, valid, 0.8, 3)
    assert out_boxes[0].tolist() == [[30, 30, 40, 40], [0, 0, 10, 10], [20, 20, 30, 30]]
    assert out_scores[0].tolist() == pytest.approx([0.7, 0.5, 0.5]) and mask.all()
    reversed_order = [4, 3, 2, 1, 0]  # the same candidates listed the other way round: index decides
    flipped = _nms_top_n(boxes[:, reversed_order], scores[:, reversed_order], valid, 0.8, 3)
    assert flipped[0][0].tolist() == [[30, 30, 40, 40], [50, 50, 60, 60], [20, 20, 30, 30]]


def test_nms_top_n_frames_do_not_mix():
    gen = torch.Generator().manual_seed(6)
    xy = torch.rand(5, 30, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(5, 30, 2, generator=gen) * 20], dim=-1)
    scores = torch.rand(5, 30, generator=gen)
    valid = torch.rand(5, 30, generator=gen) > 0.3
    valid[2] = False
    valid[3, 2:] = False
    batched = _nms_top_n(boxes, scores, valid, 0.5, 8)
    for f in range(5):
        alone = _nms_top_n(boxes[f : f + 1], scores[f : f + 1], valid[f : f + 1], 0.5, 8)
        for a, b in zip(alone, batched, strict=True):
            assert torch.equal(a[0], b[f])
    assert not batched[2][2].any() and int(batched[2][3].sum()) <= 2


def test_pad_to_n_keeps_order_and_drops_degenerate_boxes():
    boxes = torch.tensor([[[1, 1, 2, 2], [5, 5, 5, 9], [3, 3, 4, 4], [6, 6, 7, 7.0]]])
    valid = torch.tensor([[True, True, False, True]])
    out = pad_to_n(boxes, valid, 3, torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    assert out.boxes[0].tolist() == [[1, 1, 2, 2], [6, 6, 7, 7], [0, 0, 0, 0]]
    assert out.mask[0].tolist() == [True, True, False]
    torch.testing.assert_close(out.scores[0], torch.tensor([0.1, 0.4, 0.0]))
    first = pad_to_n(boxes, torch.ones(1, 4, dtype=torch.bool), 1)
    assert first.boxes[0].tolist() == [[1, 1, 2, 2]] and first.scores.tolist() == [[1.0]]


# ---------------------------------------------------------------------------------------------------
# Detector weights


def randomised_detector(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """Random batch-norm statistics and affine parameters and a random RPN head, so that equal outputs
    mean the weights really loaded (convolutions keep their random initialisation)."""
    gen = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen) * scale

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(1 + noise(module.weight, 0.1))
                module.bias.copy_(noise(module.bias, 0.1))
                module.running_mean.copy_(noise(module.running_mean, 0.1))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
        for conv in (model.rpn.head.cls_logits, model.rpn.head.bbox_pred):
            conv.weight.copy_(noise(conv.weight, 0.05))
            conv.bias.copy_(noise(conv.bias, 0.05))
    return model.eval()


@pytest.fixture(scope="module")
def mobilenet_detector():
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    return randomised_detector(model)


@pytest.mark.parametrize("wrapper", ["plain", "model", "safetensors"])
def test_load_detector_weights_mobilenet(mobilenet_detector, tmp_path, wrapper):
    state = mobilenet_detector.state_dict()
    if wrapper != "plain":  # the plain file keeps roi_heads.* (to be ignored); the others skip 50 MB
        state = {k: v for k, v in state.items() if not k.startswith("roi_heads.")}
    if wrapper == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "detector.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "detector.pth"
        torch.save(state if wrapper == "plain" else {"model": state, "epoch": 3}, path)
    proposer = load_detector_weights(RegionProposer(tiny_cfg()), path)
    own = proposer.state_dict()
    assert len(own) > 100
    for key, value in own.items():
        source = "rpn." + key if key.startswith("head.") else key
        assert torch.equal(value, state[source]), key

    frames = random_frames(2, seed=8)
    x = proposer.normalize(frames)
    with torch.no_grad():
        ours = proposer.backbone(x)
        theirs = mobilenet_detector.backbone(x)
        for key in theirs:
            assert theirs[key].abs().mean() > 0.05
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-4)
        features = list(theirs.values())
        for a, b in zip(proposer.head(features), mobilenet_detector.rpn.head(features), strict=True):
            for level_a, level_b in zip(a, b, strict=True):
                assert torch.equal(level_a, level_b)


def test_load_detector_weights_errors(mobilenet_detector, tmp_path):
    proposer = RegionProposer(tiny_cfg())
    with pytest.raises(StrgError, match="absent.pth does not exist"):
        load_detector_weights(proposer, tmp_path / "absent.pth")

    state = dict(mobilenet_detector.state_dict())
    del state["rpn.head.cls_logits.weight"]
    state["rpn.head.bbox_pred.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(StrgError) as err:
        load_detector_weights(proposer, path)
    message = str(err.value)
    assert "1 missing: rpn.head.cls_logits.weight" in message
    assert "1 shape mismatch: rpn.head.bbox_pred.bias [7] vs model [60]" in message

    r50_like = tmp_path / "r50.pth"
    torch.save({"backbone.body.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, r50_like)
    with pytest.raises(
        StrgError, match="are for resnet50_fpn, this model's detector is mobilenet_v3_large_fpn"
    ):
        load_detector_weights(proposer, r50_like)

    classifier = tmp_path / "classifier.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, classifier)
    with pytest.raises(StrgError, match="no Faster R-CNN backbone"):
        load_detector_weights(proposer, classifier)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(StrgError, match="cannot read weights file .*junk.pth"):
        load_detector_weights(proposer, junk)


def test_resnet50_fpn_detector_keys_fit():
    cfg = preset("paper-r50")
    assert cfg.proposals.detector == "resnet50_fpn"
    with torch.device("meta"):  # keys and shapes only: no memory, no initialisation
        detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
        proposer = RegionProposer(cfg)
    mapped = detector_state_for_proposer(detector.state_dict())
    own = proposer.state_dict()
    assert len(own) > 250 and set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert not any(k.startswith("roi_heads") for k in mapped)
    proposer.load_state_dict(mapped, strict=True, assign=True)
    assert proposer.head.cls_logits.out_channels == 3 and proposer.head.bbox_pred.out_channels == 12
    assert [tuple(c.shape) for c in proposer.anchor_generator.cell_anchors] == [(3, 4)] * 5

    tiny = RegionProposer(tiny_cfg())
    assert [tuple(c.shape) for c in tiny.anchor_generator.cell_anchors] == [(15, 4)] * 3


# ---------------------------------------------------------------------------------------------------
# Given and precomputed boxes


FRAME_BOXES = [
    [[1, 2, 10, 12], [5, 5, 20, 25]],
    [],
    [[0, 0, 4, 4], [3, 3, 3, 8], [1, 1, 2, 2], [2, 2, 6, 6], [7, 7, 9, 9]],  # one degenerate, four good
]
FRAME_SCORES = [[0.9, 0.4], [], [0.1, 0.2, 0.3, 0.4, 0.5]]


def test_given_boxes_lists_and_batched_form():
    source = GivenBoxes(3)
    assert isinstance(source, ProposalSource)
    out = source(FRAME_BOXES, FRAME_SCORES)
    assert out.boxes.shape == (3, 3, 4) and out.scores.shape == (3, 3) and out.mask.dtype == torch.bool
    assert out.boxes[0].tolist() == [[1, 2, 10, 12], [5, 5, 20, 25], [0, 0, 0, 0]]
    assert out.mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    assert out.boxes[2].tolist() == [[0, 0, 4, 4], [1, 1, 2, 2], [2, 2, 6, 6]]  # first three good ones
    torch.testing.assert_close(out.scores[2], torch.tensor([0.1, 0.3, 0.4]))
    assert torch.all(out.boxes[1] == 0) and torch.all(out.scores[1] == 0)
    assert source(FRAME_BOXES).scores[0].tolist() == [1.0, 1.0, 0.0]

    padded = torch.zeros(1, 3, 5, 4)
    valid = torch.zeros(1, 3, 5, dtype=torch.bool)
    for f, frame in enumerate(FRAME_BOXES):
        padded[0, f, : len(frame)] = torch.tensor(frame).reshape(-1, 4)
        valid[0, f, : len(frame)] = True
    batched = source.batched(padded.expand(2, -1, -1, -1), valid.expand(2, -1, -1))
    assert batched.boxes.shape == (2, 3, 3, 4) and batched.mask.shape == (2, 3, 3)
    assert torch.equal(batched.boxes[1], out.boxes) and torch.equal(batched.mask[0], out.mask)

    with pytest.raises(StrgError, match=r"given boxes of frame 0: expected shape \[K, 4\]"):
        source([[1, 2, 3]])
    with pytest.raises(StrgError, match="validity mask"):
        source.batched(padded, valid[..., :4])


def test_precomputed_boxes_round_trip(tmp_path):
    given = GivenBoxes(5)(FRAME_BOXES, FRAME_SCORES)
    gen = torch.Generator().manual_seed(9)
    rpn_like = Proposals(
        torch.rand(2, 4, 4, generator=gen), torch.rand(2, 4, generator=gen), torch.ones(2, 4).bool()
    )
    rpn_like.boxes[..., 2:] += 1
    path = write_precomputed(
        tmp_path / "boxes" / "props.safetensors",
        {
            "clips/video a": {"frame_index": [30, 0, 15], **given._asdict()},
            "b": {"frame_index": torch.tensor([4, 6]), "boxes": rpn_like.boxes},
        },
    )
    assert [p.name for p in path.parent.iterdir()] == ["props.safetensors"]  # no temporary file left
    source = PrecomputedBoxes(path, 3)
    assert isinstance(source, ProposalSource)
    assert source.videos == ("b", "clips/video a")

    out = source("clips/video a", [0, 30])
    expect = GivenBoxes(3)([FRAME_BOXES[1], FRAME_BOXES[0]], [FRAME_SCORES[1], FRAME_SCORES[0]])
    for a, b in zip(out, expect, strict=True):
        assert torch.equal(a, b)
    full = source("clips/video a", torch.tensor([30, 0, 15]))
    assert full.boxes.shape == (3, 3, 4) and full.mask.tolist()[2] == [True, True, True]

    b = source("b", [6])
    torch.testing.assert_close(b.boxes[0], rpn_like.boxes[1, :3])
    stored = source.stored("b")  # as written: every box, not cut to N
    assert stored["frame_index"].tolist() == [4, 6] and torch.equal(stored["boxes"], rpn_like.boxes)
    with pytest.raises(StrgError, match="no video 'c'"):
        source.stored("c")
    assert b.scores.tolist() == [[1.0, 1.0, 1.0]]

    with pytest.raises(StrgError, match="no video 'c'"):
        source("c", [0])
    with pytest.raises(StrgError, match=r"no frame\(s\) 1, 2 of video 'b'"):
        source("b", [4, 1, 2])
    with pytest.raises(StrgError, match="not found"):
        PrecomputedBoxes(tmp_path / "absent.safetensors", 3)
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(StrgError, match="not a precomputed-boxes file"):
        PrecomputedBoxes(other, 3)
    with pytest.raises(StrgError, match="repeats a frame"):
        write_precomputed(
            tmp_path / "bad.safetensors", {"v": {"frame_index": [1, 1], "boxes": torch.zeros(2, 1, 4)}}
        )
    assert not (tmp_path / "bad.safetensors").exists()


def test_proposals_as_clips():
    out = Proposals(torch.arange(6 * 2 * 4.0).reshape(6, 2, 4), torch.zeros(6, 2), torch.ones(6, 2).bool())
    clips = out.as_clips(2)
    assert clips.boxes.shape == (2, 3, 2, 4) and clips.mask.shape == (2, 3, 2)
    assert torch.equal(clips.boxes[1, 0], out.boxes[3])


def test_small_frame_layout_has_a_finer_grid_and_refuses_coco_layout_files(tmp_path):
    cfg = preset("tiny")  # MobileNetV3 stages 2-4 + the pooled level, anchors 8-128 px
    assert cfg.proposals.returned_layers and len(cfg.proposals.anchor_sizes) == 4
    torch.manual_seed(0)
    proposer = RegionProposer(cfg)
    with torch.no_grad():
        boxes, _, _ = proposer.candidates(random_frames(1))
    # 64 px frames at strides 8, 16, 32, 64 with 3 sizes x 3 ratios per position, at most
    # pre_nms_top_n (50) per level
    assert boxes.shape == (1, 50 + 50 + 2 * 2 * 9 + 1 * 1 * 9, 4)
    path = tmp_path / "coco_layout.pth"
    torch.save(RegionProposer(tiny_cfg()).state_dict(), path)
    with pytest.raises(StrgError, match="does not fit"):
        load_detector_weights(proposer, path)
    with pytest.raises(StrgError, match="anchor_sizes has 3"):
        tiny_cfg(returned_layers=(2, 3, 4), anchor_sizes=((8,), (16,), (32,))).validate()
