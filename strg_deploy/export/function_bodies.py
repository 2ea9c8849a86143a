"""Function bodies for the custom nodes of :mod:`strg_deploy.contract.nodes`, made of standard ONNX ops.

The exporter writes ``strg::FrameRoIAlignMax`` and ``strg::SpaceTimeGraph`` nodes (see
``strg_deploy.models.custom_nodes``); :func:`attach_functions` adds a model-local function
(FunctionProto) for each, so onnxruntime runs the body while TensorRT's parser maps the node to the
plugin named by its ``plugin_namespace``. ``contract.nodes.inline_functions`` writes the
same model without functions (for OpenVINO and tools that do not take them). ``onnx.checker`` accepts
a custom node without a body, so :func:`missing_functions` checks that every custom node has one.

Bodies (opset >= 18):

- FrameRoIAlignMax: features [B, C, T', H', W'] -> per-frame maps [B * T', C, H', W']; boxes of padded
  nodes zeroed; ``RoiAlign`` (mode avg, ``coordinate_transformation_mode="half_pixel"``, explicit
  ``sampling_ratio``: TensorRT's parser defaults it to 1 where ONNX says adaptive 0) with the frame index
  of every box -> [B * T' * N, C, S, S]; ``ReduceMax`` over the bins (onnxruntime's max mode is a max of
  weighted samples, not of bilinear values); reshape to [B, T', N, C]; zero where the mask is False.
- SpaceTimeGraph: boxes with padded nodes zeroed (an empty box at the origin intersects nothing); IoU of
  frame t's boxes [.., N, 1] with frame t+1's [.., 1, N] by broadcasting; forward = IoU / row sums,
  backward = transpose(IoU / column sums); sums clamped at the float32 ``tiny`` so empty rows stay zero.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, ModelProto, helper, numpy_helper

from strg_deploy.contract.nodes import DOMAIN, OPS, ROI_ALIGN_MAX, SPACE_TIME_GRAPH, plugin_attributes

_TINY = float(np.finfo(np.float32).tiny)


class _Body:
    """Collects the nodes of one function body; constants become Constant nodes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}_{hint}_{self.count}"

    def const(self, value, dtype=np.int64, hint: str = "const") -> str:
        out = self.name(hint)
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def ref(self, op_type: str, inputs: list[str], refs: dict[str, tuple[str, int]], **attrs) -> str:
        """A node whose attributes ``refs`` (name -> (function attribute, type)) refer to the function's."""
        out = self.name(op_type.lower())
        node = helper.make_node(op_type, inputs, [out], **attrs)
        for name, (source, kind) in refs.items():
            node.attribute.append(helper.make_attribute_ref(name, kind))
            node.attribute[-1].ref_attr_name = source
        self.nodes.append(node)
        return out


def roi_align_max_function(opset: int) -> FunctionProto:
    """The body of ``strg::FrameRoIAlignMax`` (see the module docstring), with attribute parameters
    ``spatial_scale``, ``output_size`` and ``sampling_ratio`` referenced by its RoiAlign."""
    b = _Body("roi")
    features, boxes, mask = "features", "boxes", "mask"
    frames_first = b.op("Transpose", [features], perm=[0, 2, 1, 3, 4])  # [B, T', C, H', W']
    chw = b.op("Shape", [features], start=1, end=2)
    hw = b.op("Shape", [features], start=3)
    maps_shape = b.op("Concat", [b.const([-1]), chw, hw], axis=0)
    maps = b.op("Reshape", [frames_first, maps_shape])  # [B * T', C, H', W']
    valid = b.op("Unsqueeze", [mask, b.const([-1])])  # [B, T', N, 1]
    zero = b.const(0.0, np.float32, "zero")
    kept = b.op("Where", [valid, boxes, b.op("CastLike", [zero, boxes])])
    rois = b.op("Reshape", [kept, b.const([-1, 4])])  # [B * T' * N, 4]
    btn = b.op("Shape", [boxes], start=0, end=3)  # [B, T', N]
    frame_count = b.op("ReduceProd", [b.op("Shape", [boxes], start=0, end=2)], keepdims=0)
    frame_ids = b.op("Range", [b.const(0), frame_count, b.const(1)])  # [B * T']
    count = b.op("Shape", [boxes], start=2, end=3)
    per_box = b.op(
        "Expand",
        [b.op("Unsqueeze", [frame_ids, b.const([1])]), b.op("Concat", [b.const([1]), count], axis=0)],
    )
    batch_indices = b.op("Reshape", [per_box, b.const([-1])])  # [B * T' * N] int64
    bins = b.ref(
        "RoiAlign",
        [maps, rois, batch_indices],
        {
            "spatial_scale": ("spatial_scale", AttributeProto.FLOAT),
            "output_height": ("output_size", AttributeProto.INT),
            "output_width": ("output_size", AttributeProto.INT),
            "sampling_ratio": ("sampling_ratio", AttributeProto.INT),
        },
        mode="avg",
        coordinate_transformation_mode="half_pixel",
    )  # [B * T' * N, C, S, S]
    peak = b.op("ReduceMax", [bins, b.const([2, 3])], keepdims=0)  # [B * T' * N, C]
    nodes_shape = b.op("Concat", [btn, chw], axis=0)
    nodes = b.op("Reshape", [peak, nodes_shape])  # [B, T', N, C]
    b.nodes.append(helper.make_node("Where", [valid, nodes, b.op("CastLike", [zero, nodes])], ["nodes"]))
    return helper.make_function(
        DOMAIN,
        ROI_ALIGN_MAX,
        [features, boxes, mask],
        ["nodes"],
        b.nodes,
        [helper.make_opsetid("", opset)],
        attributes=["spatial_scale", "output_size", "sampling_ratio", *plugin_attributes()],
        doc_string="RoIAlign (avg, half_pixel) per feature frame, then the max over the bins.",
    )


