"""Emit the custom nodes of :mod:`strg_deploy.contract.nodes` during ONNX export.

``torch.onnx.ops.symbolic`` records a node of any name in the exported graph, with the output dtype and
shape declared here; outside export it returns zeros, so callers branch on
``torch.onnx.is_in_onnx_export()`` and keep their eager code for everything else. The exporter attaches the
nodes' function bodies afterwards (``strg_deploy.export.function_bodies``).
"""

from __future__ import annotations

import torch

from strg_deploy.contract.nodes import (
    DOMAIN,
    ROI_ALIGN_MAX,
    SPACE_TIME_GRAPH,
    VERSION,
    plugin_attributes,
    roi_attributes,
)


def roi_align_max_node(
    features: torch.Tensor,
    boxes: torch.Tensor,
    mask: torch.Tensor,
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int,
) -> torch.Tensor:
    """``strg::FrameRoIAlignMax``: features [B, C, T', H', W'], boxes [B, T', N, 4], mask bool [B, T', N]
    -> nodes [B, T', N, C] (export only)."""
    batch, frames, count = boxes.shape[:3]
    return torch.onnx.ops.symbolic(
        f"{DOMAIN}::{ROI_ALIGN_MAX}",
        (features, boxes, mask),
        roi_attributes(spatial_scale, output_size, sampling_ratio),
        dtype=features.dtype,
        shape=(batch, frames, count, features.shape[1]),
        version=VERSION,
    )


def space_time_graph_node(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``strg::SpaceTimeGraph``: boxes [B, T', N, 4], mask bool [B, T', N] -> (forward, backward), each
    [B, T'-1, N, N] (export only)."""
    batch, frames, count = boxes.shape[:3]
    shape = (batch, frames - 1, count, count)
    forward, backward = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{SPACE_TIME_GRAPH}",
        (boxes, mask),
        plugin_attributes(),
        dtypes=(boxes.dtype, boxes.dtype),
        shapes=(shape, shape),
        version=VERSION,
    )
    return forward, backward
