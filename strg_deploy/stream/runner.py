"""`strg infer`'s engine room: readers feed windows to the batcher, batches run on the pipeline, results go
to the sinks.

    reader thread per stream --Frame--> WindowBuilder --Window--> StreamQueue
                                                                     |  Batcher (fair, max_wait)
    main thread: batch of windows -> Pipeline.run(clips [B, 3, T, S, S]) -> WindowResult -> sinks

Decoding and window building run in the readers' threads, concurrently with inference in the calling
thread. What is in flight is bounded by the queues (``queue_windows`` per file stream,
``live_queue_windows`` per live one) and one batch. The run ends when every stream has ended (files) or
given up (cameras past ``--max-retries``), when ``max_windows`` results were made, after ``duration``
seconds, or when :meth:`InferenceRunner.stop` is called (the CLI calls it on SIGINT and SIGTERM):
readers are stopped and joined (an RTSP session sends its TEARDOWN as its container closes), windows
still queued are counted as ``unprocessed``, and the sinks are closed, so every output file ends with a
whole line.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from strg_deploy.engines.pipeline import Pipeline
from strg_deploy.stream.batcher import Batcher, StreamQueue
from strg_deploy.stream.types import Frame, SourceSpec, Window, WindowResult


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a run batches and windows: ``batch`` (at most, and at most what the backend takes; a batch
    closes early at the size the backend was tuned for, :meth:`Pipeline.preferred_clips`),
    ``max_wait`` seconds a batch waits for more windows after its first, ``window`` and ``stride``
    (seconds; None: the model's span and half of it), ``queue_windows`` per file stream and
    ``live_queue_windows`` per live stream (1: only a camera's newest window waits, so when the model
    cannot keep up the lag stays about one round over the streams instead of growing with a deeper queue),
    ``max_windows`` results (None: no bound), ``duration`` seconds (None: no bound)."""

    batch: int = 8
    max_wait: float = 0.02
    window: float | None = None
    stride: float | None = None
    queue_windows: int = 4
    live_queue_windows: int = 1
    max_windows: int | None = None
    duration: float | None = None


@dataclasses.dataclass
class RunSummary:
    """What a run did: results made, windows dropped (live queues full), windows left unprocessed at a
    stop, streams that failed (name -> last message), and the wall seconds it took."""

    results: int = 0
    dropped: int = 0
    unprocessed: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False  # ended by stop() (a signal), not by its data or a bound


def results_of(batch: Sequence[Window], predictions, started: float, now_wall: float) -> list[WindowResult]:
    """One WindowResult per window of ``batch`` from the pipeline's Predictions of their stacked clips:
    boxes mapped to source pixels, latency since ``started`` (monotonic), lag since each window's last
    frame arrived (wall clock)."""
    latency = time.monotonic() - started
    out = []
    for i, window in enumerate(batch):
        out.append(
            WindowResult(
                window=window,
                probabilities=predictions.probabilities[i],
                boxes=window.transform.to_source(predictions.boxes[i]),
                scores=predictions.scores[i],
                mask=predictions.mask[i],
                latency=latency,
                lag=max(0.0, now_wall - window.wall_end),
                batch=len(batch),
            )
        )
    return out


