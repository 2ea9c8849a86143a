"""How fast a camera's first frames come: FFmpeg's default stream probing against the options
`strg infer` uses for rtsp:// (strg_deploy.data.video.RTSP_OPTIONS), on the GStreamer RTSP test server.

For each variant, 5 times: the time av.open takes, the time to the first decoded frame, and how many
frames then come out at once (decoded from the probe's buffer: frames that are already old) before
they arrive at the stream's own pace (12 fps here).

    python benchmarks/rtsp_open.py      # needs the Debian GStreamer packages that .ci/run installs
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _timing import print_table  # noqa: E402
from conftest import RtspServer  # noqa: E402

from strg_deploy.data.video import RTSP_OPTIONS  # noqa: E402

VARIANTS = {
    "FFmpeg's probing (TCP only)": {"rtsp_transport": "tcp"},
    "+ fflags nobuffer, flags low_delay": {
        "rtsp_transport": "tcp",
        "fflags": "nobuffer",
        "flags": "low_delay",
    },
    "RTSP_OPTIONS (probesize 32, analyzeduration 0)": RTSP_OPTIONS,
}


def measure(url: str, options: dict[str, str]) -> tuple[float, float, int]:
    """(open seconds, first-frame seconds, frames that came at once after the first)."""
    start = time.perf_counter()
    container = av.open(url, options=options, timeout=(5, 5))
    opened = time.perf_counter()
    frames = container.decode(video=0)
    next(frames)
    first = time.perf_counter()
    buffered = 0
    while True:
        before = time.perf_counter()
        next(frames)
        if time.perf_counter() - before > 0.04:  # a frame waited for the network: live pace
            break
        buffered += 1
    container.close()
    return opened - start, first - start, buffered


def main() -> None:
    server = RtspServer().start()
    rows = []
    try:
        for name, options in VARIANTS.items():
            runs = [measure(server.url("live"), options) for _ in range(5)]
            opened, first, buffered = (statistics.median(values) for values in zip(*runs, strict=True))
            rows.append([name, f"{1e3 * opened:.0f}", f"{1e3 * first:.0f}", f"{buffered:.0f}"])
    finally:
        server.stop()
    print_table(
        "a 320x240 12 fps H.264 camera (GStreamer test server), median of 5",
        ["options", "open ms", "first frame ms", "frames already buffered"],
        rows,
    )


if __name__ == "__main__":
    main()
