"""manifest.json of an export: what a runtime needs to know to run the three ONNX files.

Torch-free (a deployment reads it). Schema version :data:`SCHEMA_VERSION`; fields:

- ``schema``, ``schema_version``; ``model``: the model config (``ModelConfig.to_dict()``), ``classes``,
  ``multi_label``, ``output_activation`` (``softmax`` or ``sigmoid``: the logits are raw);
- ``clip``: ``frames`` (T), ``size`` (S), ``span_seconds``, ``feature_frames`` (T'), ``temporal_stride``
  (the RPN sees every ``temporal_stride``-th frame of a clip), ``num_boxes`` (N per frame);
- ``networks``: per network its ``file``, ``sha256``, ``bytes`` (and ``external_data`` with its own hash),
  ``inputs`` and ``outputs`` (``name``, ``dtype``, ``shape`` with the symbolic batch axis as a string) read
  from the ONNX graph, ``custom_ops`` (``strg`` nodes in the file), ``preprocessing`` (the input a runtime
  must give: uint8 RGB, the frame size, and the mean/std that the graph applies itself);
- ``export``: ``opset``, ``max_batch``, ``functions`` (``local`` or ``inlined``), ``external_data``;
  ``versions`` of the exporting packages.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from strg_deploy.config import ModelConfig
from strg_deploy.contract.manifest import SCHEMA, SCHEMA_VERSION, file_sha256
from strg_deploy.contract.nodes import DOMAIN
from strg_deploy.fileio import atomic_write_text

_PACKAGES = ("strg-deploy", "torch", "torchvision", "onnx", "onnxscript")


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _dtype(value: onnx.ValueInfoProto) -> str:
    name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
    return {"FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16"}.get(name, name.lower())


def io_spec(values) -> list[dict[str, Any]]:
    """[{"name", "dtype", "shape"}] of graph inputs or outputs (initializers excluded by the caller)."""
    return [{"name": v.name, "dtype": _dtype(v), "shape": _dims(v)} for v in values]


def preprocessing(cfg: ModelConfig, network: str) -> dict[str, Any]:
    """The input each network expects, and the normalisation its graph applies itself."""
    if network == "head":
        return {"input": "the backbone's features and the RPN's boxes and mask, as they come"}
    mean, std = (
        (cfg.proposals.mean, cfg.proposals.std) if network == "rpn" else (cfg.backbone.mean, cfg.backbone.std)
    )
    layout = (
        "[F, 3, S, S]: every temporal_stride-th frame of each clip" if network == "rpn" else "[B, 3, T, S, S]"
    )
    return {
        "input": f"uint8 RGB {layout}, S = {cfg.size}: resize the short side, then crop",
        "normalisation_in_graph": "(x / 255 - mean) / std",
        "mean": list(mean),
        "std": list(std),
    }


def _versions() -> dict[str, str]:
    found = {}
    for package in _PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def build_manifest(
    cfg: ModelConfig, protos: dict[str, ModelProto], written: dict[str, list[Path]], options: Any
) -> dict[str, Any]:
    """The manifest of an export: ``protos`` the three ModelProtos, ``written`` the files of each
    (the .onnx first, then its external data if any), ``options`` the ExportOptions."""
    networks = {}
    for name, proto in protos.items():
        files = written[name]
        initializers = {i.name for i in proto.graph.initializer}
        entry: dict[str, Any] = {
            "file": files[0].name,
            "sha256": file_sha256(files[0]),
            "bytes": files[0].stat().st_size,
            "inputs": io_spec(v for v in proto.graph.input if v.name not in initializers),
            "outputs": io_spec(proto.graph.output),
            "custom_ops": sorted(
                {f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain == DOMAIN}
            ),
            "preprocessing": preprocessing(cfg, name),
        }
        if len(files) > 1:
            entry["external_data"] = {
                "file": files[1].name,
                "sha256": file_sha256(files[1]),
                "bytes": files[1].stat().st_size,
            }
        networks[name] = entry
    opset = next(o.version for o in protos["head"].opset_import if o.domain in ("", "ai.onnx"))
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": {
            "preset": cfg.preset,
            "architecture": cfg.architecture,
            "config": cfg.to_dict(),
            "classes": list(cfg.classes),
            "multi_label": cfg.multi_label,
            "output_activation": "sigmoid" if cfg.multi_label else "softmax",
        },
        "clip": {
            "frames": cfg.frames,
            "size": cfg.size,
            "span_seconds": cfg.span_seconds,
            "feature_frames": cfg.feature_frames,
            "temporal_stride": cfg.backbone.temporal_stride,
            "num_boxes": cfg.proposals.num_boxes,
        },
        "networks": networks,
        "export": {
            "opset": opset,
            "max_batch": options.max_batch,
            "functions": "inlined" if options.plain else "local",
            "external_data": options.external_data,
        },
        "versions": _versions(),
    }
    return json.loads(json.dumps(manifest))  # as it reads back: lists, not tuples


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest as indented JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(manifest, indent=2) + "\n")
