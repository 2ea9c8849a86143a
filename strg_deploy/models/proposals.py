"""Region proposals: exactly N boxes per frame, from a torchvision RPN or from given boxes.

Every source returns :class:`Proposals` with a fixed N (``cfg.proposals.num_boxes``): boxes float32
[F, N, 4] (x1, y1, x2, y2 in input pixels), scores float32 [F, N], mask bool [F, N]. Frames with fewer
than N boxes are padded with zero boxes, score 0 and mask False; each frame is filled from its own
boxes only, so padding never shifts boxes between frames.

- :class:`RegionProposer` is the ``rpn`` network of the model contract: the backbone with FPN and the
  RPN head of torchvision's Faster R-CNN (ResNet-50-FPN or MobileNetV3-Large-FPN), run at clip
  resolution on uint8 frames that it normalises itself (ImageNet mean/std, no resize to 800 px).
  :func:`~strg_deploy.models.weights.load_detector_weights` loads the backbone and RPN part of a
  torchvision Faster R-CNN state dict into it.
- :class:`GivenBoxes` pads ground-truth boxes of data that has them.
- Proposals computed once for a dataset and kept in a file are read by
  :class:`~strg_deploy.train.precompute.PrecomputedBoxes` (the file format is described there).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import backbone_utils
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.misc import FrozenBatchNorm2d

from strg_deploy.config import ModelConfig
from strg_deploy.errors import StrgError, shape_error

# Anchor sizes and aspect ratios of torchvision's fasterrcnn_resnet50_fpn (one size per FPN level, five
# levels) and fasterrcnn_mobilenet_v3_large_fpn (five sizes on each of its three levels).
ANCHOR_SIZES = {
    "resnet50_fpn": ((32,), (64,), (128,), (256,), (512,)),
    "mobilenet_v3_large_fpn": ((32, 64, 128, 256, 512),) * 3,
}
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Batch-norm epsilon of the published COCO weights: torchvision sets 0.0 for fasterrcnn_resnet50_fpn
# COCO_V1 and keeps FrozenBatchNorm2d's 1e-5 for the MobileNetV3 detectors.
NORM_EPS = {"resnet50_fpn": 0.0, "mobilenet_v3_large_fpn": 1e-5}
# torchvision's detectors pad images to a multiple of 32 (GeneralizedRCNNTransform.size_divisible).
SIZE_DIVISIBLE = 32


class Proposals(NamedTuple):
    """Fixed-N proposals: boxes float32 [..., N, 4] (x1, y1, x2, y2), scores float32 [..., N],
    mask bool [..., N]. Rows where mask is False are zero boxes with score 0."""

    boxes: Tensor
    scores: Tensor
    mask: Tensor

    def as_clips(self, batch: int) -> Proposals:
        """[B * T', N, ...] -> [B, T', N, ...]: frame ``b * T' + t`` becomes ``[b, t]``."""
        return Proposals(*(t.unflatten(0, (batch, -1)) for t in self))


@runtime_checkable
class ProposalSource(Protocol):
    """A source of :class:`Proposals` with exactly ``num_boxes`` (N) entries per frame.

    What a source reads differs (frames for :class:`RegionProposer`, box lists for :class:`GivenBoxes`,
    video id and frame indices for :class:`~strg_deploy.train.precompute.PrecomputedBoxes`); what it
    returns is always Proposals.
    """

    num_boxes: int


# ----------------------------------------------------------------------------------------------------
# Functional ops


def pad_to_n(boxes: Tensor, valid: Tensor, n: int, scores: Tensor | None = None) -> Proposals:
    """Keep the first ``n`` valid boxes of each row, in their order, and pad to exactly ``n``.

    boxes float [..., K, 4], valid bool [..., K], scores float [..., K] (default 1 for valid boxes)
    -> Proposals with boxes [..., n, 4], scores [..., n], mask [..., n]. Degenerate boxes (x2 <= x1 or
    y2 <= y1, or not finite) count as invalid. Valid boxes move to the front of their own row only.
    """
    if boxes.shape[-1:] != (4,) or boxes.shape[:-1] != valid.shape:
        raise shape_error("boxes and validity mask", "boxes [..., K, 4] with mask [..., K]", boxes.shape)
    boxes = boxes.to(torch.float32)
    scores = torch.ones_like(valid, dtype=torch.float32) if scores is None else scores
    if scores.shape != valid.shape:
        raise shape_error("box scores", f"{list(valid.shape)}", scores.shape)
    scores = scores.to(torch.float32)
    valid = valid.to(torch.bool) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    valid = valid & torch.isfinite(boxes).all(dim=-1)
    # a stable sort on "not valid" moves the valid boxes to the front and keeps their order
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)[..., :n]
    return _gather_padded(boxes, scores, valid, order, n)


