"""Video decoding on an NVIDIA GPU (NVDEC) through PyAV's hardware acceleration.

    mode = resolve_decode("auto", notice=print)      # "cuda" where a GPU decodes, else "cpu" + a notice
    open_video = video_opener(mode)                  # strg_deploy.data.video.open_video, or the CUDA one
    with open_video("clip.mp4", timeout=5.0) as video:
        for frame in video.frames(size=(112, 112)):  # as VideoReader: RGB uint8 [112, 112, 3]
            ...

:func:`open_video_cuda` gives a :class:`~strg_deploy.data.video.VideoReader` whose container is opened by
``av.open(..., hwaccel=HWAccel("cuda", device=N, allow_software_fallback=True))``: FFmpeg decodes with
NVDEC (the ``nvdec`` hwaccel of FFmpeg's own decoders, not the ``*_cuvid`` ones), then downloads each frame to
system memory (NV12), where FFmpeg's scaler converts and resizes it exactly as on the CPU path. What it
saves is the decode itself (the CPU cost of H.264/HEVC at camera resolutions); a stream whose codec
NVDEC does not take decodes on the CPU (``allow_software_fallback``). The decoder runs on one CPU thread
(``threads=1``): NVDEC does the work and FFmpeg's frame threads would only add latency.

Keeping the frames on the GPU end to end (``HWAccel(..., is_hw_owned=True)`` and DLPack, or NVIDIA's
PyNvVideoCodec) would also save the download and the conversion; it needs a GPU resize and crop before
the networks, which this version does not have.

:func:`cuda_decode_problem` asks FFmpeg to open a CUDA device once (no file needed) and says in one line
why it cannot (no driver: ``Cannot load libcuda.so.1``, no GPU, an FFmpeg built without CUDA).
No torch, no cuda-python: only PyAV.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import av
import av.error
import av.logging

from strg_deploy.data.video import VideoReader, open_video
from strg_deploy.errors import StrgError

DECODE_CHOICES = ("cpu", "cuda", "auto")


def _hwaccel(device: int, fallback: bool = True) -> Any:
    from av.codec.hwaccel import HWAccel

    return HWAccel("cuda", device=str(device), allow_software_fallback=fallback)


def cuda_decode_problem(device: int = 0, codec: str = "h264") -> str | None:
    """None when FFmpeg opens CUDA device ``device`` for decoding ``codec``; otherwise one line saying
    why not (FFmpeg's own reason where it logs one)."""
    from av.codec import Codec
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        return (
            f"this FFmpeg (PyAV {av.__version__}) was built without CUDA (it has: "
            + (", ".join(hwdevices_available()) or "no hardware decoders")
            + ")"
        )
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # FFmpeg says why (e.g. "Cannot load libcuda.so.1") at ERROR
    try:
        with av.logging.Capture(True) as logs:
            try:
                _hwaccel(device).create(Codec(codec, "r"))
            except (av.error.FFmpegError, NotImplementedError, OSError) as error:
                reasons = [" ".join(str(line).split()) for _, _, line in logs if str(line).strip()]
                why = "; ".join(dict.fromkeys(reasons)) or str(error)
                return (
                    f"FFmpeg cannot open CUDA device {device} for NVDEC ({why}); "
                    "it needs an NVIDIA GPU and its driver"
                )
    finally:
        av.logging.set_level(level)
    return None


def resolve_decode(choice: str, device: int = 0, notice: Callable[[str], Any] | None = None) -> str:
    """``"cpu"`` or ``"cuda"`` for a ``--decode`` choice: cpu as it is; cuda when a GPU decodes here,
    else StrgError with the reason; auto: cuda when a GPU decodes here, else cpu after ``notice(line)``."""
    if choice not in DECODE_CHOICES:
        raise StrgError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, got {choice!r}")
    if choice == "cpu":
        return "cpu"
    problem = cuda_decode_problem(device)
    if problem is None:
        return "cuda"
    if choice == "cuda":
        raise StrgError(f"--decode cuda: {problem}")
    if notice is not None:
        notice(f"--decode auto: decoding on the CPU: {problem}")
    return "cpu"


def open_video_cuda(
    source: str | os.PathLike[str],
    stream: int | None = None,
    *,
    fps: float | None = None,
    timeout: float | tuple[float, float] | None = None,
    threads: int = 1,
    device: int = 0,
) -> VideoReader:
    """:func:`~strg_deploy.data.video.open_video` decoding with NVDEC on GPU ``device`` (one decoder
    thread: NVDEC does the work)."""
    return open_video(source, stream, fps=fps, timeout=timeout, threads=1, hwaccel=_hwaccel(device))


def video_opener(decode: str) -> Callable[..., VideoReader]:
    """``open_video`` for ``"cpu"``, :func:`open_video_cuda` for ``"cuda"`` (after :func:`resolve_decode`)."""
    if decode == "cpu":
        return open_video
    if decode == "cuda":
        return open_video_cuda
    raise StrgError(f"decode must be cpu or cuda here, got {decode!r}")