def space_time_graph_function(opset: int) -> FunctionProto:
    """The body of ``strg::SpaceTimeGraph`` (see the module docstring)."""
    b = _Body("stg")
    boxes, mask = "boxes", "mask"
    valid = b.op("Unsqueeze", [mask, b.const([-1])])
    zero = b.op("CastLike", [b.const(0.0, np.float32, "zero"), boxes])
    tiny = b.op("CastLike", [b.const(_TINY, np.float32, "tiny"), boxes])
    kept = b.op("Where", [valid, boxes, zero])  # [B, T', N, 4]
    start, end, axis, step = b.const([0]), b.const([-1]), b.const([1]), b.const([1])
    first = b.op("Slice", [kept, start, end, axis, step])  # frames 0 .. T'-2: [B, T'-1, N, 4]
    second = b.op("Slice", [kept, b.const([1]), b.const([np.iinfo(np.int64).max]), axis, step])
    ax1, ay1, ax2, ay2 = b.op("Split", [first], outputs=4, axis=-1, num_outputs=4)  # [B, T'-1, N, 1]
    column = b.op("Transpose", [second], perm=[0, 1, 3, 2])  # [B, T'-1, 4, N]
    bx1, by1, bx2, by2 = b.op("Split", [column], outputs=4, axis=2, num_outputs=4)  # [B, T'-1, 1, N]
    width = b.op("Relu", [b.op("Sub", [b.op("Min", [ax2, bx2]), b.op("Max", [ax1, bx1])])])
    height = b.op("Relu", [b.op("Sub", [b.op("Min", [ay2, by2]), b.op("Max", [ay1, by1])])])
    inter = b.op("Mul", [width, height])  # [B, T'-1, N, N]
    area_a = b.op("Mul", [b.op("Sub", [ax2, ax1]), b.op("Sub", [ay2, ay1])])
    area_b = b.op("Mul", [b.op("Sub", [bx2, bx1]), b.op("Sub", [by2, by1])])
    union = b.op("Sub", [b.op("Add", [area_a, area_b]), inter])
    iou = b.op("Div", [inter, b.op("Max", [union, tiny])])
    rows = b.op("ReduceSum", [iou, b.const([-1])], keepdims=1)
    columns = b.op("ReduceSum", [iou, b.const([-2])], keepdims=1)
    b.nodes.append(helper.make_node("Div", [iou, b.op("Max", [rows, tiny])], ["forward"]))
    normalised = b.op("Div", [iou, b.op("Max", [columns, tiny])])
    b.nodes.append(helper.make_node("Transpose", [normalised], ["backward"], perm=[0, 1, 3, 2]))
    return helper.make_function(
        DOMAIN,
        SPACE_TIME_GRAPH,
        [boxes, mask],
        ["forward", "backward"],
        b.nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(plugin_attributes()),
        doc_string="IoU forward/backward graphs between neighbouring frames, rows normalised.",
    )


def custom_nodes(model: ModelProto) -> list[onnx.NodeProto]:
    """The ``strg`` domain nodes of the main graph."""
    return [node for node in model.graph.node if node.domain == DOMAIN]


def missing_functions(model: ModelProto) -> list[str]:
    """Op types of ``strg`` nodes that have no model-local function body (empty when all have one)."""
    present = {(f.domain, f.name) for f in model.functions}
    return sorted({n.op_type for n in custom_nodes(model) if (n.domain, n.op_type) not in present})


def attach_functions(model: ModelProto) -> ModelProto:
    """Add the body of every custom op the model uses (once each) and the ``strg`` opset import.
    Returns ``model`` (changed in place); the bodies use the model's default-domain opset."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used = {n.op_type for n in custom_nodes(model)}
    builders = {ROI_ALIGN_MAX: roi_align_max_function, SPACE_TIME_GRAPH: space_time_graph_function}
    present = {(f.domain, f.name) for f in model.functions}
    for op in OPS:
        if op in used and (DOMAIN, op) not in present:
            model.functions.append(builders[op](opset))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model
