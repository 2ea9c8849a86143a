"""The TensorRT plugin registration of the strg nodes (strg_deploy/plugins/registration.py, shapes.py).

Without TensorRT: the shape, type and launch rules of shapes.py with ints and with symbolic dimensions
(operators only, like TensorRT's ShapeExpr), their agreement with launch.py for the three presets, the
T' = 1 launch of the graph kernel run under the Triton interpreter (it must touch no memory), the one
line a missing TensorRT gives, and the attributes the registration declares (read from its source with
ast) against those of an exported tiny model's nodes. With TensorRT >= 10.9 (skipped here): the
registration itself, the AOT kernels and the shape descriptors.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strg_deploy.config import preset
from strg_deploy.contract.nodes import ROI_ALIGN_MAX, SPACE_TIME_GRAPH
from strg_deploy.errors import StrgError
from strg_deploy.plugins import launch, shapes

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NEEDS_TRT = pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT >= 10.9 (tensorrt.plugin)")
REGISTRATION = Path(shapes.__file__).with_name("registration.py")
PRESETS = ("tiny", "small", "paper-r50")


def preset_shapes(name: str, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(features [B, C, T', H', W'], boxes [B, T', N, 4]) of a preset's head."""
    config = preset(name)
    frames, size = config.feature_frames, config.feature_size
    count = config.proposals.num_boxes
    return (batch, config.node_dim, frames, size, size), (batch, frames, count, 4)


# --- output shapes and launches with ints --------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", PRESETS)
def test_output_shapes_and_launches_match_launch_py(name, batch):
    features, boxes = preset_shapes(name, batch)
    _, channels, frames, _, _ = features
    count = boxes[2]
    assert shapes.roi_output_shape(features, boxes) == (batch, frames, count, channels)
    assert shapes.graph_output_shape(boxes) == (batch, frames - 1, count, count)

    roi = shapes.roi_launch(features, boxes)
    expected = launch.roi_launch_params(features, boxes)
    assert (roi.kernel, roi.grid, roi.block, roi.shared_mem) == (
        launch.ROI_KERNEL,
        expected.grid,
        expected.block,
        expected.shared_mem,
    )
    assert (
        roi.extra_args == launch.roi_extra_args(features, boxes) == (channels, frames, *features[3:], count)
    )
    assert len(roi.extra_args) == len(launch.ROI_SPEC.int_args)

    graph = shapes.graph_launch(boxes)
    expected = launch.graph_launch_params(boxes)
    assert (graph.kernel, graph.grid, graph.block, graph.shared_mem) == (
        launch.GRAPH_KERNEL,
        expected.grid,
        expected.block,
        expected.shared_mem,
    )
    assert graph.extra_args == launch.graph_extra_args(boxes) == (frames, count)


def test_preset_launch_numbers():
    """The paper's head at batch 2: 1600 boxes x 32 channel blocks; 30 frame pairs x 4 row blocks."""
    features, boxes = preset_shapes("paper-r50", 2)
    assert shapes.roi_launch(features, boxes).grid == (2 * 16 * 50, 32, 1)
    assert shapes.roi_launch(features, boxes).extra_args == (512, 16, 14, 14, 50)
    assert shapes.graph_launch(boxes).grid == (2 * 15, 4, 1)
    features, boxes = preset_shapes("tiny", 1)
    assert shapes.roi_launch(features, boxes).grid == (4 * 4, 2, 1)  # 32 channels
    assert shapes.graph_launch(boxes).grid == (3, 1, 1)


def test_single_frame_graph_launch_is_one_block_per_row_block_with_no_rows():
    """T' = 1: launch.py's grid is empty; the plugin launches (1, ceil(N/16), 1) with (T', N) = (2, 0)."""
    assert launch.graph_grid((2, 1, 40, 4))[0] == 0
    plan = shapes.graph_launch((2, 1, 40, 4))
    assert plan.grid == (1, 3, 1)
    assert plan.extra_args == (2, 0)
    assert shapes.graph_output_shape((2, 1, 40, 4)) == (2, 0, 40, 40)


