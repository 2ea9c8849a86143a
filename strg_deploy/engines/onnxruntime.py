"""onnxruntime backend: an InferenceSession per network, full graph optimisations, tunable threads.

onnxruntime runs the model-local function bodies of the custom nodes, so it reads the export as written.
Its intra-op threads do not spin-wait after a run by default (``spin=False``): the three networks run one
after another in three sessions, each with its own thread pool, and a pool left spinning takes the
cores from the next session's. Measured on the small preset's chain at batch 1 on 2 cores: 216-224 ms
with spinning, 104-107 ms without (BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strg_deploy.engines.base import BackendInfo, HostNetwork
from strg_deploy.errors import StrgError
from strg_deploy.extras import require

NAME = "onnxruntime"


GPU_INSTALL = (
    "pip install 'strg-deploy[gpu]' on a machine with an NVIDIA GPU (onnxruntime-gpu; "
    "uninstall onnxruntime first: both install the module onnxruntime)"
)


def cuda_provider(device: str) -> tuple[str, dict[str, str]]:
    """onnxruntime's CUDA provider for ``device`` (cuda or cuda:N) with its options; StrgError, one
    line, when this onnxruntime has no CUDA provider (the CPU package) or ``device`` is not a GPU."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise StrgError(f"onnxruntime's device must be cpu, cuda or cuda:N, got {device!r}")
    ort = require("onnxruntime", "running ONNX files on onnxruntime")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise StrgError(
            f"onnxruntime {ort.__version__} here has no CUDA provider (it has {', '.join(available)}): "
            + GPU_INSTALL
        )
    return "CUDAExecutionProvider", {"device_id": index or "0"}


class OnnxRuntimeNetwork(HostNetwork):
    """An ONNX file on onnxruntime's CPU provider, or with ``device`` "cuda"/"cuda:N" on its CUDA
    provider (onnxruntime-gpu; the custom nodes' function bodies run there as standard ops), or on
    ``providers``. ``threads``: intra-op threads (0: onnxruntime's default, one per core); ``spin``: let
    them spin-wait between runs (see the module docstring). ``run({name: array}) -> {name: array}``
    (host arrays in and out, also on the GPU)."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool = False,
        device: str = "cpu",
    ):
        ort = require("onnxruntime", "running ONNX files on onnxruntime")
        chosen: list = list(providers)
        if device != "cpu":
            device = "cuda:0" if device == "cuda" else device
            chosen = [cuda_provider(device), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own types (Fail, InvalidGraph, NoSuchFile...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StrgError(f"onnxruntime cannot load {path}: {first}") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        provider = self.session.get_providers()[0]
        if device != "cpu" and provider != "CUDAExecutionProvider":  # onnxruntime fell back to the CPU
            raise StrgError(
                f"onnxruntime could not start its CUDA provider on {device} for {path} "
                "(no usable NVIDIA GPU, or CUDA/cuDNN libraries missing)"
            )
        if device == "cpu":
            device = (
                "cpu"
                if provider == "CPUExecutionProvider"
                else provider.removesuffix("ExecutionProvider").lower()
            )
        self.info = BackendInfo(NAME, device, "fp32", ort.__version__)

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))