class InferenceRunner:
    """Runs ``pipeline`` over ``specs`` (see the module docstring).

    ``make_reader(spec, on_frame, on_event) -> reader`` builds a started-later reader (with ``start()``,
    ``stop()``, ``join(timeout)``) for a stream; ``make_builder(spec) -> builder`` its window builder
    (``push(frame) -> [Window]``, ``flush() -> [Window]``). ``on_result(result)`` sees every result in
    order of completion, ``on_event(event)`` every reader event, ``on_batch(size, seconds)`` every batch.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        specs: Sequence[SourceSpec],
        settings: RunSettings,
        make_reader: Callable,
        make_builder: Callable,
        on_result: Callable[[WindowResult], None],
        on_event: Callable[[object], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        limit = pipeline.max_clips()
        self.pipeline = pipeline
        self.settings = settings
        batch = min(settings.batch, limit or settings.batch)
        self.batcher = Batcher(batch, settings.max_wait, preferred=pipeline.preferred_clips())
        self.stop_event = threading.Event()
        self._timed_out = False
        self.summary = RunSummary()
        self._on_result = on_result
        self._on_event = on_event
        self._on_batch = on_batch
        self._queues: dict[str, StreamQueue] = {}
        self._readers = {}
        for spec in specs:
            capacity = settings.live_queue_windows if spec.live else settings.queue_windows
            queue = self.batcher.queue(spec.name, capacity, spec.live)
            builder = make_builder(spec)
            self._queues[spec.name] = queue
            on_frame = self._frame_handler(queue, builder)
            self._readers[spec.name] = make_reader(spec, on_frame, self._event_handler(spec, queue, builder))

    def _frame_handler(self, queue: StreamQueue, builder) -> Callable[[Frame], None]:
        def on_frame(frame: Frame) -> None:
            for window in builder.push(frame):
                queue.put(window, self.stop_event)

        return on_frame

    def _event_handler(self, spec: SourceSpec, queue: StreamQueue, builder) -> Callable[[object], None]:
        def on_event(event) -> None:
            kind = getattr(event, "kind", None)
            if kind == "ended":
                for window in builder.flush():
                    queue.put(window, self.stop_event)
            crashed = (
                getattr(self._readers.get(spec.name), "error", None) is not None
            )  # a bug, not the source
            if kind in ("ended", "gave_up", "stopped") or (kind == "failed" and (crashed or not spec.live)):
                if kind != "ended" and kind != "stopped":
                    self.summary.failed[spec.name] = getattr(event, "message", kind)
                queue.close()
            if self._on_event is not None:
                self._on_event(event)

        return on_event

    def stop(self) -> None:
        """Ask the run to end (thread-safe, and safe from a signal handler)."""
        self.stop_event.set()

    def _time_up(self) -> None:
        self._timed_out = True
        self.stop_event.set()

    def run(self) -> RunSummary:
        """Run until an end condition (module docstring); returns the summary."""
        started = time.monotonic()
        settings = self.settings
        timer = None
        if settings.duration is not None:
            timer = threading.Timer(settings.duration, self._time_up)
            timer.daemon = True
            timer.start()
        for reader in self._readers.values():
            reader.start()
        try:
            self.warm_up()  # while the readers open their sources and fill their first windows
            while not self.stop_event.is_set():
                batch = self.batcher.next_batch(self.stop_event)
                if not batch:
                    break
                self._run_batch(batch)
                if settings.max_windows is not None and self.summary.results >= settings.max_windows:
                    break
        finally:
            if timer is not None:
                timer.cancel()
            self.summary.stopped = self.stop_event.is_set() and not self._timed_out
            self.stop_event.set()
            for reader in self._readers.values():
                reader.stop()
            for reader in self._readers.values():
                reader.join(10.0)
            self.summary.dropped = sum(q.dropped for q in self._queues.values())
            self.summary.unprocessed = self.batcher.pending()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def warm_up(self) -> list[int]:
        """Runs of the pipeline on blank clips while the readers open their sources (a window needs
        seconds of frames first), so that the runtimes' first-run costs (allocations, kernel selection,
        and for a runtime that prepares each new input shape, that shape) are not paid by the first
        windows of live streams: batches of 1 clip, then, when a stream is live, of 2, 3, ... up to the
        batches this run can make (``max_batch``, at most one window per live stream), stopping as soon
        as a window waits. Returns the batch sizes run."""
        cfg = self.pipeline.cfg
        live = sum(queue.live for queue in self.batcher.queues.values())
        sizes = []
        for size in range(1, max(1, min(self.batcher.max_batch, live)) + 1):
            if sizes and (self.batcher.pending() or self.stop_event.is_set()):
                break
            self.pipeline.run(np.zeros((size, 3, cfg.frames, cfg.size, cfg.size), np.uint8))
            sizes.append(size)
        return sizes

    def _run_batch(self, batch: list[Window]) -> None:
        started = time.monotonic()
        if self.settings.max_windows is not None:
            batch = batch[: self.settings.max_windows - self.summary.results]
        clips = np.stack([w.clip for w in batch])
        predictions = self.pipeline.run(clips)
        if self._on_batch is not None:
            self._on_batch(len(batch), time.monotonic() - started)
        for result in results_of(batch, predictions, started, time.time()):
            self.summary.results += 1
            self._on_result(result)
