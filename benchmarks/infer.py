"""`strg infer` measured: end-to-end throughput against the pipeline's own, batching, live lag and drops,
resident memory over a long live run.

    python benchmarks/infer.py [--preset small] [--backend auto] [--seconds 20] [--live 1 2 4 8]
                               [--rtsp 1 4 8] [--max-wait-ms 20] [--skip-files] [--memory-minutes 10]
                               [--out bench_infer]

The preset is exported once with random weights (speed does not depend on the weights); the streams are
synthetic H.264 clips (320x240, 12 fps, moving boxes) written once. Every `strg infer` run is a
subprocess whose `--json` summary gives results, seconds, drops and the lag and latency percentiles.

1. Throughput over 8 file streams (`--batch 8`) against the pipeline alone on batches of 8 clips
   already in memory (target: at least 0.9: decoding and windowing hidden behind inference).
2. Batching: `--batch 8` against `--batch 1` over the same 8 files (target: at least 0.95 on the CPU).
3. Live: N streams read with `--realtime` (paced by their timestamps, as cameras) for `--seconds`:
   drops, lag p50/p99 against the bound "batch compute time + max wait, plus 20 %", where the batch
   compute time is the pipeline's time for a batch of min(N, 8) clips (one window per stream).
   `--rtsp N...` does the same with N sessions of the GStreamer RTSP test server's live 12 fps stream
   (tests/rtsp_server.py; needs the Debian packages .ci/run installs).
4. Memory: one realtime stream looping for `--memory-minutes` (a long clip), resident memory sampled
   every 10 s (target: flat within 5 % after the first minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _timing import console, print_table  # noqa: E402
from conftest import RtspServer, write_clip  # noqa: E402

from strg_deploy.contract.manifest import MANIFEST_FILE  # noqa: E402
from strg_deploy.engines.auto import processor_name  # noqa: E402
from strg_deploy.engines.pipeline import Pipeline  # noqa: E402


def export(preset: str, out: Path) -> Path:
    folder = out / preset
    if not (folder / MANIFEST_FILE).is_file():
        subprocess.run(
            [sys.executable, "-m", "strg_deploy.cli", "export", "--preset", preset, "--out", str(folder)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return folder


def clips(out: Path, count: int, seconds: float) -> list[Path]:
    folder = out / f"clips_{int(seconds)}s"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = folder / f"stream{k}.mp4"
        if not path.exists():
            write_clip(path, k, seconds=seconds, size=(320, 240))
        paths.append(path)
    return paths


def infer(model: Path, sources: list[Path], *args: str) -> dict:
    """One `strg infer` run (predictions to /dev/null); its JSON summary."""
    command = [sys.executable, "-m", "strg_deploy.cli", "infer", str(model), *map(str, sources)]
    command += ["--out", os.devnull, "--overwrite", "--json", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0,):
        raise SystemExit(f"strg infer failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def pipeline_rate(model: Path, backend: str, batch: int, repeats: int = 5) -> tuple[float, float]:
    """(windows per second, seconds per batch) of the pipeline alone at ``batch``."""
    pipeline = Pipeline.load(model, backend)
    cfg = pipeline.cfg
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=np.uint8)
    pipeline.run(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline.run(data)
        times.append(time.perf_counter() - start)
    best = float(np.median(times))
    return batch / best, best


LIVE_COLUMNS = ["streams", "predictions", "dropped", "lag p50 ms", "lag p99 ms", "bound ms", "target"]


def live_row(run: dict, count: int, model: Path, backend: str, max_wait_ms: float) -> list:
    """A table row of a live run of ``count`` streams: its drops and lag percentiles against the bound
    (the pipeline's time for a batch of min(count, 8) clips + the max wait, plus 20 %)."""
    compute = pipeline_rate(model, backend, min(count, 8))[1]
    bound = (compute + max_wait_ms / 1000) * 1.2 * 1000
    lag = run["metrics"]["total"]["lag_ms"] or {}
    met = lag.get("p99", 1e9) <= bound and not run["dropped"]
    p50, p99 = lag.get("p50", float("nan")), lag.get("p99", float("nan"))
    cells = [f"{p50:.0f}", f"{p99:.0f}", f"{bound:.0f}", "met" if met else "missed"]
    return [count, run["results"], run["dropped"], *cells]


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_run(model: Path, source: Path, backend: str, minutes: float) -> list[tuple[float, float]]:
    command = [sys.executable, "-m", "strg_deploy.cli", "infer", str(model), str(source), "--realtime"]
    command += ["--backend", backend, "--out", os.devnull, "--overwrite", "--duration", str(minutes * 60)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    start = time.monotonic()
    while process.poll() is None:
        value = rss_mb(process.pid)
        if value is not None:
            samples.append((time.monotonic() - start, value))
        time.sleep(10)
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each clip / live run")
    parser.add_argument("--live", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--memory-minutes", type=float, default=0.0)
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="of the live runs")
    parser.add_argument("--skip-files", action="store_true", help="skip the file throughput table")
    parser.add_argument(
        "--rtsp", type=int, nargs="*", default=[], help="live streams from the RTSP test server: N clients"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_infer"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"{processor_name()}, {os.cpu_count()} cores; preset {args.preset}, backend {args.backend}")
    model = export(args.preset, args.out)
    files = clips(args.out, 8, args.seconds)
    backend = ["--backend", args.backend]

    if not args.skip_files:
        rate8, _ = pipeline_rate(model, args.backend, 8)
        rate1, _ = pipeline_rate(model, args.backend, 1)
        run8 = infer(model, files, *backend, "--batch", "8")
        run1 = infer(model, files, *backend, "--batch", "1")
        e2e8 = run8["results"] / run8["seconds"]
        e2e1 = run1["results"] / run1["seconds"]
        print_table(
            f"throughput, 8 file streams of {args.seconds:.0f} s (windows per second)",
            ["what", "windows/s", "ratio", "target"],
            [
                ["pipeline alone, batch 8", f"{rate8:.2f}", "", ""],
                ["strg infer --batch 8", f"{e2e8:.2f}", f"{e2e8 / rate8:.2f} of the pipeline", ">= 0.9"],
                ["pipeline alone, batch 1", f"{rate1:.2f}", "", ""],
                ["strg infer --batch 1", f"{e2e1:.2f}", f"batch 8 / batch 1 = {e2e8 / e2e1:.2f}", ">= 0.95"],
            ],
        )
    rows = []
    for count in args.live:
        sources = files[:count] if count <= len(files) else [files[k % len(files)] for k in range(count)]
        run = infer(model, sources, *backend, "--realtime", "--max-wait-ms", str(args.max_wait_ms))
        rows.append(live_row(run, count, model, args.backend, args.max_wait_ms))
    print_table(
        f"live: N streams at 12 fps, --realtime for {args.seconds:.0f} s, --max-wait-ms {args.max_wait_ms:g}",
        LIVE_COLUMNS,
        rows,
    )
    if args.rtsp:
        rows = []
        server = RtspServer().start()
        try:
            for count in args.rtsp:
                urls = [server.url("live")] * count  # N sessions of the server's 12 fps test pattern
                run = infer(
                    model,
                    urls,
                    *backend,
                    "--duration",
                    str(args.seconds),
                    "--max-wait-ms",
                    str(args.max_wait_ms),
                )
                rows.append(live_row(run, count, model, args.backend, args.max_wait_ms))
        finally:
            server.stop()
        print_table(
            f"live: N sessions of the RTSP test server's 12 fps stream for {args.seconds:.0f} s",
            LIVE_COLUMNS,
            rows,
        )
    if args.memory_minutes:
        long = args.out / "long.mp4"
        if not long.exists():
            write_clip(long, 11, seconds=args.memory_minutes * 60 + 30, size=(320, 240))
        samples = memory_run(model, long, args.backend, args.memory_minutes)
        after = [mb for t, mb in samples if t >= 60] or [mb for _, mb in samples]
        spread = (max(after) - min(after)) / min(after) if after else float("nan")
        print_table(
            f"resident memory, one realtime stream for {args.memory_minutes:g} min (sampled every 10 s)",
            ["first", "after 1 min: min", "max", "spread", "target"],
            [
                [
                    f"{samples[0][1]:.0f} MB" if samples else "-",
                    f"{min(after):.0f} MB",
                    f"{max(after):.0f} MB",
                    f"{100 * spread:.1f} %",
                    "met" if spread <= 0.05 else "missed",
                ]
            ],
        )


if __name__ == "__main__":
    main()
