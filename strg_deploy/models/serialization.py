"""Model weights on disk: a folder with ``model.safetensors`` and ``config.json`` beside it.

The safetensors header also records the config (metadata key ``strg_config``), so the weights file alone
says what it is. Both files are written to temporary names and renamed: a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from strg_deploy.config import ModelConfig
from strg_deploy.errors import StrgError
from strg_deploy.extras import require
from strg_deploy.fileio import atomic_path
from strg_deploy.models.state_dicts import check_fit, read_state_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` (an STRG or I3D with a ``cfg`` attribute) to ``directory``; returns the folder."""
    cfg: ModelConfig = model.cfg
    directory = Path(directory)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {"strg_config": json.dumps(cfg.to_dict(), sort_keys=True), "format": "pt"}
    save_tensors(tensors, directory / WEIGHTS_FILE, metadata)
    cfg.save(directory / CONFIG_FILE)
    return directory


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (temporary file, then rename), byte for byte the same for the
    same tensors and metadata. A failed write (a full disk) is one StrgError naming ``path``, and leaves
    neither a temporary file nor a changed ``path``.

    safetensors writes its metadata in a hash map's order, which changes from process to process; the
    header is therefore written again with the metadata keys sorted (the header is JSON padded with
    spaces to 8 bytes, and tensor offsets count from its end, so the data is copied unchanged).
    """
    safetensors_torch = require("safetensors.torch", "saving weights")
    path = Path(path)
    data = memoryview(safetensors_torch.save(tensors, metadata=metadata))
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(bytes(data[8 : 8 + length]))
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(struct.pack("<Q", len(text)))
        file.write(text)
        file.write(data[8 + length :])
    return path


def load_pretrained(directory: str | Path, cfg: ModelConfig | None = None) -> nn.Module:
    """Rebuild the model saved in ``directory`` (config.json + model.safetensors) in eval mode.

    ``cfg`` overrides the folder's config.json (the weights must still fit it). Missing files, weights
    for another config and unreadable files raise StrgError naming what does not fit.
    """
    from strg_deploy.models.strg import build_model

    directory = Path(directory)
    if not directory.is_dir():
        raise StrgError(f"checkpoint folder not found: {directory}")
    cfg = cfg or ModelConfig.load(directory / CONFIG_FILE)
    model = build_model(cfg)
    load_weights(model, directory / WEIGHTS_FILE)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model`` strictly: every key present, every shape equal."""
    load_state_strict(model, read_state_dict(path), source=str(path))


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with one clear StrgError listing missing, unexpected and
    mismatched keys (the first few of each, with counts)."""
    check_fit(f"weights in {source}", model.state_dict(), state)
    model.load_state_dict(state, strict=True)
