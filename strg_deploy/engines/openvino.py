"""OpenVINO backend: the network compiled for the CPU.

OpenVINO does not take ONNX model-local functions in a custom domain, so a file with the ``strg`` custom
nodes is inlined in memory first (the same graph that ``strg export --plain`` writes).

Compiling a model for the CPU installs an alternate signal stack (11,568 bytes) on the calling thread and
leaves it there while the compiled model lives. CPython installs every Python-level signal handler with
SA_ONSTACK, so signals then run on that stack; with torch's SIGCHLD handler in place (any DataLoader
with workers sets it), the exit of a child process then killed the whole process with SIGSEGV. The
backend therefore puts the thread's previous signal stack back after compiling
(:func:`kept_signal_stack`); inference does not need OpenVINO's.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from strg_deploy.contract.nodes import inline_functions
from strg_deploy.engines.base import BackendInfo, HostNetwork
from strg_deploy.errors import StrgError
from strg_deploy.extras import require


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size); None where libc has no
    ``sigaltstack`` (not Linux)."""
    libc = _libc()
    if libc is None:
        return None
    current = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(current))
    return current.ss_sp or 0, current.ss_flags, current.ss_size


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then restore the calling thread's alternate signal stack as it was before it."""
    libc = _libc()
    saved = _SignalStack()
    if libc is not None:
        libc.sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        if libc is not None:
            libc.sigaltstack(ctypes.byref(saved), None)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


NAME = "openvino"
PRECISIONS = ("f32", "bf16", "f16")


class OpenVinoNetwork(HostNetwork):
    """An ONNX file compiled by OpenVINO for ``device`` (CPU). ``threads``: inference threads (0: default).
    ``precision``: the inference precision OpenVINO computes in. "f32" by default, because OpenVINO's own
    default on CPUs with bfloat16 units (AVX512-BF16, AMX) is bf16, which moves logits by about 1e-3;
    "bf16" (or "f16" where the device has it) trades that for speed. ``run({name: array}) -> {name: array}``.
    """

    def __init__(self, path: str | Path, threads: int = 0, device: str = "CPU", precision: str = "f32"):
        if precision not in PRECISIONS:
            raise StrgError(
                f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        ov = require("openvino", "running ONNX files on OpenVINO")
        import onnx

        try:
            proto = onnx.load(str(path))
        except Exception as err:  # OSError, or protobuf's DecodeError for a file that is not ONNX
            raise StrgError(f"cannot read {path} as ONNX: {err}") from None
        if proto.functions:
            proto = inline_functions(proto)
        core = ov.Core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with kept_signal_stack():
                self.compiled = core.compile_model(core.read_model(proto.SerializeToString()), device, config)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise StrgError(f"OpenVINO cannot compile {path}: {first}") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        graph_outputs = [o.name for o in proto.graph.output]
        ports = list(self.compiled.outputs)
        self._ports = {}
        for name in graph_outputs:  # OpenVINO may name an output after the node that fed an Identity
            port = next((p for p in ports if name in p.get_names()), None)
            if port is None:
                raise StrgError(f"OpenVINO lost the output {name} of {path}")
            self._ports[name] = port
        self.output_names = tuple(graph_outputs)
        precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[precision]
        self.info = BackendInfo(NAME, device.lower(), precision, ov.get_version().split("-")[0])

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(dict(zip(self.input_names, inputs, strict=True)))
        return [np.asarray(result[self._ports[name]]) for name in self.output_names]
