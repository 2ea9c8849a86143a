"""Shared fixtures: loading the scripts of benchmarks/ as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load_benchmark():
    """``load_benchmark("accuracy_study")`` -> benchmarks/accuracy_study.py as a module. benchmarks/ stays on
    sys.path for the test module's lifetime, since the scripts import their shared helpers from it."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield _load
    finally:
        sys.path.remove(str(BENCHMARKS))


VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
TINY_CLASSES = [f"action_{i}" for i in range(5)]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, folder): a tiny STRG with random weights (seed 0, five classes) exported with a
    reference sample of a real clip (a synthetic one where ../shared/videos is missing). Tests that
    change files copy the folder first. Needs torch."""
    torch = pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
    from strg_deploy.config import preset
    from strg_deploy.export.onnx import ExportOptions, export_model
    from strg_deploy.models.strg import build_model

    torch.manual_seed(0)
    model = build_model(preset("tiny").with_classes(TINY_CLASSES)).eval()
    out = tmp_path_factory.mktemp("tiny_export")
    videos = [VIDEOS / "arm_wrestling_h264_340x256.mp4"] if VIDEOS.is_dir() else []
    export_model(model, out, ExportOptions(max_batch=4), videos=videos)
    return model, out


def loaded_after_importing(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules`` (sorted)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def triton_interpreter_problem() -> str | None:
    """Why the Triton interpreter cannot run the plugin kernels here (None when it can): Triton before
    3.8 turns a loop bound (``range(0, count, ...)``) into ``int()`` of a one-element array, which numpy
    2.4 and later refuse (seen with Triton 3.6 and numpy 2.4; numpy 2.3 and Triton 3.8 work)."""
    import importlib.metadata

    try:
        triton_version = importlib.metadata.version("triton")
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return None
    def major_minor(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(".")[:2])

    if major_minor(triton_version) < (3, 8) and major_minor(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter cannot take tensor loop bounds under numpy "
            f"{numpy_version} (needs Triton >= 3.8 or numpy < 2.4)"
        )
    return None


RTSP_SERVER = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


class RtspServer:
    """tests/rtsp_server.py run by Debian's python3 on 127.0.0.1 at a free port, kept across restarts:
    ``url("live")`` / ``url("clip")`` (with ``user`` / ``password`` for a login), ``stop()``, ``start()``."""

    def __init__(self, file: str | None = None, user: str | None = None, password: str | None = None):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.args = [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port)]
        self.args += ["--file", str(file)] if file else []
        self.args += ["--user", user, "--password", password] if user is not None else []
        self.process = None

    def url(self, path: str, user: str | None = None, password: str | None = None) -> str:
        from urllib.parse import quote

        login = "" if user is None else quote(user, safe="") + ":" + quote(password or "", safe="") + "@"
        return f"rtsp://{login}127.0.0.1:{self.port}/{path}"

    def start(self, timeout: float = 30.0) -> RtspServer:
        """Start serving (again, on the same port); returns once the server printed ``ready``."""
        import os
        import selectors
        import subprocess
        import time

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(deadline - time.monotonic()):
                    line = self.process.stdout.readline()
                    if line.strip() == "ready":
                        return self
                    if not line:
                        break
        self.stop()
        pytest.fail(f"the RTSP server did not start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM, then wait (killed after 10 s)."""
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.process.stdout.close()
        self.process = None


def _gst_rtsp_server_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    import shutil
    import subprocess

    if shutil.which(SYSTEM_PYTHON) is None:
        return f"{SYSTEM_PYTHON} is missing (the RTSP server needs Debian's python3-gi)"
    check = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    result = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    if result.returncode:
        return (
            f"{SYSTEM_PYTHON} cannot import GstRtspServer (apt-get install python3-gi "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp ..., see .ci/run)"
        )
    return None


@pytest.fixture
def rtsp_server():
    """A factory: ``rtsp_server(file=None, user=None, password=None)`` -> a started RtspServer serving
    /live (and /clip with ``file``). Every server is stopped at the end of the test. Skips when
    /usr/bin/python3 cannot import GStreamer's RTSP server."""
    reason = _gst_rtsp_server_missing()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def make(file: str | None = None, user: str | None = None, password: str | None = None) -> RtspServer:
        server = RtspServer(file, user, password)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


def write_clip(path: Path, seed: int, seconds: float = 3.0, size: tuple[int, int] = (96, 72)) -> Path:
    """A small H.264 clip of moving boxes on a gradient, different per seed."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        colour = rng.integers(0, 256, 3)
        for i in range(int(seconds * 12)):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = np.linspace(0, 255, width)[None, :].astype(np.uint8)
            x = int((rng.integers(0, 4) + i * (1 + seed % 3)) % (width - 20))
            image[20:44, x : x + 20] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
