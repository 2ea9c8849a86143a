"""The two custom ONNX nodes of the model contract: names, domain, version and attributes.

Torch-free, so that the model (which emits the nodes at export), the exporter (which attaches their
function bodies) and the runtimes (which register TensorRT plugins under the same names) share one
definition.

``strg::FrameRoIAlignMax`` (attributes ``spatial_scale`` float, ``output_size`` int, ``sampling_ratio`` int)
    features float [B, C, T', H', W'], boxes float [B, T', N, 4] (x1, y1, x2, y2 in input pixels),
    mask bool [B, T', N] -> nodes float [B, T', N, C]: RoIAlign (average bins, half-pixel coordinates,
    ``output_size`` x ``output_size`` bins of ``sampling_ratio``^2 samples) of each frame's boxes on the
    same feature frame, then the maximum over the bins; padded nodes (mask False) are zero.
``strg::SpaceTimeGraph`` (no numeric attributes)
    boxes float [B, T', N, 4], mask bool [B, T', N] -> forward float [B, T'-1, N, N],
    backward float [B, T'-1, N, N]: ``forward[b, t, i, j]`` is the IoU of box i of frame t with box j of
    frame t+1 normalised over j, ``backward[b, t, j, i]`` the same IoU normalised over i; padded nodes
    have no edges.

Every node also carries ``plugin_namespace`` and ``plugin_version``: TensorRT's ONNX parser imports a node
it does not know as the registered plugin with the node's op type, that namespace and that version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import ModelProto

DOMAIN = "strg"
VERSION = 1
ROI_ALIGN_MAX = "FrameRoIAlignMax"
SPACE_TIME_GRAPH = "SpaceTimeGraph"
OPS = (ROI_ALIGN_MAX, SPACE_TIME_GRAPH)
ROI_ATTRIBUTES = ("spatial_scale", "output_size", "sampling_ratio")


def plugin_attributes() -> dict[str, str]:
    """The attributes that point TensorRT's parser at the plugin: {"plugin_namespace", "plugin_version"}."""
    return {"plugin_namespace": DOMAIN, "plugin_version": str(VERSION)}


def roi_attributes(
    spatial_scale: float, output_size: int, sampling_ratio: int
) -> dict[str, float | int | str]:
    """All attributes of a ``strg::FrameRoIAlignMax`` node."""
    return {
        "spatial_scale": float(spatial_scale),
        "output_size": int(output_size),
        "sampling_ratio": int(sampling_ratio),
        **plugin_attributes(),
    }


def inline_functions(model: ModelProto) -> ModelProto:
    """The same model with every model-local function inlined and the ``strg`` opset import dropped:
    standard ops only (for OpenVINO and tools that do not take functions)."""
    import onnx.inliner

    inlined = onnx.inliner.inline_local_functions(model)
    del inlined.opset_import[:]
    inlined.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    return inlined
