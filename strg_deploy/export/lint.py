"""TensorRT-compatibility lint for exported ONNX files (`strg export --lint DIR`).

The lint inlines the model-local functions (what TensorRT's parser sees when no plugin takes a custom node),
runs ONNX shape inference, and checks every node of the main graph and of its subgraphs against the
TensorRT ONNX parser's support matrix (:mod:`strg_deploy.export.tensorrt_support`): the op is supported, its
data type is in the op's row, and the attribute and input constraints of the row hold. With ``num_boxes``
it also checks the model contract: fixed sizes in every output axis but the batch axis, and N proposals
in the box axis (rpn ``boxes`` [F, N, 4], ``scores`` [F, N], ``mask`` [F, N]; head ``boxes``
[B, T', N, 4], ``mask`` [B, T', N]). In the head no output shape may depend on tensor values.

No torch here: the lint runs wherever onnx and numpy do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from strg_deploy.errors import StrgError
from strg_deploy.export import tensorrt_support as trt

__all__ = ["Finding", "format_finding", "lint_file", "lint_model"]

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})
"""Ops whose output shape depends on the values of their inputs."""

SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "TopK": (1,),
    "Range": (0, 1, 2),
    "Expand": (1,),
    "Reshape": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Resize": (2, 3),
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 3),
}
"""Op -> indices of the inputs that set its output shape."""

BOX_AXIS = {"rpn": 1, "head": 2}
"""Network -> the axis that holds the N proposals ([F, N, ...] for rpn, [B, T', N, ...] for head)."""
BOX_OUTPUTS = ("boxes", "scores", "mask")
BOX_INPUTS = ("boxes", "mask")

_DOC_TYPES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "FP64",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.INT4: "INT4",
    TensorProto.FLOAT4E2M1: "FP4",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.FLOAT8E5M2: "FP8",
}

# The importer accepts more input types than the matrix row lists. onnx-tensorrt onnxOpImporters.cpp at
# commit 0137504e2b25fe5253bd85d26b073378fb67805b, NonZero: "Only FLOAT32, FLOAT16, BFLOAT16, INT32, INT64,
# INT8 or BOOL input is supported for the NonZero operator".
_TYPE_OVERRIDES = {"NonZero": frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "BOOL"})}

_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)
_GROWING_OPS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Pad", "Upsample"})
_FOLD_LIMIT = 4096
"""Largest constant (in elements) whose value the lint computes and keeps."""


@dataclass(frozen=True)
class Finding:
    """One TensorRT-compatibility problem, naming the node (or graph input/output) it is about."""

    network: str
    node: str
    op_type: str
    rule: str
    message: str


Shape = list  # list of int (fixed), str (symbolic) or None (unknown), one per axis


def _dim_text(dim: int | str | None) -> str:
    return "?" if dim is None else str(dim)


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(_dim_text(d) for d in shape) + "]"


