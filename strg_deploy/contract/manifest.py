"""The read side of an export's manifest.json: schema, field checks and file verification.

Torch-free (a deployment reads it); :mod:`strg_deploy.export.manifest` writes it and documents the
fields. :func:`read_manifest` checks what every reader uses and raises one StrgError line naming the
field that is wrong; :func:`verify_files` compares the files with their recorded SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from strg_deploy.config import ModelConfig
from strg_deploy.contract.networks import NETWORKS
from strg_deploy.errors import StrgError

SCHEMA = "strg-deploy-export"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if "reference" in manifest:
        reference = _field(manifest, "reference", "", "an object")
        _field(reference, "file", "reference.", "a file name in the export folder")
        _field(reference, "sha256", "reference.", "a SHA-256 in hex")
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
    """Names of the files (networks, external data, the reference sample) whose SHA-256 differs from the
    manifest's (empty when all match); ``manifest`` as :func:`read_manifest` returns it."""
    changed = []
    items = [item for entry in manifest["networks"].values() for item in (entry, entry.get("external_data"))]
    for item in [*items, manifest.get("reference")]:
        if not item:
            continue
        try:
            digest = file_sha256(Path(folder) / item["file"])
        except OSError as err:
            raise StrgError(f"cannot read {Path(folder) / item['file']}: {err.strerror or err}") from None
        if digest != item["sha256"]:
            changed.append(item["file"])
    return changed
