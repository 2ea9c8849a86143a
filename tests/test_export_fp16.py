"""The fp16 variant of the exported networks (strg_deploy.export.fp16), checked with onnxruntime.

onnxruntime on an x86 CPU computes fp16 Conv and MatMul in float32 internally, so these tests check the
rounding of weights and activations at fp16 and the graph's structure, not fp16 arithmetic. Outputs of
the variant must match the fp32 file within ATOL + RTOL * max |fp32| (both 5e-3: about ten float16
roundings, 4.9e-4 each, relative to the output's scale); RPN proposals whose fp32 scores lie within
TIE (1e-3, a score's fp16-sized noise) of each other are matched as a set first, as the project's
compare_outputs does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from strg_deploy.contract.networks import NETWORKS, rpn_frames
from strg_deploy.contract.nodes import DOMAIN, OPS
from strg_deploy.contract.reference import REFERENCE_FILE
from strg_deploy.engines.compare import compare_outputs
from strg_deploy.errors import StrgError
from strg_deploy.export.fp16 import convert_to_fp16, fp16_nodes, fp16_report, write_fp16_variant

ATOL = 5e-3
RTOL = 5e-3
TIE = 1e-3


@pytest.fixture(scope="module")
def variants(tiny_export, tmp_path_factory):
    """{network: (fp32 path, fp16 path)} for the tiny export's three networks."""
    _, folder = tiny_export
    out = tmp_path_factory.mktemp("fp16")
    return {
        n: (folder / f"{n}.onnx", write_fp16_variant(folder / f"{n}.onnx", out / f"{n}.onnx"))
        for n in NETWORKS
    }


@pytest.fixture(scope="module")
def feeds(tiny_export):
    """Inputs of every network for the reference sample's clips (batch 2), each network fed the fp32
    outputs of the one before it: {network: {input: array}}."""
    model, folder = tiny_export
    clips = np.load(folder / REFERENCE_FILE)["clips"][:2]
    stride = model.cfg.frames // model.cfg.feature_frames
    rpn = {"frames": rpn_frames(clips, stride)}
    backbone = {"clip": clips}
    proposals = _run(folder / "rpn.onnx", rpn)
    features = _run(folder / "backbone.onnx", backbone)["features"]
    b, t = clips.shape[0], model.cfg.feature_frames
    n = proposals["boxes"].shape[1]
    head = {
        "features": features,
        "boxes": proposals["boxes"].reshape(b, t, n, 4),
        "mask": proposals["mask"].reshape(b, t, n),
    }
    return {"rpn": rpn, "backbone": backbone, "head": head}