def _gather_padded(boxes: Tensor, scores: Tensor, keep: Tensor, order: Tensor, n: int) -> Proposals:
    """Take entries ``order`` [..., k] (k <= n) of each row, zero those not in ``keep``, pad to n."""
    mask = keep.gather(-1, order)
    out_boxes = boxes.gather(-2, order.unsqueeze(-1).expand(*order.shape, 4))
    out_boxes = torch.where(mask.unsqueeze(-1), out_boxes, torch.zeros_like(out_boxes))
    out_scores = torch.where(mask, scores.gather(-1, order), torch.zeros_like(mask, dtype=scores.dtype))
    missing = n - order.shape[-1]
    if missing > 0:
        out_boxes = F.pad(out_boxes, (0, 0, 0, missing))
        out_scores = F.pad(out_scores, (0, missing))
        mask = F.pad(mask, (0, missing), value=False)
    return Proposals(out_boxes, out_scores, mask)


def _nms_keep(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Which boxes survive non-maximum suppression among the valid boxes of their own frame.

    boxes [F, K, 4], scores [F, K], valid bool [F, K] -> keep bool [F, K]. A box is suppressed by a
    higher-scoring kept box of the same frame whose IoU with it is greater than ``iou_threshold``.
    Eager only (torchvision.ops.nms per frame); the ONNX export replaces this step.
    """
    keep = torch.zeros_like(valid)
    for f in range(boxes.shape[0]):
        idx = valid[f].nonzero().squeeze(1)
        survivors = torchvision.ops.nms(boxes[f, idx], scores[f, idx], iou_threshold)
        keep[f, idx[survivors]] = True
    return keep


def tie_free_scores(scores: Tensor, valid: Tensor) -> Tensor:
    """Scores without ties, for ranking: scores [F, K], valid bool [F, K] -> float32 [F, K] holding
    K - rank for valid candidates and -1 for the others, where rank orders each frame's valid candidates
    by score (highest first) and equal scores by candidate index (lowest first), as a stable sort does.
    The exported RPN computes the same values with standard ops (``export/rpn_postprocess.py``)."""
    k = scores.shape[-1]
    masked = scores.masked_fill(~valid, -1.0)
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    steps = torch.arange(k, device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, steps)
    return torch.where(valid, (k - rank).to(torch.float32), torch.full_like(masked, -1.0))


def _nms_top_n(
    boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """NMS within each frame, then the ``n`` highest-scoring survivors, padded to exactly ``n``.

    boxes float32 [F, K, 4], scores float32 [F, K], valid bool [F, K] -> boxes [F, n, 4],
    scores [F, n], mask bool [F, n], highest score first; padded rows are zero boxes with score 0.
    Equal scores rank by candidate index, lower first (:func:`tie_free_scores`), in NMS and in the
    output order alike.
    """
    ranking = tie_free_scores(scores, valid)
    keep = _nms_keep(boxes, ranking, valid, iou_threshold)
    ranked = ranking.masked_fill(~keep, float("-inf"))
    _, order = ranked.topk(min(n, scores.shape[1]), dim=1)
    return tuple(_gather_padded(boxes, scores, keep, order, n))


def _grid_anchors(cell: Tensor, height: int, width: int, stride_y: int, stride_x: int) -> Tensor:
    """Anchors of one feature level as torchvision's AnchorGenerator lays them out.

    cell [A, 4] zero-centred anchors -> [height * width * A, 4], ordered (y, x, anchor); the anchor of
    cell (y, x) is centred on pixel (x * stride_x, y * stride_y).
    """
    shift_x = torch.arange(width, dtype=cell.dtype, device=cell.device) * stride_x
    shift_y = torch.arange(height, dtype=cell.dtype, device=cell.device) * stride_y
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------------
# The rpn network


def detector_backbone(
    detector: str, norm_eps: float | None = None, returned_layers: Sequence[int] = ()
) -> nn.Module:
    """The FPN backbone of torchvision's Faster R-CNN ``detector`` (a BackboneWithFPN, 256 channels),
    with frozen batch norm and random weights (nothing is downloaded). ``returned_layers``: the stages
    that feed the FPN (empty: torchvision's choice for the detector)."""
    eps = NORM_EPS[detector] if norm_eps is None else norm_eps
    norm = functools.partial(FrozenBatchNorm2d, eps=eps)
    layers = list(returned_layers) or None
    if detector == "resnet50_fpn":
        return backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet50",
            weights=None,
            norm_layer=norm,
            trainable_layers=5,
            returned_layers=layers,
        )
    if detector == "mobilenet_v3_large_fpn":
        return backbone_utils.mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=norm,
            trainable_layers=6,
            returned_layers=layers,
        )
    raise StrgError(f"detector must be one of {list(ANCHOR_SIZES)}, got {detector!r}")


