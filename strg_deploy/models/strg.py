"""The whole models: STRG (rpn -> backbone -> head) and the vanilla I3D baseline.

Both share the backbone code (:class:`~strg_deploy.models.backbone.Backbone`), so an I3D checkpoint
initialises STRG's backbone in the two-stage recipe. The three networks of the model contract
(``rpn``, ``backbone``, ``head``, :mod:`strg_deploy.contract.networks`) are attributes callable on their
own; export and the torch backend use them.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from strg_deploy.config import ModelConfig
from strg_deploy.contract.networks import rpn_frames
from strg_deploy.errors import StrgError, shape_error
from strg_deploy.models.backbone import Backbone
from strg_deploy.models.head import GraphHead, classification_loss
from strg_deploy.models.proposals import RegionProposer


class STRG(nn.Module):
    """Space-Time Region Graph model.

    forward(clip uint8 [B, 3, T, H, W], boxes float32 [B, T', N, 4] | None, mask bool [B, T', N] | None)
    -> logits float32 [B, C]. Without boxes the RPN proposes them on every (T/T')-th frame; with boxes
    (ground truth or precomputed proposals) the RPN is skipped. The RPN is frozen (its parameters do not
    require gradients); fine-tuning it is a separate task on data with ground-truth boxes.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.rpn = RegionProposer(cfg).requires_grad_(False)  # frozen: proposals are inputs, not learned
        self.backbone = Backbone(cfg)
        self.head = GraphHead(cfg)

    def propose(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clip uint8 [B, 3, T, H, W] -> boxes [B, T', N, 4], mask bool [B, T', N] (the RPN is frozen)."""
        cfg = self.cfg
        with torch.no_grad():
            boxes, _scores, mask = self.rpn(rpn_frames(clip, cfg.backbone.temporal_stride))
        shape = (clip.shape[0], cfg.feature_frames, cfg.proposals.num_boxes)
        return boxes.reshape(*shape, 4), mask.reshape(shape)

    def forward(
        self, clip: torch.Tensor, boxes: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (boxes is None) != (mask is None):
            raise StrgError("STRG needs both boxes and mask, or neither (then the RPN proposes them)")
        features = self.backbone(clip)
        if boxes is None:
            boxes, mask = self.propose(clip)
        return self.head(features, boxes, mask)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (single-label, targets int64 [B]) or BCE (multi-label, targets float [B, C])."""
        return classification_loss(logits, targets, self.cfg.multi_label)


class I3D(nn.Module):
    """The vanilla I3D baseline: the same backbone, global average pool, dropout, a linear classifier.

    forward(clip uint8 [B, 3, T, H, W]) -> logits float32 [B, C]. Extra ``boxes``/``mask`` arguments
    are accepted and ignored, so training code calls both models alike.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = Backbone(cfg)
        self.dropout = nn.Dropout(cfg.head.dropout)
        self.classifier = nn.Linear(cfg.node_dim, cfg.num_classes)

    def forward(
        self, clip: torch.Tensor, boxes: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = self.backbone(clip)
        return self.classifier(self.dropout(features.mean(dim=(2, 3, 4))))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, targets, self.cfg.multi_label)


class SingleFrame(nn.Module):
    """The single-frame control: the backbone's ResNet with every temporal kernel and pool removed (a 2D
    ResNet of the same depth and widths), global average pool, dropout, a linear classifier.

    forward(clip uint8 [B, 3, T, H, W]) -> logits float32 [B, C]. In training each clip contributes one
    frame at a uniformly drawn index (torch's global generator); in evaluation the logits of all T frames
    are averaged. Either way the model cannot see the order of the frames: a clip and its time reversal get
    the same evaluation logits, so on the benchmark's reversal pairs it must stay at chance.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        two_d = dataclasses.replace(
            cfg.backbone, inflate=tuple((0,) * len(s) for s in cfg.backbone.inflate), temporal_pool=0
        )
        if two_d.conv1_kernel[0] != 1:
            two_d = dataclasses.replace(two_d, conv1_kernel=(1, *two_d.conv1_kernel[1:]))
        self.backbone = Backbone(cfg.replace(frames=1, backbone=two_d))
        self.dropout = nn.Dropout(cfg.head.dropout)
        self.classifier = nn.Linear(cfg.node_dim, cfg.num_classes)

    def frame_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [F, 3, 1, H, W] -> logits [F, C]."""
        features = self.backbone(frames)
        return self.classifier(self.dropout(features.mean(dim=(2, 3, 4))))

    def forward(
        self, clip: torch.Tensor, boxes: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, frames = clip.shape[:3]
        if frames != self.cfg.frames:
            raise shape_error("clip", f"[B, 3, {self.cfg.frames}, H, W]", tuple(clip.shape))
        if self.training:
            pick = torch.randint(frames, (batch,), device=clip.device)
            chosen = clip[torch.arange(batch, device=clip.device), :, pick]  # [B, 3, H, W]
            return self.frame_logits(chosen.unsqueeze(2))
        every = clip.transpose(1, 2).reshape(batch * frames, 3, 1, *clip.shape[3:])
        return self.frame_logits(every).unflatten(0, (batch, frames)).mean(dim=1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, targets, self.cfg.multi_label)


MODELS = {"strg": STRG, "i3d": I3D, "frame": SingleFrame}


def build_model(cfg: ModelConfig) -> STRG | I3D | SingleFrame:
    """The model ``cfg.architecture`` names, with freshly initialised weights."""
    return MODELS[cfg.validate().architecture](cfg)
