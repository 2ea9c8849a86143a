"""Reader threads of `strg infer`: files, the retry policy, sockets that never answer, a real RTSP server."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from strg_deploy.errors import StrgError
from strg_deploy.stream.reader import StreamEvent, StreamReader
from strg_deploy.stream.retry import RetryPolicy
from strg_deploy.stream.sources import mask_url
from strg_deploy.stream.types import Frame, SourceSpec, Transform

CLIP = Path(__file__).resolve().parents[2] / "shared" / "videos" / "arm_wrestling_h264_340x256.mp4"
SIZE = 32


@dataclasses.dataclass
class StretchPlan:
    """A stand-in for stream.geometry: decode straight to SIZE x SIZE."""

    width: int
    height: int

    @property
    def decode_size(self) -> tuple[int, int]:
        return SIZE, SIZE

    @property
    def transform(self) -> Transform:
        return Transform(self.width / SIZE, 0.0, self.height / SIZE, 0.0)

    def apply(self, image: np.ndarray) -> np.ndarray:
        assert image.shape == (SIZE, SIZE, 3)
        return image


class Stretch:
    def plan(self, width: int, height: int) -> StretchPlan:
        return StretchPlan(width, height)


class Collect:
    """on_frame and on_event in one: keeps what came, signals after ``want`` frames."""

    def __init__(self, want: int = 0) -> None:
        self.frames: list[Frame] = []
        self.events: list[StreamEvent] = []
        self.want = want
        self.enough = threading.Event()
        self.lock = threading.Lock()

    def frame(self, frame: Frame) -> None:
        with self.lock:
            self.frames.append(frame)
            if self.want and len(self.frames) >= self.want:
                self.enough.set()

    def event(self, event: StreamEvent) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.kinds().count(kind) < count:
            assert time.monotonic() < deadline, f"no {kind!r} event in {timeout} s: {self.events}"
            time.sleep(0.02)


def make_reader(url: str, sink: Collect, live: bool, **kwargs) -> StreamReader:
    spec = SourceSpec("cam" if live else "file", url, mask_url(url), live)
    kwargs.setdefault("retry", RetryPolicy(max_retries=0))
    return StreamReader(spec, sink.frame, Stretch(), on_event=sink.event, **kwargs)


def finish(*readers: StreamReader) -> None:
    for reader in readers:
        reader.stop()
    for reader in readers:
        assert reader.join(20), f"reader {reader.name} did not end"


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    """An H.264 MP4: 12 frames of 48x40 at 12 fps."""
    path = tmp_path_factory.mktemp("reader") / "small.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        for i in range(12):
            image = np.full((40, 48, 3), i * 20, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


# ---------------------------------------------------------------------- retry policy


def test_retry_delays_grow_with_jitter_and_cap():
    policy = RetryPolicy(base=0.5, factor=2.0, cap=3.0, jitter=0.0)
    assert [policy.delay(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow
    jittery = RetryPolicy(base=1.0, factor=2.0, cap=30.0, jitter=0.25)
    rng = random.Random(0)
    delays = [jittery.delay(2, rng) for _ in range(200)]
    assert min(delays) >= 1.5 and max(delays) <= 2.5 and len(set(delays)) > 100
    assert all(jittery.delay(20, rng) <= 30.0 for _ in range(50))


def test_retry_gives_up_after_max_retries():
    assert not any(RetryPolicy().gives_up(a) for a in (1, 10, 10_000))  # None: keep trying
    assert RetryPolicy(max_retries=0).gives_up(1)
    three = RetryPolicy(max_retries=3)
    assert [three.gives_up(a) for a in (1, 2, 3, 4)] == [False, False, False, True]
    for bad in (dict(max_retries=-1), dict(base=0), dict(factor=0.5), dict(cap=0.1), dict(jitter=1.0)):
        with pytest.raises(StrgError):
            RetryPolicy(**bad)


# ---------------------------------------------------------------------- files


def test_file_frames_times_and_end(small_video: Path):
    sink = Collect()
    reader = make_reader(str(small_video), sink, live=False).start()
    assert reader.join(30)
    assert reader.state == "ended" and reader.frames == 12
    assert sink.kinds() == ["opened", "ended"]
    times = [f.media_time for f in sink.frames]
    assert times[0] == 0.0 and np.allclose(np.diff(times), 1 / 12)
    assert [f.index for f in sink.frames] == list(range(12))
    frame = sink.frames[5]
    assert frame.image.shape == (SIZE, SIZE, 3) and frame.image.dtype == np.uint8
    assert abs(int(frame.image.mean()) - 100) <= 3  # the sixth frame's grey level
    assert frame.source_size == (48, 40) and frame.transform == Transform(48 / SIZE, 0.0, 40 / SIZE, 0.0)
    assert frame.stream == "file"


def test_realtime_file_is_paced_by_timestamps(small_video: Path):
    sink = Collect()
    reader = make_reader(str(small_video), sink, live=True).start()  # a path with live=True: realtime
    assert reader.join(30)
    assert reader.state == "ended" and sink.kinds() == ["opened", "ended"]  # a file is not retried
    media = np.array([f.media_time for f in sink.frames])
    wall = np.array([f.wall_time for f in sink.frames])
    assert wall[-1] - wall[0] >= media[-1] - media[0] - 0.01  # never ahead of its own clock


def test_file_backpressure_waits_for_on_frame(small_video: Path):
    gate = threading.Semaphore(0)
    seen: list[int] = []

    def on_frame(frame: Frame) -> None:
        seen.append(frame.index)
        gate.acquire()

    spec = SourceSpec("file", str(small_video), str(small_video), False)
    reader = StreamReader(spec, on_frame, Stretch(), retry=RetryPolicy()).start()
    for k in range(1, 5):
        deadline = time.monotonic() + 10
        while len(seen) < k and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert seen == list(range(k))  # nothing more is decoded and handed on until on_frame returns
        if k < 4:
            gate.release()
    reader.stop()
    gate.release()
    assert reader.join(10) and reader.state == "stopped" and reader.frames == 4


def test_unreadable_file_fails_once(tmp_path: Path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    sink = Collect()
    reader = make_reader(str(broken), sink, live=False, retry=RetryPolicy()).start()
    assert reader.join(10)
    assert reader.state == "failed" and sink.kinds() == ["failed"] and reader.failures == 1
    assert str(broken) in sink.events[0].message


# ---------------------------------------------------------------------- URLs that never answer


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never says anything (the kernel accepts them)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_url_that_never_answers_fails_once_masked(kind: str, silent_port: int):
    port = silent_port if kind == "silent" else closed_port()
    url = f"rtsp://admin:hunter2@127.0.0.1:{port}/live"
    sink = Collect()
    reader = make_reader(url, sink, live=True, open_timeout=1.0, read_timeout=1.0).start()
    try:
        assert reader.join(20)
    finally:
        finish(reader)
    assert reader.state == "gave_up" and reader.failures == 1
    assert sink.kinds() == ["failed", "gave_up"]
    failed = sink.events[0]
    assert failed.attempt == 1 and f"rtsp://***:***@127.0.0.1:{port}/live" in failed.message
    if kind == "silent":
        assert "no answer within" in failed.message
    assert all("hunter2" not in e.message and "admin" not in e.message for e in sink.events)


def test_streams_open_concurrently(silent_port: int):
    """Eight cameras that each take the open timeout to fail take about one timeout in all, not eight."""
    sink = Collect()
    readers = [
        make_reader(f"rtsp://127.0.0.1:{silent_port}/cam{i}", sink, live=True, open_timeout=1.0)
        for i in range(8)
    ]
    began = time.monotonic()
    for reader in readers:
        reader.start()
    try:
        assert all(reader.join(20) for reader in readers)
    finally:
        finish(*readers)
    elapsed = time.monotonic() - began
    assert sink.kinds().count("gave_up") == 8
    assert elapsed < 4.0, f"8 opens of 1 s took {elapsed:.1f} s: not concurrent"


def test_retries_back_off_until_stopped():
    url = f"rtsp://127.0.0.1:{closed_port()}/live"
    sink = Collect()
    retry = RetryPolicy(max_retries=None, base=0.05, factor=2.0, cap=0.2, jitter=0.1)
    reader = make_reader(url, sink, live=True, retry=retry).start()
    try:
        sink.wait_for("retrying", 4)
    finally:
        finish(reader)
    assert reader.state == "stopped" and sink.kinds()[-1] == "stopped"
    retrying = [e for e in sink.events if e.kind == "retrying"]
    assert [e.attempt for e in retrying[:4]] == [1, 2, 3, 4]
    assert retrying[0].delay < retrying[2].delay <= 0.2


# ---------------------------------------------------------------------- a real RTSP server


def media_times(sink: Collect) -> np.ndarray:
    with sink.lock:
        return np.array([f.media_time for f in sink.frames])


def test_rtsp_live_and_clip(rtsp_server):
    if not CLIP.exists():
        pytest.skip(f"{CLIP} is missing")
    server = rtsp_server(file=str(CLIP))
    live, clip = Collect(want=12), Collect(want=12)
    readers = [
        make_reader(server.url("live"), live, live=True).start(),
        make_reader(server.url("clip"), clip, live=True).start(),
    ]
    try:
        assert live.enough.wait(30) and clip.enough.wait(30)
    finally:
        finish(*readers)
    for sink, size in ((live, (320, 240)), (clip, (340, 256))):
        times = media_times(sink)
        assert times[0] == 0.0 and np.all(np.diff(times) >= 0) and times[-1] > 0.5
        assert sink.frames[0].source_size == size and sink.frames[0].image.shape == (SIZE, SIZE, 3)
        assert sink.kinds()[0] == "opened" and sink.kinds()[-1] == "stopped"
    assert np.allclose(np.diff(media_times(live))[1:], 1 / 12, atol=1e-3)


def test_rtsp_reconnects_with_continuous_media_times(rtsp_server):
    server = rtsp_server()
    sink = Collect(want=12)
    retry = RetryPolicy(max_retries=None, base=0.2, cap=0.5)
    reader = make_reader(server.url("live"), sink, live=True, retry=retry, read_timeout=2.0).start()
    try:
        assert sink.enough.wait(30)
        server.stop()
        sink.wait_for("retrying", 2)  # the stream ended, then at least one open was refused
        before = len(sink.frames)
        server.start()
        sink.wait_for("reconnected")
        deadline = time.monotonic() + 30
        while len(sink.frames) < before + 12 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        finish(reader)
    kinds = sink.kinds()
    assert kinds[0] == "opened" and kinds[-1] == "stopped"
    assert kinds.index("failed") < kinds.index("retrying") < kinds.index("reconnected")
    assert reader.reconnects == 1 and reader.failures >= 2
    times = media_times(sink)
    assert len(times) >= before + 12
    steps = np.diff(times)
    assert np.all(steps >= 0)  # never back in time, across the reconnect
    assert steps[before - 1] == pytest.approx(1 / 12, abs=1e-3)  # one frame interval after the last seen
    assert [f.index for f in sink.frames] == list(range(len(times)))


def test_rtsp_login_masks_password(rtsp_server):
    password = "pa:ss@w0rd/x"
    server = rtsp_server(user="viewer", password=password)
    wrong = Collect()
    reader = make_reader(server.url("live", "viewer", "Wr0ng-Secret"), wrong, live=True).start()
    try:
        assert reader.join(20)
    finally:
        finish(reader)
    assert wrong.kinds() == ["failed", "gave_up"]
    assert "401" in wrong.events[0].message and "rtsp://***:***@127.0.0.1" in wrong.events[0].message
    assert all("Wr0ng" not in e.message for e in wrong.events)

    right = Collect(want=5)
    reader = make_reader(server.url("live", "viewer", password), right, live=True).start()
    try:
        assert right.enough.wait(30)
    finally:
        finish(reader)
    texts = [e.message for e in right.events]
    assert right.kinds()[0] == "opened" and len(right.frames) >= 5
    assert all("pa:ss" not in t and "pa%3Ass" not in t and "w0rd" not in t for t in texts)
