"""TensorRT backend: a serialized engine per network, run on an NVIDIA GPU through cuda-python.

    network = load_tensorrt_network("EXPORT/engines/backbone.engine", "backbone")
    out = network.run({"clip": clips})          # {"features": DeviceArray [B, D, T', H', W'] on cuda:0}
    head.run({"features": out["features"], ...})  # same backend and device: used in place, no copy
    network.to_host(out["features"])            # numpy float32 [B, D, T', H', W']

Loading (:func:`load_tensorrt_network`) imports ``tensorrt`` and ``cuda.bindings`` (never at module
import), checks the engine's sidecar against the running TensorRT version and GPU
(:mod:`strg_deploy.contract.engines`), registers the ``strg`` plugins
(:mod:`strg_deploy.plugins.registration`), deserialises the plan with ``trt.Runtime`` and makes one
execution context. Device buffers are sized for the optimisation profile's largest batch, with pinned
host buffers beside them for the copies.

``run`` copies host inputs to the GPU asynchronously, sets each input's shape (``set_input_shape``) and
every tensor's address (``set_tensor_address``), queues ``execute_async_v3`` and returns
:class:`~strg_deploy.engines.cuda_memory.DeviceArray` values (the output buffers themselves: valid until
the network runs again). A DeviceArray of the same device is an input as it is (its pointer is given to
TensorRT: the backbone's features stay on the GPU for the head). All TensorRT networks of one GPU queue
their work on one CUDA stream, so a value is never read before the network that makes it has finished,
without any synchronisation; ``to_host`` waits for the stream.

Batches: :attr:`limits` are the profile's min/opt/max along the batch axis. A batch larger than the
maximum runs in chunks (outputs then come back as numpy arrays: the chunks go through the host); a batch
smaller than the minimum is padded with zeros and its outputs cut back (:func:`plan_batches`).

Written for TensorRT 10 and 11 (the name-based tensor API: ``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_profile_shape``, ``execute_async_v3``, as in NVIDIA's
samples/python/common_runtime.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.contract.engines import TENSORRT_INSTALL as TENSORRT_WHEELS
from strg_deploy.engines.base import BackendInfo, BatchLimits
from strg_deploy.engines.cuda_memory import (
    DeviceArray,
    DeviceBuffer,
    GpuInfo,
    PinnedBuffer,
    Stream,
    copy_async,
    require_gpu,
    zero_async,
)
from strg_deploy.errors import StrgError

NAME = "tensorrt"
TENSORRT_INSTALL = f"{TENSORRT_WHEELS} on a machine with an NVIDIA GPU and its driver"
ENGINE_SUFFIX = ".engine"
# where `strg engine build` puts <network>.engine inside an export folder, in the order they are looked for
ENGINE_FOLDERS = ("engines-fp16", "engines-fp32")


def require_tensorrt() -> Any:
    """``import tensorrt``, or StrgError ``TensorRT is not installed: ...`` naming how to install it."""
    try:
        import tensorrt
    except ImportError as error:
        detail = "" if error.name == "tensorrt" else f" ({error})"  # installed, but a library is missing
        raise StrgError(f"TensorRT is not installed{detail}: {TENSORRT_INSTALL}") from None
    except OSError as error:
        raise StrgError(f"TensorRT cannot load its libraries ({error}): {TENSORRT_INSTALL}") from None
    return tensorrt


def engine_path(folder: str | Path, network: str) -> Path:
    """Where ``<network>.engine`` of an export ``folder`` is (``strg engine build`` writes it):
    ``engines-fp16/`` when it is there, else ``engines-fp32/`` (the loader says how to build it)."""
    folder = Path(folder)
    candidates = [folder / sub / f"{network}{ENGINE_SUFFIX}" for sub in ENGINE_FOLDERS]
    return next((path for path in candidates if path.is_file()), candidates[-1])


# ------------------------------------------------------------------ batch planning (pure Python)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Items ``start:stop`` of a batch, run as a batch of ``size`` (more than stop - start: zero padding)."""

    start: int
    stop: int
    size: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_batches(batch: int, limits: BatchLimits) -> list[Chunk]:
    """How a batch of ``batch`` items runs within ``limits``: chunks of at most ``limits.maximum``, the
    last one padded up to ``limits.minimum`` when it is smaller."""
    if batch < 1:
        raise StrgError(f"a batch needs at least one item, got {batch}")
    step = limits.maximum or batch
    chunks = []
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        chunks.append(Chunk(start, stop, max(stop - start, limits.minimum)))
    return chunks


