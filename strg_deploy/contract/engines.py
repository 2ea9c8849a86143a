"""The sidecar of a TensorRT engine: what it was built from and for, and the check before it is loaded.

A plan file (``<network>.engine``) runs only with the TensorRT version that built it, on the GPU model it
was built for, and only means something with the export it was built from. Each engine therefore has a
JSON sidecar beside it (``<network>.engine.json``; a prefix inside the plan file would break trtexec
and Triton Inference Server). Fields (schema :data:`SCHEMA`, version :data:`SCHEMA_VERSION`):

- ``network`` (rpn, backbone, head), ``engine_file``, ``engine_sha256``;
- ``tensorrt_version`` (``tensorrt.__version__``), ``gpu`` (``name``, ``compute_capability`` "major.minor");
- ``precision`` (fp32 or fp16);
- ``profile``: per input ``min``, ``opt``, ``max`` shapes of the optimisation profile;
- ``model_config_sha256`` (:func:`config_sha256` of the manifest's model config) and ``export_files``
  (file name -> SHA-256 of every file the manifest lists: networks, external data, reference sample).

:func:`check_engine` refuses an engine for another GPU, another TensorRT, or an export that changed
since it was built, with one line that ends in the command that rebuilds it.

Torch-free and TensorRT-free: the builder (``strg_deploy.export.engine``) writes sidecars and the
TensorRT backend (``strg_deploy.engines``) reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from strg_deploy.contract.manifest import file_sha256
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text

MIN_TENSORRT = (10, 9)
"""``tensorrt.plugin.aot_impl`` (ahead-of-time plugin kernels) arrived in TensorRT 10.9."""
MIN_TENSORRT_TEXT = ".".join(map(str, MIN_TENSORRT))
TENSORRT_INSTALL = "pip install 'strg-deploy[gpu]' --extra-index-url https://pypi.nvidia.com"
"""NVIDIA's instruction for the ``tensorrt`` wheels (https://pypi.org/project/tensorrt: "pip install
tensorrt --extra-index-url https://pypi.nvidia.com"), applied to this package's ``gpu`` extra."""

DEFAULT_MAX_BATCH = 8
"""The largest batch of clips an engine takes unless told otherwise: `strg infer --batch`'s default."""

SCHEMA = "strg-deploy-engine"
SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16")
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".engine.json"


@dataclasses.dataclass(frozen=True)
class Gpu:
    """A CUDA device as the sidecar records it: ``name`` ("NVIDIA H100 80GB HBM3") and
    ``compute_capability`` ("9.0")."""

    name: str
    compute_capability: str


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """The fields of an engine's sidecar (see the module docstring). ``profile``: input name ->
    {"min": shape, "opt": shape, "max": shape}, shapes as lists of ints."""

    network: str
    engine_file: str
    engine_sha256: str
    tensorrt_version: str
    gpu: Gpu
    precision: str
    profile: dict[str, dict[str, list[int]]]
    model_config_sha256: str
    export_files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}


def engine_path(folder: str | Path, network: str) -> Path:
    """``folder/<network>.engine``."""
    return Path(folder) / f"{network}{ENGINE_SUFFIX}"


def sidecar_path(engine: str | Path) -> Path:
    """The sidecar beside an engine: ``<network>.engine`` -> ``<network>.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def default_engine_dir(export_dir: str | Path, precision: str) -> Path:
    """Where engines of an export go unless told otherwise: ``EXPORT/engines-<precision>``."""
    return Path(export_dir) / f"engines-{precision}"


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a model config dict (``ModelConfig.to_dict()``) written as canonical JSON (sorted keys,
    no spaces): equal configs hash equally whatever their key order."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def export_files(manifest: dict[str, Any]) -> dict[str, str]:
    """File name -> SHA-256 of every file a manifest (as ``read_manifest`` returns it) lists."""
    files = {}
    for entry in manifest["networks"].values():
        for item in (entry, entry.get("external_data")):
            if item:
                files[item["file"]] = item["sha256"]
    if manifest.get("reference"):
        files[manifest["reference"]["file"]] = manifest["reference"]["sha256"]
    return files


def network_files(manifest: dict[str, Any], network: str) -> list[str]:
    """The files of one network in a manifest: its ONNX file and, where written, its external data."""
    entry = manifest["networks"][network]
    return [item["file"] for item in (entry, entry.get("external_data")) if item]


def write_sidecar(engine: str | Path, sidecar: Sidecar) -> Path:
    """Write ``sidecar`` beside ``engine`` (atomically); returns the sidecar's path."""
    path = sidecar_path(engine)
    atomic_write_text(path, json.dumps(sidecar.to_dict(), indent=2) + "\n")
    return path