def test_at_most_one():
    assert [shapes.at_most_one(v) for v in range(0, 200)] == [min(v, 1) for v in range(0, 200)]


class Dim:
    """A symbolic dimension with only the operators TensorRT's ShapeExpr has (no reflected ones) and
    no truth value: a formula that compares or puts an int on the left fails here."""

    def __init__(self, text):
        self.text = text

    def _op(self, sign, other):
        return Dim(f"({self.text} {sign} {getattr(other, 'text', other)})")

    def __add__(self, other):
        return self._op("+", other)

    def __sub__(self, other):
        return self._op("-", other)

    def __mul__(self, other):
        return self._op("*", other)

    def __floordiv__(self, other):
        return self._op("//", other)

    def __bool__(self):
        raise AssertionError("a symbolic dimension has no truth value")

    def __eq__(self, other):
        raise AssertionError("a symbolic dimension cannot be compared")

    __hash__ = object.__hash__


def text(value) -> str:
    return value.text if isinstance(value, Dim) else str(value)


def test_rules_take_symbolic_dimensions():
    features = tuple(Dim(n) for n in ("B", "C", "T", "H", "W"))
    boxes = (Dim("B"), Dim("T"), Dim("N"), Dim("4"))
    mask = (Dim("B"), Dim("T"), Dim("N"))
    shapes.check_roi_inputs(features, boxes, mask, ["FLOAT", "FLOAT", "BOOL"])
    shapes.check_graph_inputs(boxes, mask, ["FLOAT", "BOOL"])
    assert [text(d) for d in shapes.roi_output_shape(features, boxes)] == ["B", "T", "N", "C"]
    assert [text(d) for d in shapes.graph_output_shape(boxes)] == ["B", "(T - 1)", "N", "N"]
    roi = shapes.roi_launch(features, boxes)
    assert [text(d) for d in roi.grid] == ["((B * T) * N)", "((C + 15) // 16)", "1"]
    assert [text(d) for d in roi.extra_args] == ["C", "T", "H", "W", "N"]
    graph = shapes.graph_launch(boxes)
    some = "(((T - 1) * 2) // ((T - 1) + 1))"
    assert [text(d) for d in graph.grid] == [f"(((B * (T - 1)) + 1) - {some})", "((N + 15) // 16)", "1"]
    assert [text(d) for d in graph.extra_args] == [f"((T + 1) - {some})", f"(N * {some})"]


def test_known_reads_only_constant_expressions():
    class Expr:
        def __init__(self, fake, constant, value=0):
            self.is_fake, self.is_constant, self.value = fake, constant, value

        def constant_value(self):
            return self.value

    assert shapes.known(7) == 7
    assert shapes.known(Expr(fake=False, constant=True, value=5)) == 5
    assert shapes.known(Expr(fake=False, constant=False)) is None
    assert shapes.known(Expr(fake=True, constant=True, value=5)) is None
    assert shapes.known(Dim("B")) is None


# --- checks --------------------------------------------------------------------------------------

