"""The RPN's batched post-processing in standard ONNX ops, appended to the exported candidate graph.

torchvision's RPN exports with the batch size fixed at export time, so the exporter traces only
:meth:`~strg_deploy.models.proposals.RegionProposer.candidates` (boxes [F, K, 4], scores [F, K], valid
[F, K]: the top-scoring candidates of each FPN level, decoded and clipped) and :func:`append_nms_top_n`
adds the rest for every frame of the batch at once:

1. ``NonMaxSuppression`` over all frames (one class; invalid candidates get score -1, under the
   -0.5 score threshold), at most N selected per frame -> selected [S, 3] (frame, class, candidate);
2. ``ScatterND`` of ones at (frame, candidate) into zeros [F, K] -> which candidates survived;
3. ``TopK`` (N) of the survivors' scores (-1 elsewhere) -> the candidate order [F, N], best first;
4. ``GatherElements`` of boxes, scores and survival -> boxes [F, N, 4], scores [F, N], mask bool [F, N],
   zero where the mask is False (``Pad`` to N when a frame has fewer than N candidates).

Only step 1 has a data-dependent shape, and nothing downstream inherits it: every output has exactly N
boxes per frame, as in the eager model (``_nms_top_n``).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from strg_deploy.errors import StrgError

CANDIDATE_OUTPUTS = ("candidate_boxes", "candidate_scores", "candidate_valid")
OUTPUTS = ("boxes", "scores", "mask")


def _static_dim(model: ModelProto, name: str, axis: int) -> int:
    for value in model.graph.output:
        if value.name == name:
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_value"):
                return dim.dim_value
    raise StrgError(f"the exported RPN's output {name} has no fixed size in axis {axis}")


def append_nms_top_n(model: ModelProto, num_boxes: int, iou_threshold: float) -> ModelProto:
    """Replace the outputs :data:`CANDIDATE_OUTPUTS` of ``model`` with :data:`OUTPUTS`: boxes float32
    [F, N, 4], scores float32 [F, N], mask bool [F, N] (N = ``num_boxes``), by the steps of the module
    docstring. Returns ``model`` (changed in place)."""
    outputs = {value.name for value in model.graph.output}
    if not set(CANDIDATE_OUTPUTS) <= outputs:
        raise StrgError(f"the exported RPN lacks the outputs {sorted(set(CANDIDATE_OUTPUTS) - outputs)}")
    candidates = _static_dim(model, "candidate_scores", 1)
    boxes, scores, valid = CANDIDATE_OUTPUTS
    nodes = []
    inits = []

    def const(name: str, value, dtype) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"rpn_post_{name}"))
        return inits[-1].name

    def node(op: str, inputs: list[str], name: str, outputs: int = 1, **attrs):
        outs = [f"rpn_post_{name}"] if outputs == 1 else [f"rpn_post_{name}_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op, inputs, outs, name=f"/rpn_post/{name}", **attrs))
        return outs[0] if outputs == 1 else outs

    minus_one = const("minus_one", -1.0, np.float32)
    ranked_in = node("Where", [valid, scores, minus_one], "masked_scores")  # [F, K]
    nms_scores = node("Unsqueeze", [ranked_in, const("axis1", [1], np.int64)], "nms_scores")  # [F, 1, K]
    selected = node(
        "NonMaxSuppression",
        [
            boxes,
            nms_scores,
            const("max_per_frame", [num_boxes], np.int64),
            const("iou_threshold", [iou_threshold], np.float32),
            const("score_threshold", [-0.5], np.float32),
        ],
        "nms",
        center_point_box=0,
    )  # [S, 3]
    pairs = node("Gather", [selected, const("frame_and_box", [0, 2], np.int64)], "pairs", axis=1)  # [S, 2]
    ones = node(
        "ConstantOfShape",
        [node("Shape", [pairs], "pair_count", start=0, end=1)],
        "ones",
        value=numpy_helper.from_array(np.array([1.0], dtype=np.float32)),
    )
    zeros = node(
        "ConstantOfShape",
        [node("Shape", [scores], "score_shape")],
        "zeros",
        value=numpy_helper.from_array(np.array([0.0], dtype=np.float32)),
    )
    kept = node("ScatterND", [zeros, pairs, ones], "kept")  # float [F, K]: 1 for survivors
    half = const("half", 0.5, np.float32)
    survivor = node("Greater", [kept, half], "survivor")
    ranked = node("Where", [survivor, scores, minus_one], "ranked")
    take = min(num_boxes, candidates)
    _, order = node("TopK", [ranked, const("k", [take], np.int64)], "top", outputs=2, axis=1)  # [F, n]
    picked_mask = node(
        "Greater",
        [
            node("GatherElements", [kept, order], "picked_kept_values", axis=1),
            half,
        ],
        "picked_mask",
    )
    order4 = node(
        "Expand",
        [
            node("Unsqueeze", [order, const("axis2", [2], np.int64)], "order_col"),
            const("by4", [1, 1, 4], np.int64),
        ],
        "order4",
    )
    picked_boxes = node("GatherElements", [boxes, order4], "picked_boxes", axis=1)
    picked_scores = node("GatherElements", [scores, order], "picked_scores", axis=1)
    zero = const("zero", 0.0, np.float32)
    mask_col = node("Unsqueeze", [picked_mask, const("axis_last", [-1], np.int64)], "mask_col")
    final = {
        "boxes": node("Where", [mask_col, picked_boxes, zero], "boxes_zeroed"),
        "scores": node("Where", [picked_mask, picked_scores, zero], "scores_zeroed"),
        "mask": picked_mask,
    }
    missing = num_boxes - take
    for name, rank in (("boxes", 3), ("scores", 2), ("mask", 2)):
        source = final[name]
        if missing > 0:  # fewer candidates than N: pad the box axis (zeros, False)
            pads = [0] * (2 * rank)
            pads[rank + 1] = missing
            source = node("Pad", [source, const(f"pads_{name}", pads, np.int64)], f"pad_{name}")
        nodes.append(helper.make_node("Identity", [source], [name], name=f"/rpn_post/{name}"))
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    frame_dim = model.graph.output[0].type.tensor_type.shape.dim[0]
    new_outputs = []
    for name, dtype, shape in (
        ("boxes", TensorProto.FLOAT, [num_boxes, 4]),
        ("scores", TensorProto.FLOAT, [num_boxes]),
        ("mask", TensorProto.BOOL, [num_boxes]),
    ):
        first = frame_dim.dim_param or (frame_dim.dim_value if frame_dim.HasField("dim_value") else None)
        new_outputs.append(helper.make_tensor_value_info(name, dtype, [first, *shape]))
    del model.graph.output[:]
    model.graph.output.extend(new_outputs)
    return model