def _rebuild_hint(export_dir: str | Path | None) -> str:
    return f"run `strg engine build {export_dir if export_dir is not None else 'EXPORT'} --rebuild`"


def _shape_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in value)


def _parse(data: Any) -> Sidecar:
    """A Sidecar from the JSON object; ValueError naming the first field that is missing or wrong."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError("not a strg engine sidecar")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"schema version {data.get('schema_version')!r}, this strg-deploy reads {SCHEMA_VERSION}"
        )
    for key in (
        "network",
        "engine_file",
        "engine_sha256",
        "tensorrt_version",
        "precision",
        "model_config_sha256",
    ):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{key} is missing or not a string")
    if data["precision"] not in PRECISIONS:
        raise ValueError(f"precision {data['precision']!r} is not one of {', '.join(PRECISIONS)}")
    gpu = data.get("gpu")
    if not (
        isinstance(gpu, dict)
        and isinstance(gpu.get("name"), str)
        and isinstance(gpu.get("compute_capability"), str)
    ):
        raise ValueError("gpu must be {name, compute_capability}")
    profile = data.get("profile")
    if not isinstance(profile, dict) or not all(
        isinstance(p, dict) and set(p) == {"min", "opt", "max"} and all(_shape_list(s) for s in p.values())
        for p in profile.values()
    ):
        raise ValueError("profile must map each input to {min, opt, max} shapes")
    files = data.get("export_files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("export_files must map file names to SHA-256")
    return Sidecar(
        network=data["network"],
        engine_file=data["engine_file"],
        engine_sha256=data["engine_sha256"],
        tensorrt_version=data["tensorrt_version"],
        gpu=Gpu(gpu["name"], gpu["compute_capability"]),
        precision=data["precision"],
        profile=profile,
        model_config_sha256=data["model_config_sha256"],
        export_files=files,
    )


def read_sidecar(engine: str | Path, export_dir: str | Path | None = None) -> Sidecar:
    """The sidecar of ``engine`` (the engine's path; the sidecar lies beside it). A missing, unreadable or
    malformed sidecar is one StrgError line that names it and the command that rebuilds the engine."""
    path = sidecar_path(engine)
    hint = _rebuild_hint(export_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StrgError(f"{Path(engine).name} has no sidecar ({path.name} is missing): {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise StrgError(f"cannot read {path}: {reason}; {hint}") from None
    try:
        return _parse(json.loads(text))
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise StrgError(f"corrupt engine sidecar {path}: {str(err).splitlines()[0][:120]}; {hint}") from None


def check_engine(
    sidecar: Sidecar,
    tensorrt_version: str,
    gpu: Gpu,
    manifest: dict[str, Any],
    *,
    engine: str | Path | None = None,
    export_dir: str | Path | None = None,
) -> None:
    """Refuse an engine that does not fit: built with another TensorRT version, for another GPU (name or
    compute capability), from an export whose model config or network files changed since (``manifest``
    as ``read_manifest`` returns it), or (with ``engine``, its path) a plan file that differs from the one
    the sidecar describes. StrgError with one line naming the mismatch and the rebuild command."""
    name = sidecar.engine_file
    hint = _rebuild_hint(export_dir)
    if sidecar.tensorrt_version != tensorrt_version:
        raise StrgError(
            f"{name} was built with TensorRT {sidecar.tensorrt_version}, "
            f"this is TensorRT {tensorrt_version}: {hint}"
        )
    if (sidecar.gpu.name, sidecar.gpu.compute_capability) != (gpu.name, gpu.compute_capability):
        raise StrgError(
            f"{name} was built for another GPU ({sidecar.gpu.name}, compute capability "
            f"{sidecar.gpu.compute_capability}), this one is {gpu.name} ({gpu.compute_capability}): {hint}"
        )
    if sidecar.network not in manifest["networks"]:
        raise StrgError(f"{name} is for network {sidecar.network!r}, which the export does not have: {hint}")
    if config_sha256(manifest["model"]["config"]) != sidecar.model_config_sha256:
        raise StrgError(f"{name} was built from another model config than the export's: {hint}")
    current = export_files(manifest)
    changed = [
        f for f in network_files(manifest, sidecar.network) if sidecar.export_files.get(f) != current[f]
    ]
    if changed:
        raise StrgError(f"{name} was built from another {', '.join(changed)} than the export's: {hint}")
    if engine is not None:
        try:
            digest = file_sha256(engine)
        except OSError as err:
            raise StrgError(f"cannot read {engine}: {err.strerror or err}") from None
        if digest != sidecar.engine_sha256:
            raise StrgError(f"{name} is not the plan file its sidecar describes (SHA-256 differs): {hint}")
