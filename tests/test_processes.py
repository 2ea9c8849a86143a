"""Worker processes end with their parent: `strg data synth`, a training DataLoader, the helpers.

Each test starts the command as a subprocess, finds its workers in /proc (pid and parent pid of every
process), kills the parent and waits (with a deadline) until every worker has ended. A worker that
survives is killed by the test, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from strg_deploy import processes
from strg_deploy.data.synthetic import BOXES_FILE, generate

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 10.0  # seconds: generous; with PR_SET_PDEATHSIG workers end at once

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an ended child its new parent has not reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    """The living processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Command:
    """``python cli.py ARGS`` in ``cwd``; output to files (a surviving worker cannot block a pipe)."""

    def __init__(self, args: list[str], cwd: Path):
        self.out, self.err = cwd / "stdout.txt", cwd / "stderr.txt"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, stdout=out, stderr=err
            )
        self.workers: list[int] = []

    def wait_for_workers(self, count: int, seconds: float = 60.0) -> list[int]:
        found = wait_until(
            lambda: len(children(self.proc.pid)) >= count or self.proc.poll() is not None, seconds
        )
        assert found and self.proc.poll() is None, f"no workers: {self.err.read_text()[-2000:]}"
        self.workers = children(self.proc.pid)
        return self.workers

    def stderr(self) -> str:
        return self.err.read_text()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pid in self.workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


SYNTH = ["data", "synth", "out", "--train", "3000", "--validation", "0", "--size", "64", "--frames", "8"]


def test_synth_workers_end_when_the_command_is_killed(tmp_path):
    command = Command([*SYNTH, "--workers", "2"], tmp_path)
    try:
        workers = command.wait_for_workers(2)
        command.proc.kill()
        assert command.proc.wait() == -signal.SIGKILL
        assert wait_until(lambda: not any(alive(pid) for pid in workers), DEADLINE), [
            pid for pid in workers if alive(pid)
        ]
    finally:
        command.cleanup()


def test_sigterm_stops_synth_cleanly(tmp_path):
    command = Command([*SYNTH, "--workers", "2"], tmp_path)
    try:
        workers = command.wait_for_workers(2)
        assert wait_until(lambda: len(list((tmp_path / "out" / "videos").glob("*.mp4"))) >= 4, 60)
        command.proc.terminate()
        assert command.proc.wait(timeout=60) == processes.TERMINATED_EXIT_STATUS == 143
        assert command.stderr() == "error: terminated\n"
        assert wait_until(lambda: not any(alive(pid) for pid in workers), DEADLINE)
    finally:
        command.cleanup()
    out = tmp_path / "out"
    assert not list(out.rglob("*.tmp")) and not (out / BOXES_FILE).exists()
    videos = sorted((out / "videos").iterdir())
    assert 4 <= len(videos) < 3000
    for video in videos:  # every file written is whole
        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 8, video


def test_training_loader_workers_end_when_the_command_is_killed(tmp_path):
    data = tmp_path / "synth"
    generate(data, videos_train=8, videos_validation=4, size=64, frames=16, workers=1)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny"]
    args += ["--boxes", str(data / BOXES_FILE), "--batch-size", "4", "--workers", "2", "--epochs", "100"]
    command = Command(args, tmp_path)
    try:
        workers = command.wait_for_workers(2)
        command.proc.kill()
        command.proc.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in workers), DEADLINE), [
            pid for pid in workers if alive(pid)
        ]
    finally:
        command.cleanup()


def test_a_terminated_training_run_leaves_no_process_and_resumes(tmp_path):
    """SIGTERM keeps its default action in `strg train`: the run ends at once, its loader workers with
    it, and resuming leaves the run folder without a temporary entry (a save cut off part-way is cleaned
    up by the next start)."""
    from typer.testing import CliRunner

    from strg_deploy.cli import app

    data = tmp_path / "synth"
    generate(data, videos_train=8, videos_validation=4, size=64, frames=16, workers=1)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--preset", "tiny"]
    args += ["--boxes", str(data / BOXES_FILE), "--batch-size", "4", "--workers", "2"]
    command = Command([*args, "--epochs", "100"], tmp_path)
    try:
        assert wait_until(lambda: (run / "last").is_dir() or command.proc.poll() is not None, 120)
        workers = command.wait_for_workers(2)
        command.proc.terminate()
        assert command.proc.wait(timeout=60) == -signal.SIGTERM
        assert wait_until(lambda: not any(alive(pid) for pid in workers), DEADLINE)
    finally:
        command.cleanup()
    resumed = CliRunner().invoke(app, [*args, "--epochs", "1", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


LOADER = """
import time, torch
from strg_deploy.processes import loader_worker_init

class Slow(torch.utils.data.Dataset):  # an item that takes long, as decoding a long video can
    def __len__(self):
        return 8

    def __getitem__(self, index):
        time.sleep(60)
        return index

for batch in torch.utils.data.DataLoader(Slow(), num_workers=2, worker_init_fn=loader_worker_init()):
    pass
"""


def test_loader_workers_busy_with_an_item_end_when_the_parent_is_killed(tmp_path):
    """torch's own check of the parent runs between items only; loader_worker_init ends them at once."""
    pytest.importorskip("torch")
    proc = subprocess.Popen([sys.executable, "-c", LOADER], cwd=ROOT)
    workers: list[int] = []
    try:
        assert wait_until(lambda: len(children(proc.pid)) >= 2, 60)
        workers = children(proc.pid)
        time.sleep(0.5)  # both are inside __getitem__ by now
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in workers), DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- helpers

CHILD = """
import os, sys, time
from strg_deploy import processes
if sys.argv[1] == "poll":
    processes._prctl = lambda: None  # the portable fallback: a thread watching os.getppid()
parent = os.getpid()
if os.fork() == 0:
    processes.end_with_parent(parent, poll_seconds=0.05)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
def test_end_with_parent_ends_a_child_when_its_parent_is_killed(tmp_path, mechanism):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mechanism], cwd=ROOT)
    child = None
    try:
        assert wait_until(lambda: bool(children(proc.pid)), 30)
        (child,) = children(proc.pid)
        time.sleep(0.3)  # let it reach end_with_parent
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not alive(child), DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
def test_a_child_whose_parent_is_already_gone_ends_at_once(mechanism):
    """The race: the parent died before the child called end_with_parent (its parent is not the one
    expected any more)."""
    code = (
        "import sys, time\nfrom strg_deploy import processes\n"
        "if sys.argv[1] == 'poll': processes._prctl = lambda: None\n"
        "processes.end_with_parent(-1, poll_seconds=0.05)\ntime.sleep(60)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, mechanism], cwd=ROOT, timeout=60)
    assert result.returncode == -signal.SIGTERM


def test_loader_worker_init_is_picklable_and_names_this_process():
    init = pickle.loads(pickle.dumps(processes.loader_worker_init()))
    assert init.func is processes._loader_worker_started and init.args == (os.getpid(),)


def test_process_pool_workers_know_their_parent():
    with processes.process_pool(1) as pool:
        assert pool.submit(os.getppid).result() == os.getpid()


def test_sigterm_requests_sets_a_flag_and_restores_the_handler():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with processes.sigterm_requests() as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(requested, 5)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM ends the process
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    seen = []

    def elsewhere():
        with processes.sigterm_requests() as requested:
            seen.append(requested())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [False]
