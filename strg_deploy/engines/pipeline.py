"""The STRG chain over any backend: clips in, proposals and class scores out.

``Pipeline.load(EXPORT_DIR, backend="onnxruntime")`` (or ``"openvino"``, ``"auto"``, a per-network
mapping such as ``{"rpn": "onnxruntime", "backbone": "openvino", "head": "onnxruntime"}``, or
``Pipeline.load(RUN/best, backend="torch")`` for a checkpoint) and ``pipeline.run(clips)``:

    clips uint8 [B, 3, T, S, S]
      -> rpn on every temporal_stride-th frame (contract.networks.rpn_frames): boxes, scores, mask
      -> backbone on the clips: features (left where the backend keeps them when the head runs there too)
      -> head on the features, boxes and mask: logits
      -> Predictions(boxes [B, T', N, 4], scores [B, T', N], mask [B, T', N], logits [B, C],
                     probabilities [B, C] by the manifest's output activation)

Batches larger than a network takes (:class:`~strg_deploy.engines.base.BatchLimits`) run in chunks.
``strg export --check``, ``strg verify``, the benchmarks and the Python API all run this one chain.
Torch-free except for the torch backend, which imports torch when it is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.config import ModelConfig
from strg_deploy.contract.manifest import MANIFEST_FILE, read_manifest, verify_files
from strg_deploy.contract.networks import NETWORKS, rpn_frames
from strg_deploy.engines.base import Network
from strg_deploy.errors import StrgError

RUNTIMES = ("onnxruntime", "openvino")  # the runtimes of an ONNX export, in order of preference
GPU_RUNTIMES = ("onnxruntime-cuda", "tensorrt")  # NVIDIA GPU runtimes, chosen by name (never by auto)
BACKENDS = ("auto", *RUNTIMES, *GPU_RUNTIMES, "torch")
ACTIVATIONS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """The chain's outputs for B clips: ``boxes`` float32 [B, T', N, 4] (x1, y1, x2, y2 in clip pixels),
    ``scores`` float32 [B, T', N], ``mask`` bool [B, T', N] (False: padding), ``logits`` float32 [B, C],
    ``probabilities`` float32 [B, C] (softmax or sigmoid of the logits), and ``seconds``: wall time per
    network for this call."""

    boxes: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, np.ndarray]:
        """{"boxes", "scores", "mask", "logits"} (the outputs a reference records)."""
        return {"boxes": self.boxes, "scores": self.scores, "mask": self.mask, "logits": self.logits}


def available_runtimes() -> tuple[str, ...]:
    """The ONNX runtimes of :data:`RUNTIMES` installed here (found without importing them)."""
    return tuple(r for r in RUNTIMES if importlib.util.find_spec(r) is not None)


def load_network(
    runtime: str, path: str | Path, threads: int = 0, *, network: str | None = None, gpu: int = 0
) -> Network:
    """One exported file on ``runtime`` (onnxruntime, openvino or onnxruntime-cuda: an ONNX file;
    tensorrt: an engine file of the contract's ``network``, default its file name); ``threads`` 0 lets
    the CPU runtimes choose; ``gpu``: the CUDA device of the GPU runtimes."""
    if runtime == "onnxruntime":
        from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork

        return OnnxRuntimeNetwork(path, threads=threads)
    if runtime == "openvino":
        from strg_deploy.engines.openvino import OpenVinoNetwork

        return OpenVinoNetwork(path, threads=threads)
    if runtime == "onnxruntime-cuda":
        from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork

        return OnnxRuntimeNetwork(path, threads=threads, device=f"cuda:{gpu}")
    if runtime == "tensorrt":
        from strg_deploy.engines.tensorrt import load_tensorrt_network

        return load_tensorrt_network(path, network or Path(path).stem, device=gpu)
    raise StrgError(f"runtime must be one of {', '.join((*RUNTIMES, *GPU_RUNTIMES))}, got {runtime!r}")


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Class probabilities of logits [B, C]: softmax over C, or an independent sigmoid per class."""
    x = logits.astype(np.float64)
    if activation == "sigmoid":
        return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free logistic
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return (x / x.sum(axis=-1, keepdims=True)).astype(np.float32)


def _backend_per_network(backend: str | Mapping[str, str]) -> dict[str, str]:
    """``backend`` (one name, or {network: name}) as {network: name} for all three networks."""
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise StrgError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        return dict.fromkeys(NETWORKS, backend)
    unknown = sorted(set(backend) - set(NETWORKS))
    missing = [n for n in NETWORKS if n not in backend]
    if unknown or missing:
        raise StrgError(f"a backend per network needs exactly {', '.join(NETWORKS)}")
    for name in backend.values():
        if name not in (*RUNTIMES, *GPU_RUNTIMES):
            raise StrgError(
                f"a network's backend must be one of {', '.join((*RUNTIMES, *GPU_RUNTIMES))}, got {name!r}"
            )
    return dict(backend)


class Pipeline:
    """The three networks of one model on their backends (module docstring). ``cfg`` is the model's
    config, ``activation`` softmax or sigmoid, ``source`` the export folder or checkpoint it came from;
    ``choice`` the measurements behind ``backend="auto"`` (None otherwise)."""

    def __init__(
        self,
        networks: Mapping[str, Network],
        cfg: ModelConfig,
        activation: str,
        source: Path,
        choice: Any = None,
    ):
        if activation not in ACTIVATIONS:
            raise StrgError(f"output activation must be softmax or sigmoid, got {activation!r}")
        self.networks = dict(networks)
        self.cfg = cfg
        self.activation = activation
        self.source = source
        self.choice = choice

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str | Mapping[str, str] = "onnxruntime",
        *,
        threads: int = 0,
        device: str = "cpu",
        check_files: bool = True,
    ) -> Pipeline:
        """The model in ``path`` on ``backend``: an export folder (manifest.json and the three ONNX
        files, their SHA-256 checked unless ``check_files`` is False) for onnxruntime, openvino, auto
        or a mapping per network; a checkpoint folder (model.safetensors, config.json) for torch.
        ``threads``: intra-op threads of the CPU runtimes (0: their default); ``device``: torch's, and
        for onnxruntime-cuda and tensorrt (engines: EXPORT/engines-fp16 or -fp32) the GPU (cuda:N)."""
        path = Path(path)
        if backend == "torch":
            if (path / MANIFEST_FILE).is_file():
                raise StrgError(
                    f"{path} is an export; the torch backend runs a checkpoint (e.g. RUN/best): "
                    "choose --backend onnxruntime, openvino or auto"
                )
            from strg_deploy.engines.torch_model import load_checkpoint_networks

            cfg, networks = load_checkpoint_networks(path, device)
            return cls(networks, cfg, "sigmoid" if cfg.multi_label else "softmax", path)
        per_network = _backend_per_network(backend)
        if not path.is_dir():
            raise StrgError(f"export folder not found: {path}")
        manifest = read_manifest(path)
        if check_files:
            changed = verify_files(path, manifest)
            if changed:
                raise StrgError(
                    f"{path}: {', '.join(changed)} changed since the export "
                    "(its SHA-256 differs from manifest.json)"
                )
        cfg = ModelConfig.from_dict(manifest["model"]["config"])
        activation = manifest["model"].get("output_activation", "sigmoid" if cfg.multi_label else "softmax")
        choice = None
        if "auto" in per_network.values():
            from strg_deploy.engines.auto import choose_runtimes

            choice = choose_runtimes(path, manifest, threads)
            per_network = dict(choice.runtimes)
        files = {n: path / manifest["networks"][n]["file"] for n in NETWORKS}
        if "tensorrt" in per_network.values():
            from strg_deploy.engines.tensorrt import engine_path

            files.update({n: engine_path(path, n) for n in NETWORKS if per_network[n] == "tensorrt"})
        gpu = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        measured = choice.networks if choice is not None else {}  # auto's timing loaded them already
        networks = {
            n: measured.get(n) or load_network(per_network[n], files[n], threads, network=n, gpu=gpu)
            for n in NETWORKS
        }
        return cls(networks, cfg, activation, path, choice)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.cfg.classes)

    def describe(self) -> list[dict[str, Any]]:
        """One row per network: network, backend, device, precision, version, batch limits, and for
        ``auto`` the milliseconds each runtime took (``measured``)."""
        rows = []
        for name, network in self.networks.items():
            info, limits = network.info, network.limits
            row = {
                "network": name,
                "backend": info.name,
                "device": info.device,
                "precision": info.precision,
                "version": info.version,
                "max_batch": limits.maximum,
            }
            if self.choice is not None:
                row["measured_ms"] = dict(self.choice.milliseconds[name])
            rows.append(row)
        return rows

    def max_clips(self) -> int | None:
        """The most clips one call of the networks takes (None: no limit); ``run`` chunks larger batches."""
        return self._clips_by_limit("maximum")

    def preferred_clips(self) -> int | None:
        """The batch of clips the networks were tuned for (their ``BatchLimits.optimal``, the smallest
        where several say; None when none says): the size a batcher should aim for."""
        return self._clips_by_limit("optimal")

    def _clips_by_limit(self, field: str) -> int | None:
        """The smallest ``BatchLimits.<field>`` over the networks, in clips (the RPN counts frames)."""
        per_frame = self.cfg.feature_frames
        sizes = []
        for name, network in self.networks.items():
            size = getattr(network.limits, field)
            if size is not None:
                sizes.append(size // per_frame if name == "rpn" else size)
        return max(1, min(sizes)) if sizes else None

    def check_clips(self, clips: Any) -> np.ndarray:
        """``clips`` as a uint8 array [B, 3, T, S, S] of this model; StrgError naming the expected shape."""
        cfg = self.cfg
        expected = (3, cfg.frames, cfg.size, cfg.size)
        clips = np.asarray(clips)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != expected or clips.shape[0] < 1:
            raise StrgError(
                f"clips must be uint8 [B, {', '.join(map(str, expected))}] for this model, "
                f"got {clips.dtype} {list(clips.shape)}"
            )
        return clips

    def run_network(self, network: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One network on host inputs -> its outputs as numpy arrays."""
        net = self.networks[network]
        return {k: net.to_host(v) for k, v in net.run(inputs).items()}

    def run(self, clips: Any) -> Predictions:
        """The chain on ``clips`` uint8 [B, 3, T, S, S] (module docstring)."""
        clips = self.check_clips(clips)
        step = self.max_clips() or clips.shape[0]
        parts = [self._run_chunk(clips[i : i + step]) for i in range(0, clips.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        seconds = {n: sum(p.seconds[n] for p in parts) for n in NETWORKS}
        fields = {
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(Predictions)
            if f.name != "seconds"
        }
        return Predictions(**fields, seconds=seconds)

    def _run_chunk(self, clips: np.ndarray) -> Predictions:
        cfg = self.cfg
        rpn, backbone, head = (self.networks[n] for n in NETWORKS)
        shape = (clips.shape[0], cfg.feature_frames, cfg.proposals.num_boxes)
        seconds = {}
        start = time.perf_counter()
        proposals = rpn.run({"frames": rpn_frames(clips, cfg.backbone.temporal_stride)})
        boxes = rpn.to_host(proposals["boxes"]).reshape(*shape, 4)
        scores = rpn.to_host(proposals["scores"]).reshape(shape)
        mask = rpn.to_host(proposals["mask"]).reshape(shape)
        seconds["rpn"] = time.perf_counter() - start
        start = time.perf_counter()
        features = backbone.run({"clip": clips})["features"]
        if not backbone.info.shares_memory_with(head.info):
            features = backbone.to_host(features)
        elif hasattr(backbone, "wait"):  # an asynchronous GPU backend: let its work finish on its clock
            backbone.wait()
        seconds["backbone"] = time.perf_counter() - start
        start = time.perf_counter()
        logits = head.to_host(head.run({"features": features, "boxes": boxes, "mask": mask})["logits"])
        seconds["head"] = time.perf_counter() - start
        return Predictions(
            boxes=boxes,
            scores=scores,
            mask=mask,
            logits=logits,
            probabilities=activate(logits, self.activation),
            seconds=seconds,
        )
