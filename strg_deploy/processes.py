"""Child processes that end with their parent, and a SIGTERM that stops work at a safe point.

Every code path that starts worker processes uses this module (no torch here):

- :func:`process_pool`: a ``ProcessPoolExecutor`` whose workers end with the process that made it;
- :func:`loader_worker_init`: the ``worker_init_fn`` that does the same for a torch DataLoader's workers;
- :func:`end_with_parent`: the mechanism itself, for any other child. On Linux the child asks the kernel
  for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)`` through libc), then checks that its parent
  is still the one expected (the parent may have died before the ``prctl`` call, and then the child
  sends itself the signal). Elsewhere, or where ``prctl`` fails, a daemon thread in the child polls
  ``os.getppid()`` and sends the signal when it changes. The kernel sends the signal when the *thread*
  that started the child ends, so children are started from the main thread (pools and DataLoaders
  here are).

:func:`sigterm_requests` turns SIGTERM into a flag for the duration of a block, so that a command that
runs a pool can cancel the pool's pending work, let running jobs finish their atomic writes and raise
:class:`Terminated` (the CLI prints ``error: terminated`` and exits 143). A second SIGTERM ends the
process at once; SIGKILL always does, and the children follow through :func:`end_with_parent`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5
"""How often the portable fallback looks at the parent's pid."""

TERMINATED_EXIT_STATUS = 128 + signal.SIGTERM
"""The exit status of a command stopped by SIGTERM (143), as a shell reports a process killed by it."""


class Terminated(Exception):
    """The process was asked to end (SIGTERM) and stopped at a safe point, with nothing half-written."""

    def __init__(self, message: str = "terminated"):
        super().__init__(message)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


def _watch_parent(parent_pid: int, poll_seconds: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    os.kill(os.getpid(), signal.SIGTERM)


def end_with_parent(parent_pid: int, poll_seconds: float = POLL_SECONDS) -> None:
    """Call in a child process of ``parent_pid`` (the pid the parent read with ``os.getpid()`` before
    starting it): the child gets SIGTERM, with its default action (the process ends), when the parent
    dies, however it dies. Returns at once."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits the parent's handler
    prctl = _prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(
        target=_watch_parent, args=(parent_pid, poll_seconds), name="end-with-parent", daemon=True
    ).start()


def _pool_worker_started(parent_pid: int) -> None:
    """Pool worker initializer: end with the parent; leave Ctrl-C to the parent, which shuts the pool."""
    end_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that end with the calling process (see the module docstring).

    Workers start with fork where the platform has it: the jobs here need only numpy and PyAV, and fork
    works whatever the main module is (spawn re-imports it, which fails for stdin and re-runs unguarded
    scripts); elsewhere with spawn. Workers ignore SIGINT: Ctrl-C reaches the parent, which shuts them.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=_pool_worker_started, initargs=(os.getpid(),)
    )


def _loader_worker_started(parent_pid: int, worker_id: int) -> None:
    end_with_parent(parent_pid)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def loader_worker_init() -> Callable[[int], None]:
    """A torch DataLoader ``worker_init_fn`` (picklable) that makes each worker end with the process
    creating the loader now, at once, instead of at torch's own next 5-second check of its parent."""
    return functools.partial(_loader_worker_started, os.getpid())


@contextlib.contextmanager
def sigterm_requests() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGTERM sets a flag instead of ending the process; the block gets the
    function that reads the flag, stops at a safe point when it is set and raises :class:`Terminated`.

    The handler only sets the flag (it never raises into whatever the main thread is doing) and gives
    SIGTERM its default action back, so a second SIGTERM ends the process at once. Outside the main
    thread, or where SIGTERM already has a handler of someone else's, nothing changes and the function
    always returns False. The previous handler is restored when the block ends.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield lambda: False
        return
    requested = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        requested.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)
