"""State dicts on disk and the one error for weights that do not fit a model.

Every loader of the package (checkpoints, inflated ImageNet weights, Kinetics I3D checkpoints, detector
weights) reads files with :func:`read_state_dict` and reports keys that do not fit with :func:`fit_error`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from strg_deploy.errors import StrgError
from strg_deploy.extras import require

_WRAPPERS = ("state_dict", "model_state", "model")
_SHOWN = 5  # keys shown per kind in an error message


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors`` or a torch file (``weights_only=True``), unwrapped.

    Raises StrgError naming the path when the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise StrgError(f"weights file {path} {problem}")
    if path.suffix == ".safetensors":
        load_file = require("safetensors.torch", "reading .safetensors weights").load_file
        try:
            data = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise StrgError(f"cannot read weights file {path}: {_first_line(err)}") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling, zip and I/O errors all mean "unreadable"
            hint = ""
            if "weights_only" in str(err):
                hint = (
                    " (it holds Python objects beyond tensors; if you trust it, save only its state dict: "
                    "torch.save(torch.load(path, weights_only=False)['state_dict'], new_path))"
                )
            raise StrgError(f"cannot read weights file {path}: {_first_line(err)}{hint}") from None
    state = _unwrap(data)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise StrgError(f"weights file {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _unwrap(data: object) -> Mapping:
    if not isinstance(data, Mapping):
        return {}
    for key in _WRAPPERS:
        inner = data.get(key)
        if isinstance(inner, Mapping):
            return inner
    return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fit_error(what: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> StrgError:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    return StrgError(f"{what} does not fit the model: " + "; ".join(parts))


def compare_keys(
    own: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    name: Callable[[str], str] = str,
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape-mismatched) keys of ``given`` against ``own``, each named by ``name``
    (e.g. as the file spells them)."""
    missing = [name(k) for k in own if k not in given]
    unexpected = [name(k) for k in given if k not in own]
    mismatched = [
        f"{name(k)} {list(given[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in given and given[k].shape != own[k].shape
    ]
    return missing, unexpected, mismatched


def check_fit(
    what: str,
    own: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    name: Callable[[str], str] = str,
) -> None:
    """Raise :func:`fit_error` unless ``given`` has exactly ``own``'s keys and shapes."""
    missing, unexpected, mismatched = compare_keys(own, given, name)
    if missing or unexpected or mismatched:
        raise fit_error(what, missing, unexpected, mismatched)
