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

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from strg_deploy.config import ModelConfig
from strg_deploy.custom_ops import DOMAIN
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text

SCHEMA = "strg-deploy-export"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
_PACKAGES = ("strg-deploy", "torch", "torchvision", "onnx", "onnxscript")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


NETWORKS = ("rpn", "backbone", "head")
CLIP_FIELDS = ("frames", "size", "feature_frames", "temporal_stride", "num_boxes")


class _Malformed(ValueError):
    """A manifest field that is missing or does not fit (the message names the dotted field)."""


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_file_name(value: Any) -> bool:
    """A plain file name: the file lies in the export folder itself."""
    return isinstance(value, str) and value not in ("", ".", "..") and not any(c in value for c in "/\\\0")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_io_list(value: Any) -> bool:
    """[{"name": str, "dtype": str, "shape": [int or str, ...]}, ...]"""
    return isinstance(value, list) and all(
        isinstance(v, dict)
        and isinstance(v.get("name"), str)
        and isinstance(v.get("dtype"), str)
        and isinstance(v.get("shape"), list)
        and all(_is_count(d) or isinstance(d, str) for d in v["shape"])
        for v in value
    )


_CHECKS = {
    "an object": lambda v: isinstance(v, dict),
    "a file name in the export folder": _is_file_name,
    "a SHA-256 in hex": _is_sha256,
    "a count": _is_count,
    "a positive integer": lambda v: _is_count(v) and v > 0,
    "a list of {name, dtype, shape}": _is_io_list,
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "true or false": lambda v: isinstance(v, bool),
}


def _field(obj: dict[str, Any], key: str, where: str, expected: str) -> Any:
    """``obj[key]`` when it is ``expected`` (a key of _CHECKS); _Malformed naming ``where.key`` otherwise."""
    if key not in obj:
        raise _Malformed(f"{where}{key} is missing")
    value = obj[key]
    if not _CHECKS[expected](value):
        raise _Malformed(f"{where}{key}: expected {expected}, got {_shown(value)}")
    return value


def _check_fields(manifest: dict[str, Any]) -> None:
    """What the readers of an export use: the three networks' files, hashes and inputs/outputs, the clip,
    and a model config that agrees with the clip."""
    networks = _field(manifest, "networks", "", "an object")
    if sorted(networks) != sorted(NETWORKS):
        raise _Malformed(f"networks: expected {', '.join(NETWORKS)}, got {_shown(sorted(networks))}")
    for name in NETWORKS:
        entry = _field(networks, name, "networks.", "an object")
        where = f"networks.{name}."
        for key, expected in (("file", "a file name in the export folder"), ("sha256", "a SHA-256 in hex")):
            _field(entry, key, where, expected)
        _field(entry, "bytes", where, "a count")
        _field(entry, "inputs", where, "a list of {name, dtype, shape}")
        _field(entry, "outputs", where, "a list of {name, dtype, shape}")
        if "external_data" in entry:
            data = _field(entry, "external_data", where, "an object")
            _field(data, "file", where + "external_data.", "a file name in the export folder")
            _field(data, "sha256", where + "external_data.", "a SHA-256 in hex")
    clip = _field(manifest, "clip", "", "an object")
    for key in CLIP_FIELDS:
        _field(clip, key, "clip.", "a positive integer")
    model = _field(manifest, "model", "", "an object")
    _field(model, "classes", "model.", "a list of strings")
    _field(model, "multi_label", "model.", "true or false")
    try:
        cfg = ModelConfig.from_dict(_field(model, "config", "model.", "an object"))
    except StrgError as err:
        raise _Malformed(f"model.config: {err}") from None
    expected = {
        "frames": cfg.frames,
        "size": cfg.size,
        "feature_frames": cfg.feature_frames,
        "temporal_stride": cfg.backbone.temporal_stride,
        "num_boxes": cfg.proposals.num_boxes,
    }
    for key, value in expected.items():
        if clip[key] != value:
            raise _Malformed(f"clip.{key} is {clip[key]}, but the model config makes it {value}")
    if model["classes"] != list(cfg.classes) or model["multi_label"] != cfg.multi_label:
        raise _Malformed("model.classes or model.multi_label differ from the model config's")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an export folder, checked: schema and version; the three networks, each with a
    file in the folder (and its external data), a SHA-256 and its inputs and outputs; the clip; a model
    config (``model.config``) that reads as a :class:`ModelConfig` and agrees with the clip.
    Raises StrgError with one line naming what is wrong."""
    path = Path(folder) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StrgError(f"no {MANIFEST_FILE} in {folder}: not a strg export folder") from None
    except UnicodeDecodeError as err:
        raise StrgError(f"cannot read {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise StrgError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise StrgError(f"cannot read {path}: {err}") from None
    except (ValueError, RecursionError) as err:  # integers of over 4300 digits, nesting too deep
        raise StrgError(f"cannot read {path}: {type(err).__name__}: {str(err)[:80]}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise StrgError(f"{path} is not a strg export manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StrgError(
            f"{path} has schema version {_shown(version)}; this strg-deploy reads version {SCHEMA_VERSION}"
        )
    try:
        _check_fields(manifest)
    except _Malformed as err:
        raise StrgError(f"malformed {path}: {err}") from None
    for name in NETWORKS:
        entry = manifest["networks"][name]
        for item in (entry, entry.get("external_data")):
            if item is not None and not (Path(folder) / item["file"]).is_file():
                raise StrgError(f"{folder}: {item['file']} ({name}) is missing")
    return manifest


def verify_files(folder: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Names of the files whose SHA-256 differs from the manifest's (empty when all match); ``manifest``
    as :func:`read_manifest` returns it."""
    changed = []
    for entry in manifest["networks"].values():
        for item in (entry, entry.get("external_data")):
            if not item:
                continue
            try:
                digest = file_sha256(Path(folder) / item["file"])
            except OSError as err:
                raise StrgError(f"cannot read {Path(folder) / item['file']}: {err.strerror or err}") from None
            if digest != item["sha256"]:
                changed.append(item["file"])
    return changed
