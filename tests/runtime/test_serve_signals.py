"""`serve`'s main thread and the pod's signals: a SIGTERM drains at once whichever of the process's threads the
kernel hands it to (CI once saw a server still ready 5 s after its SIGTERM, as when another thread, the front's,
takes it while the main thread sits in waitpid)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("torch")

from qfleet_runtime.serve import SignalRelay, wait_for  # noqa: E402

DRAIN_SECONDS = 0.3
CHILD_SECONDS = 30  # what a wait that slept through the signal would take


def test_a_child_that_exits_by_itself_gives_its_code() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait_for(child) == 3


def test_a_sigterm_taken_by_another_thread_drains_at_once_then_stops_the_child() -> None:
    child = subprocess.Popen(["sleep", str(CHILD_SECONDS)])
    drained: list[float] = []
    relay = SignalRelay(child, DRAIN_SECONDS, lambda: drained.append(time.monotonic()))
    previous = signal.signal(signal.SIGTERM, relay.handle)

    def signal_this_thread() -> None:
        # A thread-directed SIGTERM: its C-level handler runs here, the Python one must still run in the main thread.
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    # The delay lets the main thread reach its wait first; if it has not, the test still holds, it only tests less.
    kill = threading.Timer(0.2, signal_this_thread)
    started = time.monotonic()
    try:
        kill.start()
        code = wait_for(child)
    finally:
        signal.signal(signal.SIGTERM, previous)
        kill.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    ended = time.monotonic()

    assert code == -signal.SIGTERM
    assert len(drained) == 1 and drained[0] - started < 2, (drained, started)
    assert ended - drained[0] >= DRAIN_SECONDS
    assert ended - started < CHILD_SECONDS / 3
    assert signal.set_wakeup_fd(-1) == -1, "wait_for left its wakeup fd installed"
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL, "wait_for left its SIGCHLD handler"
