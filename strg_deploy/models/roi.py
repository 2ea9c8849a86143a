"""RoIAlign per feature frame, fused with a max over the bins: the node features of STRG.

Feature frame t of a clip is pooled with the boxes of feature frame t (the caller picks the input frame
each feature frame uses, e.g. every (T/T')-th frame). Each box gives ``output_size`` x ``output_size``
AVERAGE bins (``torchvision.ops.roi_align``, aligned=True, explicit sampling ratio), then the maximum over
the bins: one C-vector per box.

RoIAlign is linear in the features, and the boxes are constants (no gradient flows to proposals), so the
bins are a matrix product: interpolation weights [N * S * S, H' * W'] per frame times the frame's features
[H' * W', C]. The weights come from ``torchvision.ops.roi_align`` itself, applied to an identity map (one
channel per feature cell), so the sampling is exactly torchvision's. The product runs as one batched
matmul, and its backward pass is a matmul too, where torchvision's CPU backward is a single-threaded
scatter: 6.6x faster at the small preset's training step, and faster in inference as well (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from strg_deploy.errors import StrgError, shape_error
from strg_deploy.models.custom_nodes import roi_align_max_node


def check_roi_inputs(features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise StrgError unless features [B, C, T', H', W'], boxes [B, T', N, 4], mask bool [B, T', N] agree."""
    if features.dim() != 5:
        raise shape_error("features", "[B, C, T', H', W']", features.shape)
    batch, _, frames = features.shape[:3]
    if boxes.dim() != 4 or boxes.shape[0] != batch or boxes.shape[1] != frames or boxes.shape[3] != 4:
        raise shape_error("boxes", f"[{batch}, {frames}, N, 4] (B and T' of the features)", boxes.shape)
    expected = (batch, frames, boxes.shape[2])
    if tuple(mask.shape) != expected:
        raise shape_error("mask", f"{list(expected)} (B, T', N of the boxes)", mask.shape)
    if mask.dtype != torch.bool:
        raise StrgError(f"mask: expected dtype torch.bool, got {mask.dtype}")
    if not boxes.is_floating_point():
        raise StrgError(f"boxes: expected a floating-point dtype, got {boxes.dtype}")


def frame_roi_align_max(
    features: torch.Tensor,
    boxes: torch.Tensor,
    mask: torch.Tensor,
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """Node features: RoIAlign of each frame's boxes on the same feature frame, then a max over the bins.

    features: float [B, C, T', H', W']; boxes: float [B, T', N, 4] (x1, y1, x2, y2 in input pixels);
    mask: bool [B, T', N]; spatial_scale: feature size / input size (1/16 for a stride-16 map);
    output_size: bins per side; sampling_ratio: samples per bin side (explicit, >= 1)
    -> nodes float [B, T', N, C]. Padded nodes (mask False) get zero features whatever their coordinates.
    """
    check_roi_inputs(features, boxes, mask)
    if torch.onnx.is_in_onnx_export():  # one custom node; its body (or a TensorRT plugin) computes this
        return roi_align_max_node(features, boxes, mask, spatial_scale, output_size, sampling_ratio)
    batch, channels, frames, height, width = features.shape
    count, cells, bins = boxes.shape[2], height * width, output_size * output_size
    weights = interpolation_weights(boxes, mask, (height, width), spatial_scale, output_size, sampling_ratio)
    weights = weights.to(features.dtype).reshape(batch * frames, count * bins, cells)
    frame_features = features.transpose(1, 2).reshape(batch * frames, channels, cells).transpose(1, 2)
    pooled = torch.bmm(weights, frame_features)  # [B * T', N * S * S, C]: the average bins
    nodes = pooled.reshape(batch, frames, count, bins, channels).amax(dim=3)
    return torch.where(mask[..., None], nodes, 0.0)


def interpolation_weights(
    boxes: torch.Tensor,
    mask: torch.Tensor,
    feature_size: tuple[int, int],
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """RoIAlign as weights: bins[k, s] = sum over cells p of weights[..., k, s, p] * feature[p].

    boxes: float [B, T', N, 4] in input pixels, mask: bool [B, T', N], feature_size: (H', W')
    -> weights float32 [B, T', N, S * S, H' * W'] (S = output_size; padded boxes give zero rows).
    Computed without gradient: ``roi_align`` of an identity map whose channel p is 1 at cell p.
    """
    height, width = feature_size
    cells = height * width
    with torch.no_grad():
        identity = torch.eye(cells, device=boxes.device).reshape(1, cells, height, width)
        flat = torch.where(mask[..., None], boxes, 0.0).float().reshape(-1, 4)
        rois = torch.cat([flat.new_zeros(flat.shape[0], 1), flat], dim=1)
        weights = roi_align(
            identity,
            rois,
            output_size,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )  # [B * T' * N, H' * W', S, S]
        weights = weights.flatten(2).transpose(1, 2)
    return weights.reshape(*boxes.shape[:3], output_size * output_size, cells)


class FrameRoIAlignMax(nn.Module):
    """Module form of :func:`frame_roi_align_max`.

    forward(features [B, C, T', H', W'], boxes [B, T', N, 4], mask bool [B, T', N]) -> nodes [B, T', N, C].
    """

    def __init__(self, spatial_scale: float, output_size: int = 7, sampling_ratio: int = 2):
        super().__init__()
        self.spatial_scale = spatial_scale
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return frame_roi_align_max(
            features, boxes, mask, self.spatial_scale, self.output_size, self.sampling_ratio
        )

    def extra_repr(self) -> str:
        return (
            f"spatial_scale={self.spatial_scale}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
