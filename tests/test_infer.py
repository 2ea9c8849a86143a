"""`strg infer` end to end on a tiny export: files batched across streams equal each file alone, bad
sources are reported while the others finish, SIGTERM leaves whole output lines, RTSP cameras (a real
GStreamer server) give predictions, reconnect with continuous times, and never show a password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_clip
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.stream.sinks import read_json_lines

runner = CliRunner()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [write_clip(folder / f"clip{k}.mp4", k) for k in range(8)]


def infer(*args: str):
    return runner.invoke(app, ["infer", *map(str, args)])


def by_window(lines: list[dict]) -> dict[tuple[str, int], dict]:
    return {(line["stream"], line["sequence"]): line for line in lines}


def test_eight_streams_batched_give_what_each_file_gives_alone(tiny_export, clips, tmp_path):
    _, export = tiny_export
    batched = tmp_path / "batched.jsonl"
    result = infer(
        export, *clips, "--backend", "onnxruntime", "--batch", "8", "--out", batched, "--boxes", "2"
    )
    assert result.exit_code == 0, result.output
    lines = read_json_lines(batched)
    assert {line["stream"] for line in lines} == {f"clip{k}" for k in range(8)}
    assert max(line["batch"] for line in lines) > 1
    alone = {}
    for k, clip in enumerate(clips):
        out = tmp_path / f"alone{k}.jsonl"
        assert (
            infer(
                export, clip, "--backend", "onnxruntime", "--batch", "1", "--out", out, "--boxes", "2"
            ).exit_code
            == 0
        )
        alone.update(by_window(read_json_lines(out)))
    together = by_window(lines)
    assert together.keys() == alone.keys()
    for key, line in together.items():
        other = alone[key]
        assert (line["start"], line["end"]) == (other["start"], other["end"])
        assert [t["label"] for t in line["top"]][:1] == [t["label"] for t in other["top"]][:1]
        got = np.array([t["probability"] for t in line["top"]])
        want = np.array([t["probability"] for t in other["top"]])
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(np.array(line["boxes"]), np.array(other["boxes"]), atol=0.2)
    # a 3 s clip (last frame at 2.92 s), the tiny preset's 2 s window and 1 s stride: [0, 2], and [1, 3]
    # at the end of the file (more than half of it has frames)
    assert sorted(s for (stream, s) in together if stream == "clip0") == [0, 1]
    box = lines[0]["boxes"][0][0]
    assert 0 <= box[0] <= box[2] <= 96 and 0 <= box[1] <= box[3] <= 72  # source pixels of a 96x72 clip


def test_a_corrupt_or_missing_source_is_reported_and_the_others_finish(tiny_export, clips, tmp_path):
    _, export = tiny_export
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    out = tmp_path / "out.jsonl"
    result = infer(export, clips[0], corrupt, tmp_path / "missing.mp4", "--backend", "openvino", "--out", out)
    assert result.exit_code == 1
    assert {line["stream"] for line in read_json_lines(out)} == {"clip0"}
    errors = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("missing.mp4" in line for line in errors) and any("corrupt" in line for line in errors)
    assert "Traceback" not in result.output


def test_outputs_events_videos_and_metrics_in_one_run(tiny_export, clips, tmp_path):
    _, export = tiny_export
    out, events, metrics = tmp_path / "p.jsonl", tmp_path / "e.jsonl", tmp_path / "m.jsonl"
    result = infer(
        export, clips[0], clips[1], "--backend", "onnxruntime", "--out", out, "--events", events,
        "--threshold", "0.05", "--video-out", tmp_path / "videos", "--metrics-out", metrics, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["results"] == len(read_json_lines(out)) == 4 and summary["dropped"] == 0
    found = read_json_lines(events)
    assert found and {e["stream"] for e in found} <= {"clip0", "clip1"}
    assert all(e["schema"] == "strg-infer-event" and e["start"] <= e["end"] for e in found)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["clip0.mp4", "clip1.mp4"]
    snapshot = read_json_lines(metrics)[-1]
    assert snapshot["total"]["predictions"] == 4 and snapshot["streams"]["clip0"]["frames"] == 36
    again = infer(export, clips[0], "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr  # results are not overwritten silently
    early = infer(tmp_path / "no-model", clips[0], "--video-out", tmp_path / "videos")
    assert early.exit_code == 2 and "clip0.mp4 exists" in early.stderr  # outputs checked before the model


def test_sigterm_stops_cleanly_with_whole_lines(tiny_export, tmp_path):
    _, export = tiny_export
    long = write_clip(tmp_path / "long.mp4", 3, seconds=30)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "strg_deploy.cli", "infer", str(export), str(long), "--realtime"]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["stopped"] and summary["results"] >= 2
    lines = read_json_lines(out)
    assert len(lines) == summary["results"] and out.read_text().endswith("\n")


def test_a_terminal_shows_the_live_table_while_predictions_go_to_the_file(tiny_export, clips, tmp_path):
    import pty

    _, export = tiny_export
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "strg_deploy.cli", "infer", str(export), str(clips[0]), str(clips[1])]
    leader, follower = pty.openpty()  # stderr is a terminal: the live view is on
    process = subprocess.Popen(
        [*command, "--realtime", "--out", str(out), "--backend", "onnxruntime"],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env={**os.environ, "COLUMNS": "100"},
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait(60) == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    for word in ("strg infer", "lag99", "lat50", "drops", "reconn", "queue", "clip0", "clip1", "total"):
        assert word in text, word
    assert "\x1b[" in text  # drawn with terminal control codes, redrawn in place
    lines = read_json_lines(out)
    assert {line["stream"] for line in lines} == {"clip0", "clip1"}
    assert f"{len(lines)} predictions from 2 stream(s)" in text.rstrip().splitlines()[-1]  # the summary last


def test_predictions_from_a_camera_that_drops_and_comes_back(tiny_export, rtsp_server, tmp_path):
    _, export = tiny_export
    server = rtsp_server()
    out = tmp_path / "live.jsonl"
    command = [sys.executable, "-m", "strg_deploy.cli", "infer", str(export), server.url("live")]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--timeout", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def lines() -> list[dict]:
            return read_json_lines(out) if out.exists() else []

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lines()) < 2:
            time.sleep(0.2)
        assert len(lines()) >= 2
        server.stop()
        time.sleep(3)
        server.start()
        before = len(lines())
        while time.monotonic() < deadline + 60 and len(lines()) < before + 3:
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    starts = [line["start"] for line in lines()]
    assert len(starts) >= before + 3 and starts == sorted(starts)  # media times go on after the outage
    assert json.loads(stdout)["metrics"]["total"]["reconnects"] >= 1


def test_a_camera_that_never_answers_fails_after_the_timeout_without_its_password(tiny_export, tmp_path):
    _, export = tiny_export
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"rtsp://admin:s3cret-pw@127.0.0.1:{port}/cam"
    start = time.monotonic()
    result = infer(
        export, url, "--max-retries", "0", "--timeout", "1", "--out", tmp_path / "o.jsonl", "--json"
    )
    assert result.exit_code == 1 and time.monotonic() - start < 30
    assert "s3cret-pw" not in result.output and "s3cret-pw" not in (tmp_path / "o.jsonl").read_text()
    summary = json.loads(result.stdout)
    assert len(summary["failed"]) == 1
    assert "s3cret-pw" not in json.dumps(summary)


def test_a_sources_file_names_streams_and_takes_paths_from_the_environment(tiny_export, clips, tmp_path):
    _, export = tiny_export
    listing = tmp_path / "sources.txt"
    listing.write_text(
        f"# two named streams\nname=door {clips[0]}\n"
        f"name=yard ${{CLIP_DIR}}/{clips[1].name} geometry=letterbox\n"
    )
    out = tmp_path / "p.jsonl"
    result = runner.invoke(
        app,
        ["infer", str(export), "--sources-file", str(listing), "--out", str(out)],
        env={"CLIP_DIR": str(clips[1].parent)},
    )
    assert result.exit_code == 0, result.output
    assert {line["stream"] for line in read_json_lines(out)} == {"door", "yard"}


def test_a_camera_with_a_login_shows_its_password_nowhere(tiny_export, rtsp_server, tmp_path):
    """Right login: predictions, metrics served on a port and logged; wrong login: one failure line.
    The password appears in no output file, log line, metric or error."""
    import socket
    import urllib.request

    _, export = tiny_export
    password = "pw-Secret-42"
    server = rtsp_server(user="admin", password=password)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out, metrics = tmp_path / "o.jsonl", tmp_path / "m.jsonl"
    command = [
        sys.executable,
        "-m",
        "strg_deploy.cli",
        "infer",
        str(export),
        server.url("live", "admin", password),
    ]
    command += ["--out", str(out), "--metrics-out", str(metrics), "--metrics-port", str(port)]
    process = subprocess.Popen(
        [*command, "--max-windows", "3", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    scraped = ""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                page = response.read().decode()
            if "strg_infer_predictions_total" in page and 'stream="127.0.0.1_live"' in page:
                scraped = page
        except OSError:
            pass
        time.sleep(0.3)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert len(read_json_lines(out)) == 3 and scraped
    for text in (stdout, stderr, out.read_text(), metrics.read_text(), scraped):
        assert password not in text
    wrong = infer(
        export, server.url("live", "admin", "not-" + password), "--max-retries", "0", "--timeout", "3"
    )
    assert wrong.exit_code == 1 and "warning: 127.0.0.1_live" in wrong.stderr
    assert password not in wrong.output and "not-" + password not in wrong.output


def test_verify_refuses_an_export_that_does_not_compute_what_was_trained(tiny_export, clips, tmp_path):
    import shutil

    from test_pipeline import perturb_one_weight

    from strg_deploy.contract.manifest import MANIFEST_FILE, file_sha256

    _, export = tiny_export
    broken = tmp_path / "export"
    shutil.copytree(export, broken)
    perturb_one_weight(broken / "backbone.onnx")
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    manifest["networks"]["backbone"]["sha256"] = file_sha256(broken / "backbone.onnx")
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    out = tmp_path / "p.jsonl"
    result = infer(broken, clips[0], "--backend", "onnxruntime", "--verify", "--out", out)
    assert result.exit_code == 2 and "fails verification on onnxruntime (backbone" in result.stderr
    assert not out.exists()  # nothing was written
    assert infer(export, clips[0], "--backend", "onnxruntime", "--verify", "--out", out).exit_code == 0
