"""Region proposals: exactly N boxes per frame, from a torchvision RPN, from given boxes or from a file.

Every source returns :class:`Proposals` with a fixed N (``cfg.proposals.num_boxes``): boxes float32
[F, N, 4] (x1, y1, x2, y2 in input pixels), scores float32 [F, N], mask bool [F, N]. Frames with fewer
than N boxes are padded with zero boxes, score 0 and mask False; each frame is filled from its own
boxes only, so padding never shifts boxes between frames.

- :class:`RegionProposer` is the ``rpn`` network of the model contract: the backbone with FPN and the
  RPN head of torchvision's Faster R-CNN (ResNet-50-FPN or MobileNetV3-Large-FPN), run at clip
  resolution on uint8 frames that it normalises itself (ImageNet mean/std, no resize to 800 px).
  :func:`load_detector_weights` loads the backbone and RPN part of a torchvision Faster R-CNN state dict.
- :class:`GivenBoxes` pads ground-truth boxes of data that has them.
- :class:`PrecomputedBoxes` reads boxes written by :func:`write_precomputed` (format below).

Precomputed file format (safetensors, no pickle): for each video id ``V`` the tensors

    ``V/frame_index``  int64 [F]        the frames that have boxes (unique)
    ``V/boxes``        float32 [F, K, 4] x1, y1, x2, y2 in the pixels of the frames the boxes were made on
    ``V/scores``       float32 [F, K]
    ``V/mask``         bool [F, K]      which of the K entries are boxes
    ``V/fps``          float64 [1]      frame rate: frame index i is the frame shown at i / fps seconds
    ``V/size``         int64 [2]        width, height of the frames the box coordinates refer to

and the header metadata ``{"format": "strg-proposals", "version": "2"}``. Version 1 files lack ``fps``
and ``size`` (in version 2 every video has both); :class:`PrecomputedBoxes` reads both versions. Video
ids may contain any character, "/" included (the tensor name is split at its last "/").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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
from strg_deploy.models.state_dicts import check_fit, read_state_dict

PRECOMPUTED_FORMAT = "strg-proposals"
PRECOMPUTED_VERSION = "2"  # the version write_precomputed writes when the videos carry fps and size
PRECOMPUTED_VERSIONS = ("1", "2")  # the versions PrecomputedBoxes reads
_FIELDS = ("frame_index", "boxes", "scores", "mask")
_FRAME_FIELDS = ("fps", "size")  # version 2 only

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
    video id and frame indices for :class:`PrecomputedBoxes`); what it returns is always Proposals.
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
# Detector weights


def _detector_kind(keys: Sequence[str]) -> str | None:
    if any(k.startswith("backbone.body.layer1.") for k in keys):
        return "resnet50_fpn"
    if any(k.startswith("backbone.body.0.0.") for k in keys):
        return "mobilenet_v3_large_fpn"
    return None


def _listing(keys: Sequence[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def detector_state_for_proposer(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision Faster R-CNN state dict -> RegionProposer's keys: ``backbone.*`` unchanged,
    ``rpn.head.*`` -> ``head.*`` (older ``rpn.head.conv.*`` -> ``head.conv.0.0.*``); ``roi_heads.*``
    and batch-norm ``num_batches_tracked`` counters are dropped."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone."):
            mapped[key] = value
        elif key.startswith("rpn.head."):
            name = key[len("rpn.head.") :]
            if name in ("conv.weight", "conv.bias"):  # RPNHead before version 2
                name = "conv.0.0." + name.split(".")[1]
            mapped["head." + name] = value
    return mapped


def load_detector_weights(proposer: RegionProposer, path: str | Path) -> RegionProposer:
    """Load the backbone and RPN head of a torchvision Faster R-CNN state dict into ``proposer``.

    ``path``: a torch.save'd state dict (e.g. torchvision's ``fasterrcnn_resnet50_fpn_coco-*.pth``) or a
    .safetensors file, possibly wrapped in {"model": ...} or {"state_dict": ...}. Keys ``backbone.*``
    load into ``proposer.backbone``, ``rpn.head.*`` into ``proposer.head``; ``roi_heads.*`` and batch-norm
    ``num_batches_tracked`` counters are ignored. Loading is strict: a missing file, a detector of another
    type, missing, unexpected or mis-shaped keys raise StrgError naming them. Returns ``proposer``.
    """
    path = Path(path)
    state = read_state_dict(path)
    kind = _detector_kind(list(state))
    if kind is not None and kind != proposer.detector:
        raise StrgError(
            f"detector weights {path} are for {kind}, this model's detector is {proposer.detector} "
            f"(cfg.proposals.detector)"
        )
    mapped = detector_state_for_proposer(state)
    if not mapped:
        raise StrgError(
            f"detector weights {path} hold no Faster R-CNN backbone.* or rpn.head.* keys "
            f"({len(state)} keys: {_listing(list(state))})"
        )

    def in_file(key: str) -> str:  # name the keys as the detector's state dict does
        return "rpn." + key if key.startswith("head.") else key

    check_fit(f"detector weights {path} ({proposer.detector} RPN)", proposer.state_dict(), mapped, in_file)
    proposer.load_state_dict(mapped, strict=True)
    return proposer


# ----------------------------------------------------------------------------------------------------
# Given and precomputed boxes


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


def _entry_tensors(video_id: str, entry: Mapping[str, Any]) -> dict[str, Tensor]:
    unknown = set(entry) - set(_FIELDS) - set(_FRAME_FIELDS)
    if unknown or "boxes" not in entry or "frame_index" not in entry:
        raise StrgError(
            f"precomputed boxes of video {video_id!r}: need keys frame_index and boxes (optional scores, "
            f"mask, and fps with size), got {sorted(entry)}"
        )
    if ("fps" in entry) != ("size" in entry):
        raise StrgError(f"precomputed boxes of video {video_id!r}: give fps and size together, or neither")
    boxes = torch.as_tensor(entry["boxes"], dtype=torch.float32)
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise shape_error(f"precomputed boxes of video {video_id!r}", "[F, K, 4]", tuple(boxes.shape))
    f, k = boxes.shape[:2]
    frame_index = torch.as_tensor(entry["frame_index"], dtype=torch.int64)
    if frame_index.shape != (f,):
        raise shape_error(f"frame_index of video {video_id!r}", f"[{f}]", tuple(frame_index.shape))
    if frame_index.unique().numel() != f:
        raise StrgError(f"frame_index of video {video_id!r} repeats a frame")
    scores = torch.as_tensor(entry.get("scores", torch.ones(f, k)), dtype=torch.float32)
    mask = torch.as_tensor(entry.get("mask", torch.ones(f, k, dtype=torch.bool)), dtype=torch.bool)
    for name, t in (("scores", scores), ("mask", mask)):
        if t.shape != (f, k):
            raise shape_error(f"{name} of video {video_id!r}", f"[{f}, {k}]", tuple(t.shape))
    out = {"frame_index": frame_index, "boxes": boxes, "scores": scores, "mask": mask}
    if "fps" in entry:
        fps = torch.as_tensor(entry["fps"], dtype=torch.float64).reshape(-1)
        if fps.shape != (1,) or not (torch.isfinite(fps).all() and fps[0] > 0):
            raise StrgError(f"fps of video {video_id!r} must be one positive number, got {fps.tolist()}")
        size = torch.as_tensor(entry["size"]).reshape(-1)
        if size.shape != (2,) or size.is_floating_point() or not (size > 0).all():
            raise StrgError(
                f"size of video {video_id!r} must be two positive integers (width, height), "
                f"got {size.tolist()}"
            )
        out.update(fps=fps, size=size.to(torch.int64))
    return out


def write_precomputed(path: str | Path, entries: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write precomputed boxes atomically in the format of this module's docstring.

    entries: video id -> {"frame_index": [F] int, "boxes": [F, K, 4], "scores": [F, K] (default 1),
    "mask": [F, K] bool (default all True), "fps": float or [1], "size": (width, height)}; arrays or
    tensors. ``dict(frame_index=idx, **proposals._asdict())`` stores a RegionProposer's output. With fps
    and size for every video the file is version 2, without them for any video version 1 (mixing both
    raises StrgError). Returns ``path``.
    """
    from strg_deploy.models.serialization import save_tensors

    path = Path(path)
    tensors = {}
    with_frames = set()
    for video_id, entry in entries.items():
        fields = _entry_tensors(str(video_id), entry)
        with_frames.add("fps" in fields)
        for name, t in fields.items():
            tensors[f"{video_id}/{name}"] = t.detach().cpu().contiguous()
    if len(with_frames) > 1:
        raise StrgError("precomputed boxes: give fps and size for every video or for none")
    version = PRECOMPUTED_VERSION if with_frames == {True} else "1"
    metadata = {"format": PRECOMPUTED_FORMAT, "version": version}
    return save_tensors(tensors, path, metadata)


