"""`strg infer`: an export (or a checkpoint with the torch backend) over video files and RTSP cameras."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from strg_deploy.cli.common import PlainUsage, reports_errors, warn
from strg_deploy.errors import StrgError
from strg_deploy.fileio import writable_file, writable_folder

BACKEND_NAMES = ("auto", "onnxruntime", "openvino", "torch", "tensorrt", "onnxruntime-cuda")


def register(app: typer.Typer) -> None:
    """Add `strg infer` to ``app``."""
    app.command("infer", cls=PlainUsage)(infer_command)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop()`` on SIGINT and SIGTERM while the block runs (main thread only); restore after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_pipeline(model: Path, backend: str, threads: int, verify: bool):
    from strg_deploy.engines.pipeline import Pipeline

    if backend not in BACKEND_NAMES:
        raise StrgError(f"--backend must be one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
    if verify and backend != "torch":
        from strg_deploy.engines.verify import verify_export

        result = verify_export(model, backend, threads=threads)
        if not result.passed:
            bad = next(r for r in result.rows if not r.passed)
            raise StrgError(
                f"{model} fails verification on {backend} ({bad.network}: {bad.output or 'files'}); "
                f"see strg verify {model} --backend {backend}"
            )
        return result.pipeline  # the verified export, loaded once
    return Pipeline.load(model, backend, threads=threads)


@reports_errors
def infer_command(
    model: Annotated[
        Path,
        typer.Argument(
            help="An export folder (strg export --out DIR), or a checkpoint with --backend torch."
        ),
    ],
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Video files, globs ('clips/*.mp4') and rtsp:// URLs.", metavar="SOURCE..."),
    ] = None,
    sources_file: Annotated[
        Path | None,
        typer.Option("--sources-file", help="One source per line: [name=NAME] URL [key=value ...]."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="auto, onnxruntime, openvino, torch, tensorrt (strg engine build) or onnxruntime-cuda.",
        ),
    ] = "auto",
    decode: Annotated[
        str,
        typer.Option(
            "--decode",
            help="Decode video on the cpu, on cuda (NVDEC), or auto (cuda where a GPU decodes, else cpu).",
        ),
    ] = "cpu",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Most windows per batch.")] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="How long a batch waits for more windows.")
    ] = 20.0,
    window: Annotated[
        float | None,
        typer.Option("--window", min=0.1, help="Window length in seconds (default: the model's span)."),
    ] = None,
    stride: Annotated[
        float | None,
        typer.Option("--stride", min=0.05, help="Seconds between windows (default: half a window)."),
    ] = None,
    geometry: Annotated[
        str, typer.Option("--geometry", help="crop (resize + centre crop), letterbox, or roi (sources file).")
    ] = "crop",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Labels per prediction.")] = 5,
    boxes: Annotated[
        int,
        typer.Option("--boxes", min=0, help="Top proposals per frame in each prediction, in source pixels."),
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Predictions as JSON lines (default: stdout).")
    ] = None,
    events: Annotated[Path | None, typer.Option("--events", help="Action events as JSON lines.")] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0, max=1, help="Event threshold.")] = 0.5,
    background: Annotated[
        str | None, typer.Option("--background", help="A class that never makes events.")
    ] = None,
    smoothing: Annotated[int, typer.Option("--smoothing", min=1, help="Windows averaged for events.")] = 3,
    video_out: Annotated[
        Path | None, typer.Option("--video-out", help="Folder for an annotated video per stream.")
    ] = None,
    realtime: Annotated[
        bool,
        typer.Option("--realtime", help="Read files at their frame rate, as cameras (drops when behind)."),
    ] = False,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0, help="Stop after these seconds.")
    ] = None,
    max_windows: Annotated[
        int | None, typer.Option("--max-windows", min=1, help="Stop after this many predictions.")
    ] = None,
    max_retries: Annotated[
        int | None, typer.Option("--max-retries", min=0, help="Reconnects per camera (default: keep trying).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to open a source and to wait for each read.")
    ] = 5.0,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus metrics here.")
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics-out", help="Metrics snapshots as JSON lines.")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Runtime threads (0: its default).")] = 0,
    verify: Annotated[
        bool, typer.Option("--verify", help="Verify the export on the backend against its reference first.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON.")] = False,
) -> None:
    """Run a model over video files and RTSP cameras: sliding windows per stream, batched across streams,
    predictions as JSON lines. Files are read as fast as the model goes (nothing dropped); cameras are
    drained continuously and, when the model falls behind, their oldest windows are dropped and counted.
    A source that cannot be read is reported in one line and the others go on. SIGINT or SIGTERM stop
    the run cleanly. Exit status: 0 when every source was read to its end (or the run was stopped or hit
    --duration or --max-windows), 1 when a source could not be used or failed (the others were read), 2
    for bad usage, no usable source, or a model that cannot load."""
    from strg_deploy.stream.geometry import GEOMETRIES, Geometry
    from strg_deploy.stream.metrics import Metrics, MetricsLog, PrometheusExporter
    from strg_deploy.stream.monitor import Monitor
    from strg_deploy.stream.reader import StreamReader
    from strg_deploy.stream.retry import RetryPolicy
    from strg_deploy.stream.runner import InferenceRunner, RunSettings
    from strg_deploy.stream.sinks import EventDetector, EventWriter, PredictionWriter
    from strg_deploy.stream.sources import parse_sources
    from strg_deploy.stream.windows import WindowBuilder

    if geometry not in GEOMETRIES or geometry == "roi":
        raise StrgError(
            f"--geometry must be crop or letterbox (roi: per stream, in --sources-file), got {geometry!r}"
        )
    from strg_deploy.data.gpu_decode import resolve_decode

    decode = resolve_decode(decode, notice=warn)
    specs, problems = parse_sources(sources or [], sources_file, realtime=realtime)
    for problem in problems:
        warn(problem)
    if not specs:
        raise StrgError("no source to read: give video files, globs, rtsp:// URLs or --sources-file")
    for path in (out, events, metrics_out):  # where the run will write, checked before any work
        if path is not None:
            writable_file(path, overwrite=overwrite)
    if video_out is not None:
        from strg_deploy.stream.annotate import video_name

        writable_folder(video_out)
        for spec in specs:
            writable_file(video_out / video_name(spec.name), overwrite=overwrite)
    pipeline = _load_pipeline(model, backend, threads, verify)
    cfg = pipeline.cfg
    window_seconds = window or cfg.span_seconds
    stride_seconds = stride or window_seconds / 2
    settings = RunSettings(
        batch=batch,
        max_wait=max_wait_ms / 1000,
        window=window_seconds,
        stride=stride_seconds,
        max_windows=max_windows,
        duration=duration,
    )
    metrics = Metrics()
    retry = RetryPolicy(max_retries=max_retries)
    videos: dict[str, object] = {}
    with contextlib.ExitStack() as outputs:
        writer = outputs.enter_context(
            contextlib.closing(PredictionWriter(out, pipeline.classes, top_k, boxes, overwrite=overwrite))
        )
        detector = event_writer = None
        if events is not None:
            event_writer = outputs.enter_context(contextlib.closing(EventWriter(events, overwrite=overwrite)))
            detector = EventDetector(pipeline.classes, threshold, background, smoothing)
        log = None
        if metrics_out is not None:
            log = outputs.enter_context(contextlib.closing(MetricsLog(metrics_out, overwrite=overwrite)))
        exporter = None
        if metrics_port is not None:
            exporter = outputs.enter_context(contextlib.closing(PrometheusExporter(metrics_port)))

        def make_builder(spec):
            return WindowBuilder(spec.name, cfg.frames, window_seconds, stride_seconds)

        def make_reader(spec, on_frame, on_event):
            mode = spec.options.get("geometry", geometry)
            plan = Geometry(cfg.size, mode=mode, roi=spec.options.get("roi"))
            counter = metrics.stream(spec.name)

            def counted(frame):
                counter.count_frames()
                on_frame(frame)

            return StreamReader(
                spec,
                counted,
                plan,
                retry=retry,
                open_timeout=timeout,
                read_timeout=timeout,
                on_event=on_event,
                decode=decode,
            )

        def on_event(event) -> None:
            counter = metrics.stream(event.stream)
            if event.kind == "reconnected":
                counter.count_reconnect()
            if event.kind == "failed":
                counter.count_failure()
            if event.kind in ("failed", "gave_up"):
                warn(f"{event.stream}: {event.message}")

        def on_result(result) -> None:
            metrics.stream(result.window.stream).count_window()
            metrics.stream(result.window.stream).count_prediction(result.latency, result.lag)
            writer.write(result)
            if detector is not None:
                for found in detector.update(result):
                    event_writer.write(found)
            if video_out is not None:
                name = result.window.stream
                if name not in videos:
                    from strg_deploy.stream.annotate import AnnotatedVideo

                    fps = cfg.frames / window_seconds
                    videos[name] = outputs.enter_context(
                        contextlib.closing(
                            AnnotatedVideo(
                                video_out, name, fps, classes=pipeline.classes, overwrite=overwrite
                            )
                        )
                    )
                videos[name].write(result)

        runner = InferenceRunner(pipeline, specs, settings, make_reader, make_builder, on_result, on_event)
        live = None
        if out is not None and not as_json and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            live = outputs.enter_context(Live(console=Console(stderr=True), refresh_per_second=2))
        monitor = Monitor(metrics, runner.batcher, live=live, log=log, exporter=exporter)
        monitor.start()
        try:
            with stop_on_signals(runner.stop):
                summary = runner.run()
        finally:
            snapshot = monitor.stop()
            if detector is not None:
                for found in detector.finish():
                    event_writer.write(found)
    record = {
        "results": summary.results,
        "dropped": summary.dropped,
        "unprocessed": summary.unprocessed,
        "failed": summary.failed,
        "problems": problems,
        "seconds": round(summary.seconds, 3),
        "stopped": summary.stopped,
        "metrics": snapshot,
    }
    if as_json:
        typer.echo(json.dumps(record), err=out is None)
    else:
        print(
            f"{summary.results} predictions from {len(specs)} stream(s) in {summary.seconds:.1f} s; "
            f"{summary.dropped} windows dropped, {summary.unprocessed} unprocessed"
            + (f"; failed: {', '.join(summary.failed)}" if summary.failed else ""),
            file=sys.stderr,
        )
    if summary.failed or problems:
        raise typer.Exit(1)
