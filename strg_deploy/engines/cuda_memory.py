"""GPU memory, pinned host memory, streams and copies through cuda-python's runtime API (``cuda.bindings``).

    check(cudart.cudaGetDeviceCount(), "counting GPUs")     # -> the values, or StrgError naming the error
    gpu = require_gpu(0)                                     # GpuInfo(index, name, compute capability)
    stream = Stream()
    buffer = DeviceBuffer(nbytes)                            # cudaMalloc, freed with the object
    staging = PinnedBuffer(nbytes)                           # cudaMallocHost, numpy views of it
    copy_async(buffer.ptr, staging.ptr, nbytes, "host_to_device", stream)
    stream.synchronize()

Every cuda-python call returns ``(cudaError_t, *values)``; :func:`check` turns an error into one
StrgError line (``<what>: <cudaErrorName> (<code>): <CUDA's description>``), and the errors that mean
there is no usable GPU (no device, no driver, a driver older than the runtime) into a line that says so.
:class:`DeviceArray` is a value on the GPU (a pointer, a shape and a dtype): what a GPU backend's
``run`` returns and another network of the same backend and device takes as an input without copying.

Only the runtime API is used (``cuda.bindings.runtime``): its calls return an error code on a machine
without the NVIDIA driver, where the driver API's first call raises instead. ``cuda.bindings`` is
imported on first use, never at module import.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
from typing import Any

import numpy as np

from strg_deploy.errors import StrgError

INSTALL = "pip install 'strg-deploy[gpu]'"
# cudaError_t values meaning that this machine has no usable GPU (names, so that no import is needed)
NO_GPU_ERRORS = (
    "cudaErrorNoDevice",
    "cudaErrorInsufficientDriver",
    "cudaErrorDevicesUnavailable",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorCompatNotSupportedOnDevice",
)
COPY_KINDS = {
    "host_to_device": "cudaMemcpyHostToDevice",
    "device_to_host": "cudaMemcpyDeviceToHost",
    "device_to_device": "cudaMemcpyDeviceToDevice",
}


def cudart() -> Any:
    """``cuda.bindings.runtime``, or StrgError naming how to install cuda-python."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise StrgError(
            f"running on an NVIDIA GPU needs cuda-python, which is not installed: {INSTALL}"
        ) from None
    return runtime


def error_text(error: Any) -> str:
    """``cudaErrorName (code): description`` of a cudaError_t."""
    runtime = cudart()
    name = getattr(error, "name", None) or str(error)
    status, description = runtime.cudaGetErrorString(error)
    text = description.decode() if isinstance(description, bytes) else str(description)
    return f"{name} ({int(error)}): {text}" if int(status) == 0 else f"{name} ({int(error)})"