def _type_of(type_proto: onnx.TypeProto) -> tuple[int | None, Shape | None]:
    """(element type, shape) of a tensor TypeProto; None where unknown."""
    if not type_proto.HasField("tensor_type"):
        return None, None
    tensor = type_proto.tensor_type
    elem = tensor.elem_type or None
    if not tensor.HasField("shape"):
        return elem, None
    shape: Shape = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            shape.append(dim.dim_param)
        else:
            shape.append(None)
    return elem, shape


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def _names_used(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by the nodes of ``graph`` and of its nested subgraphs."""
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in _subgraphs(node):
            used |= _names_used(sub)
    return used


class _Linter:
    def __init__(self, model: onnx.ModelProto, network: str, num_boxes: int | None) -> None:
        self.model = model
        self.network = network
        self.num_boxes = num_boxes
        self.opset = next(
            (entry.version for entry in model.opset_import if entry.domain in DEFAULT_DOMAINS), None
        )
        self.findings: list[tuple[float, Finding]] = []
        self.types: dict[str, tuple[int | None, Shape | None]] = {}
        self.constant: set[str] = set()  # folds to a constant at build time
        self.literal: set[str] = set()  # an initializer or the output of a Constant node
        self.values: dict[str, np.ndarray] = {}  # small constants whose value is known
        self.tainted: set[str] = set()  # computed from tensor values (not only from shapes)
        self.producer: dict[str, tuple[float, str, str]] = {}  # main-graph tensor -> (position, node, op)
        self.position = 0
        self.graph_outputs = {output.name for output in model.graph.output}
        self._collect_types(model.graph)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _collect_types(self, graph: onnx.GraphProto) -> None:
        for info in (*graph.input, *graph.value_info, *graph.output):
            elem, shape = _type_of(info.type)
            known = self.types.get(info.name)
            if known is None or (known[1] is None and shape is not None):
                self.types[info.name] = (elem, shape)
        for init in graph.initializer:
            self.types.setdefault(init.name, (init.data_type, [int(d) for d in init.dims]))
        for node in graph.node:
            for sub in _subgraphs(node):
                self._collect_types(sub)

    def _add_initializers(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.constant.add(init.name)
            self.literal.add(init.name)
            if int(np.prod(init.dims, dtype=np.int64)) <= _FOLD_LIMIT:
                try:
                    self.values[init.name] = numpy_helper.to_array(init)
                except Exception:  # an unreadable value only loses the value, not the check
                    pass

    def shape(self, name: str) -> Shape | None:
        return self.types.get(name, (None, None))[1]

    def elem_type(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[0]

    def add(self, position: float, node: str, op_type: str, rule: str, message: str) -> None:
        self.findings.append((position, Finding(self.network, node, op_type, rule, message)))

    # --- walk ------------------------------------------------------------------------------------

    def run(self) -> list[Finding]:
        graph = self.model.graph
        if self.opset is not None and not trt.OPSET_MIN <= self.opset <= trt.OPSET_MAX:
            self.add(
                -2,
                "<model>",
                "opset",
                "opset",
                f"default-domain opset {self.opset} is outside TensorRT {trt.TENSORRT_VERSION}'s range "
                f"{trt.OPSET_MIN}..{trt.OPSET_MAX}",
            )
        self._add_initializers(graph)
        initializers = {init.name for init in graph.initializer}
        self.tainted.update(i.name for i in graph.input if i.name not in initializers)
        self._walk(graph, main=True)
        if self.num_boxes is not None:
            self._check_contract(graph, initializers)
        self.findings.sort(key=lambda item: item[0])
        return [finding for _, finding in self.findings]

    def _walk(self, graph: onnx.GraphProto, main: bool) -> None:
        for index, node in enumerate(graph.node):
            label = node.name or f"{node.op_type} #{index}"
            position = float(self.position)
            self.position += 1
            self._check_node(node, label, position)
            subgraphs = _subgraphs(node)
            if subgraphs:
                inputs_tainted = any(name in self.tainted for name in node.input if name)
                for sub in subgraphs:
                    self._add_initializers(sub)
                    if inputs_tainted:
                        self.tainted.update(i.name for i in sub.input)
                    self._walk(sub, main=False)
            self._propagate(node, subgraphs)
            if main:
                for name in node.output:
                    if name:
                        self.producer[name] = (position, label, node.op_type)

    def _propagate(self, node: onnx.NodeProto, subgraphs: list[onnx.GraphProto]) -> None:
        """Record which outputs are constants (and their values) and which carry tensor values."""
        outputs = [name for name in node.output if name]
        inputs = [name for name in node.input if name]
        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            self.tainted.update(outputs)
            return
        if op in ("Shape", "Size"):
            self._fold_shape(node)
            return
        used = set(inputs)
        for sub in subgraphs:
            used |= _names_used(sub)
        if op in _RANDOM_OPS or any(name in self.tainted for name in used):
            self.tainted.update(outputs)
            return
        if subgraphs or not all(name in self.constant for name in inputs):
            return
        if op == "Constant":
            self.literal.update(outputs)
        self.constant.update(outputs)
        if all(name in self.values for name in inputs) and self._small_output(node):
            self._evaluate(node, inputs)

    def _small_output(self, node: onnx.NodeProto) -> bool:
        shape = self.shape(node.output[0]) if node.output else None
        if shape is not None and all(isinstance(d, int) for d in shape):
            return int(np.prod(shape, dtype=np.int64)) <= _FOLD_LIMIT
        return node.op_type not in _GROWING_OPS

    def _evaluate(self, node: onnx.NodeProto, inputs: list[str]) -> None:
        try:
            evaluator = ReferenceEvaluator(node, opsets={"": self.opset or trt.OPSET_MAX})
            results = evaluator.run(None, {name: self.values[name] for name in inputs})
        except Exception:  # a fold the reference runtime cannot do leaves the value unknown
            return
        for name, value in zip(node.output, results, strict=False):
            if name and isinstance(value, np.ndarray) and value.size <= _FOLD_LIMIT:
                self.values[name] = value

    def _fold_shape(self, node: onnx.NodeProto) -> None:
        """Shape/Size of a tensor with static dimensions is a build-time constant."""
        shape = self.shape(node.input[0])
        if shape is None:
            return
        if node.op_type == "Shape":
            rank = len(shape)
            start, end = _attr(node, "start", 0), _attr(node, "end", rank)
            start = min(max(start + rank if start < 0 else start, 0), rank)
            end = min(max(end + rank if end < 0 else end, 0), rank)
            dims = shape[start:end]
        else:
            dims = shape
        if not all(isinstance(d, int) for d in dims):
            return
        self.constant.add(node.output[0])
        value = np.array(dims, dtype=np.int64)
        self.values[node.output[0]] = value if node.op_type == "Shape" else np.array(value.prod(), np.int64)

    # --- node checks -----------------------------------------------------------------------------

    def _check_node(self, node: onnx.NodeProto, label: str, position: float) -> None:
        op = node.op_type
        if node.domain not in DEFAULT_DOMAINS:
            self.add(
                position,
                label,
                op,
                "custom-domain",
                f"node of domain '{node.domain}' has no function body to inline; TensorRT can import it "
                "only as a registered plugin",
            )
            return
        if op not in trt.SUPPORTED_OPS:
            listed = (
                "is listed as not supported" if op in trt.UNSUPPORTED_OPS else "is not in the support list"
            )
            self.add(
                position,
                label,
                op,
                "unsupported-op",
                f"{op} {listed} of TensorRT {trt.TENSORRT_VERSION}'s ONNX parser",
            )
        else:
            check = _OP_CHECKS.get(op)
            if check is not None:
                check(self, node, label, position)
            self._check_constant_inputs(node, label, position)
            self._check_types(node, label, position)
        if self.network == "head":
            self._check_data_dependent(node, label, position)

    def _check_constant_inputs(self, node: onnx.NodeProto, label: str, position: float) -> None:
        for index, name, strict, sentence in trt.CONSTANT_INPUTS.get(node.op_type, ()):
            if index >= len(node.input) or not node.input[index]:
                continue
            tensor = node.input[index]
            if tensor in (self.literal if strict else self.constant):
                continue
            kind = "an initializer or Constant" if strict else "a constant"
            self.add(
                position,
                label,
                node.op_type,
                "constant-input",
                f'input {name} ("{tensor}") is not {kind}; TensorRT {trt.TENSORRT_VERSION}: "{sentence}"',
            )

    def _check_types(self, node: onnx.NodeProto, label: str, position: float) -> None:
        op = node.op_type
        accepted = _TYPE_OVERRIDES.get(op, trt.SUPPORTED_TYPES[op])
        if op == "ConstantOfShape":
            what, index, names = "output", 0, node.output
        else:
            what, index, names = "input", 1 if op == "Where" else 0, node.input
        if index < len(names) and names[index]:
            tensor = names[index]
            elem = self.elem_type(tensor)
            doc_type = _DOC_TYPES.get(elem, TensorProto.DataType.Name(elem)) if elem else None
            if doc_type and doc_type not in trt.CAST_DOWN_TYPES and doc_type not in accepted:
                rule = {"INT64": "int64", "UINT8": "uint8"}.get(doc_type, "dtype")
                message = (
                    f'{what} "{tensor}" is {doc_type}; TensorRT {trt.TENSORRT_VERSION} supports {op} '
                    f"on {', '.join(sorted(accepted))}"
                )
                if doc_type == "UINT8":
                    message += f' ("{trt.UINT8_NOTE}")'
                self.add(position, label, op, rule, message)
        for tensor in node.output:
            if tensor and self.elem_type(tensor) == TensorProto.UINT8 and tensor not in self.graph_outputs:
                self.add(
                    position,
                    label,
                    op,
                    "uint8",
                    f'output "{tensor}" is UINT8 inside the network ("{trt.UINT8_NOTE}")',
                )

    def _check_topk(self, node: onnx.NodeProto, label: str, position: float) -> None:
        if self.opset is not None and self.opset < 10:
            k = _attr(node, "k")
        elif len(node.input) > 1 and node.input[1]:
            tensor = node.input[1]
            if tensor not in self.constant:
                self.add(
                    position,
                    label,
                    "TopK",
                    "topk-k",
                    f'K ("{tensor}") is not a constant, so the lint cannot prove TensorRT '
                    f'{trt.TENSORRT_VERSION}\'s limit: "{trt.TOPK_RESTRICTION}"',
                )
                k = None
            else:
                value = self.values.get(tensor)
                k = int(value.reshape(-1)[0]) if value is not None and value.size else None
        else:
            k = None
        if k is not None and k >= trt.TOPK_K_LIMIT:
            self.add(
                position,
                label,
                "TopK",
                "topk-k",
                f"K={k} is above TensorRT {trt.TENSORRT_VERSION}'s limit: K must be less than "
                f"{trt.TOPK_K_LIMIT}",
            )
        if _attr(node, "sorted", 1) != 1:
            self.add(
                position,
                label,
                "TopK",
                "topk-sorted",
                f'sorted=0; TensorRT {trt.TENSORRT_VERSION}: "{trt.TOPK_RESTRICTION}"',
            )

    def _check_nms(self, node: onnx.NodeProto, label: str, position: float) -> None:
        op = "NonMaxSuppression"
        for index, name in trt.NMS_CONSTANT_INPUTS:
            if index >= len(node.input) or not node.input[index]:
                continue
            tensor = node.input[index]
            if tensor not in self.constant:
                self.add(
                    position,
                    label,
                    op,
                    "nms-inputs",
                    f'{name} ("{tensor}") is computed in the graph; it must be a constant',
                )
            elif tensor in self.values and self.values[tensor].size != 1:
                self.add(
                    position,
                    label,
                    op,
                    "nms-inputs",
                    f"{name} has {self.values[tensor].size} values; TensorRT reads it as a 0D scalar",
                )
        boxes = self.shape(node.input[0]) if node.input else None
        if (
            boxes is not None
            and len(boxes) == 3
            and isinstance(boxes[1], int)
            and boxes[1] > trt.NMS_BOX_LIMIT
        ):
            self.add(
                position,
                label,
                op,
                "nms-box-limit",
                f"{boxes[1]} boxes per batch item; TensorRT's NMS layer considers only the top "
                f"{trt.NMS_BOX_LIMIT} ({trt.NMS_BOX_LIMIT_SM53_SM62} on SM 5.3/6.2) and drops the rest",
            )

    def _check_scatter(self, node: onnx.NodeProto, label: str, position: float) -> None:
        reduction = _attr(node, "reduction", "none")
        allowed = trt.SCATTER_REDUCTIONS[node.op_type]
        if reduction not in allowed:
            self.add(
                position,
                label,
                node.op_type,
                "scatter-reduction",
                f"reduction='{reduction}'; TensorRT {trt.TENSORRT_VERSION} supports "
                f"{', '.join(sorted(allowed))} for {node.op_type}",
            )

    def _check_resize(self, node: onnx.NodeProto, label: str, position: float) -> None:
        problems = []
        mode = _attr(node, "mode", "nearest")
        transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in trt.RESIZE_MODES:
            problems.append(f"mode='{mode}'")
        if transform not in trt.RESIZE_TRANSFORMATION_MODES:
            problems.append(f"coordinate_transformation_mode='{transform}'")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if mode == "nearest" and nearest not in trt.RESIZE_NEAREST_MODES:
            problems.append(f"nearest_mode='{nearest}'")
        policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy not in trt.RESIZE_ASPECT_RATIO_POLICIES:
            problems.append(f"keep_aspect_ratio_policy='{policy}'")
        if _attr(node, "antialias", 0):
            problems.append("antialias=1")
        axes = _attr(node, "axes")
        scales = node.input[2] if len(node.input) > 2 else ""
        data_shape = self.shape(node.input[0])
        if (
            axes is not None
            and scales
            and scales not in self.constant
            and data_shape is not None
            and list(axes) != list(range(len(data_shape)))
        ):
            problems.append(f"axes={list(axes)} with a computed scales tensor")
        if problems:
            self.add(
                position,
                label,
                "Resize",
                "resize",
                f"{', '.join(problems)} not supported; TensorRT {trt.TENSORRT_VERSION}: "
                f'"{trt.RESTRICTIONS["Resize"]}"',
            )

    def _check_pooling(self, node: onnx.NodeProto, label: str, position: float) -> None:
        problems = []
        kernel = _attr(node, "kernel_shape")
        if kernel is not None and len(kernel) not in trt.POOLING_SPATIAL_RANKS:
            problems.append(f"{len(kernel)}D pooling")
        dilations = _attr(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            problems.append(f"dilations={list(dilations)}")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append("the Indices output is used")
        if problems:
            self.add(
                position,
                label,
                node.op_type,
                "pooling",
                f'{", ".join(problems)}; TensorRT {trt.TENSORRT_VERSION}: "{trt.RESTRICTIONS[node.op_type]}"',
            )

    def _check_layernorm(self, node: onnx.NodeProto, label: str, position: float) -> None:
        extra = [name for name in node.output[1:] if name]
        if extra:
            self.add(
                position,
                label,
                "LayerNormalization",
                "layernorm-outputs",
                f"declares outputs {extra} besides Y; TensorRT {trt.TENSORRT_VERSION}: "
                f'"{trt.RESTRICTIONS["LayerNormalization"]}"',
            )

    def _check_constant(self, node: onnx.NodeProto, label: str, position: float) -> None:
        unsupported = sorted(a.name for a in node.attribute if a.name in trt.CONSTANT_UNSUPPORTED_ATTRIBUTES)
        if unsupported:
            self.add(
                position,
                label,
                "Constant",
                "constant",
                f"attribute {unsupported[0]}; TensorRT {trt.TENSORRT_VERSION}: "
                f'"{trt.RESTRICTIONS["Constant"]}"',
            )

    def _check_data_dependent(self, node: onnx.NodeProto, label: str, position: float) -> None:
        op = node.op_type
        if op in DATA_DEPENDENT_SHAPE_OPS:
            self.add(
                position,
                label,
                op,
                "data-dependent-shape",
                f"{op}'s output shape depends on tensor values; the head needs fixed shapes",
            )
            return
        for index in SHAPE_INPUTS.get(op, ()):
            if index < len(node.input) and node.input[index] in self.tainted:
                self.add(
                    position,
                    label,
                    op,
                    "data-dependent-shape",
                    f'{op} input {index} ("{node.input[index]}") is computed from tensor values, so the '
                    "output shape depends on data; the head needs fixed shapes",
                )
                return

    # --- model contract --------------------------------------------------------------------------

    def _check_contract(self, graph: onnx.GraphProto, initializers: set[str]) -> None:
        axis = BOX_AXIS.get(self.network)
        for index, value in enumerate(i for i in graph.input if i.name not in initializers):
            if axis is not None and value.name in BOX_INPUTS:
                self._check_box_axis(
                    value.name, _type_of(value.type)[1], axis, -1 + index * 1e-6, value.name, "graph input"
                )
        for value in graph.output:
            position, label, op = self.producer.get(
                value.name, (float(self.position), value.name, "graph output")
            )
            position += 0.5
            shape = _type_of(value.type)[1]
            if shape is None:
                self.add(position, label, op, "dynamic-n", f'output "{value.name}" has no shape')
                continue
            loose = [i for i in range(1, len(shape)) if not isinstance(shape[i], int)]
            if len(shape) >= 2 and loose:
                self.add(
                    position,
                    label,
                    op,
                    "dynamic-n",
                    f'output "{value.name}" {_shape_text(shape)} is not fixed in axis '
                    f"{', '.join(map(str, loose))}: only the batch axis 0 may be dynamic",
                )
            if axis is not None and value.name in BOX_OUTPUTS:
                self._check_box_axis(value.name, shape, axis, position, label, op)

    def _check_box_axis(
        self, name: str, shape: Shape | None, axis: int, position: float, label: str, op: str
    ) -> None:
        if shape is not None and len(shape) > axis and shape[axis] == self.num_boxes:
            return
        shown = "no shape" if shape is None else _shape_text(shape)
        self.add(
            position,
            label,
            op,
            "dynamic-n",
            f'"{name}" {shown} must hold N={self.num_boxes} proposals in axis {axis} of the {self.network}',
        )


_OP_CHECKS = {
    "TopK": _Linter._check_topk,
    "NonMaxSuppression": _Linter._check_nms,
    "ScatterND": _Linter._check_scatter,
    "ScatterElements": _Linter._check_scatter,
    "Resize": _Linter._check_resize,
    "MaxPool": _Linter._check_pooling,
    "AveragePool": _Linter._check_pooling,
    "LayerNormalization": _Linter._check_layernorm,
    "Constant": _Linter._check_constant,
}
"""Op -> the check of the restrictions its row of the support matrix states."""


def lint_model(model: onnx.ModelProto, network: str, *, num_boxes: int | None = None) -> list[Finding]:
    """Check one network against TensorRT's ONNX parser; returns the findings in graph order.

    model: the exported ModelProto (custom nodes may carry model-local function bodies; they are inlined).
    network: "rpn", "backbone" or "head" (the head also gets the data-dependent-shape rule).
    num_boxes: N proposals per frame; when given, the outputs must be fixed but for the batch axis and the
    box tensors must hold N in their box axis (rpn [F, N, ...], head [B, T', N, ...]).
    """
    inlined = onnx.inliner.inline_local_functions(model)
    failed: Finding | None = None
    try:
        inferred = onnx.shape_inference.infer_shapes(inlined, data_prop=True)
    except Exception as exc:  # the lint still checks ops; shapes stay as declared
        inferred = inlined
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        failed = Finding(
            network, "<model>", "shape-inference", "shape-inference", f"ONNX shape inference failed: {reason}"
        )
    findings = _Linter(inferred, network, num_boxes).run()
    return ([failed] if failed else []) + findings


def lint_file(path: str | Path, network: str | None = None, num_boxes: int | None = None) -> list[Finding]:
    """Lint an ONNX file; ``network`` defaults to the file stem (rpn, backbone, head)."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise StrgError(f"cannot lint {path}: no such file") from None
    except Exception as exc:  # any read or parse failure is the user's file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StrgError(f"cannot lint {path}: not a readable ONNX model ({reason})") from None
    if not model.graph.node and not model.opset_import:
        raise StrgError(f"cannot lint {path}: not an ONNX model (no graph)")
    return lint_model(model, network or path.stem, num_boxes=num_boxes)


def format_finding(finding: Finding) -> str:
    """One line, e.g. `head.onnx: node "/head/TopK_3" (TopK): K=5000 is above ... [topk-k]`."""
    where = f'{finding.network}.onnx: node "{finding.node}" ({finding.op_type})'
    return f"{where}: {finding.message} [{finding.rule}]"
