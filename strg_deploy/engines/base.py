"""The protocol every runtime backend follows, at the level a GPU backend needs.

A backend loads each of the three networks of an export (:mod:`strg_deploy.contract.networks`) as a
:class:`Network`: ``run({input name: array}) -> {output name: value}``. Inputs are numpy arrays or values
that the same backend returned (a GPU backend keeps the backbone's features on the device and hands them
to its head as they are); :meth:`Network.to_host` turns any value it returned into a numpy array. Each
network says what it is (:class:`BackendInfo`: backend name, device, precision, runtime version) and the
batch sizes it takes (:class:`BatchLimits`, an engine's optimisation profile; CPU runtimes take any).
A backend whose ``run`` returns before the device has finished (TensorRT queues on a CUDA stream) also
has ``wait()``, which blocks until its queued work is done: the pipeline calls it where a value stays on
the device, so that the seconds it reports per network are that network's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from strg_deploy.errors import StrgError


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What runs a network: ``name`` (onnxruntime, openvino, torch, tensorrt), ``device`` (cpu, cuda:0,
    ...), ``precision`` (fp32, bf16, fp16) and the runtime's ``version``."""

    name: str
    device: str
    precision: str
    version: str

    def shares_memory_with(self, other: BackendInfo) -> bool:
        """True when a value of one network can feed the other as it is (same runtime, same device)."""
        return self.name == other.name and self.device == other.device


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """The batch sizes a network takes along its first axis (frames for the RPN, clips otherwise):
    ``minimum`` to ``maximum`` (None: no limit), ``optimal`` the size it was tuned for (None: any)."""

    minimum: int = 1
    optimal: int | None = None
    maximum: int | None = None


UNLIMITED = BatchLimits()


class Network(Protocol):
    """One loaded network. ``input_names`` and ``output_names`` follow the contract; ``run`` takes every
    input and returns every output; ``to_host`` gives a numpy array of a value ``run`` returned."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    info: BackendInfo
    limits: BatchLimits

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...

    def to_host(self, value: Any) -> np.ndarray: ...


class HostNetwork:
    """Shared parts of the CPU backends, whose values are numpy arrays already: input checks and
    :meth:`to_host`. Subclasses set ``input_names``, ``output_names``, ``info`` and implement
    ``_run(inputs in input order) -> outputs in output order``."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    info: BackendInfo
    limits: BatchLimits = UNLIMITED

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise StrgError(f"missing input(s) {', '.join(missing)}")
        outputs = self._run([np.asarray(inputs[name]) for name in self.input_names])
        return dict(zip(self.output_names, outputs, strict=True))

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def to_host(self, value: Any) -> np.ndarray:
        return np.asarray(value)