GOOD_FEATURES, GOOD_BOXES = (2, 32, 4, 4, 4), (2, 4, 4, 4)
GOOD_MASK = (2, 4, 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: shapes.check_roi_inputs(
                GOOD_FEATURES[:4], GOOD_BOXES, GOOD_MASK, ["FLOAT", "FLOAT", "BOOL"]
            ),
            r"strg::FrameRoIAlignMax: input features must be FLOAT \[B, C, T', H', W'\] \(rank 5\), "
            r"got FLOAT of rank 4",
        ),
        (
            lambda: shapes.check_roi_inputs(GOOD_FEATURES, GOOD_BOXES, GOOD_MASK, ["HALF", "FLOAT", "BOOL"]),
            r"input features must be FLOAT .* got HALF of rank 5",
        ),
        (
            lambda: shapes.check_roi_inputs(GOOD_FEATURES, GOOD_BOXES, GOOD_MASK, ["FLOAT", "FLOAT", "INT8"]),
            r"input mask must be BOOL \[B, T', N\] \(rank 3\), got INT8 of rank 3",
        ),
        (
            lambda: shapes.check_roi_inputs(
                GOOD_FEATURES, (2, 4, 4, 5), GOOD_MASK, ["FLOAT", "FLOAT", "BOOL"]
            ),
            r"boxes must be \[B, T', N, 4\] with B, T' of features, got \[2, 4, 4, 5\]",
        ),
        (
            lambda: shapes.check_roi_inputs(
                GOOD_FEATURES, (2, 3, 4, 4), (2, 3, 4), ["FLOAT", "FLOAT", "BOOL"]
            ),
            r"boxes must be \[B, T', N, 4\] with B, T' of features, got \[2, 3, 4, 4\]",
        ),
        (
            lambda: shapes.check_roi_inputs(GOOD_FEATURES, GOOD_BOXES, (2, 4, 5), ["FLOAT", "FLOAT", "BOOL"]),
            r"mask must be \[B, T', N\] like boxes, got \[2, 4, 5\]",
        ),
        (
            lambda: shapes.check_inputs(shapes.ROI_ID, shapes.ROI_INPUTS, [GOOD_FEATURES], ["FLOAT"]),
            r"expected 3 inputs \(features, boxes, mask\), got 1",
        ),
        (
            lambda: shapes.check_graph_inputs(GOOD_BOXES, GOOD_MASK, ["FLOAT", "BOOL"][::-1]),
            r"strg::SpaceTimeGraph: input boxes must be FLOAT \[B, T', N, 4\] \(rank 4\), got BOOL",
        ),
        (
            lambda: shapes.check_graph_inputs((2, 4, 4, 2), GOOD_MASK, ["FLOAT", "BOOL"]),
            r"strg::SpaceTimeGraph: boxes must be \[B, T', N, 4\], got \[2, 4, 4, 2\]",
        ),
        (
            lambda: shapes.check_graph_inputs(GOOD_BOXES, (2, 4), ["FLOAT", "BOOL"]),
            r"input mask must be BOOL \[B, T', N\] \(rank 3\), got BOOL of rank 2",
        ),
    ],
)
def test_bad_inputs_are_one_line(call, message):
    with pytest.raises(StrgError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


def test_good_inputs_pass():
    shapes.check_roi_inputs(GOOD_FEATURES, GOOD_BOXES, GOOD_MASK, ["FLOAT", "FLOAT", "BOOL"])
    shapes.check_graph_inputs((3, 1, 7, 4), (3, 1, 7), ["FLOAT", "BOOL"])


def test_formats_are_float32_and_bool_linear():
    assert shapes.ROI_IO_TYPES == "FP32, FP32, BOOL, FP32"  # features, boxes, mask, nodes
    assert shapes.GRAPH_IO_TYPES == "FP32, BOOL, FP32, FP32"  # boxes, mask, forward, backward
    assert shapes.LAYOUT == "LINEAR"
    assert [s.dtype for s in shapes.ROI_OUTPUTS + shapes.GRAPH_OUTPUTS] == ["FLOAT"] * 3


@pytest.mark.parametrize(
    "major, minor, cc", [(7, 5, 75), (8, 0, 80), (8, 6, 80), (8, 9, 80), (9, 0, 80), (10, 0, 80), (12, 0, 80)]
)
def test_ptx_target(major, minor, cc):
    assert shapes.ptx_cc(major, minor) == cc


def test_turing_ptx_matches_launch_py():
    """ptx_cc gives 75 on Turing: the kernels compiled for it keep launch.py's warps and shared memory."""
    pytest.importorskip("triton")
    from strg_deploy.plugins import ptx

    reason = ptx.cuda_compile_unavailable()
    if reason:
        pytest.skip(f"triton cannot compile for CUDA here: {reason}")
    attributes = {"spatial_scale": 1 / 16, "output_size": 7, "sampling_ratio": 2}
    for spec in (launch.ROI_SPEC, launch.GRAPH_SPEC):
        kernel = ptx.compile_kernel(spec.name, cc=75, attributes=attributes)
        assert (kernel.name, kernel.num_warps) == (spec.name, spec.num_warps)
        assert kernel.shared_mem <= spec.shared_mem
        assert ".target sm_75" in kernel.ptx


# --- the T' = 1 launch, run under the Triton interpreter -----------------------------------------

NO_OP_SCRIPT = r"""
import json, os
assert os.environ["TRITON_INTERPRET"] == "1"
import torch
from strg_deploy.plugins import kernels, launch, shapes

boxes = torch.tensor([[[[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0], [0.0, 0.0, 64.0, 64.0]]]] * 2)
mask = torch.ones(2, 1, 3, dtype=torch.bool)
plan = shapes.graph_launch(tuple(boxes.shape))
# the outputs are empty; give the kernel sentinel buffers instead, so any write would show
forward, backward = torch.full((64,), 7.0), torch.full((64,), 7.0)
kernels.space_time_graph_kernel[plan.grid](
    boxes, mask.view(torch.int8), *plan.extra_args, forward, backward,
    num_warps=plan.block // 32, **launch.graph_constexprs())
print(json.dumps({"grid": list(plan.grid), "args": list(plan.extra_args),
                  "untouched": bool((forward == 7).all() and (backward == 7).all())}))
"""


def test_single_frame_graph_launch_touches_no_memory():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from conftest import triton_interpreter_problem

    if triton_interpreter_problem():
        pytest.skip(triton_interpreter_problem())
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", NO_OP_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"grid": [1, 1, 1], "args": [2, 0], "untouched": True}


# --- without TensorRT ----------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_registration_without_tensorrt_is_one_line():
    from strg_deploy.plugins import load_registration

    for call in (lambda: importlib.import_module("strg_deploy.plugins.registration"), load_registration):
        with pytest.raises(StrgError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message
        assert "TensorRT >= 10.9" in message and "TensorRT is not installed" in message
        assert "pip install 'strg-deploy[gpu]' --extra-index-url https://pypi.nvidia.com" in message
    assert "strg_deploy.plugins.registration" not in sys.modules


def test_shapes_and_package_import_no_tensorrt_torch_or_triton():
    from conftest import loaded_after_importing

    modules = ["strg_deploy.plugins", "strg_deploy.plugins.shapes"]
    assert loaded_after_importing(modules, ("torch", "tensorrt", "triton", "cuda")) == []


# --- the registration's source (readable here without TensorRT) ----------------------------------


def _decorated(tree: ast.Module) -> dict[tuple[str, str], ast.FunctionDef]:
    """(decorator, plugin id) -> the function, for every @trtp.<decorator>(ID) in the module."""
    ids = {"ROI_ID": shapes.ROI_ID, "GRAPH_ID": shapes.GRAPH_ID}
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Attribute)
                    and isinstance(decorator.func.value, ast.Name)
                    and decorator.func.value.id == "trtp"
                ):
                    argument = decorator.args[0]
                    key = argument.value if isinstance(argument, ast.Constant) else ids[argument.id]
                    found[(decorator.func.attr, key)] = node
    return found


