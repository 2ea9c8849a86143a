"""Outputs of `strg infer`: prediction and event JSON lines, the annotated video, run metrics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from rich.console import Console

from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.stream.annotate import AnnotatedVideo, video_name
from strg_deploy.stream.metrics import (
    MIN_FPS_SPAN,
    SAMPLES,
    Metrics,
    MetricsLog,
    PrometheusExporter,
    StreamMetrics,
    live_table,
    percentiles,
)
from strg_deploy.stream.sinks import (
    EventDetector,
    EventWriter,
    PredictionWriter,
    read_json_lines,
)
from strg_deploy.stream.types import IDENTITY, SCHEMA_VERSION, Transform, Window, WindowResult

CLASSES = ["wave", "clap", "jump", "none"]


def result(
    probabilities,
    stream="cam1",
    sequence=0,
    start=0.0,
    end=1.0,
    boxes=None,
    scores=None,
    mask=None,
    clip=None,
    transform=IDENTITY,
) -> WindowResult:
    """A WindowResult with T' = 2 feature frames of N = 3 proposals unless given."""
    boxes = np.zeros((2, 3, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    scores = np.zeros(boxes.shape[:2], np.float32) if scores is None else np.asarray(scores, np.float32)
    mask = np.zeros(boxes.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    clip = np.zeros((3, 4, 8, 8), np.uint8) if clip is None else clip
    window = Window(stream, sequence, clip, start, end, 1700000000.1234567, transform, (640, 480))
    probabilities = np.asarray(probabilities, np.float32)
    return WindowResult(window, probabilities, boxes, scores, mask, latency=0.0123456, lag=0.25, batch=4)


def test_the_outputs_import_no_torch():
    code = (
        "import sys\n"
        "import strg_deploy.stream.sinks, strg_deploy.stream.annotate, strg_deploy.stream.metrics\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- predictions


def test_prediction_line_has_exact_fields_and_top_k_by_probability(tmp_path):
    path = tmp_path / "preds.jsonl"
    with PredictionWriter(path, CLASSES, top_k=3) as writer:
        writer.write(result([0.1, 0.5, 0.15, 0.25], sequence=7, start=1.23456, end=3.0001))
        assert len(read_json_lines(path)) == 1  # in the file as soon as write returns
    (record,) = read_json_lines(path)
    assert record == {
        "schema": "strg-infer-prediction",
        "version": SCHEMA_VERSION,
        "stream": "cam1",
        "sequence": 7,
        "start": 1.235,
        "end": 3.0,
        "wall_end": 1700000000.123,
        "top": [
            {"label": "clap", "probability": 0.5},
            {"label": "none", "probability": 0.25},
            {"label": "jump", "probability": 0.15},
        ],
        "latency_ms": 12.346,
        "lag_ms": 250.0,
        "batch": 4,
    }
    assert list(record) == list(record.keys())  # field order as documented
    assert path.read_text().count("\n") == 1


def test_top_k_is_capped_at_the_classes_and_ties_keep_class_order(tmp_path):
    path = tmp_path / "preds.jsonl"
    with PredictionWriter(path, CLASSES, top_k=10) as writer:
        writer.write(result([0.25, 0.25, 0.25, 0.25]))
    (record,) = read_json_lines(path)
    assert [t["label"] for t in record["top"]] == CLASSES


def test_wrong_number_of_probabilities_is_one_clear_error(tmp_path):
    with PredictionWriter(tmp_path / "p.jsonl", CLASSES) as writer, pytest.raises(StrgError, match="3 prob"):
        writer.write(result([0.2, 0.3, 0.5]))


def test_boxes_are_the_best_valid_proposals_per_feature_frame_in_source_pixels(tmp_path):
    boxes = [
        [[1.04, 2.0, 30.0, 40.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 99.0, 99.0]],
        [[10.0, 10.0, 20.0, 20.0], [11.0, 12.0, 13.0, 14.0], [0.0, 0.0, 0.0, 0.0]],
    ]
    scores = [[0.3, 0.912345, 0.99], [0.2, 0.7, 0.0]]
    mask = [[True, True, False], [True, True, False]]  # the 0.99 proposal is padding: left out
    path = tmp_path / "preds.jsonl"
    with PredictionWriter(path, CLASSES, top_k=1, boxes=2) as writer:
        writer.write(result([0.7, 0.1, 0.1, 0.1], boxes=boxes, scores=scores, mask=mask))
    (record,) = read_json_lines(path)
    assert record["boxes"] == [
        [[5.0, 6.0, 7.0, 8.0, 0.9123], [1.0, 2.0, 30.0, 40.0, 0.3]],
        [[11.0, 12.0, 13.0, 14.0, 0.7], [10.0, 10.0, 20.0, 20.0, 0.2]],
    ]
    assert list(record)[-4:] == ["boxes", "latency_ms", "lag_ms", "batch"]


def test_boxes_field_is_absent_without_boxes(tmp_path):
    path = tmp_path / "preds.jsonl"
    with PredictionWriter(path, CLASSES) as writer:
        writer.write(result([0.7, 0.1, 0.1, 0.1], mask=np.ones((2, 3), bool)))
    assert "boxes" not in read_json_lines(path)[0]


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text("keep me\n")
    with pytest.raises(StrgError, match=str(path)):
        PredictionWriter(path, CLASSES)
    assert path.read_text() == "keep me\n"
    with PredictionWriter(path, CLASSES, overwrite=True) as writer:
        writer.write(result([0.7, 0.1, 0.1, 0.1]))
    assert read_json_lines(path)[0]["top"][0]["label"] == "wave"
    with pytest.raises(StrgError, match="folder"):
        PredictionWriter(tmp_path, CLASSES)


def test_predictions_go_to_stdout_without_a_path(capsys):
    writer = PredictionWriter(None, CLASSES, top_k=1)
    writer.write(result([0.1, 0.1, 0.7, 0.1]))
    writer.close()
    out = capsys.readouterr().out
    assert json.loads(out)["top"] == [{"label": "jump", "probability": 0.7}]
    assert out.endswith("\n") and out.count("\n") == 1


def test_reading_drops_only_a_partial_last_line(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_json_lines(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(StrgError, match=":2 is not JSON"):
        read_json_lines(path)


KILLED_WRITER = """
import sys
import numpy as np
from strg_deploy.stream.sinks import PredictionWriter
from strg_deploy.stream.types import Window, WindowResult
classes = [f"class_{i}" for i in range(50)]
writer = PredictionWriter(sys.argv[1], classes, top_k=50, boxes=8)
rng = np.random.default_rng(0)
window = Window("cam", 0, np.zeros((3, 2, 4, 4), np.uint8), 0.0, 1.0, 0.0)
sequence = 0
while True:
    p = rng.random(50).astype(np.float32)
    boxes = rng.random((8, 8, 4)).astype(np.float32) * 500
    r = WindowResult(window, p / p.sum(), boxes, rng.random((8, 8)), np.ones((8, 8), bool), 0.01, 0.02, 1)
    writer.write(r)
"""


def test_a_writer_killed_mid_run_leaves_parseable_lines(tmp_path):
    path = tmp_path / "preds.jsonl"
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)])
    try:
        deadline = time.monotonic() + 120
        while (not path.exists() or path.stat().st_size < 200_000) and process.poll() is None:
            assert time.monotonic() < deadline, "the writer wrote nothing"
            time.sleep(0.05)
        assert process.poll() is None, "the writer stopped by itself"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    text = path.read_text()
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]  # `last` is "" or a partial line
    assert len(complete) > 20
    for line in complete:
        assert json.loads(line)["schema"] == "strg-infer-prediction"
    records = read_json_lines(path)
    assert len(records) == len(complete) + (1 if last and _is_json(last) else 0)
    assert all(len(r["top"]) == 50 and len(r["boxes"]) == 8 for r in records)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


# ---------------------------------------------------------------- events


def feed(detector, scores, label="wave", stream="cam1", other=0.0):
    """Feed one window per score (1 s windows, stride 1 s); return the events in the order finished."""
    events = []
    for i, score in enumerate(scores):
        probabilities = [other] * len(CLASSES)
        probabilities[CLASSES.index(label)] = score
        events += detector.update(result(probabilities, stream=stream, sequence=i, start=i, end=i + 1.0))
    return events


def test_event_with_hysteresis_spans_first_to_last_window_over_threshold():
    detector = EventDetector(CLASSES, threshold=0.5, smoothing=1)
    # 0.45 is in the band [0.4, 0.5): it keeps the event open; 0.39 ends it
    events = feed(detector, [0.2, 0.6, 0.45, 0.7, 0.39, 0.45])
    assert events == [
        {
            "schema": "strg-infer-event",
            "version": SCHEMA_VERSION,
            "stream": "cam1",
            "label": "wave",
            "start": 1.0,
            "end": 4.0,
            "peak": pytest.approx(0.7),
            "mean": pytest.approx((0.6 + 0.45 + 0.7) / 3, abs=1e-6),
            "windows": 3,
        }
    ]
    assert detector.finish() == []  # 0.45 after the end never reached the threshold: no event


def test_event_open_at_the_end_of_the_stream_ends_with_finish_without_its_band_tail():
    detector = EventDetector(CLASSES, threshold=0.5, smoothing=1)
    assert feed(detector, [0.6, 0.8, 0.45, 0.42]) == []
    (event,) = detector.finish("cam1")
    assert (event["start"], event["end"], event["windows"]) == (0.0, 2.0, 2)
    assert event["peak"] == pytest.approx(0.8)
    assert detector.finish() == []


def test_smoothing_averages_the_last_windows():
    spike = [0.125, 0.125, 0.875, 0.125, 0.125]
    (event,) = feed(EventDetector(CLASSES, smoothing=1), spike)
    assert (event["start"], event["end"], event["windows"]) == (2.0, 3.0, 1)
    smoothed = EventDetector(CLASSES, smoothing=3)  # (0.125 + 0.125 + 0.875) / 3 = 0.375 < 0.5
    assert feed(smoothed, spike) == [] and smoothed.finish() == []
    sustained = EventDetector(CLASSES, smoothing=3)  # means: 0.25, 0.5, 0.583, 0.583, 0.333 (< 0.4)
    (event,) = feed(sustained, [0.25, 0.75, 0.75, 0.25, 0.0])
    assert (event["start"], event["end"], event["windows"]) == (1.0, 4.0, 3)
    assert event["peak"] == pytest.approx(1.75 / 3, abs=1e-6)
    assert event["mean"] == pytest.approx((0.5 + 1.75 / 3 * 2) / 3, abs=1e-6)


def test_per_class_thresholds_and_background():
    detector = EventDetector(CLASSES, threshold={"clap": 0.3}, background="none", smoothing=1)
    assert feed(detector, [0.35, 0.35], label="clap") == []
    assert feed(detector, [0.35, 0.35], label="wave", stream="cam2") == []
    assert feed(detector, [0.99, 0.99], label="none", stream="cam3") == []
    events = detector.finish()
    assert [(e["stream"], e["label"]) for e in events] == [("cam1", "clap")]  # wave's 0.35 < 0.5
    with pytest.raises(StrgError, match="'kick'"):
        EventDetector(CLASSES, threshold={"kick": 0.3})
    with pytest.raises(StrgError, match="background"):
        EventDetector(CLASSES, background="nothing")
    with pytest.raises(StrgError, match="threshold"):
        EventDetector(CLASSES, threshold=1.5)


def test_min_windows_and_streams_are_independent():
    detector = EventDetector(CLASSES, smoothing=1, min_windows=2)
    assert feed(detector, [0.9, 0.1], stream="a") == []  # one window: too short
    assert feed(detector, [0.9, 0.9, 0.1], stream="b")[0]["windows"] == 2
    assert feed(detector, [0.1, 0.9, 0.9], stream="c") == []
    assert feed(detector, [0.9, 0.9], stream="d") == []
    assert [e["stream"] for e in detector.finish("c")] == ["c"]
    assert [e["stream"] for e in detector.finish()] == ["d"]


def test_event_writer_writes_events_as_lines(tmp_path):
    detector = EventDetector(CLASSES, smoothing=1)
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.write_all(feed(detector, [0.9, 0.1]))
        writer.write_all(feed(detector, [0.9], label="jump", stream="cam2"))
        writer.write_all(detector.finish())
    records = read_json_lines(path)
    assert [(r["stream"], r["label"], r["schema"]) for r in records] == [
        ("cam1", "wave", "strg-infer-event"),
        ("cam2", "jump", "strg-infer-event"),
    ]
    with pytest.raises(StrgError, match="exists"):
        EventWriter(path)


# ---------------------------------------------------------------- annotated video


def test_annotated_video_draws_new_frames_with_boxes_and_labels(tmp_path):
    size, frames = 64, 4
    clip = np.full((3, frames, size, size), 128, np.uint8)
    transform = Transform(2.0, 10.0, 2.0, 20.0)  # source = model * 2 + offset
    model_box = np.array([16.0, 24.0, 48.0, 56.0])
    source_box = transform.to_source(model_box)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[:, 0] = source_box
    boxes[:, 1] = transform.to_source(np.array([2.0, 2.0, 4.0, 4.0]))  # lower score, not drawn
    scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
    mask = np.array([[True, True, False], [True, True, False]])
    video = AnnotatedVideo(tmp_path, "front door", fps=3.0, classes=CLASSES, scale=2, top_k=1, boxes=1)
    added = []
    # windows of 1 s, stride 0.5 s (overlapping), then stride 1 s: 4 + 2 + 3 new frames
    for sequence, (start, end) in enumerate([(0.0, 1.0), (0.5, 1.5), (1.5, 2.5)]):
        r = result(
            [0.1, 0.7, 0.1, 0.1], "front door", sequence, start, end, boxes, scores, mask, clip, transform
        )
        added.append(video.write(r))
    assert added == [4, 2, 3]
    path = tmp_path / "front_door.mp4"
    assert not path.exists()  # under a temporary name until close
    video.close()
    assert path.exists() and video_name("front door") == path.name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with open_video(path) as reader:
        images = [f.image for f in reader.frames()]
    assert len(images) == 9
    assert images[0].shape == (2 * size, 2 * size, 3)
    image = images[5].astype(int)
    x1, y1, x2, y2 = (model_box * 2).astype(int)
    middle = (y1 + y2) // 2
    for y, x in ((middle, x1), (middle, x2 - 1), (y2 - 1, (x1 + x2) // 2)):  # left, right, bottom edges
        r, g, b = image[y, x]
        assert r > 150 and r - max(g, b) > 80, (y, x, image[y, x])  # red, after lossy coding
    assert np.abs(image[middle, (x1 + x2) // 2] - 128).max() < 12  # inside the box: the clip
    assert image[2, 2].max() < 40  # the label band is dark
    assert image[120, 120].max() > 100  # outside box and band: the clip


def test_annotated_video_refuses_an_existing_file_and_writes_nothing_without_frames(tmp_path):
    (tmp_path / "cam1.mp4").write_bytes(b"old")
    with pytest.raises(StrgError, match="cam1.mp4"):
        AnnotatedVideo(tmp_path, "cam1", fps=12, classes=CLASSES)
    empty = AnnotatedVideo(tmp_path / "new", "cam1", fps=12, classes=CLASSES)
    empty.close()
    assert not (tmp_path / "new" / "cam1.mp4").exists()
    with pytest.raises(StrgError, match="frame rate"):
        AnnotatedVideo(tmp_path, "cam2", fps=0, classes=CLASSES)


# ---------------------------------------------------------------- metrics


def test_percentiles_of_known_samples_and_only_the_last_samples_kept():
    assert percentiles(np.arange(1, 101) / 1000.0) == {"p50": 50.5, "p90": 90.1, "p99": 99.01}
    assert percentiles([]) is None
    stream = StreamMetrics("cam1")
    for i in range(SAMPLES + 500):
        stream.count_prediction(latency=i / 1000.0, lag=2 * i / 1000.0)
    snapshot = stream.snapshot()
    assert snapshot["predictions"] == SAMPLES + 500
    assert snapshot["latency_ms"]["p50"] == pytest.approx(999.5)  # samples 500..1499 ms
    assert snapshot["lag_ms"]["p50"] == pytest.approx(1999.0)


def test_fps_over_the_last_five_seconds_of_wall_time():
    stream = StreamMetrics("cam1")
    for t in range(10):
        stream.count_frames(10, now=float(t))  # 10 frames a second
    assert stream.fps(now=9.5) == pytest.approx(10.0)  # frames of t = 5..9 over 5 s
    assert stream.fps(now=12.0) == pytest.approx(20 / 5)  # only the frames of t = 8 and 9 are left
    assert stream.fps(now=20.0) == 0.0  # stalled
    young = StreamMetrics("cam2")
    young.count_frames(10, now=100.0)
    young.count_frames(10, now=101.0)
    assert young.fps(now=102.0) == pytest.approx(10.0)  # over the 2 s since its first frame
    fresh = StreamMetrics("cam3")
    fresh.count_frames(5, now=0.0)
    assert fresh.fps(now=0.01) == pytest.approx(5 / MIN_FPS_SPAN)


def test_snapshot_is_json_with_streams_and_totals():
    clock = [0.0]
    metrics = Metrics(clock=lambda: clock[0])
    a, b = metrics.stream("a"), metrics.stream("b")
    assert metrics.stream("a") is a
    a.count_frames(30, now=0.0)
    b.count_frames(10, now=0.0)
    for _ in range(3):
        a.count_window()
    a.count_prediction(0.010, 0.030)
    b.count_prediction(0.020, 0.050)
    b.count_drop(2)
    b.count_reconnect()
    b.count_failure()
    a.set_queue(3)
    b.set_queue(1)
    clock[0] = 2.0
    snapshot = json.loads(json.dumps(metrics.snapshot()))
    assert snapshot["schema"] == "strg-infer-metrics" and snapshot["version"] == SCHEMA_VERSION
    assert snapshot["uptime_s"] == 2.0
    assert list(snapshot["streams"]) == ["a", "b"]
    assert snapshot["streams"]["a"] == {
        "windows": 3,
        "predictions": 1,
        "dropped": 0,
        "reconnects": 0,
        "failures": 0,
        "frames": 30,
        "queue": 3,
        "fps": 15.0,
        "latency_ms": {"p50": 10.0, "p90": 10.0, "p99": 10.0},
        "lag_ms": {"p50": 30.0, "p90": 30.0, "p99": 30.0},
    }
    total = snapshot["total"]
    assert (total["frames"], total["dropped"], total["reconnects"], total["failures"]) == (40, 2, 1, 1)
    assert (total["queue"], total["fps"], total["predictions"]) == (4, 20.0, 2)
    assert total["latency_ms"]["p50"] == pytest.approx(15.0)


def test_counters_are_exact_under_threads():
    metrics = Metrics()

    def work():
        for _ in range(2000):
            metrics.stream("cam").count_window()
            metrics.stream("cam").count_frames(2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures = metrics.snapshot()["streams"]["cam"]
    assert (figures["windows"], figures["frames"]) == (8000, 16000)


def test_metrics_log_writes_a_snapshot_per_interval(tmp_path):
    clock = [0.0]
    metrics = Metrics(clock=lambda: clock[0])
    metrics.stream("cam1").count_window()
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, every_seconds=10, clock=lambda: clock[0]) as log:
        written = []
        for t in (0.0, 5.0, 10.0, 19.0, 20.5):
            clock[0] = t
            written.append(log.tick(metrics))
        log.write(metrics.snapshot())  # the final one
    assert written == [True, False, True, False, True]
    records = read_json_lines(path)
    assert [r["uptime_s"] for r in records] == [0.0, 10.0, 20.5, 20.5]
    assert all(r["schema"] == "strg-infer-metrics" and r["streams"]["cam1"]["windows"] == 1 for r in records)


def test_live_table_shows_every_stream_and_a_total():
    metrics = Metrics()
    metrics.stream("cam1").count_prediction(0.012, 0.034)
    metrics.stream("cam1").count_drop(5)
    metrics.stream("cam2")
    console = Console(record=True, width=80)
    console.print(live_table(metrics.snapshot()))
    text = console.export_text()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["cam1"][2:4] == ["34.0", "34.0"] and rows["cam1"][7] == "5"  # lag p50 / p99, drops
    assert rows["cam2"][2] == "-"
    assert rows["total"][7] == "5"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_prometheus_endpoint_serves_counters_labelled_by_stream_and_closes():
    metrics = Metrics()
    cam = metrics.stream("cam1")
    cam.count_drop(2)
    cam.count_frames(7)
    cam.count_prediction(0.25, 0.5)
    exporter = PrometheusExporter(0)
    try:
        assert exporter.host == "127.0.0.1" and exporter.port > 0
        exporter.update(metrics.snapshot())
        text = _scrape(exporter.port)
        assert 'strg_infer_dropped_windows_total{stream="cam1"} 2.0' in text
        assert 'strg_infer_frames_decoded_total{stream="cam1"} 7.0' in text
        assert 'strg_infer_predictions_total{stream="cam1"} 1.0' in text
        assert "# TYPE strg_infer_reconnects_total counter" in text
        assert 'strg_infer_queue_depth{stream="cam1"} 0.0' in text
        assert 'strg_infer_lag_seconds{quantile="0.99",stream="cam1"} 0.5' in text
        cam.count_drop()
        exporter.update(metrics.snapshot())
        assert 'strg_infer_dropped_windows_total{stream="cam1"} 3.0' in _scrape(exporter.port)
        with pytest.raises(StrgError, match=f"127.0.0.1:{exporter.port}"):
            PrometheusExporter(exporter.port)  # the port is taken
    finally:
        exporter.close()
    exporter.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _scrape(exporter.port)
    with socket.socket() as probe:  # no listener is left on the port (closed scrapes may linger in TIME_WAIT)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", exporter.port))
        probe.listen()