def _run(path, feed: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def _io(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    """(name, serialised type with shape) of every graph input and output."""
    return [(v.name, v.type.SerializeToString()) for v in (*model.graph.input, *model.graph.output)]


def _normalisation(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes between the graph's uint8 input and the first Conv (the in-graph normalisation)."""
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            return nodes
        nodes.append(node)
    return nodes


@pytest.mark.parametrize("network", NETWORKS)
def test_variant_keeps_the_contract_and_passes_the_checker(variants, network):
    source, variant = variants[network]
    fp32, fp16 = onnx.load(source), onnx.load(variant)
    onnx.checker.check_model(fp16, full_check=True)
    assert _io(fp16) == _io(fp32)  # names, dtypes (uint8/float32/bool) and shapes, dynamic axes too
    assert [f.SerializeToString() for f in fp16.functions] == [f.SerializeToString() for f in fp32.functions]
    assert list(fp16.opset_import) == list(fp32.opset_import)
    weights = [t for t in fp16.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    conv_weights = {n.input[1] for n in fp16.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    assert all(t.data_type == TensorProto.FLOAT16 for t in weights if t.name in conv_weights)
    assert len(variant.read_bytes()) < 0.9 * len(source.read_bytes())  # float weights halved


@pytest.mark.parametrize("network", NETWORKS)
def test_compute_in_fp16_and_graph_maths_in_fp32(variants, network):
    fp16 = onnx.load(variants[network][1])
    report = fp16_report(fp16)
    precision = {n.name: report.nodes[n.name] for n in fp16.graph.node}
    ops = {n.name: n.op_type for n in fp16.graph.node}
    anchors = [name for name, op in ops.items() if op in ("Conv", "MatMul", "Gemm")]
    assert anchors and all(precision[name] == "fp16" for name in anchors)
    assert report.casts > 0 and "Cast" not in report.fp16
    kept = {"rpn": ("TopK", "NonMaxSuppression", "Exp", "Sigmoid", "GatherND"), "head": ("Softmax",)}
    for op in kept.get(network, ()):
        assert op in report.fp32 and op not in report.fp16, op
    if network == "head":
        custom = [n for n in fp16.graph.node if n.domain == DOMAIN]
        assert sorted(n.op_type for n in custom) == sorted(OPS)
        assert all(precision[n.name] == "fp32" for n in custom)
        producers = {o: n for n in fp16.graph.node for o in n.output}
        for node in custom:  # their float inputs are float32: graph inputs
            assert set(node.input) <= {"features", "boxes", "mask"}
        casts = [producers[i] for n in fp16.graph.node if n.op_type == "Softmax" for i in n.input]
        assert all(precision[c.name] == "fp32" for c in casts)
    else:
        normalisation = _normalisation(fp16)
        assert [n.op_type for n in normalisation[:4]] == ["Cast", "Div", "Sub", "Div"]
        assert all(precision[n.name] == "fp32" for n in normalisation[:4])
        assert normalisation[-1].op_type == "Cast"  # the border: float32 -> float16 before the first Conv
        assert normalisation[-1].attribute[0].i == TensorProto.FLOAT16
    assert len(report.lines()) == 3 and report.lines()[0].startswith("fp16: ")


@pytest.mark.parametrize("network", NETWORKS)
def test_onnxruntime_outputs_match_the_fp32_network(variants, feeds, network):
    source, variant = variants[network]
    want = _run(source, feeds[network])
    got = _run(variant, feeds[network])
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    row = compare_outputs(network, "onnxruntime-fp16", "reference", want, got, ATOL, RTOL, TIE)
    assert row.passed, row
    assert row.max_abs > 0  # the variant really rounds to fp16
    if network == "head":
        assert row.top1_equal is True


def test_variant_of_a_file_with_external_data(variants, tmp_path):
    """A network saved with its weights in a .data file beside it becomes one self-contained file."""
    source = tmp_path / "head.onnx"
    onnx.save_model(
        onnx.load(variants["head"][0]),
        source,
        save_as_external_data=True,
        location="head.onnx.data",
        size_threshold=0,
    )
    out = write_fp16_variant(source, tmp_path / "variant" / "head.onnx")
    assert out.exists() and not (out.parent / "head.onnx.data").exists()
    got, want = onnx.load(out), onnx.load(variants["head"][1])
    assert list(got.graph.node) == list(want.graph.node)
    arrays = [{t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer} for m in (got, want)]
    assert arrays[0].keys() == arrays[1].keys()
    assert all(np.array_equal(arrays[0][k], arrays[1][k]) for k in arrays[1])


def test_errors_are_one_line_and_leave_files_alone(variants, tmp_path):
    with pytest.raises(StrgError, match="does not exist"):
        write_fp16_variant(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all \xff\xff")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(StrgError, match="cannot read"):
        write_fp16_variant(broken, out)
    with pytest.raises(StrgError, match="already holds float16"):
        write_fp16_variant(variants["backbone"][1], out)
    with pytest.raises(StrgError, match="network itself"):
        write_fp16_variant(variants["backbone"][0], variants["backbone"][0])
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "out.onnx"]  # no temporary files


def _tiny_graph(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_fp16_spreads_from_anchors_and_stops_at_float32_paths():
    """Relu after a Conv is fp16; an Add joining a float32 input is not; Softmax never is; a constant
    shared by an fp16 and an fp32 node is kept in both precisions; -3.4e38 becomes -65504 in fp16."""
    f = TensorProto.FLOAT
    weight = helper.make_tensor("w", f, [2, 2], np.eye(2, dtype=np.float32).ravel())
    big = helper.make_tensor("big", f, [1], [-3.4e38])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "big"], ["s"], name="shift"),
        helper.make_node("Add", ["s", "y"], ["j"], name="join"),
        helper.make_node("Softmax", ["j"], ["out"], name="softmax"),
        helper.make_node("Mul", ["y", "big"], ["out2"], name="scale"),
    ]
    io = [helper.make_tensor_value_info(n, f, [2, 2]) for n in ("x", "y", "out", "out2")]
    model = _tiny_graph(nodes, [weight, big], io[:2], io[2:])
    assert {model.graph.node[i].name for i in fp16_nodes(model)} == {"mm", "relu", "shift"}
    variant = convert_to_fp16(model)
    onnx.checker.check_model(variant, full_check=True)
    precision = fp16_report(variant).nodes
    assert [precision[n] for n in ("mm", "relu", "shift", "join", "softmax", "scale")] == [
        "fp16",
        "fp16",
        "fp16",
        "fp32",
        "fp32",
        "fp32",
    ]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in variant.graph.initializer}
    assert inits["big"].dtype == np.float32 and inits["big_fp16"].dtype == np.float16
    assert float(inits["big_fp16"][0]) == -65504.0
    x = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    y = np.ones((2, 2), np.float32)
    got = ort.InferenceSession(variant.SerializeToString()).run(None, {"x": x, "y": y})
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "y": y})
    np.testing.assert_allclose(got[1], want[1])  # the float32 path is untouched


def test_graph_output_computed_in_fp16_is_cast_back():
    f = TensorProto.FLOAT
    weight = helper.make_tensor("w", f, [2, 2], [0.5, 0.25, 1.0, 2.0])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Relu", ["y"], ["z"], name="relu"),
    ]
    io = [helper.make_tensor_value_info(n, f, [1, 2]) for n in ("x", "y", "z")]
    variant = convert_to_fp16(_tiny_graph(nodes, [weight], io[:1], io[1:]))
    onnx.checker.check_model(variant, full_check=True)
    assert [o.type.tensor_type.elem_type for o in variant.graph.output] == [f, f]
    y, z = ort.InferenceSession(variant.SerializeToString()).run(
        None, {"x": np.array([[1.0, -3.0]], np.float32)}
    )
    np.testing.assert_allclose(y, [[-2.5, -5.75]])
    np.testing.assert_allclose(z, [[0.0, 0.0]])
    assert fp16_report(variant).nodes["relu"] == "fp16"


def test_variant_of_the_tensorrt_copy(tiny_export, tmp_path):
    """The engine builder converts its TensorRT copy (strg nodes with an ``aot`` attribute)."""
    tensorrt_graph = pytest.importorskip("strg_deploy.export.tensorrt_graph")
    from strg_deploy.export import fp16

    _, folder = tiny_export
    copy = tensorrt_graph.write_tensorrt_copy(folder / "head.onnx", tmp_path / "head.trt.onnx")
    variant = onnx.load(fp16.write_fp16_variant(copy, tmp_path / "head.trt.fp16.onnx"))
    onnx.checker.check_model(variant, full_check=True)
    custom = [n for n in variant.graph.node if n.domain == DOMAIN]
    assert custom == [n for n in onnx.load(copy).graph.node if n.domain == DOMAIN]  # attributes and inputs
    assert {fp16_report(variant).nodes[n.name] for n in custom} == {"fp32"}
