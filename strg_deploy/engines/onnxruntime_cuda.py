"""onnxruntime-gpu's CUDA provider: choosing it, and finding the libraries it needs before a session starts.

onnxruntime-gpu links its CUDA provider (``capi/libonnxruntime_providers_cuda.so``) against the NVIDIA
driver (``libcuda.so.1``), CUDA (cuBLAS, cuFFT, cuRAND, the runtime) and cuDNN 9. Installed from PyPI
(``pip install 'onnxruntime-gpu[cuda,cudnn]'``, the ``nvidia-*`` wheels) those libraries lie in
site-packages, where the dynamic loader does not look: onnxruntime finds them only after its own
``preload_dlls()`` (onnxruntime >= 1.21), which :func:`cuda_provider` calls. When the provider library
still does not load, onnxruntime would print several log lines and quietly run on the CPU;
:func:`cuda_provider` instead loads the library itself first (``ctypes``) and turns the loader's reason
into one line: the NVIDIA driver is missing (no ``libcuda.so.1``), or a CUDA/cuDNN library is.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from pathlib import Path

from strg_deploy.errors import StrgError
from strg_deploy.extras import require

PROVIDER = "CUDAExecutionProvider"
PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
GPU_INSTALL = (
    "pip install 'strg-deploy[gpu]' on a machine with an NVIDIA GPU (onnxruntime-gpu; "
    "uninstall onnxruntime first: both install the module onnxruntime)"
)


def cuda_provider(device: str) -> tuple[str, dict[str, str]]:
    """onnxruntime's CUDA provider for ``device`` (cuda or cuda:N) with its options, once its libraries
    load; StrgError, one line, when ``device`` is not a GPU, this onnxruntime has no CUDA provider (the
    CPU package), or the provider's libraries (the NVIDIA driver, CUDA, cuDNN) cannot be loaded."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise StrgError(f"onnxruntime's device must be cpu, cuda or cuda:N, got {device!r}")
    ort = require("onnxruntime", "running ONNX files on onnxruntime")
    available = ort.get_available_providers()
    if PROVIDER not in available:
        raise StrgError(
            f"onnxruntime {ort.__version__} here has no CUDA provider (it has {', '.join(available)}): "
            + GPU_INSTALL
        )
    problem = _provider_library_problem(ort)
    if problem is not None:
        raise StrgError(problem)
    return PROVIDER, {"device_id": index or "0"}


@functools.cache
def _provider_library_problem(ort) -> str | None:
    """Preload the CUDA libraries and try the provider library, once per process (each network of a
    pipeline asks): None when it loads, else the one line that says why not."""
    preload_cuda_libraries(ort)
    reason = library_load_error(Path(ort.__file__).parent / "capi" / PROVIDER_LIBRARY)
    return None if reason is None else provider_problem(reason, ort.__version__, _cuda_version())


def preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels into the process where onnxruntime
    offers it (``preload_dlls``, onnxruntime >= 1.21); what it prints is dropped, a failure ignored
    (the provider check that follows names what is missing)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        preload()


def library_load_error(path: Path) -> str | None:
    """Why the shared library at ``path`` does not load (the dynamic loader's message on one line), or
    None when it loads or is not there (a layout this check does not know: onnxruntime then decides)."""
    if not path.is_file():
        return None
    try:
        ctypes.CDLL(str(path))
    except OSError as error:
        return " ".join(str(error).split())
    return None


def provider_problem(reason: str, version: str, cuda: str | None) -> str:
    """One line for a CUDA provider library that does not load because of ``reason`` (the loader's)."""
    if "libcuda.so" in reason:
        return (
            f"onnxruntime-gpu {version} cannot use a GPU here: the NVIDIA driver is not installed or not "
            f"visible ({reason})"
        )
    needs = f"CUDA {cuda.split('.')[0]}" if cuda else "CUDA"
    return (
        f"onnxruntime-gpu {version} cannot load its CUDA provider ({reason}); it needs {needs} and "
        "cuDNN 9: install them, or pip install 'onnxruntime-gpu[cuda,cudnn]'"
    )


def _cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None) or None