def profile_limits(profiles: Mapping[str, tuple[tuple[int, ...], ...]]) -> BatchLimits:
    """BatchLimits from the optimisation profile of every input: {name: (min shape, opt shape, max
    shape)}. The batch axis is the first; inputs that disagree give the range all of them take."""
    if not profiles:
        raise StrgError("the engine has no inputs")
    low = max(int(shapes[0][0]) for shapes in profiles.values())
    optimal = max(int(shapes[1][0]) for shapes in profiles.values())
    high = min(int(shapes[2][0]) for shapes in profiles.values())
    if low < 1 or high < low:
        raise StrgError(f"the engine's optimisation profile takes no batch size (min {low}, max {high})")
    return BatchLimits(minimum=low, optimal=min(max(optimal, low), high), maximum=high)


# ------------------------------------------------------------------ loading


def _check_sidecar(engine_path: Path, trt_version: str, gpu: GpuInfo) -> str:
    """Check the engine's sidecar against this TensorRT, this GPU and the export the engine lies in
    (``EXPORT/engines-*/``); return the engine's precision."""
    from strg_deploy.contract.engines import Gpu, check_engine, read_sidecar
    from strg_deploy.contract.manifest import MANIFEST_FILE, read_manifest

    export = next(
        (f for f in (engine_path.parent.parent, engine_path.parent) if (f / MANIFEST_FILE).is_file()), None
    )
    if export is None:
        raise StrgError(
            f"{engine_path} is not inside an export folder (no {MANIFEST_FILE} beside it or above it): "
            "an engine is checked against the export it was built from"
        )
    sidecar = read_sidecar(engine_path, export)
    check_engine(
        sidecar,
        trt_version,
        Gpu(gpu.name, gpu.compute_capability),
        read_manifest(export),
        engine=engine_path,
        export_dir=export,
    )
    return sidecar.precision


def _register_plugins() -> None:
    try:
        import strg_deploy.plugins.registration  # noqa: F401  (registers the strg plugins on import)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("strg_deploy"):
            raise StrgError(
                "the TensorRT plugins of the strg nodes are not part of this installation "
                "(strg_deploy.plugins.registration is missing)"
            ) from None
        raise StrgError(f"the strg TensorRT plugins cannot be registered: {error}") from None


def load_tensorrt_network(
    engine_path: str | Path, network_name: str, *, device: int = 0, check_sidecar: bool = True
) -> TensorRTNetwork:
    """The engine at ``engine_path`` (the network ``network_name`` of the contract) on GPU ``device``
    (module docstring). StrgError, one line, when TensorRT, cuda-python or a GPU is missing, the sidecar
    does not match this TensorRT and GPU, or the engine cannot be deserialised."""
    trt = require_tensorrt()
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        export = (
            engine_path.parent.parent if engine_path.parent.name.startswith("engines") else engine_path.parent
        )
        raise StrgError(f"TensorRT engine not found: {engine_path}: build it with strg engine build {export}")
    gpu = require_gpu(device)
    precision = _check_sidecar(engine_path, trt.__version__, gpu) if check_sidecar else "fp32"
    _register_plugins()
    return TensorRTNetwork(trt, engine_path, network_name, gpu, precision)


_STREAMS: dict[int, Stream] = {}


def shared_stream(device: int) -> Stream:
    """The one CUDA stream of all TensorRT networks on GPU ``device`` (module docstring)."""
    if device not in _STREAMS:
        _STREAMS[device] = Stream()
    return _STREAMS[device]


