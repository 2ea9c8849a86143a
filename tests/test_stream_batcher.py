"""The batcher across streams: backpressure for files, drop-oldest for cameras, fairness, deadlines."""

from __future__ import annotations

import threading
import time

import numpy as np

from strg_deploy.stream.batcher import Batcher
from strg_deploy.stream.types import Window


def window(stream: str, k: int) -> Window:
    return Window(stream, k, np.zeros((3, 2, 4, 4), np.uint8), float(k), k + 1.0, time.time())


def test_a_full_file_queue_blocks_its_producer_until_the_batcher_takes():
    batcher = Batcher(max_batch=2, max_wait=0.0)
    queue = batcher.queue("file", capacity=2, live=False)
    put = []

    def produce():
        for k in range(5):
            queue.put(window("file", k))
            put.append(k)
        queue.close()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert put == [0, 1]  # the third waits: nothing is dropped
    seen = []
    while batch := batcher.next_batch():
        seen += [w.sequence for w in batch]
    producer.join(5)
    assert seen == [0, 1, 2, 3, 4] and queue.dropped == 0 and batcher.finished()


def test_a_full_live_queue_drops_its_oldest_windows_and_counts_them():
    batcher = Batcher(max_batch=8, max_wait=0.0)
    queue = batcher.queue("camera", capacity=3, live=True)
    for k in range(10):
        assert queue.put(window("camera", k))
    assert queue.dropped == 7
    assert [w.sequence for w in batcher.next_batch()] == [7, 8, 9]  # the newest stay


def test_batches_take_one_window_per_stream_per_round():
    batcher = Batcher(max_batch=4, max_wait=0.0)
    busy = batcher.queue("busy", capacity=10, live=False)
    quiet = batcher.queue("quiet", capacity=10, live=False)
    for k in range(6):
        busy.put(window("busy", k))
    quiet.put(window("quiet", 0))
    first = [(w.stream, w.sequence) for w in batcher.next_batch()]
    assert first == [("busy", 0), ("quiet", 0), ("busy", 1), ("busy", 2)]


def test_a_batch_closes_at_its_deadline_or_when_full():
    batcher = Batcher(max_batch=4, max_wait=0.2)
    queue = batcher.queue("s", capacity=10, live=False)  # a file: more may come within the wait
    queue.put(window("s", 0))
    start = time.monotonic()
    assert len(batcher.next_batch()) == 1
    waited = time.monotonic() - start
    assert 0.15 <= waited < 1.0
    for k in range(4):
        queue.put(window("s", k))
    start = time.monotonic()
    assert len(batcher.next_batch()) == 4
    assert time.monotonic() - start < 0.15  # full: no wait


def test_a_window_arriving_within_the_deadline_joins_the_batch():
    batcher = Batcher(max_batch=2, max_wait=1.0)
    queue = batcher.queue("s", capacity=10, live=False)  # a file: more may come within the wait
    queue.put(window("s", 0))
    threading.Timer(0.1, lambda: queue.put(window("s", 1))).start()
    start = time.monotonic()
    assert [w.sequence for w in batcher.next_batch()] == [0, 1]
    assert time.monotonic() - start < 0.8


def test_stop_and_closed_queues_end_next_batch():
    batcher = Batcher(max_batch=2, max_wait=0.0)
    queue = batcher.queue("s", capacity=1, live=False)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert batcher.next_batch(stop) == []
    queue.put(window("s", 0))
    assert not queue.put(window("s", 1), stop)  # a blocked producer gives up once stopped
    queue.close()
    assert [w.sequence for w in batcher.next_batch()] == [0]
    assert batcher.next_batch() == [] and batcher.finished()


