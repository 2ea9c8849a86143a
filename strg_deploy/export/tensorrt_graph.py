"""The TensorRT copy of an exported ONNX file: the ``strg`` nodes as TensorRT's ONNX parser imports them.

The portable file (what ``strg export`` writes, what onnxruntime and OpenVINO read) is never changed: the
engine builder writes this copy into the engine folder (``<network>.trt.onnx``) and parses that. In the
copy every ``strg`` node carries exactly

- the attributes its plugin registration declares (``spatial_scale``, ``output_size``,
  ``sampling_ratio`` for FrameRoIAlignMax; none for SpaceTimeGraph), with the declared types;
- ``plugin_namespace`` ("strg") and ``plugin_version`` ("1"), which the parser reads to find the plugin;
- ``aot`` (int 1), which asks for the plugin's ahead-of-time implementation (``@trtp.aot_impl``: the
  kernel is baked into the engine, which then runs without Python).

The rules, from the sources:

- A node whose op has no importer and no local function is imported as a plugin named after its op
  type (onnx-tensorrt ``ModelImporter.cpp`` ``parseNode``, commit
  96e781103cfc4adf4a6bb557e94bac8e693f6f4c, release 10.1: op importers, then
  ``ctx->localFunctions()``, then ``FallbackPluginImporter``). From TensorRT 10.7 the parser "prioritizes
  using plugins over local functions when a corresponding plugin is available in the registry"
  (NVIDIA/TensorRT ``CHANGELOG.md``, 10.7.0, commit a892d22267d9cd2dedc1a0893e6892ac901f6d3d), so the
  function bodies stay in the copy (onnxruntime still runs it) and the builder verifies on the parsed
  network that plugin layers, not bodies, were imported.
- The node's op type is the plugin name and it carries a string attribute ``plugin_namespace`` with the
  plugin's namespace; a bool attribute ``aot`` set to true selects the AOT implementation
  (NVIDIA/TensorRT ``samples/python/quickly_deployable_plugins/README.md``, sections "ONNX model with a
  plugin" and "ONNX model with an AOT plugin", commit a892d22267d9cd2dedc1a0893e6892ac901f6d3d; ONNX has
  no bool attribute type: onnx-graphsurgeon writes ``True`` as INT 1).
- Every other node attribute becomes a plugin field, and a field the registration did not declare is
  refused: ``tensorrt.plugin`` ``_lib.py`` ``create_plugin`` raises "Unexpected attribute ... provided to
  create_plugin" (``python/packaging/bindings_wheel/tensorrt/plugin/_lib.py``, same commit).

Only onnx and the standard library are used here.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import AttributeProto, ModelProto, helper

from strg_deploy.contract.nodes import DOMAIN, OPS, ROI_ALIGN_MAX, SPACE_TIME_GRAPH, VERSION
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path

PLUGIN_FIELDS: dict[str, dict[str, int]] = {
    ROI_ALIGN_MAX: {
        "spatial_scale": AttributeProto.FLOAT,
        "output_size": AttributeProto.INT,
        "sampling_ratio": AttributeProto.INT,
    },
    SPACE_TIME_GRAPH: {},
}
"""op -> the attributes its ``tensorrt.plugin`` registration declares, with their ONNX attribute types."""

PARSER_ATTRIBUTES = ("plugin_namespace", "plugin_version", "aot")
"""Attributes the parser reads itself (they do not become plugin fields)."""

COPY_SUFFIX = ".trt.onnx"


def copy_name(network: str) -> str:
    """The file name of a network's TensorRT copy: ``<network>.trt.onnx``."""
    return f"{network}{COPY_SUFFIX}"


def strg_nodes(model: ModelProto) -> list[onnx.NodeProto]:
    """The ``strg`` nodes of the main graph, in graph order."""
    return [node for node in model.graph.node if node.domain == DOMAIN]


def _plugin_node(node: onnx.NodeProto) -> list[AttributeProto]:
    """The attributes of ``node`` in the copy: the declared fields (checked), then the parser's."""
    if node.op_type not in OPS:
        raise StrgError(f"node {node.name!r}: {DOMAIN}::{node.op_type} is not one of {', '.join(OPS)}")
    declared = PLUGIN_FIELDS[node.op_type]
    present = {a.name: a for a in node.attribute}
    kept = []
    for name, kind in declared.items():
        if name not in present:
            raise StrgError(f"node {node.name!r} ({node.op_type}) has no attribute {name}")
        if present[name].type != kind:
            expected = AttributeProto.AttributeType.Name(kind).lower()
            raise StrgError(f"node {node.name!r} ({node.op_type}): attribute {name} must be {expected}")
        kept.append(present[name])
    kept += [
        helper.make_attribute("plugin_namespace", DOMAIN),
        helper.make_attribute("plugin_version", str(VERSION)),
        helper.make_attribute("aot", 1),
    ]
    return kept


def tensorrt_model(model: ModelProto) -> ModelProto:
    """A copy of ``model`` whose ``strg`` nodes carry only their declared plugin fields plus
    ``plugin_namespace``, ``plugin_version`` and ``aot`` = 1 (see the module docstring). The model-local
    functions stay (each declares ``aot`` too, so runtimes that run the bodies accept the node);
    ``model`` itself is not changed."""
    copy = ModelProto()
    copy.CopyFrom(model)
    for node in strg_nodes(copy):
        attributes = _plugin_node(node)
        del node.attribute[:]
        node.attribute.extend(attributes)
    for function in copy.functions:
        if function.domain == DOMAIN and function.name in PLUGIN_FIELDS:
            declared = [*PLUGIN_FIELDS[function.name], *PARSER_ATTRIBUTES]
            kept = [a for a in function.attribute if a in declared]
            del function.attribute[:]
            function.attribute.extend(kept + [a for a in declared if a not in kept])
    return copy


def write_tensorrt_copy(source: str | Path, destination: str | Path) -> Path:
    """Write the TensorRT copy of the ONNX file ``source`` to ``destination`` (atomically). A source with
    external data gets a copy with its own external data beside it (``<destination name>.data``), so the
    parser finds the weights next to the file it parses."""
    source, destination = Path(source), Path(destination)
    try:
        model = onnx.load(str(source))
    except Exception as err:  # protobuf DecodeError, missing external data, OSError
        raise StrgError(f"cannot read {source}: {str(err).splitlines()[0][:120]}") from None
    external = any(
        init.data_location == onnx.TensorProto.EXTERNAL
        for init in onnx.load(str(source), load_external_data=False).graph.initializer
    )
    copy = tensorrt_model(model)
    data_name = destination.name + ".data"
    with atomic_path(destination) as tmp:
        if external:
            with atomic_path(destination.parent / data_name) as tmp_data:
                onnx.save(
                    copy,
                    str(tmp),
                    save_as_external_data=True,
                    location=tmp_data.name,
                    all_tensors_to_one_file=True,
                )
                _relocate(tmp, data_name)
        else:
            onnx.save(copy, str(tmp))
    return destination


def _relocate(model_path: Path, location: str) -> None:
    """Point every external initializer of the saved model at ``location`` (its final file name)."""
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(model_path))
