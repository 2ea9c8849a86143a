"""The RPN's batched post-processing in standard ONNX ops, appended to the exported candidate graph.

torchvision's RPN exports with the batch size fixed at export time, so the exporter traces only
:meth:`~strg_deploy.models.proposals.RegionProposer.candidates` (boxes [F, K, 4], scores [F, K], valid
[F, K]: the top-scoring candidates of each FPN level, decoded and clipped) and :func:`append_nms_top_n`
adds the rest for every frame of the batch at once:

1. a stable ranking of each frame's candidates, by score (highest first) and then by candidate index
   (lowest first): ``TopK`` of all K by score, a group number per run of equal scores (``CumSum`` of
   the value changes), then ``TopK`` of the unique key ``group * K + index`` -> rank [F, K]. Invalid
   candidates score -1 and rank last. ONNX specifies TopK's tie rule (lower index first), but
   OpenVINO's TopK does not follow it and torch's ``topk`` promises nothing: with unique keys no
   runtime has a tie to break. The keys are exact in float32 up to K = 4096 candidates per frame;
2. ``NonMaxSuppression`` over all frames (one class) on the tie-free scores K - rank (invalid
   candidates -1, under the -0.5 score threshold), at most N selected per frame -> selected [S, 3]
   (frame, class, candidate);
3. ``ScatterND`` of ones at (frame, candidate) into zeros [F, K] -> which candidates survived;
4. ``TopK`` (N) of the survivors' tie-free scores (-1 elsewhere) -> the candidate order [F, N];
5. ``GatherElements`` of boxes, scores and survival -> boxes [F, N, 4], scores [F, N], mask bool [F, N],
   zero where the mask is False (``Pad`` to N when a frame has fewer than N candidates).

The eager model (``_nms_top_n``, ``tie_free_scores``) ranks the same way with a stable sort, so ties
in the candidate scores (frequent in trained models: sigmoid outputs near 0.5 differ by less than a
float32 step) leave the proposals in the same order in torch and in every runtime.

Only step 2 has a data-dependent shape, and nothing downstream inherits it: every output has exactly N
boxes per frame, as in the eager model (``_nms_top_n``).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from strg_deploy.errors import StrgError

CANDIDATE_OUTPUTS = ("candidate_boxes", "candidate_scores", "candidate_valid")
OUTPUTS = ("boxes", "scores", "mask")
MAX_CANDIDATES = 4096  # the ranking key group * K + index is exact in float32 up to K * K = 2 ** 24


def _static_dim(model: ModelProto, name: str, axis: int) -> int:
    for value in model.graph.output:
        if value.name == name:
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_value"):
                return dim.dim_value
    raise StrgError(f"the exported RPN's output {name} has no fixed size in axis {axis}")


def _tie_free_scores(node, const, masked: str, valid: str, k: int) -> str:
    """Step 1 of the module docstring: masked scores [F, K] (-1 for invalid candidates) -> float32
    [F, K], K - rank for valid candidates and -1 for the others, where rank orders the frame's
    candidates by score (highest first), ties by candidate index (lowest first)."""
    k_const = const("candidates", [k], np.int64)
    values, by_score = node("TopK", [masked, k_const], "by_score", outputs=2, axis=1)  # ties: any order
    axis = const("slice_axis", [1], np.int64)
    earlier = node(
        "Slice", [values, const("from0", [0], np.int64), const("to_k1", [k - 1], np.int64), axis], "earlier"
    )
    later = node(
        "Slice", [values, const("from1", [1], np.int64), const("to_k", [k], np.int64), axis], "later"
    )
    changed = node(
        "Cast",
        [node("Not", [node("Equal", [earlier, later], "same")], "differs")],
        "changed",
        to=TensorProto.FLOAT,
    )
    changed = node("Pad", [changed, const("pad_first", [0, 1, 0, 0], np.int64)], "changed_at")  # [F, K]
    group = node("CumSum", [changed, const("cumsum_axis", 1, np.int64)], "group")  # runs of equal scores
    index = node("Cast", [by_score], "index_float", to=TensorProto.FLOAT)
    key = node("Add", [node("Mul", [group, const("k_float", float(k), np.float32)], "group_k"), index], "key")
    _, position = node("TopK", [key, k_const], "by_key", outputs=2, axis=1, largest=0)  # unique keys
    order = node("GatherElements", [by_score, position], "stable_order", axis=1)  # [F, K]
    steps = node(
        "Expand",
        [
            const("arange", np.arange(k, dtype=np.float32)[None], np.float32),
            node("Shape", [masked], "shape_fk"),
        ],
        "steps",
    )
    rank = node("ScatterElements", [steps, order, steps], "rank", axis=1)  # rank[order[j]] = j
    tie_free = node("Sub", [const("k_minus", float(k), np.float32), rank], "k_minus_rank")
    return node("Where", [valid, tie_free, const("invalid", -1.0, np.float32)], "tie_free")


def append_nms_top_n(model: ModelProto, num_boxes: int, iou_threshold: float) -> ModelProto:
    """Replace the outputs :data:`CANDIDATE_OUTPUTS` of ``model`` with :data:`OUTPUTS`: boxes float32
    [F, N, 4], scores float32 [F, N], mask bool [F, N] (N = ``num_boxes``), by the steps of the module
    docstring. Returns ``model`` (changed in place)."""
    outputs = {value.name for value in model.graph.output}
    if not set(CANDIDATE_OUTPUTS) <= outputs:
        raise StrgError(f"the exported RPN lacks the outputs {sorted(set(CANDIDATE_OUTPUTS) - outputs)}")
    candidates = _static_dim(model, "candidate_scores", 1)
    if candidates > MAX_CANDIDATES:
        raise StrgError(
            f"the RPN keeps {candidates} candidates per frame before NMS; the exported ranking handles at "
            f"most {MAX_CANDIDATES} (lower cfg.proposals.pre_nms_top_n)"
        )
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
    masked = node("Where", [valid, scores, minus_one], "masked_scores")  # [F, K]
    tie_free = _tie_free_scores(node, const, masked, valid, candidates)  # [F, K]
    nms_scores = node("Unsqueeze", [tie_free, const("axis1", [1], np.int64)], "nms_scores")  # [F, 1, K]
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
    ranked = node("Where", [survivor, tie_free, minus_one], "ranked")
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
