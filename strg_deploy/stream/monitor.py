"""The periodic side of a run: queue depths and drops into the metrics, then the live view, the metrics
log and the Prometheus endpoint, once per ``every`` seconds from a thread of its own."""

from __future__ import annotations

import threading
from typing import Any

from strg_deploy.stream.batcher import Batcher
from strg_deploy.stream.metrics import Metrics, MetricsLog, PrometheusExporter, live_table


class Monitor:
    """Keeps ``metrics`` current from ``batcher`` (queue depth and dropped windows per stream) and shows
    it: ``live`` (a rich ``Live``, or None), ``log`` (a MetricsLog, or None), ``exporter`` (a
    PrometheusExporter, or None). ``start()``, then ``stop()`` (a last update, the log's final snapshot)."""

    def __init__(
        self,
        metrics: Metrics,
        batcher: Batcher,
        *,
        live: Any = None,
        log: MetricsLog | None = None,
        exporter: PrometheusExporter | None = None,
        every: float = 1.0,
    ):
        self.metrics, self.batcher = metrics, batcher
        self.live, self.log, self.exporter = live, log, exporter
        self.every = every
        self._dropped: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="strg-monitor", daemon=True)

    def update(self) -> dict[str, Any]:
        """Bring the metrics up to date and show them; returns the snapshot."""
        for name, queue in self.batcher.queues.items():
            stream = self.metrics.stream(name)
            stream.set_queue(len(queue))
            new = queue.dropped - self._dropped.get(name, 0)
            if new > 0:
                stream.count_drop(new)
                self._dropped[name] = queue.dropped
        snapshot = self.metrics.snapshot()
        if self.live is not None:
            self.live.update(live_table(snapshot))
        if self.exporter is not None:
            self.exporter.update(snapshot)
        if self.log is not None:
            self.log.tick(self.metrics)
        return snapshot

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.update()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop the thread, update once more, write the log's final snapshot; returns the snapshot."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        snapshot = self.update()
        if self.log is not None:
            self.log.write(snapshot)
        return snapshot