def _numpy_dtype(trt: Any, dtype: Any, engine_path: Path, name: str) -> np.dtype:
    """numpy's dtype for a ``trt.DataType`` (``trt.nptype``, which raises TypeError for bf16 and fp8)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise StrgError(
            f"{engine_path}: tensor {name} is {getattr(dtype, 'name', dtype)}, which numpy has no type for"
        ) from None


@dataclasses.dataclass
class _Tensor:
    """One I/O tensor: name, numpy dtype, largest shape, its device buffer and pinned host buffer."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    device: DeviceBuffer
    host: PinnedBuffer


class TensorRTNetwork:
    """One deserialised engine, its execution context and buffers (module docstring). Use
    :func:`load_tensorrt_network`. ``generation`` counts runs: values of an earlier run are stale."""

    def __init__(self, trt: Any, engine_path: Path, network_name: str, gpu: GpuInfo, precision: str):
        from strg_deploy.contract.networks import SPECS

        self.gpu = gpu
        self.generation = 0
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise StrgError(
                f"TensorRT {trt.__version__} cannot deserialise {engine_path} (see its log above): "
                f"rebuild it with strg engine build EXPORT --rebuild"
            )
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        spec = SPECS.get(network_name)
        if spec is not None:
            if set(inputs) != set(spec.input_names) or set(outputs) != set(spec.output_names):
                raise StrgError(
                    f"{engine_path} is not a {network_name} engine: its tensors are {', '.join(names)}"
                )
            inputs, outputs = list(spec.input_names), list(spec.output_names)
        self.input_names = tuple(inputs)
        self.output_names = tuple(outputs)
        profiles = {n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0)) for n in inputs}
        self.limits = profile_limits(profiles)
        self.info = BackendInfo(NAME, gpu.device, precision, trt.__version__)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise StrgError(f"TensorRT cannot create an execution context for {engine_path} (GPU memory?)")
        self._stream = shared_stream(gpu.index)
        for name in inputs:
            self._set_shape(name, profiles[name][2])
        self._tensors = {}
        for name in (*inputs, *outputs):
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise StrgError(f"{engine_path}: TensorRT cannot size {name} at the largest batch ({shape})")
            dtype = _numpy_dtype(trt, engine.get_tensor_dtype(name), engine_path, name)
            nbytes = math.prod(shape) * dtype.itemsize
            self._tensors[name] = _Tensor(name, dtype, shape, DeviceBuffer(nbytes), PinnedBuffer(nbytes))
        self._staging_busy = False  # host->device copies from the pinned buffers may still be queued

    # -------------------------------------------------------------- run

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise StrgError(f"TensorRT refuses the shape {list(shape)} for {name}")

    def _set_address(self, name: str, address: int) -> None:
        if not self._context.set_tensor_address(name, address):  # False: TensorRT logged why
            raise StrgError(f"TensorRT refuses the GPU address 0x{address:x} for {name} (see its log above)")

    def _check_input(self, name: str, value: Any) -> Any:
        tensor = self._tensors[name]
        if not isinstance(value, DeviceArray):
            value = np.asarray(value)
        shape = tuple(value.shape)
        if value.dtype != tensor.dtype or len(shape) != len(tensor.shape) or shape[1:] != tensor.shape[1:]:
            expected = ", ".join(map(str, tensor.shape[1:]))
            raise StrgError(
                f"{name} must be {tensor.dtype} [batch, {expected}], got {value.dtype} {list(value.shape)}"
            )
        if isinstance(value, DeviceArray):
            value.check_valid()
        return value

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """All inputs (numpy arrays, or DeviceArrays) -> all outputs: DeviceArrays when the batch runs in
        one go, numpy arrays when it runs in chunks (module docstring)."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise StrgError(f"missing input(s) {', '.join(missing)}")
        values = {name: self._check_input(name, inputs[name]) for name in self.input_names}
        batches = {int(v.shape[0]) for v in values.values()}
        if len(batches) != 1:
            raise StrgError(f"the inputs of one run need one batch size, got {sorted(batches)}")
        chunks = plan_batches(batches.pop(), self.limits)
        if len(chunks) == 1:
            return self._run_chunk(values, chunks[0])
        parts = [{k: self.to_host(v) for k, v in self._run_chunk(values, c).items()} for c in chunks]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run_chunk(self, values: Mapping[str, Any], chunk: Chunk) -> dict[str, DeviceArray]:
        stream, context = self._stream, self._context
        if self._staging_busy:
            stream.synchronize()  # the last run's host->device copies read the pinned buffers
            self._staging_busy = False
        self.generation += 1
        for name, value in values.items():
            tensor = self._tensors[name]
            row_bytes = math.prod(tensor.shape[1:]) * tensor.dtype.itemsize
            used, total = chunk.rows * row_bytes, chunk.size * row_bytes
            if isinstance(value, DeviceArray):
                part = value.rows(chunk.start, chunk.stop)
                if value.device == self.info.device and chunk.size == chunk.rows:
                    address = part.ptr  # in place: a value of this GPU, no copy
                else:
                    copy_async(tensor.device.ptr, part.ptr, used, "device_to_device", stream)
                    address = tensor.device.ptr
            else:
                staging = tensor.host.view(tensor.dtype, (chunk.rows, *tensor.shape[1:]))
                np.copyto(staging, value[chunk.start : chunk.stop])
                copy_async(tensor.device.ptr, tensor.host.ptr, used, "host_to_device", stream)
                self._staging_busy = True
                address = tensor.device.ptr
            if total > used:
                zero_async(tensor.device.ptr + used, total - used, stream)
            self._set_shape(name, (chunk.size, *tensor.shape[1:]))
            self._set_address(name, address)
        outputs = {}
        for name in self.output_names:
            tensor = self._tensors[name]
            self._set_address(name, tensor.device.ptr)
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            outputs[name] = DeviceArray(
                tensor.device.ptr,
                (chunk.rows, *shape[1:]),
                tensor.dtype,
                self.info.device,
                self,
                self.generation,
            )
        if not context.execute_async_v3(stream.handle):
            raise StrgError(f"TensorRT could not run {self.info.device} {', '.join(self.output_names)}")
        return outputs

    # -------------------------------------------------------------- results

    def wait(self) -> None:
        """Block until everything queued on this network's stream has run (the pipeline calls it after a
        network whose outputs stay on the GPU, so that network's seconds are its own)."""
        self._stream.synchronize()
        self._staging_busy = False

    def to_host(self, value: Any) -> np.ndarray:
        """A numpy copy of ``value`` (a DeviceArray of any TensorRT network, or an array already)."""
        if not isinstance(value, DeviceArray):
            return np.asarray(value)
        value.check_valid()
        out = np.empty(value.shape, value.dtype)
        staging = self._pinned_for(value)
        if staging is None:  # another network's value: a plain (pageable) copy
            from strg_deploy.engines.cuda_memory import check, cudart

            runtime = cudart()
            self._stream.synchronize()
            kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
            copied = runtime.cudaMemcpy(dst=out.ctypes.data, src=value.ptr, count=value.nbytes, kind=kind)
            check(copied, "cudaMemcpy")
            return out
        buffer, offset = staging
        copy_async(buffer.ptr + offset, value.ptr, value.nbytes, "device_to_host", self._stream)
        self._stream.synchronize()
        self._staging_busy = False
        raw = buffer.view(np.uint8, (offset + value.nbytes,))[offset:]
        np.copyto(out.reshape(-1).view(np.uint8), raw)
        return out

    def _pinned_for(self, value: DeviceArray) -> tuple[PinnedBuffer, int] | None:
        """The pinned buffer (and offset) beside the device buffer holding ``value``, if it is ours."""
        for tensor in self._tensors.values():
            offset = value.ptr - tensor.device.ptr
            if 0 <= offset and offset + value.nbytes <= tensor.device.nbytes:
                return tensor.host, offset
        return None
