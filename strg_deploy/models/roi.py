"""RoIAlign per feature frame, fused with a max over the bins: the node features of STRG.

Feature frame t of a clip is pooled with the boxes of feature frame t (the caller picks the input frame
each feature frame uses, e.g. every (T/T')-th frame). Each box gives ``output_size`` x ``output_size``
AVERAGE bins (``torchvision.ops.roi_align``, aligned=True, explicit sampling ratio), then the maximum over
the bins: one C-vector per box.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from strg_deploy.errors import StrgError, shape_error


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
    batch, channels, frames, height, width = features.shape
    count = boxes.shape[2]
    images = features.transpose(1, 2).reshape(batch * frames, channels, height, width)
    boxes = torch.where(mask[..., None], boxes, 0.0).to(features.dtype)
    # RoI k = (b * T' + t) * N + i pools image b * T' + t.
    index = torch.arange(batch * frames, device=features.device, dtype=features.dtype)
    index = index.reshape(batch, frames, 1, 1).expand(batch, frames, count, 1)
    rois = torch.cat([index, boxes], dim=-1).reshape(-1, 5)
    bins = roi_align(
        images, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=True
    )
    nodes = bins.amax(dim=(2, 3)).reshape(batch, frames, count, channels)
    return torch.where(mask[..., None], nodes, 0.0)


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
