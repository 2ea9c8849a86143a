"""onnxruntime backend: an InferenceSession per network, full graph optimisations, tunable threads.

onnxruntime runs the model-local function bodies of the custom nodes, so it reads the export as written.
On the CUDA provider a network runs through onnxruntime's I/O binding: its outputs stay on the GPU as
``OrtValue`` objects, so the backbone's features reach the head without a round trip through host memory
(:meth:`OnnxRuntimeNetwork.to_host` copies a value back where the host needs it).
Its intra-op threads do not spin-wait after a run by default (``spin=False``): the three networks run one
after another in three sessions, each with its own thread pool, and a pool left spinning takes the
cores from the next session's. Measured on the small preset's chain at batch 1 on 2 cores: 216-224 ms
with spinning, 104-107 ms without (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.engines.base import BackendInfo, HostNetwork
from strg_deploy.engines.onnxruntime_cuda import cuda_provider
from strg_deploy.errors import StrgError
from strg_deploy.extras import require

NAME = "onnxruntime"


class OnnxRuntimeNetwork(HostNetwork):
    """An ONNX file on onnxruntime's CPU provider, or with ``device`` "cuda"/"cuda:N" on its CUDA
    provider (onnxruntime-gpu; the custom nodes' function bodies run there as standard ops), or on
    ``providers``. ``threads``: intra-op threads (0: onnxruntime's default, one per core); ``spin``: let
    them spin-wait between runs (see the module docstring).

    ``bind_outputs``: run through onnxruntime's I/O binding and return each output as an ``OrtValue``
    on the session's device (default: on for CUDA, off for the CPU). ``run({name: value}) -> {name:
    value}`` takes numpy arrays or ``OrtValue`` objects of the same device (an earlier run's outputs, used
    in place) and returns numpy arrays, or ``OrtValue`` objects when ``bind_outputs`` is on."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spin: bool = False,
        device: str = "cpu",
        bind_outputs: bool | None = None,
    ):
        ort = require("onnxruntime", "running ONNX files on onnxruntime")
        self._ort = ort
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
        if bind_outputs is None:
            bind_outputs = provider == "CUDAExecutionProvider"
        kind, _, index = device.partition(":")
        self._output_device = (kind if kind == "cuda" else "cpu", int(index or 0)) if bind_outputs else None

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        bound_inputs = any(isinstance(v, self._ort.OrtValue) for v in inputs.values())
        if self._output_device is None and not bound_inputs:
            return super().run(inputs)
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise StrgError(f"missing input(s) {', '.join(missing)}")
        binding = self.session.io_binding()
        for name in self.input_names:
            value = inputs[name]
            if isinstance(value, self._ort.OrtValue):
                if value.device_name().lower() != self._device_type():
                    raise StrgError(
                        f"input {name} lies on {value.device_name()}, this network runs on {self.info.device}"
                    )
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device_type, device_id = self._output_device or ("cpu", 0)
        for name in self.output_names:
            binding.bind_output(name, device_type, device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if self._output_device is None:
            outputs = [value.numpy() for value in outputs]
        return dict(zip(self.output_names, outputs, strict=True))

    def _device_type(self) -> str:
        return "cuda" if self.info.device.startswith("cuda") else "cpu"

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))

    def to_host(self, value: Any) -> np.ndarray:
        """A numpy array of ``value`` (an ``OrtValue`` on the GPU is copied to host memory)."""
        if isinstance(value, self._ort.OrtValue):
            return value.numpy()
        return np.asarray(value)
