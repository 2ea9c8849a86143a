"""``backend="auto"``: each network on the runtime that runs it fastest here, measured once and remembered.

Each network of an export is timed on every ONNX runtime installed (one warm-up run, then the best of
:data:`REPEATS` runs at batch 1, on inputs made by running the chain once on a synthetic clip), and the
fastest runtime is chosen per network. The choice is written beside the export (:data:`CHOICE_FILE`,
atomically) with what it depends on: the files' SHA-256, the runtimes' versions, the machine (processor,
core count, architecture) and the thread setting. A later load reuses it while all of these are the
same and measures again otherwise. A folder that cannot be written to is measured on every load.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.config import ModelConfig
from strg_deploy.contract.networks import NETWORKS, rpn_frames
from strg_deploy.data.clips import synthetic_clip
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text

CHOICE_FILE = "backend-choice.json"
REPEATS = 3


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """``runtimes`` {network: runtime}, ``milliseconds`` {network: {runtime: best time at batch 1}},
    ``reused``: read from :data:`CHOICE_FILE` rather than measured now; ``networks``: the chosen
    networks already loaded by the measurement (empty when nothing was measured), for the pipeline."""

    runtimes: dict[str, str]
    milliseconds: dict[str, dict[str, float]]
    reused: bool
    networks: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


def processor_name() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def choice_key(manifest: dict[str, Any], runtimes: tuple[str, ...], threads: int) -> dict[str, Any]:
    """What a remembered choice depends on: files, runtime versions, machine and threads."""
    versions = {}
    for runtime in runtimes:
        try:
            versions[runtime] = importlib.metadata.version(runtime)
        except importlib.metadata.PackageNotFoundError:
            versions[runtime] = "unknown"
    return {
        "files": {n: manifest["networks"][n]["sha256"] for n in NETWORKS},
        "runtimes": versions,
        "machine": {
            "processor": processor_name(),
            "cores": os.cpu_count(),
            "architecture": platform.machine(),
        },
        "threads": threads,
    }


def _remembered(path: Path, key: dict[str, Any]) -> RuntimeChoice | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["key"] != key:
            return None
        runtimes = {n: saved["runtimes"][n] for n in NETWORKS}
        if not set(runtimes.values()) <= set(key["runtimes"]):
            return None
        return RuntimeChoice(runtimes, {n: dict(saved["milliseconds"][n]) for n in NETWORKS}, reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inputs(manifest: dict[str, Any], rpn, backbone) -> dict[str, dict]:
    """Batch-1 inputs of each network, from ``rpn`` and ``backbone`` (loaded networks) on a synthetic clip."""
    cfg = ModelConfig.from_dict(manifest["model"]["config"])
    clip = synthetic_clip(cfg.frames, cfg.size, seed=0)[None]
    frames = rpn_frames(clip, cfg.backbone.temporal_stride)
    proposals = rpn.run({"frames": frames})
    features = backbone.run({"clip": clip})["features"]
    shape = (1, cfg.feature_frames, cfg.proposals.num_boxes)
    return {
        "rpn": {"frames": frames},
        "backbone": {"clip": clip},
        "head": {
            "features": backbone.to_host(features),
            "boxes": rpn.to_host(proposals["boxes"]).reshape(*shape, 4),
            "mask": rpn.to_host(proposals["mask"]).reshape(shape),
        },
    }


def _time(network, inputs: dict[str, np.ndarray]) -> float:
    network.run(inputs)  # warm-up: first runs allocate and tune
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        network.run(inputs)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def choose_runtimes(folder: str | Path, manifest: dict[str, Any], threads: int = 0) -> RuntimeChoice:
    """The fastest installed runtime per network of the export in ``folder`` (module docstring)."""
    from strg_deploy.engines.pipeline import available_runtimes, load_network

    folder = Path(folder)
    runtimes = available_runtimes()
    if not runtimes:
        raise StrgError(
            "no ONNX runtime is installed: pip install 'strg-deploy[cpu]' (onnxruntime, OpenVINO)"
        )
    if len(runtimes) == 1:
        return RuntimeChoice(dict.fromkeys(NETWORKS, runtimes[0]), {n: {} for n in NETWORKS}, reused=False)
    key = choice_key(manifest, runtimes, threads)
    remembered = _remembered(folder / CHOICE_FILE, key)
    if remembered is not None:
        return remembered
    loaded = {
        (network, runtime): load_network(runtime, folder / manifest["networks"][network]["file"], threads)
        for network in NETWORKS
        for runtime in runtimes
    }
    inputs = _inputs(manifest, loaded["rpn", runtimes[0]], loaded["backbone", runtimes[0]])
    milliseconds = {n: {r: round(_time(loaded[n, r], inputs[n]), 3) for r in runtimes} for n in NETWORKS}
    chosen = {n: min(milliseconds[n], key=milliseconds[n].__getitem__) for n in NETWORKS}
    record = {"key": key, "runtimes": chosen, "milliseconds": milliseconds}
    try:
        atomic_write_text(folder / CHOICE_FILE, json.dumps(record, indent=2) + "\n")
    except (StrgError, OSError):
        pass  # a read-only export: measured again on the next load
    return RuntimeChoice(
        chosen, milliseconds, reused=False, networks={n: loaded[n, chosen[n]] for n in NETWORKS}
    )
