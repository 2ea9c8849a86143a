"""Training the ``rpn`` network on data with ground-truth boxes (``strg train --task proposals``).

A :class:`~strg_deploy.models.proposals.RegionProposer` has frozen batch norm: the right thing for COCO
weights, but at random initialisation it cannot learn. :func:`trainable` swaps every FrozenBatchNorm2d for
a BatchNorm2d that trains; :func:`frozen` swaps them back, so the learned statistics become a plain
RegionProposer again, and :func:`save_detector` writes it in the key layout of torchvision's Faster R-CNN
(``backbone.*``, ``rpn.head.*``), which :func:`~strg_deploy.models.proposals.load_detector_weights` reads.

The objective is torchvision's own RPN training: :func:`rpn_losses` asks a
``torchvision.models.detection.rpn.RegionProposalNetwork`` to match anchors to the boxes (IoU >= 0.7
foreground, < 0.3 background, the best anchor of every box foreground), to encode the box targets, to
sample 256 anchors per frame (at most half foreground) and to compute the binary cross-entropy and
smooth-L1 losses. Quality is the recall at N: the fraction of ground-truth boxes that one of the
frame's N proposals overlaps with IoU >= 0.5 (:func:`proposal_recall`), measured in eval mode after
the batch-norm statistics were re-estimated with the current weights (:func:`update_norm_statistics`).
:class:`ProposalTask` puts these together for the training loop every task shares
(:func:`~strg_deploy.train.loop.train_task`), and :func:`fit_proposer` runs it.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops.misc import FrozenBatchNorm2d

from strg_deploy.config import ModelConfig
from strg_deploy.contract.networks import rpn_frames
from strg_deploy.errors import StrgError, shape_error
from strg_deploy.models.proposals import (
    NORM_EPS,
    Proposals,
    RegionProposer,
    _grid_anchors,
)
from strg_deploy.models.serialization import save_tensors
from strg_deploy.models.weights import load_detector_weights
from strg_deploy.processes import loader_worker_init
from strg_deploy.train.data import ClipDataset
from strg_deploy.train.loop import Task, TrainOptions, distributed, sum_over_ranks, train_task

DETECTOR_FORMAT = "strg-detector"
DETECTOR_FILE = "detector.safetensors"
TRAIN_NORM_EPS = 1e-5  # batch-norm epsilon while training (the ResNet-50 detector's 0.0 divides by zero)
NORM_BATCHES = 8  # the last batches of an epoch whose frames re-estimate the batch-norm statistics

# torchvision's Faster R-CNN RPN training rules (fasterrcnn_resnet50_fpn's defaults)
FG_IOU = 0.7
BG_IOU = 0.3
ANCHORS_PER_IMAGE = 256
POSITIVE_FRACTION = 0.5


# ----------------------------------------------------------------------------------------------------
# Batch norm: frozen <-> trainable


def _replace_norms(module: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> None:
    """Replace, in place, every submodule for which ``convert`` returns a module."""
    for name, child in module.named_children():
        new = convert(child)
        if new is None:
            _replace_norms(child, convert)
        else:
            setattr(module, name, new)


def _copy_norm(source: nn.Module, target: nn.Module) -> nn.Module:
    """``target`` (on ``source``'s device) with source's weight, bias and running statistics; the
    difference of the epsilons moves into the running variance (clamped at 0)."""
    target = target.to(source.weight.device)
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)
        target.running_mean.copy_(source.running_mean)
        target.running_var.copy_((source.running_var + (source.eps - target.eps)).clamp_min(0.0))
    return target


def trainable(proposer: RegionProposer, norm_eps: float | None = None) -> RegionProposer:
    """Make ``proposer`` trainable from scratch, in place: every FrozenBatchNorm2d becomes a
    torch.nn.BatchNorm2d with the same statistics, weight and bias (epsilon ``norm_eps``, default the
    frozen layer's own), and every parameter requires grad. Returns ``proposer``.

    The difference of the epsilons moves into the running variance, so in eval mode the result computes
    what it did before (exactly unless a variance would become negative: it is clamped at 0).
    """

    def convert(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, FrozenBatchNorm2d):
            return None
        eps = child.eps if norm_eps is None else norm_eps
        return _copy_norm(child, nn.BatchNorm2d(child.weight.numel(), eps=eps))

    _replace_norms(proposer, convert)
    return proposer.requires_grad_(True)


def frozen(proposer: RegionProposer, norm_eps: float | None = None) -> RegionProposer:
    """A copy of ``proposer`` (in eval mode) with every BatchNorm2d turned back into a FrozenBatchNorm2d
    of epsilon ``norm_eps`` (default: the detector's, :data:`~strg_deploy.models.proposals.NORM_EPS`).

    The running statistics, weight and bias are kept (the difference of the epsilons moves into the
    running variance), ``num_batches_tracked`` is dropped: the copy's state dict loads strictly into a
    fresh ``RegionProposer(cfg, norm_eps)`` and computes what ``proposer`` computes in eval mode.
    """
    eps = NORM_EPS[proposer.detector] if norm_eps is None else norm_eps

    def convert(child: nn.Module) -> nn.Module | None:
        if not isinstance(child, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            return None
        return _copy_norm(child, FrozenBatchNorm2d(child.weight.numel(), eps=eps))

    copied = copy.deepcopy(proposer)
    _replace_norms(copied, convert)
    return copied.eval()


def update_norm_statistics(proposer: RegionProposer, frame_batches: Iterable[Tensor]) -> RegionProposer:
    """Re-estimate the running statistics of every BatchNorm2d of ``proposer`` (see :func:`trainable`)
    as plain averages over ``frame_batches`` (each uint8 [F, 3, S, S]) with the current weights
    (torch.optim.swa_utils.update_bn on the backbone; the RPN head has no batch norm). Returns ``proposer``.

    The running averages of training lag behind weights that change fast and start from the identity
    statistics (mean 0, variance 1), under which a randomly initialised network's features vanish: after
    a short run, eval mode needs statistics measured with the final weights.
    """
    device = next(proposer.parameters()).device
    update_bn((proposer.normalize(frames.to(device)) for frames in frame_batches), proposer.backbone)
    return proposer


def detector_state(proposer: RegionProposer) -> dict[str, Tensor]:
    """The proposer's weights (frozen batch norm, see :func:`frozen`) in the key layout of torchvision's
    Faster R-CNN: ``backbone.*`` and ``rpn.head.*``; contiguous CPU tensors."""
    state = frozen(proposer).state_dict()
    return {
        ("rpn." + key if key.startswith("head.") else key): value.detach().cpu().contiguous()
        for key, value in state.items()
    }


def save_detector(proposer: RegionProposer, path: str | Path) -> Path:
    """Write :func:`detector_state` to ``path`` as safetensors, atomically, with the metadata
    {"format": "strg-detector", "detector": <detector name>, "size": <frame size>}. Returns the path."""
    metadata = {"format": DETECTOR_FORMAT, "detector": proposer.detector, "size": str(proposer.size)}
    return save_tensors(detector_state(proposer), path, metadata)


# ----------------------------------------------------------------------------------------------------
# The objective


def training_rules(proposer: RegionProposer) -> RegionProposalNetwork:
    """torchvision's RegionProposalNetwork around the proposer's anchors and head, used only for its
    training rules: ``assign_targets_to_anchors``, ``box_coder``, ``fg_bg_sampler``, ``compute_loss``."""
    return RegionProposalNetwork(
        proposer.anchor_generator,
        proposer.head,
        fg_iou_thresh=FG_IOU,
        bg_iou_thresh=BG_IOU,
        batch_size_per_image=ANCHORS_PER_IMAGE,
        positive_fraction=POSITIVE_FRACTION,
        pre_nms_top_n={"training": proposer.pre_nms_top_n, "testing": proposer.pre_nms_top_n},
        post_nms_top_n={"training": proposer.num_boxes, "testing": proposer.num_boxes},
        nms_thresh=proposer.nms_threshold,
    )


def anchors_of(proposer: RegionProposer, logits: list[Tensor], padded_size: tuple[int, int]) -> Tensor:
    """All anchors of one frame in the order of the head's outputs: per FPN level, (y, x, anchor).

    logits: the head's objectness per level [F, A, h, w]; padded_size: (H', W') of the normalised
    frames -> anchors float32 [sum of h * w * A, 4].
    """
    anchors = []
    for i, level in enumerate(logits):
        h, w = level.shape[2:]
        cell = getattr(proposer, f"cell_anchors_{i}")
        anchors.append(_grid_anchors(cell, h, w, padded_size[0] // h, padded_size[1] // w))
    return torch.cat(anchors)


def _check_boxes(frames: Tensor, boxes: Tensor, mask: Tensor) -> None:
    count = frames.shape[0]
    if boxes.dim() != 3 or boxes.shape[0] != count or boxes.shape[2] != 4:
        raise shape_error("ground-truth boxes", f"[{count}, K, 4]", tuple(boxes.shape))
    if tuple(mask.shape) != tuple(boxes.shape[:2]):
        raise shape_error("ground-truth box mask", f"{list(boxes.shape[:2])}", tuple(mask.shape))


def _valid(boxes: Tensor, mask: Tensor) -> Tensor:
    """mask bool [F, K] without degenerate boxes (x2 <= x1 or y2 <= y1): those match no anchor."""
    return mask.to(torch.bool) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def anchor_targets(
    rules: RegionProposalNetwork, anchors: Tensor, boxes: Tensor, mask: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """torchvision's anchor labels and box targets for every frame (``rules``: :func:`training_rules`).

    anchors float32 [A, 4] (:func:`anchors_of`), boxes float32 [F, K, 4], mask bool [F, K] ->
    (labels: per frame float32 [A], 1 foreground, 0 background, -1 ignored; regression targets: per
    frame float32 [A, 4], BoxCoder codes of each anchor's matched box). Boxes where mask is False (and
    degenerate boxes) are not targets; a frame without boxes is all background.
    """
    boxes = boxes.to(device=anchors.device, dtype=torch.float32)
    valid = _valid(boxes, mask.to(anchors.device))
    targets = [{"boxes": b[v]} for b, v in zip(boxes, valid, strict=True)]
    per_frame = [anchors] * boxes.shape[0]
    labels, matched = rules.assign_targets_to_anchors(per_frame, targets)
    return labels, list(rules.box_coder.encode(matched, per_frame))


def rpn_losses(
    proposer: RegionProposer, frames: Tensor, boxes: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """torchvision's RPN losses of ``proposer`` on frames with ground-truth boxes.

    frames uint8 [F, 3, S, S], boxes float32 [F, K, 4] (x1, y1, x2, y2 in frame pixels), mask bool
    [F, K] -> (objectness_loss, box_loss), scalar tensors: binary cross-entropy over 256 sampled anchors
    per frame and smooth-L1 of the foreground anchors' box codes, as torchvision's RegionProposalNetwork
    computes them in training (the sampling draws from torch's global random generator).
    """
    proposer.check_frames(frames)
    _check_boxes(frames, boxes, mask)
    rules = training_rules(proposer)
    x = proposer.normalize(frames)
    logits, deltas = proposer.head(list(proposer.backbone(x).values()))
    anchors = anchors_of(proposer, logits, (x.shape[2], x.shape[3]))
    labels, regression_targets = anchor_targets(rules, anchors, boxes, mask)
    objectness, box_deltas = concat_box_prediction_layers(logits, deltas)  # [F * A, 1], [F * A, 4]
    return rules.compute_loss(objectness, box_deltas, labels, regression_targets)


class RPNObjective(nn.Module):
    """:func:`rpn_losses` as a module's forward, so DistributedDataParallel can wrap it (DDP averages the
    gradients of what runs inside its wrapped module's forward)."""

    def __init__(self, proposer: RegionProposer) -> None:
        super().__init__()
        self.proposer = proposer

    def forward(self, frames: Tensor, boxes: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """frames uint8 [F, 3, S, S], boxes float32 [F, K, 4], mask bool [F, K] -> the two losses."""
        return rpn_losses(self.proposer, frames, boxes, mask)


# ----------------------------------------------------------------------------------------------------
# Recall


def recall_counts(proposals: Proposals, boxes: Tensor, mask: Tensor, iou: float = 0.5) -> tuple[int, int]:
    """How many ground-truth boxes some proposal of their own frame overlaps with IoU >= ``iou``.

    proposals: boxes [F, N, 4] and mask [F, N]; boxes float32 [F, K, 4], mask bool [F, K] (True: a
    ground-truth box) -> (matched, total valid ground-truth boxes). Degenerate boxes are not counted.
    """
    if proposals.boxes.dim() != 3 or proposals.boxes.shape[0] != boxes.shape[0]:
        raise shape_error("proposals", f"[{boxes.shape[0]}, N, 4]", tuple(proposals.boxes.shape))
    count, k = boxes.shape[:2]
    n = proposals.boxes.shape[1]
    truth = boxes.to(torch.float32)
    valid = _valid(truth, mask)
    overlap = torchvision.ops.box_iou(truth.reshape(-1, 4), proposals.boxes.to(truth).reshape(-1, 4))
    overlap = overlap.reshape(count, k, count, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [F, K, N]
    overlap = overlap.masked_fill(~proposals.mask.to(torch.bool).unsqueeze(1), 0.0)
    best = overlap.amax(dim=2) if n else overlap.new_zeros(count, k)
    return int((valid & (best >= iou)).sum()), int(valid.sum())


@torch.no_grad()
def proposal_recall(
    proposer: RegionProposer, frames: Tensor, boxes: Tensor, mask: Tensor, iou: float = 0.5
) -> tuple[int, int]:
    """Recall at N of ``proposer`` (run as it is, call ``.eval()`` first) on frames uint8 [F, 3, S, S]
    with ground-truth boxes float32 [F, K, 4] and mask bool [F, K] -> (matched, total); see
    :func:`recall_counts`."""
    _check_boxes(frames, boxes, mask)
    return recall_counts(proposer(frames), boxes.to(frames.device), mask.to(frames.device), iou)


def loader_recall(
    proposer: RegionProposer,
    batches: Iterable[dict[str, Tensor]],
    temporal_stride: int,
    iou: float = 0.5,
    device: torch.device | str = "cpu",
) -> dict[str, float | int]:
    """Recall at N over batches of :class:`~strg_deploy.train.data.ClipDataset` items (clip uint8
    [B, 3, T, S, S], boxes [B, T', K, 4], mask [B, T', K]) on the RPN's frames, proposer in eval mode.

    Returns {"recall", "matched", "num_gt_boxes", "frames"}; recall is 0 when there are no boxes.
    """
    was_training = proposer.training
    proposer.eval()
    matched = total = frames_seen = 0
    for batch in batches:
        frames = rpn_frames(batch["clip"], temporal_stride).to(device)
        m, t = proposal_recall(
            proposer, frames, batch["boxes"].flatten(0, 1), batch["mask"].flatten(0, 1), iou
        )
        matched, total, frames_seen = matched + m, total + t, frames_seen + frames.shape[0]
    proposer.train(was_training)
    return {
        "recall": matched / total if total else 0.0,
        "matched": matched,
        "num_gt_boxes": total,
        "frames": frames_seen,
    }


# ----------------------------------------------------------------------------------------------------
# Training


def _require_tracks(dataset: ClipDataset, split: str) -> None:
    if dataset.tracks is None:
        raise StrgError(
            f"training proposals needs ground-truth boxes, and the {split} data has no box tracks "
            "(give the boxes file, e.g. the synthetic benchmark's boxes.jsonl)"
        )


class ProposalTask(Task):
    """The ``rpn`` network of ``cfg`` on ground-truth boxes, for :func:`~strg_deploy.train.loop.train_task`.

    The model is a RegionProposer, seeded by ``options.seed``, from ``init`` detector weights when given
    (not when resuming: the checkpoint has them), with trainable batch norm (:func:`trainable`) unless
    ``options.freeze_bn``. Per step: the RPN's frames of the batch (``rpn_frames``: [B * T', 3, S, S])
    with their boxes [B * T', N, 4] and mask [B * T', N] -> :func:`rpn_losses`, whose sum is the loss
    (``objectness_loss`` and ``box_loss`` are its parts). After an epoch's last step the batch-norm
    statistics are re-estimated on its last ``NORM_BATCHES`` batches (:func:`update_norm_statistics`;
    rank 0's, broadcast to the other processes; a run resumed mid-epoch reloads the ones it skipped).
    Validation: recall at N (IoU >= ``iou``) on ``val_set`` in eval mode, the split divided between the
    processes and the counts summed; ``best/`` by recall. After each epoch rank 0 writes
    ``RUN_DIR/detector.safetensors`` (:func:`save_detector`).
    """

    name = "proposals"
    best_metric = "recall"
    parts = ("objectness_loss", "box_loss")

    def __init__(
        self,
        cfg: ModelConfig,
        val_set: ClipDataset,
        options: TrainOptions,
        *,
        init: Path | None = None,
        resume: bool = False,
        iou: float = 0.5,
    ) -> None:
        torch.manual_seed(options.seed)
        model = RegionProposer(cfg)
        if init is not None and not resume:
            load_detector_weights(model, init)
        self.model = model.requires_grad_(True) if options.freeze_bn else trainable(model, TRAIN_NORM_EPS)
        self.val_set, self.options, self.iou = val_set, options, iou
        self.stride = cfg.backbone.temporal_stride
        self.recent: collections.deque[Tensor] = collections.deque(maxlen=NORM_BATCHES)

    def objective(self) -> nn.Module:
        return RPNObjective(self.model)

    def loss(self, objective: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """clip uint8 [B, 3, T, S, S], boxes [B, T', N, 4], mask [B, T', N] -> the summed RPN losses."""
        frames = rpn_frames(batch["clip"], self.stride)
        if not self.options.freeze_bn:
            self.recent.append(frames)
        objectness_loss, box_loss = objective(
            frames, batch["boxes"].flatten(0, 1), batch["mask"].flatten(0, 1)
        )
        return objectness_loss + box_loss, {"objectness_loss": objectness_loss, "box_loss": box_loss}

    def start_epoch(self, epoch: int, done: int, steps: int, batch_at: Callable[[int], dict]) -> None:
        self.recent.clear()
        if not self.options.freeze_bn:  # resumed mid-epoch: the skipped batches among the last ones
            for k in range(max(0, steps - NORM_BATCHES), done):
                self.recent.append(rpn_frames(batch_at(k)["clip"], self.stride))

    def end_training(self) -> None:
        if self.options.freeze_bn:
            return
        update_norm_statistics(self.model, self.recent)
        self.recent.clear()
        if distributed()[1] > 1:  # every process evaluates and goes on with rank 0's statistics
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def validate(self, device: torch.device) -> dict:
        rank, world = distributed()
        share = self.val_set
        if world > 1:
            share = torch.utils.data.Subset(share, range(rank, len(share), world))
        loader = torch.utils.data.DataLoader(
            share,
            batch_size=self.options.batch_size,
            num_workers=self.options.workers,
            worker_init_fn=loader_worker_init(),
        )
        counts = loader_recall(self.model, loader, self.stride, self.iou, device)
        matched, num_gt = sum_over_ranks([counts["matched"], counts["num_gt_boxes"]], world)
        return {
            "recall": matched / num_gt if num_gt else 0.0,
            "iou": self.iou,
            "num_boxes": self.model.num_boxes,
            "num_gt_boxes": int(num_gt),
        }

    def epoch_metrics(self, metrics: dict) -> dict:
        frames_per_clip = len(range(0, self.model.cfg.frames, self.stride))
        return {"train_frames_per_second": metrics["train_clips_per_second"] * frames_per_clip}

    def publish(self, run_dir: Path) -> None:
        save_detector(self.model, run_dir / DETECTOR_FILE)


def fit_proposer(
    cfg: ModelConfig,
    train_set: ClipDataset,
    val_set: ClipDataset,
    out: str | Path,
    options: TrainOptions,
    *,
    init: Path | None = None,
    resume: bool = False,
    iou: float = 0.5,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    cpu_autocast: torch.dtype | None = None,
) -> dict:
    """Train the ``rpn`` network of ``cfg`` on the ground-truth boxes of ``train_set``, from scratch or
    from the detector file ``init`` (:class:`ProposalTask` in :func:`~strg_deploy.train.loop.train_task`:
    SGD, the schedule, mixed precision, ``save_every``/``max_steps``, mid-epoch resume and torchrun as
    for the action model); write ``out/detector.safetensors``, ``out/metrics.jsonl`` and the checkpoints
    ``out/last`` and ``out/best`` (weights in training form). Returns the last finished epoch's metrics:
    {"epoch", "global_step", "lr", "train_loss", "objectness_loss", "box_loss", "recall", "iou",
    "num_boxes", "num_gt_boxes", "train_frames_per_second", ...}, losses averaged over the epoch.

    Under torch.distributed each process's losses are means over the anchors it sampled, so the average
    is the global batch's loss when every frame samples as many anchors (256 per frame, when a frame has
    that many labelled anchors).
    """
    _require_tracks(train_set, "training")
    _require_tracks(val_set, "validation")
    task = ProposalTask(cfg, val_set, options, init=init, resume=resume, iou=iou)
    trained = train_task(
        task,
        train_set,
        out,
        options,
        resume=resume,
        on_step=on_step,
        on_epoch=on_epoch,
        cpu_autocast=cpu_autocast,
    )
    return trained.metrics