def _params(function: ast.FunctionDef) -> list[tuple[str, str]]:
    return [(a.arg, ast.unparse(a.annotation) if a.annotation else "") for a in function.args.args]


SOURCE = ast.parse(REGISTRATION.read_text(encoding="utf-8"))
DECORATED = _decorated(SOURCE)
ATTRIBUTE_TYPES = {"float": "FLOAT", "int": "INT"}


def declared_attributes(plugin_id: str) -> list[tuple[str, str]]:
    """(name, ONNX attribute type) of the attributes ``@trtp.register(plugin_id)`` declares, in order."""
    params = _params(DECORATED[("register", plugin_id)])
    return [(name, ATTRIBUTE_TYPES[kind]) for name, kind in params if kind != "trtp.TensorDesc"]


def test_every_plugin_has_register_autotune_and_aot_impl_and_no_impl():
    assert sorted(DECORATED) == sorted(
        (decorator, plugin)
        for decorator in ("register", "autotune", "aot_impl")
        for plugin in (shapes.ROI_ID, shapes.GRAPH_ID)
    )
    future = [n for n in SOURCE.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert future == []  # tensorrt.plugin inspects the annotations as classes, not strings


def test_signatures_follow_tensorrt_plugin_rules():
    """Tensors first, then the registered attributes in order; autotune: tensors and outputs;
    aot_impl: tensors, every attribute (TensorRT passes them all, positionally), outputs, tactic."""
    for plugin, tensors in ((shapes.ROI_ID, shapes.ROI_INPUTS), (shapes.GRAPH_ID, shapes.GRAPH_INPUTS)):
        names = [t.name for t in tensors]
        attributes = [name for name, _ in declared_attributes(plugin)]
        register = [name for name, _ in _params(DECORATED[("register", plugin)])]
        assert register == names + attributes
        assert [n for n, _ in _params(DECORATED[("autotune", plugin)])] == [*names, "outputs"]
        assert [n for n, _ in _params(DECORATED[("aot_impl", plugin)])] == [
            *names,
            *attributes,
            "outputs",
            "tactic",
        ]


@pytest.fixture(scope="module")
def tiny_head():
    """The head network of a tiny STRG with random weights, exported to ONNX (a ModelProto). Needs torch."""
    torch = pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
    from strg_deploy.export.onnx import ExportOptions, export_network
    from strg_deploy.models.strg import build_model

    torch.manual_seed(0)
    return export_network(build_model(preset("tiny")).eval(), "head", ExportOptions(max_batch=2))


def test_declared_attributes_equal_the_exported_nodes(tiny_head):
    """What the registration declares is what the exported nodes carry, minus the parser's own
    attributes, in the same order and with the same types; and what the TensorRT copy keeps."""
    import onnx

    from strg_deploy.export.tensorrt_graph import PARSER_ATTRIBUTES, PLUGIN_FIELDS, strg_nodes

    nodes = strg_nodes(tiny_head)
    assert sorted({n.op_type for n in nodes}) == sorted([ROI_ALIGN_MAX, SPACE_TIME_GRAPH])
    kinds = {onnx.AttributeProto.FLOAT: "FLOAT", onnx.AttributeProto.INT: "INT"}
    for node in nodes:
        carried = [
            (a.name, kinds.get(a.type, str(a.type)))
            for a in node.attribute
            if a.name not in ("plugin_namespace", "plugin_version", "aot")
        ]
        plugin = f"strg::{node.op_type}"
        assert declared_attributes(plugin) == carried
        assert declared_attributes(plugin) == [(k, kinds[v]) for k, v in PLUGIN_FIELDS[node.op_type].items()]
    assert set(PARSER_ATTRIBUTES) == {"plugin_namespace", "plugin_version", "aot"}
    assert [name for name, _ in declared_attributes(shapes.ROI_ID)] == [
        "spatial_scale",
        "output_size",
        "sampling_ratio",
    ]
    assert declared_attributes(shapes.GRAPH_ID) == []


# --- with TensorRT >= 10.9 -------------------------------------------------------------------------


@NEEDS_TRT
def test_registration_registers_once():
    import tensorrt as trt

    from strg_deploy.plugins import load_registration

    registration = load_registration()
    registration.register_plugins()  # again: nothing happens
    assert load_registration() is registration
    registry = trt.get_plugin_registry()
    for op in (ROI_ALIGN_MAX, SPACE_TIME_GRAPH):
        assert registry.get_creator(op, "1", "strg") is not None


@NEEDS_TRT
def test_aot_kernels_are_the_launch_py_kernels():
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from strg_deploy.plugins import load_registration, ptx

    if ptx.cuda_compile_unavailable():
        pytest.skip(f"triton cannot compile for CUDA here: {ptx.cuda_compile_unavailable()}")
    registration = load_registration()
    features_shape, boxes_shape = preset_shapes("tiny", 2)
    features = trtp.from_shape_expr(features_shape, dtype=trt.float32)
    boxes = trtp.from_shape_expr(boxes_shape, dtype=trt.float32)
    name, text, params, extra = registration.roi_kernel(features, boxes, 1 / 16, 7, 2, cc=80)
    assert name == launch.ROI_KERNEL.encode()
    assert ptx.entry_params(text.decode(), launch.ROI_KERNEL)[:3] == (".u64 .ptr .global .align 1",) * 3
    assert isinstance(params, trtp.KernelLaunchParams) and len(extra) == len(launch.ROI_INT_ARGS)
    assert all(isinstance(arg, trtp.SymInt32) for arg in extra)
    name, text, params, extra = registration.graph_kernel(boxes, cc=80)
    assert name == launch.GRAPH_KERNEL.encode()
    assert f".entry {launch.GRAPH_KERNEL}(" in text.decode()
    assert len(extra) == len(launch.GRAPH_INT_ARGS)


@NEEDS_TRT
def test_shape_descriptors_declare_rank_and_type():
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from strg_deploy.plugins import load_registration

    load_registration()
    features = trtp.from_shape_expr((2, 32, 4, 4, 4), dtype=trt.float32)
    boxes = trtp.from_shape_expr((2, 4, 4, 4), dtype=trt.float32)
    mask = trtp.from_shape_expr((2, 4, 4), dtype=trt.bool)
    nodes = trtp.op.strg.FrameRoIAlignMax.register_func(features, boxes, mask, 1 / 16, 7, 2)
    assert (nodes.ndim, nodes.dtype) == (4, trt.float32)
    forward, backward = trtp.op.strg.SpaceTimeGraph.register_func(boxes, mask)
    assert (forward.ndim, backward.ndim, forward.dtype) == (4, 4, trt.float32)
    half = trtp.from_shape_expr((2, 32, 4, 4, 4), dtype=trt.float16)
    with pytest.raises(StrgError, match="input features must be FLOAT"):
        trtp.op.strg.FrameRoIAlignMax.register_func(half, boxes, mask, 1 / 16, 7, 2)


@NEEDS_TRT
def test_network_output_shapes(tiny_head, tmp_path):
    """The parsed TensorRT copy of the tiny head: each plugin layer's outputs have the declared shapes."""
    import tensorrt as trt

    from strg_deploy.export.engine import find_gpu
    from strg_deploy.export.tensorrt_graph import write_tensorrt_copy
    from strg_deploy.plugins import load_registration

    if isinstance(find_gpu(), str):
        pytest.skip(f"needs TensorRT >= 10.9 (tensorrt.plugin) and an NVIDIA GPU: {find_gpu()}")
    load_registration()
    import onnx

    onnx.save(tiny_head, str(tmp_path / "head.onnx"))
    copy = write_tensorrt_copy(tmp_path / "head.onnx", tmp_path / "head.trt.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(copy)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = preset("tiny")
    frames, count, channels = config.feature_frames, config.proposals.num_boxes, config.node_dim
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugins = [layer for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    outputs = sorted(
        [tuple(layer.get_output(j).shape) for j in range(layer.num_outputs)] for layer in plugins
    )
    # the batch is dynamic (-1); RoI: one output [B, T', N, C]; graph: two outputs [B, T'-1, N, N]
    assert outputs == sorted([[(-1, frames, count, channels)], [(-1, frames - 1, count, count)] * 2])
