"""Run figures of `strg infer`: counters per stream, a live rich table, JSON lines and Prometheus.

    metrics = Metrics()
    cam = metrics.stream("cam1")              # created on first use; thread-safe
    cam.count_frames(1); cam.count_window(); cam.count_prediction(result.latency, result.lag)
    cam.count_drop(); cam.count_reconnect(); cam.count_failure(); cam.set_queue(3)
    snapshot = metrics.snapshot()             # JSON-able dict, schema "strg-infer-metrics"
    log = MetricsLog(Path("metrics.jsonl"), every_seconds=10); log.tick(metrics)
    live.update(live_table(snapshot))         # inside a rich.live.Live
    exporter = PrometheusExporter(9400); exporter.update(snapshot); exporter.close()

Latency and lag percentiles are over each stream's last :data:`SAMPLES` results (numpy's linear
interpolation); ``fps`` counts the frames decoded over the last :data:`FPS_SPAN` seconds of wall time
(over the time since the stream's first frame while that is shorter, but at least
:data:`MIN_FPS_SPAN`). Stream names are the only labels:
they never hold URLs or credentials (see :class:`~strg_deploy.stream.types.SourceSpec`). Nothing here
imports torch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from strg_deploy.errors import StrgError
from strg_deploy.stream.sinks import JsonLinesWriter
from strg_deploy.stream.types import SCHEMA_VERSION

__all__ = [
    "COUNTERS",
    "FPS_SPAN",
    "METRICS_SCHEMA",
    "MIN_FPS_SPAN",
    "SAMPLES",
    "Metrics",
    "MetricsLog",
    "PrometheusExporter",
    "StreamMetrics",
    "live_table",
    "percentiles",
]

METRICS_SCHEMA = "strg-infer-metrics"
SAMPLES = 1000
"""Latency and lag samples kept per stream for the percentiles."""
FPS_SPAN = 5.0
"""Seconds of wall time over which ``fps`` counts decoded frames."""
MIN_FPS_SPAN = 1.0
"""Seconds: the least time ``fps`` divides by (a stream's first frames do not make a huge rate)."""
COUNTERS = ("windows", "predictions", "dropped", "reconnects", "failures", "frames")
"""The counters of a stream: windows built, predictions made, windows dropped (live streams falling
behind), reconnects, failures (a source that failed to open or broke off), frames decoded."""


def percentiles(samples: Iterable[float]) -> dict[str, float] | None:
    """{"p50", "p90", "p99"} of ``samples`` in milliseconds (the samples are seconds), rounded to 1e-3;
    None without samples."""
    values = np.fromiter(samples, dtype=np.float64)
    if values.size == 0:
        return None
    p50, p90, p99 = np.percentile(values * 1000.0, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}


class StreamMetrics:
    """The figures of one stream. Every method is thread-safe; ``now`` arguments are monotonic seconds
    (``time.monotonic``; given in tests)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._queue = 0
        self._latency: deque[float] = deque(maxlen=SAMPLES)
        self._lag: deque[float] = deque(maxlen=SAMPLES)
        self._frame_times: deque[tuple[float, int]] = deque()  # (when, frames), oldest first
        self._first_frame: float | None = None

    def _add(self, counter: str, n: int) -> None:
        with self._lock:
            self._counts[counter] += n

    def count_window(self, n: int = 1) -> None:
        """Windows built from the stream."""
        self._add("windows", n)

    def count_drop(self, n: int = 1) -> None:
        """Windows dropped because inference fell behind."""
        self._add("dropped", n)

    def count_reconnect(self, n: int = 1) -> None:
        """Reconnects of a live stream."""
        self._add("reconnects", n)

    def count_failure(self, n: int = 1) -> None:
        """Failures: an open that failed, a stream that broke off, an unreadable file."""
        self._add("failures", n)

    def count_prediction(self, latency: float, lag: float) -> None:
        """One prediction with its latency and lag (seconds, as in WindowResult)."""
        with self._lock:
            self._counts["predictions"] += 1
            self._latency.append(float(latency))
            self._lag.append(float(lag))

    def count_frames(self, n: int = 1, now: float | None = None) -> None:
        """``n`` frames decoded (at ``now``)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._counts["frames"] += n
            if self._first_frame is None:
                self._first_frame = now
            self._frame_times.append((now, n))
            self._forget(now)

    def set_queue(self, depth: int) -> None:
        """Windows of the stream waiting for inference (set by the runner)."""
        with self._lock:
            self._queue = int(depth)

    def _forget(self, now: float) -> None:
        while self._frame_times and self._frame_times[0][0] <= now - FPS_SPAN:
            self._frame_times.popleft()

    def fps(self, now: float | None = None) -> float:
        """Frames decoded per second over the last FPS_SPAN seconds (or since the first frame, at least
        MIN_FPS_SPAN seconds, while the stream is younger)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._forget(now)
            if self._first_frame is None:
                return 0.0
            span = max(min(FPS_SPAN, now - self._first_frame), MIN_FPS_SPAN)
            return sum(n for _, n in self._frame_times) / span

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """{counters..., "queue", "fps", "latency_ms": {"p50", "p90", "p99"} | None, "lag_ms": ...}."""
        fps = self.fps(now)
        with self._lock:
            counts, queue = dict(self._counts), self._queue
            latency, lag = list(self._latency), list(self._lag)
        return {
            **counts,
            "queue": queue,
            "fps": round(fps, 3),
            "latency_ms": percentiles(latency),
            "lag_ms": percentiles(lag),
        }

    def samples(self) -> tuple[list[float], list[float]]:
        """(latency, lag) samples kept, seconds."""
        with self._lock:
            return list(self._latency), list(self._lag)


class Metrics:
    """The figures of a run: a :class:`StreamMetrics` per stream (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, StreamMetrics] = {}
        self._started = clock()

    def stream(self, name: str) -> StreamMetrics:
        """The figures of stream ``name`` (created on first use)."""
        with self._lock:
            found = self._streams.get(name)
            if found is None:
                found = self._streams[name] = StreamMetrics(name, self._clock)
            return found

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """{"schema": "strg-infer-metrics", "version", "time" (unix seconds), "uptime_s", "streams":
        {name: StreamMetrics.snapshot()}, "total": the counters, queue and fps summed over streams and
        the percentiles of all streams' samples together}."""
        now = self._clock() if now is None else now
        with self._lock:
            streams = dict(self._streams)
        per_stream = {name: m.snapshot(now) for name, m in sorted(streams.items())}
        total: dict[str, Any] = {
            key: sum(s[key] for s in per_stream.values()) for key in (*COUNTERS, "queue")
        }
        total["fps"] = round(sum(s["fps"] for s in per_stream.values()), 3)
        samples = [m.samples() for m in streams.values()]
        total["latency_ms"] = percentiles(x for latency, _ in samples for x in latency)
        total["lag_ms"] = percentiles(x for _, lag in samples for x in lag)
        return {
            "schema": METRICS_SCHEMA,
            "version": SCHEMA_VERSION,
            "time": round(time.time(), 3),
            "uptime_s": round(now - self._started, 3),
            "streams": per_stream,
            "total": total,
        }


class MetricsLog(JsonLinesWriter):
    """Snapshots as JSON lines, to ``path`` (None: standard output), at most one per ``every_seconds``
    when driven by :meth:`tick`; refuses an existing file unless ``overwrite``."""

    def __init__(
        self,
        path: Path | None,
        every_seconds: float = 10.0,
        *,
        overwrite: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every_seconds > 0:
            raise StrgError(f"the metrics interval must be positive, got {every_seconds}")
        self.every_seconds = float(every_seconds)
        self._clock = clock
        self._last: float | None = None
        super().__init__(path, overwrite=overwrite)

    def tick(self, metrics: Metrics, now: float | None = None) -> bool:
        """Write a snapshot of ``metrics`` when ``every_seconds`` have passed since the last one (or
        none was written yet); return whether one was written."""
        now = self._clock() if now is None else now
        if self._last is not None and now - self._last < self.every_seconds:
            return False
        self.write(metrics.snapshot(now))
        self._last = now
        return True

    def write(self, snapshot: dict[str, Any]) -> None:
        """Write ``snapshot`` now (the final one at the end of a run, say)."""
        self.write_record(snapshot)


def _ms(value: dict[str, float] | None, key: str) -> str:
    return "-" if value is None else f"{value[key]:.1f}"


def live_table(snapshot: dict[str, Any]) -> Table:
    """A rich table of a :meth:`Metrics.snapshot` that fits 80 columns: a row per stream and, for more
    than one stream, a total row. Columns: stream, fps, lag p50 / p99 and latency p50 / p99 (ms),
    predictions, windows dropped, reconnects, failures, queue depth."""
    table = Table(title="strg infer", caption="lag and latency in ms", box=box.SIMPLE_HEAD, padding=(0, 0))
    table.add_column("stream", no_wrap=True, overflow="ellipsis", max_width=24)
    for header in ("fps", "lag50", "lag99", "lat50", "lat99", "preds", "drops", "reconn", "fails", "queue"):
        table.add_column(header, justify="right")

    def row(name: str, s: dict[str, Any], style: str | None = None) -> None:
        table.add_row(
            name,
            f"{s['fps']:.1f}",
            _ms(s["lag_ms"], "p50"),
            _ms(s["lag_ms"], "p99"),
            _ms(s["latency_ms"], "p50"),
            _ms(s["latency_ms"], "p99"),
            str(s["predictions"]),
            str(s["dropped"]),
            str(s["reconnects"]),
            str(s["failures"]),
            str(s["queue"]),
            style=style,
        )

    for name, figures in snapshot["streams"].items():
        row(name, figures)
    if len(snapshot["streams"]) != 1:
        table.add_section()
        row("total", snapshot["total"], style="bold")
    return table


class PrometheusExporter:
    """Serves the latest snapshot at ``http://HOST:PORT/metrics`` (prometheus-client, a registry of its
    own; HOST 127.0.0.1 unless given; port 0 picks a free one, see :attr:`port`).

    Counters (labelled ``stream``): ``strg_infer_windows_total``, ``strg_infer_predictions_total``,
    ``strg_infer_dropped_windows_total``, ``strg_infer_reconnects_total``, ``strg_infer_failures_total``,
    ``strg_infer_frames_decoded_total``. Gauges (``stream``): ``strg_infer_queue_depth``,
    ``strg_infer_fps``; (``stream``, ``quantile`` 0.5 / 0.9 / 0.99): ``strg_infer_latency_seconds``,
    ``strg_infer_lag_seconds``. Values are those of the last :meth:`update`."""

    _COUNTERS = {
        "windows": ("strg_infer_windows", "Windows built from the stream"),
        "predictions": ("strg_infer_predictions", "Predictions made"),
        "dropped": ("strg_infer_dropped_windows", "Windows dropped because inference fell behind"),
        "reconnects": ("strg_infer_reconnects", "Reconnects of a live stream"),
        "failures": ("strg_infer_failures", "Source failures (open, read, broken stream)"),
        "frames": ("strg_infer_frames_decoded", "Frames decoded"),
    }

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:  # pragma: no cover - a base dependency
            raise StrgError("--metrics-port needs prometheus-client: pip install prometheus-client") from None
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise StrgError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from None
        self.host = host
        self.port = int(self._server.server_address[1])

    def update(self, snapshot: dict[str, Any]) -> None:
        """Serve ``snapshot`` (a :meth:`Metrics.snapshot`) from now on."""
        with self._lock:
            self._snapshot = snapshot

    def describe(self) -> list:
        return []

    def collect(self):
        """prometheus-client's collector protocol: the metric families of the last snapshot."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            snapshot = self._snapshot
        streams = {} if snapshot is None else snapshot["streams"]
        for key, (name, doc) in self._COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["stream"])
            for stream, figures in streams.items():
                family.add_metric([stream], figures[key])
            yield family
        queue = GaugeMetricFamily(
            "strg_infer_queue_depth", "Windows waiting for inference", labels=["stream"]
        )
        fps = GaugeMetricFamily("strg_infer_fps", "Frames decoded per second (last 5 s)", labels=["stream"])
        for stream, figures in streams.items():
            queue.add_metric([stream], figures["queue"])
            fps.add_metric([stream], figures["fps"])
        yield queue
        yield fps
        for key, name, doc in (
            ("latency_ms", "strg_infer_latency_seconds", "Batch entry to result (last 1000 windows)"),
            ("lag_ms", "strg_infer_lag_seconds", "Last frame arriving to result (last 1000 windows)"),
        ):
            family = GaugeMetricFamily(name, doc, labels=["stream", "quantile"])
            for stream, figures in streams.items():
                values = figures[key]
                if values is not None:
                    for quantile, p in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
                        family.add_metric([stream, quantile], values[p] / 1000.0)
            yield family

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        server, self._server = getattr(self, "_server", None), None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PrometheusExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
