"""Decode capacity: how many H.264 streams one core decodes in real time, at 1080p and 720p.

Encodes a synthetic clip per resolution once (moving gradients and boxes with sensor-like noise, 30 fps,
libx264 main profile at 6 Mbit/s for 1080p and 3 Mbit/s for 720p, a keyframe every 2 s, as cameras
send), then decodes it with one decoder thread the way `strg infer`'s readers do (strg_deploy.data.video:
swscale to RGB at the decode size of the small preset, and at full size for comparison). Streams per
core = decoded fps / the stream's fps.

    python benchmarks/decode.py [--seconds 10] [--out bench_decode]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import console, print_table  # noqa: E402

from strg_deploy.config import preset  # noqa: E402
from strg_deploy.data.cache import short_side_size  # noqa: E402
from strg_deploy.data.video import open_video  # noqa: E402
from strg_deploy.engines.auto import processor_name  # noqa: E402

# (width, height, bitrate): the bitrates IP cameras commonly send at 30 fps
RESOLUTIONS = {"1080p": (1920, 1080, 6_000_000), "720p": (1280, 720, 3_000_000)}
FPS = 30


def encode(path: Path, width: int, height: int, bitrate: int, seconds: float) -> Path:
    """A synthetic H.264 clip: a drifting colour gradient with two moving boxes and sensor-like noise
    (+-4 grey levels per pixel and frame), encoded at ``bitrate`` as a camera would send it."""
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "veryfast", "g": str(2 * FPS), "profile": "main"}
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        rng = np.random.default_rng(0)
        for i in range(int(seconds * FPS)):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = (x + 3 * i) % 256
            image[..., 1] = (y + 2 * i) % 256
            image[..., 2] = (x + y + i) % 256
            for k, size in enumerate((height // 4, height // 6)):
                left = (i * (8 + 4 * k)) % (width - size)
                top = (height - size) // (2 + k)
                image[top : top + size, left : left + size] = (255 * k, 255, 0)
            noise = rng.integers(-4, 5, (height, width, 1), dtype=np.int16)
            image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def decode_fps(path: Path, size: tuple[int, int] | None) -> float:
    """Frames per second decoded on one thread, converted to RGB at ``size`` (None: full size)."""
    start = time.perf_counter()
    with open_video(path, threads=1) as video:
        count = sum(1 for _ in video.frames(size=size))
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench_decode"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"{processor_name()}, {os.cpu_count()} cores, PyAV {av.__version__}, FFmpeg in the wheel")
    rates = {}
    small = preset("small").size
    rows = []
    for name, (width, height, bitrate) in RESOLUTIONS.items():
        clip = encode(args.out / f"{name}.mp4", width, height, bitrate, args.seconds)
        reduced = short_side_size(width, height, small)
        for label, size in (("full size", None), (f"short side {small}", reduced)):
            fps = max(decode_fps(clip, size) for _ in range(2))
            rows.append([name, label, f"{fps:.0f}", f"{fps / FPS:.1f}"])
        rates[name] = clip.stat().st_size * 8 / args.seconds / 1e6
    console.print("bitrates: " + ", ".join(f"{k} {v:.1f} Mbit/s" for k, v in rates.items()))
    print_table(
        f"H.264 {FPS} fps, one decoder thread, best of 2",
        ["stream", "converted to", "decoded fps", f"real-time {FPS} fps streams per core"],
        rows,
    )


if __name__ == "__main__":
    main()