def test_a_preferred_size_closes_a_batch_early_and_waiting_windows_still_join():
    batcher = Batcher(max_batch=4, max_wait=5.0, preferred=2)
    queue = batcher.queue("s", capacity=10, live=False)  # a file: more may come within the wait
    queue.put(window("s", 0))
    threading.Timer(0.1, lambda: queue.put(window("s", 1))).start()
    start = time.monotonic()
    assert [w.sequence for w in batcher.next_batch()] == [0, 1]  # at 2, without waiting 5 s for 4
    assert time.monotonic() - start < 2.0
    for k in range(2, 7):
        queue.put(window("s", k))
    assert [w.sequence for w in batcher.next_batch()] == [2, 3, 4, 5]  # waiting windows fill up to 4
    assert Batcher(max_batch=4, max_wait=0.0, preferred=9).preferred == 4


def test_a_camera_queue_holds_its_newest_window_and_a_file_queue_four():
    from types import SimpleNamespace

    from strg_deploy.stream.runner import InferenceRunner, RunSettings
    from strg_deploy.stream.types import SourceSpec

    pipeline = SimpleNamespace(max_clips=lambda: None, preferred_clips=lambda: 3)
    specs = [SourceSpec("cam", "rtsp://h/x", "rtsp://h/x", True), SourceSpec("file", "a.mp4", "a.mp4", False)]
    runner = InferenceRunner(pipeline, specs, RunSettings(), lambda *a: None, lambda spec: None, print)
    queues = runner.batcher.queues
    assert (queues["cam"].capacity, queues["file"].capacity) == (1, 4)
    assert (runner.batcher.max_batch, runner.batcher.preferred) == (8, 3)
    for k in range(3):
        queues["cam"].put(window("cam", k))
    assert queues["cam"].dropped == 2 and [w.sequence for w in runner.batcher.next_batch()] == [2]


def test_warm_up_runs_each_batch_size_live_streams_can_make_until_a_window_waits():
    from types import SimpleNamespace

    from strg_deploy.stream.runner import InferenceRunner, RunSettings
    from strg_deploy.stream.types import SourceSpec

    seen = []
    cfg = SimpleNamespace(frames=2, size=4)
    pipeline = SimpleNamespace(
        cfg=cfg,
        max_clips=lambda: None,
        preferred_clips=lambda: None,
        run=lambda clips: seen.append(len(clips)),
    )

    def runner(live: int, files: int, batch: int = 8):
        specs = [SourceSpec(f"cam{k}", "rtsp://h/x", "rtsp://h/x", True) for k in range(live)]
        specs += [SourceSpec(f"file{k}", "a.mp4", "a.mp4", False) for k in range(files)]
        return InferenceRunner(
            pipeline, specs, RunSettings(batch=batch), lambda *a: None, lambda s: None, print
        )

    assert runner(3, 1).warm_up() == [1, 2, 3] and seen == [1, 2, 3]
    assert runner(12, 0, batch=4).warm_up() == [1, 2, 3, 4]
    assert runner(0, 8).warm_up() == [1]  # files: no latency to protect
    waiting = runner(5, 0)
    waiting.batcher.queues["cam0"].put(window("cam0", 0))
    assert waiting.warm_up() == [1]  # a window waits: it goes first


def test_a_batch_holding_a_window_of_every_camera_closes_at_once():
    batcher = Batcher(max_batch=8, max_wait=5.0)
    cams = [batcher.queue(f"cam{k}", capacity=1, live=True) for k in range(3)]
    for k, queue in enumerate(cams):
        queue.put(window(f"cam{k}", 0))
    start = time.monotonic()
    assert len(batcher.next_batch()) == 3  # no camera can add one within the wait: no waiting
    assert time.monotonic() - start < 2.0
    cams[2].close()  # a camera that ended no longer counts
    cams[0].put(window("cam0", 1))
    threading.Timer(0.1, lambda: cams[1].put(window("cam1", 1))).start()
    start = time.monotonic()
    assert [w.stream for w in batcher.next_batch()] == ["cam0", "cam1"]
    assert time.monotonic() - start < 2.0
    mixed = Batcher(max_batch=8, max_wait=0.3)
    mixed.queue("cam", capacity=1, live=True).put(window("cam", 0))
    mixed.queue("file", capacity=4, live=False)  # a file may still add a window: the deadline holds
    start = time.monotonic()
    assert len(mixed.next_batch()) == 1 and time.monotonic() - start >= 0.25
