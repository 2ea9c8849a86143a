"""The fp16 variant of an exported network, for TensorRT 11's strongly typed networks.

TensorRT 11 builds strongly typed networks only: the precision of every tensor comes from the ONNX file.
:func:`write_fp16_variant` writes a copy of ``rpn.onnx``, ``backbone.onnx`` or ``head.onnx`` in which the
convolutions, matrix products and their elementwise neighbours compute in float16, while these stay
float32:

- the graph's inputs and outputs (uint8 frames or clips in, float32 and bool out: the contract of
  :mod:`strg_deploy.contract.networks` is unchanged; a Cast to float32 produces each float output);
- the in-graph normalisation (uint8 -> float, minus mean, divided by std) and everything else computed
  from a graph input before the first Conv, MatMul or Gemm;
- the custom nodes ``strg::FrameRoIAlignMax`` and ``strg::SpaceTimeGraph`` (their inputs are cast to
  float32; their function bodies are untouched), the IoU and box arithmetic, the RPN's box decoding,
  TopK, NonMaxSuppression and score handling, and the head's masked softmax and pooling.

The rule (:func:`fp16_nodes`): walking the graph in order, a node computes in fp16 when its op type is
in :data:`FP16_OPS` and either it is an anchor (:data:`ANCHORS`: Conv, ConvTranspose, MatMul, Gemm; a
float32 input gets a Cast), or every float tensor it takes from another node comes from an fp16 node
(at least one; a graph input counts as float32; initializers and Constants are free: an fp16 copy is
made). So fp16 spreads from each anchor through
the ops listed and stops at any other op (Where, Softmax, Exp, TopK, Gather*, Cast, the custom nodes)
or where a float32 path joins. Each tensor that crosses a border gets one Cast. Float constants are
rounded to fp16 with their magnitude clipped to 65504 (the largest finite float16).

Why a pass of our own instead of a library (checked with nvidia-modelopt 0.47.0 and onnxconverter-common
1.16.0):

- ModelOpt's AutoCast (``modelopt.onnx.autocast``) moves every node of an unknown domain to its own
  ``trt.plugins`` domain (so onnxruntime can no longer find the ``strg`` function bodies and TensorRT
  looks for the plugin under another name), needs TensorRT itself for shape inference of custom ops, and
  its ``onnx`` extra pins onnx 1.21, onnxruntime-gpu (which must not sit beside onnxruntime) and cupy;
  on the function-inlined copy it would run, but that copy has no plugin nodes left.
- onnxconverter-common's ``convert_float_to_float16(keep_io_types=True, op_block_list=...)`` leaves
  model-local functions alone (good), but on the head it fails onnx's type check (a ``Cast(to=FLOAT)``
  in the fp16 region keeps its fp32 output), clips the masked softmax's fill value -3.4e38 to -1e4, and
  can only keep box arithmetic in fp32 by listing node names one by one.

The pass needs only ``onnx`` and its shape inference (which follows the custom nodes' function bodies).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
ANCHORS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# op type -> the input positions that carry the node's float type (None: every float input)
FP16_OPS: dict[str, tuple[int, ...] | None] = {
    **{op: None for op in ANCHORS},
    **{op: None for op in ("Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid")},
    **{op: None for op in ("Sigmoid", "Tanh", "Clip", "BatchNormalization", "Concat", "Identity")},
    **{op: (0,) for op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")},
    **{op: (0,) for op in ("ReduceMean", "Reshape", "Transpose", "Split", "Slice", "Squeeze")},
    **{op: (0,) for op in ("Unsqueeze", "Flatten", "Expand", "Resize")},
    "Pad": (0, 2),
    "ScatterND": (0, 2),
}
TYPE_FREE = frozenset({"Shape", "Size"})  # read only a tensor's shape: no Cast in front of them
HALF_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class Fp16Report:
    """Where each node of a model computes: ``nodes`` {node name: "fp16", "fp32", "cast" or "-" (no float
    tensors, e.g. shape arithmetic)}; ``fp16`` and ``fp32`` {op type: count} (border Casts not
    counted); ``casts``, the number of Casts between float32 and float16."""

    nodes: dict[str, str]
    fp16: dict[str, int]
    fp32: dict[str, int]
    casts: int

    def lines(self) -> list[str]:
        """One line for fp16 and one for fp32: ``fp16: Conv x12, Relu x8, ...``."""

        def join(counts: dict[str, int]) -> str:
            return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) or "none"

        return [f"fp16: {join(self.fp16)}", f"fp32: {join(self.fp32)}", f"casts: {self.casts}"]


def _elem_types(model: ModelProto) -> dict[str, int]:
    """{tensor name: ONNX element type} of every typed tensor, after onnx shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as err:
        first = str(err).strip().splitlines()[0]
        raise StrgError(f"fp16 variant: onnx shape inference fails on the network: {first}") from None
    types = {t.name: t.data_type for t in inferred.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _typed_inputs(node: onnx.NodeProto) -> list[int]:
    """The input positions of ``node`` that take its float type (see :data:`FP16_OPS`)."""
    positions = FP16_OPS.get(node.op_type)
    return (
        list(range(len(node.input))) if positions is None else [i for i in positions if i < len(node.input)]
    )


def fp16_nodes(model: ModelProto, types: dict[str, int] | None = None) -> set[int]:
    """Indices (in ``model.graph.node``) of the nodes that compute in fp16 (rule: module docstring).
    The graph must be topologically sorted, as ONNX requires."""
    types = _elem_types(model) if types is None else types
    constants = _constants(model.graph)
    producer: dict[str, int] = {}
    half: set[int] = set()
    for index, node in enumerate(model.graph.node):
        for out in node.output:
            producer[out] = index
        if node.op_type not in FP16_OPS or node.domain not in ("", "ai.onnx"):
            continue
        floats = [node.input[i] for i in _typed_inputs(node) if types.get(node.input[i]) == FLOAT]
        if not floats or not all(types.get(o) == FLOAT for o in node.output if o):
            continue
        computed = [name for name in floats if name not in constants]
        from_half = [name for name in computed if producer.get(name) in half]
        if node.op_type in ANCHORS or (from_half and len(from_half) == len(computed)):
            half.add(index)
    return half


def _unique(names: set[str], wanted: str) -> str:
    """``wanted``, or ``wanted_2``, ``wanted_3``... whichever is not in ``names`` (then added)."""
    name, k = wanted, 1
    while name in names:
        k += 1
        name = f"{wanted}_{k}"
    names.add(name)
    return name


def _half_tensor(values: np.ndarray, name: str) -> TensorProto:
    """float32 ``values`` as a float16 tensor, magnitudes clipped to the largest finite float16."""
    return numpy_helper.from_array(np.clip(values, -HALF_MAX, HALF_MAX).astype(np.float16), name)


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """{name: tensor} of the graph's initializers and Constant nodes' (``value``) outputs."""
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    return constants


def convert_to_fp16(model: ModelProto) -> ModelProto:
    """The fp16 variant of ``model`` (a new ModelProto; see the module docstring). Functions and the
    types of the graph's inputs and outputs are kept; float outputs computed in fp16 get a Cast."""
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        raise StrgError("fp16 variant: networks with subgraphs (If, Loop, Scan) are not supported")
    types = _elem_types(model)
    half = fp16_nodes(model, types)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    constants = _constants(graph)
    outputs = {o.name for o in graph.output}
    names = set(types) | set(producer) | {i for n in graph.node for i in n.input}
    node_names = {n.name for n in graph.node}

    def is_half(tensor: str) -> bool:  # float16 in the variant
        return types.get(tensor) == FLOAT and producer.get(tensor) in half

    nodes: list[onnx.NodeProto] = []
    new_initializers: list[TensorProto] = []
    halves: dict[str, str] = {}  # float32 constant -> its float16 copy
    casts: dict[tuple[str, int], str] = {}  # (tensor, to) -> the Cast's output
    inner: dict[str, str] = {}  # graph output computed in fp16 -> its float16 tensor inside the graph

    def half_constant(name: str) -> str:
        if name not in halves:
            halves[name] = _unique(names, f"{name}_fp16")
            new_initializers.append(_half_tensor(numpy_helper.to_array(constants[name]), halves[name]))
        return halves[name]

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = _unique(names, f"{name}_{'fp16' if to == HALF else 'fp32'}")
            source = inner.get(name, name)
            nodes.append(
                helper.make_node("Cast", [source], [out], to=to, name=_unique(node_names, f"Cast_{out}"))
            )
            casts[(name, to)] = out
        return casts[(name, to)]

    for index, original in enumerate(graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        typed = set(_typed_inputs(node))
        for i, name in enumerate(original.input):
            if not name or types.get(name) != FLOAT:
                continue
            if index in half and i in typed:
                if name in constants:
                    node.input[i] = half_constant(name)
                elif is_half(name):
                    node.input[i] = inner.get(name, name)
                else:  # an anchor's float32 input
                    node.input[i] = cast(name, HALF)
            elif is_half(name) and node.op_type not in TYPE_FREE:
                node.input[i] = cast(name, FLOAT)
        nodes.append(node)
        if index not in half:
            continue
        for k, out in enumerate(original.output):
            if out in outputs and types.get(out) == FLOAT:  # the contract's float32 output
                inner[out] = node.output[k] = _unique(names, f"{out}_fp16")
                nodes.append(
                    helper.make_node(
                        "Cast", [inner[out]], [out], to=FLOAT, name=_unique(node_names, f"Cast_{out}")
                    )
                )
                casts[(out, FLOAT)] = out

    consumed = {i for n in nodes for i in n.input} | outputs
    result = ModelProto()
    result.CopyFrom(model)
    result.graph.ClearField("node")
    result.graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in consumed)
    result.graph.ClearField("initializer")
    result.graph.initializer.extend(t for t in graph.initializer if t.name in consumed)
    result.graph.initializer.extend(new_initializers)
    result.graph.ClearField("value_info")  # the types changed: shape inference writes them anew
    result.graph.value_info.extend(
        onnx.shape_inference.infer_shapes(result, strict_mode=True).graph.value_info
    )
    return result


def fp16_report(model: ModelProto) -> Fp16Report:
    """Where each node of ``model`` (an fp16 variant, or any network) computes: "fp16" when a float
    input or output of the node is float16, "fp32" when its float tensors are all float32, "-" when it
    has none (and for Shape and Size, which read only a shape); "cast" for Casts between the two."""
    types = _elem_types(model)
    nodes: dict[str, str] = {}
    fp16: collections.Counter[str] = collections.Counter()
    fp32: collections.Counter[str] = collections.Counter()
    casts = 0
    floats = {FLOAT, HALF}
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index}"
        kinds = {types.get(t) for t in (*node.input, *node.output) if t} & floats
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        if node.op_type in TYPE_FREE:
            nodes[name] = "-"
        elif node.op_type == "Cast" and kinds == floats:
            nodes[name] = "cast"
            casts += 1
        elif HALF in kinds:
            nodes[name] = "fp16"
            fp16[op] += 1
        elif FLOAT in kinds:
            nodes[name] = "fp32"
            fp32[op] += 1
        else:
            nodes[name] = "-"
    return Fp16Report(nodes, dict(fp16), dict(fp32), casts)