class PrecomputedBoxes:
    """Boxes read from a file written by :func:`write_precomputed`, as fixed-N :class:`Proposals`.

    ``source(video_id, frame_indices)`` -> boxes [F, N, 4], scores [F, N], mask [F, N] for the frames
    asked for, in that order; each frame keeps its first N valid boxes in stored order. A missing file,
    video or frame raises StrgError naming it. Only the file's header is read on construction; tensors
    are read lazily, one video at a time, through a handle each process opens for itself (the source
    pickles without it, so it can go to data-loader worker processes). ``version``: the file's format
    version ("1" or "2"; see the module docstring).
    """

    def __init__(self, path: str | Path, num_boxes: int):
        if num_boxes <= 0:
            raise StrgError(f"num_boxes must be positive, got {num_boxes}")
        self.path = Path(path)
        self.num_boxes = num_boxes
        if not self.path.is_file():
            raise StrgError(f"precomputed boxes not found: {self.path}")
        self._handle: Any = None
        self._pid: int | None = None
        metadata = self._file().metadata() or {}
        if metadata.get("format") != PRECOMPUTED_FORMAT:
            raise StrgError(f"{self.path} is not a precomputed-boxes file (metadata {json.dumps(metadata)})")
        if metadata.get("version") not in PRECOMPUTED_VERSIONS:
            raise StrgError(
                f"precomputed boxes {self.path} have format version {metadata.get('version')}, "
                f"this version reads {', '.join(PRECOMPUTED_VERSIONS)}"
            )
        self.version: str = metadata["version"]

    def _file(self) -> Any:
        """This process's open safetensors handle of the file (opened on first use in each process)."""
        import os

        from safetensors import safe_open

        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = safe_open(str(self.path), framework="pt")
            except Exception as err:  # safetensors raises its own error types for damaged headers
                raise StrgError(f"cannot read precomputed boxes {self.path}: {err}") from None
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_handle=None, _pid=None)
        state.pop("videos", None)
        return state

    @functools.cached_property
    def videos(self) -> tuple[str, ...]:
        """Every video id in the file, sorted (reads the tensor names of the whole header)."""
        return tuple(sorted({k.rsplit("/", 1)[0] for k in self._file().keys()}))

    def has(self, video_id: str) -> bool:
        """Whether the file holds boxes of ``video_id`` (one name lookup, no tensor read)."""
        try:
            self._file().get_slice(f"{video_id}/boxes")
        except Exception:  # safetensors' error for an absent name
            return False
        return True

    def stored(self, video_id: str) -> dict[str, Tensor]:
        """The stored tensors of one video, every box of every stored frame (not cut to N): the fields of
        the module docstring (fps and size in version 2 files only). StrgError when the file has no such
        video."""
        if not self.has(video_id):
            raise StrgError(f"precomputed boxes {self.path} have no video {video_id!r}")
        f = self._file()
        names = _FIELDS + (_FRAME_FIELDS if self.version != "1" else ())
        return {name: f.get_tensor(f"{video_id}/{name}") for name in names}

    def __call__(self, video_id: str, frame_indices: Sequence[int] | Tensor) -> Proposals:
        data = self.stored(video_id)
        wanted = torch.as_tensor(frame_indices, dtype=torch.int64).reshape(-1)
        row_of = {int(v): i for i, v in enumerate(data["frame_index"].tolist())}
        absent = [int(i) for i in wanted.tolist() if int(i) not in row_of]
        if absent:
            raise StrgError(
                f"precomputed boxes {self.path} have no frame(s) {_listing([str(i) for i in absent], 8)} "
                f"of video {video_id!r} (it has {len(row_of)} frames)"
            )
        rows = torch.tensor([row_of[int(i)] for i in wanted.tolist()], dtype=torch.int64)
        return pad_to_n(data["boxes"][rows], data["mask"][rows], self.num_boxes, data["scores"][rows])