class RegionProposer(nn.Module):
    """The ``rpn`` network: frames uint8 [F, 3, H, W] -> :class:`Proposals` with boxes float32
    [F, N, 4] (x1, y1, x2, y2 in input pixels), scores float32 [F, N] (sigmoid of the objectness,
    highest first), mask bool [F, N]; H = W = ``cfg.size``, N = ``cfg.proposals.num_boxes``.

    Frames are normalised inside (x / 255 - mean) / std with ``cfg.proposals.mean/std`` and padded with
    zeros at the bottom and right to a multiple of 32, as torchvision's detectors do, but never resized.
    Then: ``backbone`` (torchvision BackboneWithFPN), ``head`` (torchvision RPNHead), per FPN level the
    ``pre_nms_top_n`` highest objectness scores, decoding with torchvision's BoxCoder, clipping to the
    frame, masking boxes smaller than ``min_size`` or scoring below ``score_threshold``, NMS at
    ``nms_threshold`` across levels within each frame, the N best survivors.

    Unlike torchvision's RPN, which suppresses only within each FPN level, NMS runs across levels, so
    the N boxes of a frame are distinct. Batch norm is frozen: the module acts the same in train and eval
    mode. ``norm_eps`` overrides the batch-norm epsilon (default: that of torchvision's COCO weights).
    """

    def __init__(self, cfg: ModelConfig, norm_eps: float | None = None):
        super().__init__()
        cfg.proposals.validate()
        p = cfg.proposals
        self.cfg = cfg
        self.size = cfg.size
        self.detector = p.detector
        self.num_boxes = p.num_boxes
        self.pre_nms_top_n = p.pre_nms_top_n
        self.nms_threshold = p.nms_threshold
        self.score_threshold = p.score_threshold
        self.min_size = p.min_size
        self.backbone = detector_backbone(p.detector, norm_eps, p.returned_layers)
        sizes = p.anchor_sizes or ANCHOR_SIZES[p.detector]
        self.anchor_generator = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))
        self.head = RPNHead(self.backbone.out_channels, self.anchor_generator.num_anchors_per_location()[0])
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.register_buffer("mean", torch.tensor(p.mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(p.std).reshape(1, 3, 1, 1), persistent=False)
        for i, cell in enumerate(self.anchor_generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{i}", cell, persistent=False)

    def check_frames(self, frames: Tensor) -> None:
        """Raise StrgError unless frames is uint8 [F, 3, size, size]."""
        expected = f"[F, 3, {self.size}, {self.size}] uint8"
        if frames.dim() != 4 or frames.shape[1] != 3 or tuple(frames.shape[2:]) != (self.size, self.size):
            raise shape_error("rpn frames", expected, tuple(frames.shape))
        if frames.dtype != torch.uint8:
            raise StrgError(f"rpn frames: expected {expected}, got dtype {frames.dtype}")

    def normalize(self, frames: Tensor) -> Tensor:
        """uint8 [F, 3, H, W] -> float32 [F, 3, H', W']: ImageNet-normalised, zero-padded to a multiple
        of 32 (H' = ceil(H / 32) * 32)."""
        x = (frames.to(torch.float32) / 255.0 - self.mean) / self.std
        pad_h = -frames.shape[2] % SIZE_DIVISIBLE
        pad_w = -frames.shape[3] % SIZE_DIVISIBLE
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def candidates(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Proposals before NMS: frames uint8 [F, 3, H, W] -> boxes float32 [F, K, 4], scores [F, K],
        valid bool [F, K]; per level its top ``min(pre_nms_top_n, anchors of the level)`` by objectness
        (K is their sum), in torchvision's order (level by level, each highest first)."""
        self.check_frames(frames)
        x = self.normalize(frames)
        logits, deltas = self.head(list(self.backbone(x).values()))
        cells = [getattr(self, f"cell_anchors_{i}") for i in range(len(logits))]
        top_logits, top_deltas, top_anchors = [], [], []
        for level_logits, level_deltas, cell in zip(logits, deltas, cells, strict=True):
            a, h, w = level_logits.shape[1:]
            anchors = _grid_anchors(cell, h, w, x.shape[2] // h, x.shape[3] // w)  # [h * w * a, 4]
            scores = level_logits.permute(0, 2, 3, 1).flatten(1)  # [F, h * w * a]
            codes = level_deltas.unflatten(1, (a, 4)).permute(0, 3, 4, 1, 2).flatten(1, 3)  # [F, h*w*a, 4]
            top, idx = scores.topk(min(self.pre_nms_top_n, h * w * a), dim=1)
            top_logits.append(top)
            top_deltas.append(codes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)))
            top_anchors.append(anchors[idx])
        codes = torch.cat(top_deltas, dim=1)
        boxes = self.box_coder.decode_single(codes.reshape(-1, 4), torch.cat(top_anchors, 1).reshape(-1, 4))
        boxes = boxes.reshape(codes.shape)
        height, width = frames.shape[2], frames.shape[3]
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack(
            (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), dim=-1
        )
        scores = torch.sigmoid(torch.cat(top_logits, dim=1))
        wide = boxes[..., 2] - boxes[..., 0] >= self.min_size
        tall = boxes[..., 3] - boxes[..., 1] >= self.min_size
        return boxes, scores, wide & tall & (scores >= self.score_threshold)

    def forward(self, frames: Tensor) -> Proposals:
        boxes, scores, valid = self.candidates(frames)
        return Proposals(*_nms_top_n(boxes, scores, valid, self.nms_threshold, self.num_boxes))


# ----------------------------------------------------------------------------------------------------
# Given boxes


def _as_box_tensor(boxes: Any, what: str) -> Tensor:
    t = torch.as_tensor(boxes, dtype=torch.float32)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.dim() != 2 or t.shape[1] != 4:
        raise shape_error(what, "[K, 4]", tuple(t.shape))
    return t


class GivenBoxes:
    """Ground-truth boxes (for data that has them) as fixed-N :class:`Proposals`.

    Boxes keep their given order; beyond N the first N valid ones are kept; degenerate boxes
    (x2 <= x1 or y2 <= y1) are dropped. Scores default to 1 for every box.
    """

    def __init__(self, num_boxes: int):
        if num_boxes <= 0:
            raise StrgError(f"num_boxes must be positive, got {num_boxes}")
        self.num_boxes = num_boxes

    def __call__(self, boxes: Sequence[Any], scores: Sequence[Any] | None = None) -> Proposals:
        """boxes: per frame an array or tensor [K_f, 4] (K_f may be 0); scores: per frame [K_f]
        -> Proposals with boxes [F, N, 4], scores [F, N], mask [F, N]."""
        frames = [_as_box_tensor(b, f"given boxes of frame {i}") for i, b in enumerate(boxes)]
        if scores is not None and len(scores) != len(frames):
            raise StrgError(f"given boxes: {len(frames)} frames of boxes but {len(scores)} of scores")
        k = max([b.shape[0] for b in frames] + [1])
        padded = torch.zeros(len(frames), k, 4)
        valid = torch.zeros(len(frames), k, dtype=torch.bool)
        score = torch.ones(len(frames), k)
        for i, b in enumerate(frames):
            padded[i, : b.shape[0]] = b
            valid[i, : b.shape[0]] = True
            if scores is not None:
                s = torch.as_tensor(scores[i], dtype=torch.float32).reshape(-1)
                if s.shape[0] != b.shape[0]:
                    raise shape_error(f"given scores of frame {i}", f"[{b.shape[0]}]", tuple(s.shape))
                score[i, : b.shape[0]] = s
        return pad_to_n(padded, valid, self.num_boxes, score)

    def batched(self, boxes: Tensor, valid: Tensor, scores: Tensor | None = None) -> Proposals:
        """boxes float [B, T', K, 4], valid bool [B, T', K], scores [B, T', K] (optional)
        -> Proposals with boxes [B, T', N, 4], scores [B, T', N], mask [B, T', N]."""
        if boxes.dim() != 4 or boxes.shape[-1] != 4:
            raise shape_error("given boxes", "[B, T', K, 4]", tuple(boxes.shape))
        if valid.shape != boxes.shape[:-1]:
            raise shape_error("given boxes' validity mask", f"{list(boxes.shape[:-1])}", tuple(valid.shape))
        return pad_to_n(boxes, valid, self.num_boxes, scores)