def check(result: Any, what: str) -> Any:
    """The values of a cuda-python call's ``(cudaError_t, *values)`` result: None for none, the value for
    one, a tuple for more. StrgError ``<what>: <error>`` on an error; ``no CUDA GPU ...`` when the
    error means there is no usable GPU here."""
    if isinstance(result, tuple):
        error, values = result[0], result[1:]
    else:
        error, values = result, ()
    if int(error) != 0:
        if getattr(error, "name", "") in NO_GPU_ERRORS:
            raise StrgError(
                f"no CUDA GPU: {what} failed with {error_text(error)}; "
                "this needs an NVIDIA GPU and its driver"
            )
        raise StrgError(f"{what}: CUDA error {error_text(error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """A CUDA device: ``index``, ``name`` (e.g. NVIDIA H200) and ``compute_capability`` (e.g. "9.0")."""

    index: int
    name: str
    compute_capability: str

    @property
    def device(self) -> str:
        """``cuda:N``, the device string of :class:`~strg_deploy.engines.base.BackendInfo`."""
        return f"cuda:{self.index}"


def device_count() -> int:
    """CUDA GPUs visible here; StrgError ``no CUDA GPU ...`` when there is none (or no driver)."""
    count = check(cudart().cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise StrgError("no CUDA GPU: cudaGetDeviceCount found none; this needs an NVIDIA GPU and its driver")
    return int(count)


def require_gpu(index: int = 0) -> GpuInfo:
    """Make GPU ``index`` current and describe it; StrgError when it does not exist."""
    count = device_count()
    if not 0 <= index < count:
        raise StrgError(f"there is no GPU cuda:{index} (this machine has {count}: cuda:0..cuda:{count - 1})")
    runtime = cudart()
    check(runtime.cudaSetDevice(index), f"cudaSetDevice({index})")
    props = check(runtime.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(index, name.strip(), f"{props.major}.{props.minor}")


class Stream:
    """A CUDA stream (cudaStreamCreate), destroyed with the object or by :meth:`close`. ``handle`` is
    the integer TensorRT's ``execute_async_v3`` takes; ``raw`` the cuda-python object copies take."""

    def __init__(self) -> None:
        self.raw = check(cudart().cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        """The ``cudaStream_t`` address: ``get_cuda_native_handle`` (cuda-bindings >= 12.9.1 deprecates
        ``int()`` of its objects), ``int()`` on older ones."""
        try:
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            return int(self.raw)
        return int(get_cuda_native_handle(self.raw))

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def close(self) -> None:
        raw, self.raw = getattr(self, "raw", None), None
        if raw is not None:
            cudart().cudaStreamDestroy(raw)  # best effort: a failure here cannot be acted on

    def __del__(self) -> None:
        self.close()


class DeviceBuffer:
    """``nbytes`` of GPU memory (cudaMalloc) at ``ptr``, freed with the object or by :meth:`close`."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    def close(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            cudart().cudaFree(ptr)

    def __del__(self) -> None:
        self.close()


class PinnedBuffer:
    """``nbytes`` of page-locked host memory (cudaMallocHost) at ``ptr``: asynchronous copies need it.
    :meth:`view` gives a numpy array over its first bytes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(
            check(cudart().cudaMallocHost(max(self.nbytes, 1)), f"cudaMallocHost({self.nbytes} bytes)")
        )

    def view(self, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy array of ``dtype`` and ``shape`` over this memory (no copy; valid while self lives)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.nbytes:
            raise StrgError(
                f"{list(shape)} {dtype} needs {nbytes} bytes; the pinned buffer has {self.nbytes}"
            )
        raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def close(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            cudart().cudaFreeHost(ptr)

    def __del__(self) -> None:
        self.close()


def copy_async(dst: int, src: int, nbytes: int, kind: str, stream: Stream) -> None:
    """Queue a copy of ``nbytes`` from ``src`` to ``dst`` on ``stream``; ``kind`` is one of
    host_to_device, device_to_host, device_to_device (host pointers should be pinned)."""
    if kind not in COPY_KINDS:
        raise ValueError(f"copy kind must be one of {', '.join(COPY_KINDS)}, got {kind!r}")
    if nbytes:
        runtime = cudart()
        direction = getattr(runtime.cudaMemcpyKind, COPY_KINDS[kind])
        check(runtime.cudaMemcpyAsync(dst, src, nbytes, direction, stream.raw), f"cudaMemcpyAsync ({kind})")


def zero_async(ptr: int, nbytes: int, stream: Stream) -> None:
    """Queue zeroing ``nbytes`` of GPU memory at ``ptr`` on ``stream``."""
    if nbytes:
        check(cudart().cudaMemsetAsync(ptr, 0, nbytes, stream.raw), "cudaMemsetAsync")


class DeviceArray:
    """A C-contiguous array on GPU ``device`` (cuda:N): ``ptr``, ``shape``, ``dtype``; no memory of its own.

    ``owner`` is what holds the memory (a network's output buffers); ``generation`` is the owner's run
    count when the value was made. The owner reuses its buffers on its next run, so a value is
    ``valid`` only while ``owner.generation`` has not moved on; :meth:`check_valid` says so in one line.
    """

    def __init__(
        self,
        ptr: int,
        shape: tuple[int, ...],
        dtype: np.dtype | str,
        device: str,
        owner: Any = None,
        generation: int = 0,
    ) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.owner = owner
        self.generation = generation

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one item along the first (batch) axis."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def valid(self) -> bool:
        return self.owner is None or getattr(self.owner, "generation", self.generation) == self.generation

    def check_valid(self) -> None:
        if not self.valid:
            raise StrgError(
                f"a {list(self.shape)} {self.dtype} value on {self.device} was overwritten by a later run "
                "of the network that made it: copy it to the host (to_host) before running that network again"
            )

    def rows(self, start: int, stop: int) -> DeviceArray:
        """Items ``start:stop`` of the first axis: a view (pointer offset), no copy."""
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"rows {start}:{stop} outside a batch of {self.shape[0]}")
        return DeviceArray(
            self.ptr + start * self.row_bytes,
            (stop - start, *self.shape[1:]),
            self.dtype,
            self.device,
            self.owner,
            self.generation,
        )

    def __repr__(self) -> str:
        return f"DeviceArray({list(self.shape)} {self.dtype} on {self.device} at 0x{self.ptr:x})"