def write_fp16_variant(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Read the network ``onnx_path`` (external data beside it is read too), write its fp16 variant to
    ``out_path`` (one file, written to a temporary file and renamed) and return ``out_path``. The
    variant passes ``onnx.checker``'s full check; StrgError when the input cannot be read or is
    already fp16, or the output cannot be written."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if onnx_path.resolve() == out_path.resolve():
        raise StrgError(f"fp16 variant: {out_path} is the network itself; write it to another file")
    try:
        model = onnx.load(onnx_path)
    except FileNotFoundError:
        raise StrgError(f"fp16 variant: {onnx_path} does not exist") from None
    except Exception as err:  # protobuf's DecodeError and friends
        raise StrgError(f"fp16 variant: cannot read {onnx_path} as ONNX: {err}") from None
    if any(t.data_type == HALF for t in model.graph.initializer):
        raise StrgError(f"fp16 variant: {onnx_path} already holds float16 weights")
    variant = convert_to_fp16(model)
    _check(variant, onnx_path)
    with atomic_path(out_path) as tmp:
        try:
            onnx.save_model(variant, tmp)
        except ValueError as err:  # protobuf's 2 GiB limit
            raise StrgError(f"fp16 variant: cannot write {out_path}: {err}") from None
    return out_path


def _check(variant: ModelProto, source: Path) -> None:
    try:
        onnx.checker.check_model(variant, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0]
        raise StrgError(f"fp16 variant of {source} fails onnx.checker: {first}") from None
