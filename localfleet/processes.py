"""Start, watch and stop the fleet's processes, and bounded waits for them to become ready."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class ProcessFailed(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1, held open together while choosing so none repeats."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Starts argv in a session of its own (it outlives `python -m localfleet up`), logging to log_dir/name.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd)


def is_ours(pid: int, marker: str) -> bool:
    """True when pid is alive and its command line carries marker (the run directory): guards against pid reuse."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def stop(pid: int, marker: str, grace_seconds: float = 10.0) -> bool:
    """SIGTERM to the process group, SIGKILL after the grace period. Returns False if pid was not ours."""
    if not is_ours(pid, marker):
        return False
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return not _alive(pid)


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2,
               process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Polls check() until it is true; fails early if process exits, and after timeout, quoting the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        if process is not None and process.poll() is not None:
            raise ProcessFailed(f"{what}: process exited with code {process.returncode}{_tail(log)}")
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{what}: not ready after {timeout:.0f} s{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 (loopback only)
        return response.status == 200
