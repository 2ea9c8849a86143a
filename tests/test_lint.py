"""TensorRT-compatibility lint on small hand-made ONNX graphs: one graph per rule, and clean graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from strg_deploy.errors import StrgError
from strg_deploy.export import tensorrt_support
from strg_deploy.export.lint import Finding, format_finding, lint_file, lint_model

FLOAT, INT64, UINT8, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL


def tensor(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def model(nodes, inputs, outputs, initializers=(), opset: int = 18, functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("strg", 1)]
    made = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    made.ir_version = 10
    return made


def rules(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.rule, f.node) for f in findings]


def clean_rpn() -> onnx.ModelProto:
    """A small RPN-shaped graph: uint8 frames -> conv scores -> TopK -> NMS -> N=4 padded boxes and mask."""
    nodes = [
        helper.make_node("Cast", ["frames"], ["x"], to=FLOAT, name="cast"),
        helper.make_node("Conv", ["x", "w"], ["feat"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["feat"], ["act"], name="relu"),
        helper.make_node("ReduceMax", ["act", "axes_c"], ["heat"], keepdims=0, name="reduce"),
        helper.make_node("Reshape", ["heat", "flat_shape"], ["logits"], name="flatten"),
        helper.make_node("Sigmoid", ["logits"], ["prob"], name="sigmoid"),
        helper.make_node("TopK", ["prob", "k"], ["top", "top_idx"], axis=1, name="topk"),
        helper.make_node("Unsqueeze", ["top_idx", "axes_last"], ["idx4"], name="unsq"),
        helper.make_node("Expand", ["idx4", "idx_shape"], ["idx_box"], name="expand"),
        helper.make_node("GatherElements", ["anchors", "idx_box"], ["cand"], axis=1, name="gather"),
        helper.make_node("Unsqueeze", ["top", "axes_mid"], ["nms_scores"], name="unsq_scores"),
        helper.make_node(
            "NonMaxSuppression", ["cand", "nms_scores", "max_out", "iou", "score_min"], ["sel"], name="nms"
        ),
        helper.make_node("Greater", ["top", "score_min"], ["keep"], name="greater"),
        helper.make_node("Slice", ["keep", "zero", "n", "one"], ["mask"], name="slice_mask"),
        helper.make_node("Slice", ["top", "zero", "n", "one"], ["scores"], name="slice_scores"),
        helper.make_node("Slice", ["cand", "zero", "n", "one"], ["boxes_raw"], name="slice_boxes"),
        helper.make_node("Unsqueeze", ["mask", "axes_last"], ["mask4"], name="unsq_mask"),
        helper.make_node("Where", ["mask4", "boxes_raw", "zero_box"], ["boxes"], name="pad_boxes"),
    ]
    initializers = [
        numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w"),
        const("axes_c", [1]),
        const("flat_shape", [0, -1]),
        const("k", [8]),
        const("axes_last", [-1]),
        const("idx_shape", [1, 8, 4]),
        numpy_helper.from_array(np.zeros((1, 32, 4), np.float32), "anchors"),
        const("axes_mid", [1]),
        const("max_out", [4]),
        numpy_helper.from_array(np.array([0.7], np.float32), "iou"),
        numpy_helper.from_array(np.array([0.05], np.float32), "score_min"),
        const("zero", [0]),
        const("n", [4]),
        const("one", [1]),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero_box"),
    ]
    inputs = [tensor("frames", UINT8, ["F", 3, 4, 8])]
    outputs = [
        tensor("boxes", FLOAT, ["F", 4, 4]),
        tensor("scores", FLOAT, ["F", 4]),
        tensor("mask", BOOL, ["F", 4]),
        tensor("sel", INT64, [None, 3]),
    ]
    return model(nodes, inputs, outputs[:3], initializers)


def test_clean_graph_has_no_findings():
    rpn = clean_rpn()
    onnx.checker.check_model(rpn, full_check=True)
    assert lint_model(rpn, "rpn", num_boxes=4) == []
    assert lint_model(rpn, "backbone") == []


def test_support_list_holds_the_export_ops_and_not_the_unsupported_ones():
    used = (
        "Conv Relu MaxPool Add MatMul Gemm RoiAlign ReduceMax ReduceSum TopK NonMaxSuppression ScatterND "
        "GatherElements Where Sigmoid Softmax Transpose Reshape Concat Slice Shape Cast Div Mul Sub "
        "Min Max Exp Clip Resize Pad Expand Range Unsqueeze Squeeze Gather Split Equal Less Greater Not And "
        "ConstantOfShape LayerNormalization Flatten"
    ).split()
    assert set(used) <= tensorrt_support.SUPPORTED_OPS
    for unsupported in ("SequenceConstruct", "SplitToSequence", "Unique", "Compress", "MaxRoiPool"):
        assert unsupported in tensorrt_support.UNSUPPORTED_OPS
        assert unsupported not in tensorrt_support.SUPPORTED_OPS
    assert tensorrt_support.TENSORRT_VERSION.startswith("10.")
    assert "onnx/onnx-tensorrt" in tensorrt_support.SOURCE and "docs/operators.md" in tensorrt_support.SOURCE
    assert tensorrt_support.TOPK_K_LIMIT == 3840
    assert "INT64" in tensorrt_support.SUPPORTED_TYPES["Gather"]
    assert "INT64" not in tensorrt_support.SUPPORTED_TYPES["MatMul"]


def test_unsupported_op_names_the_node():
    found = lint_model(
        model(
            [helper.make_node("Unique", ["x"], ["y"], name="/rpn/Unique_2")],
            [tensor("x", FLOAT, [5])],
            [tensor("y", FLOAT, [None])],
        ),
        "rpn",
    )
    assert rules(found) == [("unsupported-op", "/rpn/Unique_2")]
    assert found[0].op_type == "Unique" and "not supported" in found[0].message


def test_custom_domain_node_without_body_is_a_finding():
    node = helper.make_node("FrameRoIAlignMax", ["x"], ["y"], domain="strg", name="roi")
    found = lint_model(model([node], [tensor("x", FLOAT, [2])], [tensor("y", FLOAT, [2])]), "head")
    assert rules(found) == [("custom-domain", "roi")]


def test_unsupported_op_inside_a_model_local_function_is_found_after_inlining():
    body = [
        helper.make_node("Compress", ["x", "keep"], ["y"], name="compress", axis=0),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    function = helper.make_function(
        "strg", "Select", ["x", "keep"], ["z"], body, [helper.make_opsetid("", 18)]
    )
    node = helper.make_node("Select", ["a", "m"], ["b"], domain="strg", name="/head/Select")
    found = lint_model(
        model(
            [node],
            [tensor("a", FLOAT, [5]), tensor("m", BOOL, [5])],
            [tensor("b", FLOAT, [None])],
            functions=[function],
        ),
        "rpn",
    )
    assert [(f.rule, f.op_type) for f in found] == [("unsupported-op", "Compress")]
    assert found[0].node.startswith("compress")


def test_unsupported_op_in_an_if_branch_is_found():
    branch = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="branch_unique")],
        "then",
        [],
        [tensor("u", FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["v"], name="branch_identity")],
        "else",
        [],
        [tensor("v", FLOAT, None)],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other, name="if")
    found = lint_model(
        model([node], [tensor("c", BOOL, []), tensor("x", FLOAT, [4])], [tensor("y", FLOAT, None)]), "rpn"
    )
    assert rules(found) == [("unsupported-op", "branch_unique")]


def topk_model(k_nodes, k_inits, k_name="k", k_input=None, sorted_flag=1) -> onnx.ModelProto:
    nodes = [*k_nodes, helper.make_node("TopK", ["x", k_name], ["v", "i"], axis=1, sorted=sorted_flag)]
    inputs = [tensor("x", FLOAT, ["B", 6000])] + ([k_input] if k_input is not None else [])
    return model(nodes, inputs, [tensor("v", FLOAT, None), tensor("i", INT64, None)], k_inits)


def test_topk_k_above_the_limit():
    found = lint_model(topk_model([], [const("k", [5000])]), "head")
    assert rules(found) == [("topk-k", "TopK #0")]
    assert "K=5000" in found[0].message and "3840" in found[0].message
    line = format_finding(found[0])
    assert line.startswith('head.onnx: node "TopK #0" (TopK): K=5000 ') and line.endswith("[topk-k]")


def test_topk_k_folded_through_constant_nodes():
    k_nodes = [
        helper.make_node("Constant", [], ["k0"], value=const("k0", 4000)),
        helper.make_node("Unsqueeze", ["k0", "ax"], ["k"]),
    ]
    found = lint_model(topk_model(k_nodes, [const("ax", [0])]), "rpn")
    assert rules(found) == [("topk-k", "TopK #2")]
    assert "K=4000" in found[0].message
    assert lint_model(topk_model([], [const("k", [3839])]), "rpn") == []


def test_topk_k_not_a_constant_and_unsorted():
    found = lint_model(topk_model([], [], k_input=tensor("k", INT64, [1]), sorted_flag=0), "rpn")
    assert [f.rule for f in found] == ["topk-k", "topk-sorted"]
    assert "not a constant" in found[0].message


def nms_model(iou_is_input: bool, boxes: int = 100) -> onnx.ModelProto:
    node = helper.make_node(
        "NonMaxSuppression", ["b", "s", "max_out", "iou", "smin"], ["sel"], name="/rpn/nms"
    )
    inputs = [tensor("b", FLOAT, [1, boxes, 4]), tensor("s", FLOAT, [1, 1, boxes])]
    inits = [const("max_out", [10]), numpy_helper.from_array(np.array([0.1], np.float32), "smin")]
    if iou_is_input:
        inputs.append(tensor("iou", FLOAT, [1]))
    else:
        inits.append(numpy_helper.from_array(np.array([0.5], np.float32), "iou"))
    return model([node], inputs, [tensor("sel", INT64, [None, 3])], inits)


def test_nms_threshold_must_be_constant():
    found = lint_model(nms_model(iou_is_input=True), "rpn")
    assert rules(found) == [("nms-inputs", "/rpn/nms")]
    assert "iou_threshold" in found[0].message
    assert lint_model(nms_model(iou_is_input=False), "rpn") == []


def test_nms_over_the_box_limit():
    found = lint_model(nms_model(iou_is_input=False, boxes=6000), "rpn")
    assert rules(found) == [("nms-box-limit", "/rpn/nms")]
    assert "6000" in found[0].message and "5000" in found[0].message


def test_nms_in_the_head_has_a_data_dependent_shape():
    found = lint_model(nms_model(iou_is_input=False), "head")
    assert rules(found) == [("data-dependent-shape", "/rpn/nms")]


@pytest.mark.parametrize(
    ("op", "reduction", "flagged"),
    [
        ("ScatterND", "add", True),
        ("ScatterND", "none", False),
        ("ScatterElements", "max", False),
    ],
)
def test_scatter_reduction(op: str, reduction: str, flagged: bool):
    indices = const("idx", [[0], [2]]) if op == "ScatterND" else const("idx", [[0, 1], [2, 0]])
    updates_shape = [2, 3] if op == "ScatterND" else [2, 2]
    node = helper.make_node(op, ["data", "idx", "upd"], ["out"], reduction=reduction, name="scatter")
    found = lint_model(
        model(
            [node],
            [tensor("data", FLOAT, [4, 3]), tensor("upd", FLOAT, updates_shape)],
            [tensor("out", FLOAT, [4, 3])],
            [indices],
        ),
        "head",
    )
    assert rules(found) == ([("scatter-reduction", "scatter")] if flagged else [])


def test_int64_data_where_the_row_has_no_int64():
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["c"], name="mm"),
        helper.make_node("Add", ["a", "a"], ["d"]),
    ]
    found = lint_model(
        model(
            nodes,
            [tensor("a", INT64, [2, 2]), tensor("b", INT64, [2, 2])],
            [tensor("c", INT64, [2, 2]), tensor("d", INT64, [2, 2])],
        ),
        "backbone",
    )
    assert rules(found) == [("int64", "mm")]
    assert "INT64" in found[0].message and "MatMul" in found[0].message


def test_uint8_is_only_for_network_inputs_and_outputs():
    nodes = [
        helper.make_node("Relu", ["frames"], ["r"], name="relu_on_uint8"),
        helper.make_node("Cast", ["r"], ["y"], to=FLOAT),
    ]
    found = lint_model(model(nodes, [tensor("frames", UINT8, [1, 3])], [tensor("y", FLOAT, [1, 3])]), "rpn")
    assert [f.rule for f in found] == ["uint8", "uint8"]
    assert {f.node for f in found} == {"relu_on_uint8"}
    assert "network input or output" in found[0].message


def test_reduce_axes_must_be_an_initializer():
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0, name="sum")
    found = lint_model(
        model([node], [tensor("x", FLOAT, [2, 3]), tensor("axes", INT64, [1])], [tensor("y", FLOAT, None)]),
        "rpn",
    )
    assert rules(found) == [("constant-input", "sum")]
    assert "`axes` must be an initializer" in found[0].message


def test_resize_antialias_and_maxpool_indices_and_layernorm_outputs():
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="linear", antialias=1, name="resize"),
        helper.make_node("MaxPool", ["r"], ["p", "p_idx"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("LayerNormalization", ["p", "gamma"], ["ln", "ln_mean"], axis=-1, name="ln"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
    ]
    found = lint_model(
        model(
            nodes,
            [tensor("x", FLOAT, [1, 1, 4, 4])],
            [tensor("ln", FLOAT, None), tensor("p_idx", INT64, None)],
            inits,
        ),
        "backbone",
    )
    assert rules(found) == [("resize", "resize"), ("pooling", "pool"), ("layernorm-outputs", "ln")]
    assert "antialias" in found[0].message and "Indices" in found[1].message


def test_dynamic_n_in_rpn_outputs_and_head_inputs():
    rpn = clean_rpn()
    assert [(f.rule, f.node) for f in lint_model(rpn, "rpn", num_boxes=5)] == [
        ("dynamic-n", "slice_mask"),
        ("dynamic-n", "slice_scores"),
        ("dynamic-n", "pad_boxes"),
    ]
    loose = model(
        [helper.make_node("Identity", ["boxes"], ["out"], name="id")],
        [tensor("boxes", FLOAT, ["B", 8, "n", 4])],
        [tensor("out", FLOAT, ["B", 8, "n", 4])],
    )
    found = lint_model(loose, "head", num_boxes=5)
    assert rules(found) == [("dynamic-n", "boxes"), ("dynamic-n", "id")]
    assert "axis 2" in found[0].message and "N=5" in found[0].message
    assert "not fixed in axis 2" in found[1].message
    assert lint_model(loose, "head") == []


def reshape_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceMax", ["counts"], ["most"], keepdims=1, name="most"),
        helper.make_node("Concat", ["most", "minus1"], ["shape"], axis=0, name="shape"),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="/head/Reshape"),
        helper.make_node("Shape", ["x"], ["xs"], name="xs"),
        helper.make_node("Reshape", ["x", "xs"], ["z"], name="/head/Reshape_ok"),
    ]
    return model(
        nodes,
        [tensor("x", FLOAT, ["B", 6]), tensor("counts", INT64, [3])],
        [tensor("y", FLOAT, None), tensor("z", FLOAT, ["B", 6])],
        [const("minus1", [-1])],
    )


def test_data_dependent_shapes_only_in_the_head():
    found = lint_model(reshape_model(), "head")
    assert rules(found) == [("data-dependent-shape", "/head/Reshape")]
    assert lint_model(reshape_model(), "rpn") == []
    nonzero = model(
        [helper.make_node("NonZero", ["m"], ["idx"], name="nz")],
        [tensor("m", BOOL, [4])],
        [tensor("idx", INT64, None)],
    )
    assert rules(lint_model(nonzero, "head")) == [("data-dependent-shape", "nz")]
    assert lint_model(nonzero, "rpn") == []


def test_opset_outside_the_parser_range():
    found = lint_model(
        model(
            [helper.make_node("Relu", ["x"], ["y"])],
            [tensor("x", FLOAT, [2])],
            [tensor("y", FLOAT, [2])],
            opset=25,
        ),
        "rpn",
    )
    assert [f.rule for f in found] == ["opset"]


def test_findings_come_in_graph_order_and_lint_file_uses_the_stem(tmp_path):
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="first"),
        helper.make_node("Relu", ["x"], ["r"], name="fine"),
        helper.make_node("TopK", ["r", "k"], ["v", "i"], name="third"),
    ]
    made = model(
        nodes,
        [tensor("x", FLOAT, [9000])],
        [tensor("u", FLOAT, None), tensor("v", FLOAT, None)],
        [const("k", [4096])],
    )
    path = tmp_path / "head.onnx"
    onnx.save(made, path)
    found = lint_file(path)
    assert rules(found) == [
        ("unsupported-op", "first"),
        ("data-dependent-shape", "first"),
        ("topk-k", "third"),
    ]
    assert all(f.network == "head" for f in found)
    assert [f.network for f in lint_file(path, network="rpn")] == ["rpn", "rpn"]


def test_lint_file_errors_are_one_line(tmp_path):
    with pytest.raises(StrgError, match="no such file"):
        lint_file(tmp_path / "missing.onnx")
    junk = tmp_path / "rpn.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(StrgError, match="cannot lint") as error:
        lint_file(junk)
    assert "\n" not in str(error.value)
