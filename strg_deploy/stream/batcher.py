"""Windows from many streams into batches: per-stream queues and a fair, deadline-bounded batcher.

Each stream has a :class:`StreamQueue` of windows waiting for the model:

- a FILE stream's queue blocks its producer when full (backpressure): the reader stops decoding until
  the model catches up, so nothing is dropped and the results equal a one-at-a-time run;
- a LIVE stream's queue never blocks (the reader must keep draining the camera): when it is full the
  OLDEST window is dropped and counted, so predictions stay current instead of falling behind.

:class:`Batcher` takes up to ``max_batch`` windows per batch, one per stream per round (round robin,
starting after the stream served first last time), so a busy stream cannot starve the others. A batch
closes when full or when ``max_wait`` seconds have passed since its first window was taken. With a
``preferred`` size (a backend's tuned batch, such as a TensorRT engine's optimisation profile), a batch
closes as soon as it holds that many, and windows already waiting still join it up to ``max_batch``. A
batch also closes at once when every stream is live and each open one has a window in it: no camera can
add another within the wait (its next window is a stride away), so waiting would only add lag. What is in
flight is bounded: the queues' capacities plus one batch.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from strg_deploy.stream.types import Window


class StreamQueue:
    """Windows of one stream waiting for the model (module docstring). ``capacity``: windows held;
    ``live``: drop the oldest when full (else block the producer). ``dropped`` counts dropped windows."""

    def __init__(self, stream: str, capacity: int, live: bool, notify: threading.Condition):
        if capacity < 1:
            raise ValueError("a stream queue holds at least one window")
        self.stream = stream
        self.capacity = capacity
        self.live = live
        self.dropped = 0
        self.closed = False
        self._items: collections.deque[Window] = collections.deque()
        self._ready = notify  # shared with the batcher: signalled on every put and close

    def __len__(self) -> int:
        return len(self._items)

    def put(self, window: Window, stop: threading.Event | None = None) -> bool:
        """Queue ``window``. A file stream's queue waits while full (until ``stop`` is set: then the window
        is not queued and False is returned); a live one drops its oldest window instead."""
        with self._ready:
            if self.live:
                if len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.capacity:
                    if stop is not None and stop.is_set():
                        return False
                    self._ready.wait(0.1)
            self._items.append(window)
            self._ready.notify_all()
            return True

    def close(self) -> None:
        """No more windows will come (the stream ended or failed)."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def _take(self) -> Window | None:
        return self._items.popleft() if self._items else None


class Batcher:
    """Fair batches over the queues it creates (:meth:`queue`); see the module docstring."""

    def __init__(
        self,
        max_batch: int,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
        preferred: int | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.preferred = max_batch if preferred is None else max(1, min(preferred, max_batch))
        self.max_wait = max_wait
        self._clock = clock
        self._ready = threading.Condition()
        self._queues: dict[str, StreamQueue] = {}
        self._next = 0  # round-robin position

    def queue(self, stream: str, capacity: int, live: bool) -> StreamQueue:
        """The queue of a new stream."""
        with self._ready:
            queue = StreamQueue(stream, capacity, live, self._ready)
            self._queues[stream] = queue
            return queue

    @property
    def queues(self) -> dict[str, StreamQueue]:
        return dict(self._queues)

    def finished(self) -> bool:
        """Every queue closed and empty (and at least one queue): no window will come any more."""
        with self._ready:  # a reentrant lock: next_batch calls this while holding it
            return bool(self._queues) and all(q.closed and not len(q) for q in self._queues.values())

    def pending(self) -> int:
        """Windows waiting in all queues."""
        with self._ready:
            return sum(len(q) for q in self._queues.values())

    def _round(self, limit: int) -> list[Window]:
        """Up to ``limit`` windows, one per stream per round, starting at the round-robin position."""
        taken: list[Window] = []
        names = list(self._queues)
        if not names:
            return taken
        while len(taken) < limit:
            got = False
            start = self._next % len(names)
            for offset in range(len(names)):
                if len(taken) >= limit:
                    break
                window = self._queues[names[(start + offset) % len(names)]]._take()
                if window is not None:
                    taken.append(window)
                    got = True
            if not got:
                break
        self._next = (self._next + 1) % len(names)
        return taken

    def _every_camera_in(self, batch: list[Window]) -> bool:
        """Whether every open queue is a live stream's and each has a window in ``batch``."""
        open_queues = [q for q in self._queues.values() if not q.closed]
        if not open_queues or not all(q.live for q in open_queues):
            return False
        streams = {w.stream for w in batch}
        return all(q.stream in streams for q in open_queues)

    def next_batch(self, stop: threading.Event | None = None, poll: float = 0.05) -> list[Window]:
        """The next batch: waits for a first window, then for more until the batch holds ``preferred``
        windows (``max_batch`` unless given) or ``max_wait`` has passed since the first, taking what is
        already waiting up to ``max_batch``; wakes up to put windows in ``self._queues`` notifications.
        Returns [] when every queue is closed and empty, or when ``stop`` is set."""
        with self._ready:
            batch: list[Window] = []
            while not batch:
                if stop is not None and stop.is_set():
                    return []
                batch = self._round(self.max_batch)
                if batch:
                    break
                if self.finished():
                    return []
                self._ready.wait(poll)
            self._ready.notify_all()  # producers blocked on a full file queue may go on
            deadline = self._clock() + self.max_wait
            while len(batch) < self.max_batch:
                more = self._round(self.max_batch - len(batch))
                if more:
                    batch.extend(more)
                    self._ready.notify_all()
                    continue
                if len(batch) >= self.preferred or self._every_camera_in(batch):
                    break
                left = deadline - self._clock()
                if left <= 0 or self.finished():
                    break
                if stop is not None and stop.is_set():
                    break
                self._ready.wait(min(left, poll))
            return batch
