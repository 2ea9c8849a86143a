"""The graph head of STRG: the ``head`` network of the model contract.

features [B, d, T', H', W'] (reduced res5), boxes [B, T', N, 4] (input pixels), mask bool [B, T', N]
-> logits [B, C]:

1. :meth:`GraphHead.nodes`: RoIAlign per feature frame, max over the bins -> nodes [B, T', N, d];
2. :meth:`GraphHead.graphs`: forward/backward space-time graphs from the boxes -> 2 x [B, T'-1, N, N];
3. :meth:`GraphHead.reason`: similarity graph + graph convolutions, mean over valid nodes -> [B, d];
4. :meth:`GraphHead.classify`: concat with the global average pool of the features -> [B, 2d],
   dropout, linear -> [B, C].

Steps 1 and 2 are one function call each (they become custom ONNX nodes at export).
"""

from __future__ import annotations

import torch
from torch import nn

from strg_deploy.config import ModelConfig
from strg_deploy.errors import StrgError, shape_error
from strg_deploy.models.gcn import SpaceTimeGCN
from strg_deploy.models.graphs import space_time_graphs
from strg_deploy.models.roi import check_roi_inputs, frame_roi_align_max


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid nodes: x float [B, T, N, d], mask bool [B, T, N] -> [B, d] (0 without valid nodes)."""
    weights = mask.to(x.dtype)[..., None]
    total = (x * weights).sum(dim=(1, 2))
    count = weights.sum(dim=(1, 2)).clamp(min=1.0)
    return total / count


class GraphHead(nn.Module):
    """STRG's graph head (see the module docstring for the steps).

    forward(features float [B, d, T', H', W'], boxes float [B, T', N, 4], mask bool [B, T', N])
    -> logits float [B, C], with d = ``cfg.node_dim``, T' = ``cfg.feature_frames``, C = ``cfg.num_classes``.
    The head has no weight that depends on N; the model contract fixes N = ``cfg.proposals.num_boxes``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        head = cfg.head
        self.node_dim = cfg.node_dim
        self.feature_frames = cfg.feature_frames
        self.spatial_scale = 1.0 / cfg.backbone.spatial_stride
        self.roi_size = head.roi_size
        self.sampling_ratio = head.sampling_ratio
        self.gcn = SpaceTimeGCN(cfg.node_dim, head.layers, head.fusion, head.residual, head.layer_norm)
        self.dropout = nn.Dropout(head.dropout)
        self.classifier = nn.Linear(2 * cfg.node_dim, cfg.num_classes)

    def check_inputs(self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise StrgError unless the inputs agree with each other and with the config."""
        expected = f"[B, {self.node_dim}, {self.feature_frames}, H', W']"
        if (
            features.dim() != 5
            or features.shape[1] != self.node_dim
            or features.shape[2] != self.feature_frames
        ):
            raise shape_error("head features", expected, features.shape)
        check_roi_inputs(features, boxes, mask)

    def nodes(self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features [B, d, T', H', W'], boxes [B, T', N, 4], mask [B, T', N] -> nodes [B, T', N, d]."""
        return frame_roi_align_max(
            features, boxes, mask, self.spatial_scale, self.roi_size, self.sampling_ratio
        )

    def graphs(self, boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes [B, T', N, 4], mask [B, T', N] -> (forward, backward) graphs, each [B, T'-1, N, N]."""
        return space_time_graphs(boxes, mask)

    def reason(
        self,
        nodes: torch.Tensor,
        mask: torch.Tensor,
        forward_graph: torch.Tensor,
        backward_graph: torch.Tensor,
    ) -> torch.Tensor:
        """Graph convolutions, then the mean over valid nodes: nodes [B, T', N, d] -> [B, d]."""
        return masked_mean(self.gcn(nodes, mask, forward_graph, backward_graph), mask)

    def classify(self, pooled_nodes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """pooled_nodes [B, d], features [B, d, T', H', W'] -> logits [B, C]."""
        clip = features.mean(dim=(2, 3, 4))
        return self.classifier(self.dropout(torch.cat([pooled_nodes, clip], dim=1)))

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.check_inputs(features, boxes, mask)
        nodes = self.nodes(features, boxes, mask)
        forward_graph, backward_graph = self.graphs(boxes, mask)
        return self.classify(self.reason(nodes, mask, forward_graph, backward_graph), features)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Mean loss over the batch.

    Single-label: cross-entropy, logits [B, C], targets int64 [B] (class indices).
    Multi-label: binary cross-entropy with logits, targets float [B, C] in [0, 1].
    """
    if logits.dim() != 2:
        raise shape_error("logits", "[B, C]", logits.shape)
    if multi_label:
        if tuple(targets.shape) != tuple(logits.shape):
            raise shape_error("multi-label targets", f"{list(logits.shape)} (as the logits)", targets.shape)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    if tuple(targets.shape) != (logits.shape[0],):
        raise shape_error("single-label targets", f"[{logits.shape[0]}] (class indices)", targets.shape)
    if targets.is_floating_point():
        raise StrgError(f"single-label targets must be integer class indices, got dtype {targets.dtype}")
    return nn.functional.cross_entropy(logits, targets.long())
