"""The reference sample of an export: clips and what the trained model computed on them.

``strg export`` writes ``reference.npz`` beside the ONNX files; ``strg verify`` runs the export on a
runtime of the deployment machine and compares with it, without torch. The manifest records the file
(``reference``: ``file``, ``sha256``, ``clips``, ``tolerance`` with ``atol``, ``rtol`` and ``tie``).

Arrays in the file, for K clips of the model's T frames of S x S pixels:

- ``clips`` uint8 [K, 3, T, S, S] (the RPN's input is :func:`~strg_deploy.contract.networks.rpn_frames`
  of them, [K * T', 3, S, S]);
- ``rpn.boxes`` float32 [K * T', N, 4], ``rpn.scores`` float32 [K * T', N], ``rpn.mask`` bool [K * T', N];
- ``backbone.features`` float32 [K, D, T', H', W'];
- ``head.logits`` float32 [K, C]: the head on the features and proposals above (the chain's logits).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.contract.manifest import file_sha256
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path

REFERENCE_FILE = "reference.npz"
OUTPUTS = {
    "rpn": ("boxes", "scores", "mask"),
    "backbone": ("features",),
    "head": ("logits",),
}


@dataclasses.dataclass(frozen=True)
class Reference:
    """``clips`` uint8 [K, 3, T, S, S], their ``names``, and ``outputs[network][output]`` (module
    docstring), compared within ``atol + rtol * max |reference|``, scores within ``tie`` tied."""

    clips: np.ndarray
    names: tuple[str, ...]
    outputs: dict[str, dict[str, np.ndarray]]
    atol: float
    rtol: float
    tie: float


def write_reference(path: str | Path, clips: np.ndarray, outputs: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write ``clips`` and ``outputs`` ({network: {output: array}}, every output of :data:`OUTPUTS`) to
    ``path`` as a compressed npz, atomically."""
    arrays = {"clips": np.ascontiguousarray(clips, dtype=np.uint8)}
    for network, names in OUTPUTS.items():
        for name in names:
            arrays[f"{network}.{name}"] = np.ascontiguousarray(outputs[network][name])
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)
    return path


def reference_entry(
    path: str | Path, names: list[str], atol: float, rtol: float, tie: float
) -> dict[str, Any]:
    """The manifest's ``reference`` entry for the file at ``path``."""
    return {
        "file": Path(path).name,
        "sha256": file_sha256(path),
        "clips": list(names),
        "tolerance": {"atol": atol, "rtol": rtol, "tie": tie},
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def read_reference(folder: str | Path, manifest: dict[str, Any]) -> Reference:
    """The reference sample of the export in ``folder`` (``manifest`` as ``read_manifest`` gives it),
    its arrays checked against the manifest's clip; StrgError naming what is missing or wrong."""
    entry = manifest.get("reference")
    if entry is None:
        raise StrgError(
            f"{folder} has no reference sample (exported by an older strg-deploy): export it again"
        )
    if not isinstance(entry, dict):
        entry = {}
    tolerance, names = entry.get("tolerance"), entry.get("clips")
    if (
        not isinstance(entry.get("file"), str)
        or not isinstance(tolerance, dict)
        or not all(_number(tolerance.get(k)) for k in ("atol", "rtol", "tie"))
        or not isinstance(names, list)
        or not names
    ):
        raise StrgError(
            f"malformed manifest in {folder}: reference needs file, clips and tolerance (atol, rtol, tie)"
        )
    path = Path(folder) / Path(entry["file"]).name
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise StrgError(f"{folder}: {path.name} (the reference sample) is missing") from None
    except Exception as err:  # zip, zlib, npy header (ast, struct) and memory errors all mean "unreadable"
        text = str(err).strip().splitlines()
        raise StrgError(
            f"cannot read the reference sample {path}: {text[0][:100] if text else type(err).__name__}"
        ) from None
    clip = manifest["clip"]
    k = len(names)
    frames = k * clip["feature_frames"]
    n = clip["num_boxes"]
    expected = {
        "clips": ((k, 3, clip["frames"], clip["size"], clip["size"]), np.uint8),
        "rpn.boxes": ((frames, n, 4), np.float32),
        "rpn.scores": ((frames, n), np.float32),
        "rpn.mask": ((frames, n), np.bool_),
        "backbone.features": (None, np.float32),
        "head.logits": ((k, len(manifest["model"]["classes"])), np.float32),
    }
    for key, (shape, dtype) in expected.items():
        if key not in arrays:
            raise StrgError(f"reference sample {path} has no {key}")
        array = arrays[key]
        if array.dtype != dtype or (shape is not None and array.shape != shape):
            raise StrgError(
                f"reference sample {path}: {key} is {array.dtype} {list(array.shape)}, expected "
                f"{np.dtype(dtype).name} {list(shape) if shape else '[K, D, T, H, W]'}"
            )
    features = arrays["backbone.features"]
    if features.ndim != 5 or features.shape[0] != k or features.shape[2] != clip["feature_frames"]:
        raise StrgError(f"reference sample {path}: backbone.features has shape {list(features.shape)}")
    outputs = {net: {name: arrays[f"{net}.{name}"] for name in names_} for net, names_ in OUTPUTS.items()}
    return Reference(
        clips=arrays["clips"],
        names=tuple(str(n) for n in names),
        outputs=outputs,
        atol=float(tolerance["atol"]),
        rtol=float(tolerance["rtol"]),
        tie=float(tolerance["tie"]),
    )
