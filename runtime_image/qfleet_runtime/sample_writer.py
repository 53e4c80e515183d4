"""The serving side of the prompt sample (`serve --prompt-sample-dir`): the last N distinct prompts of this pod, kept
in memory and written to `<dir>/<hostname>.jsonl` (format: `prompt_sample`) from a background thread.

A ring of the most recent distinct prompts rather than a reservoir: re-calibration exists because traffic moved, and
a reservoir over everything served since the pod started would keep mostly the traffic from before the move (each
prompt equally likely), which is the data the stale calibration already saw. A prompt served again moves to the
front instead of taking a second slot, so a load that repeats a few prompts does not fill the ring with copies.

The request path only does `offer`: an O(len(ids)) insert under a lock the writer holds just long enough to copy the
ring (no I/O, no JSON). The writer thread wakes when `flush_every` prompts are waiting or every `flush_seconds`, drops
entries older than the retention, writes the whole file through a temporary file and a rename, and deletes other pods'
files not written for longer than the retention (every entry in them has expired: pods of a Deployment get new names,
and nobody else would remove their files). Memory is bounded by `max_entries` prompts of at most `max_tokens` ids,
held as 4-byte ints. Failures are logged by kind and path, never with a prompt.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from . import prompt_sample as ps

log = logging.getLogger("qfleet.serve")

FLUSH_EVERY = 32
FLUSH_SECONDS = 30.0
FILE_MODE = 0o640
"""Prompts are user data: not world-readable. The calibration Job runs the same image (same user or fsGroup)."""


class PromptSampler:
    def __init__(self, directory: Path, max_entries: int, retention_seconds: float, fingerprint: str,
                 max_tokens: int, host: str | None = None, flush_every: int = FLUSH_EVERY,
                 flush_seconds: float = FLUSH_SECONDS, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1 or retention_seconds <= 0 or max_tokens < 1:
            raise ValueError("the prompt sample needs max_entries >= 1, retention_seconds > 0 and max_tokens >= 1")
        self.directory = Path(directory)
        self.path = ps.pod_file(self.directory, host or socket.gethostname())
        self.max_entries, self.retention, self.fingerprint = max_entries, retention_seconds, fingerprint
        self.max_tokens, self.clock = max_tokens, clock
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._ring: OrderedDict[bytes, float] = OrderedDict()
        """Packed ids (array('i').tobytes()) -> when last served; oldest first."""
        self._lock = threading.Lock()
        self._pending = 0
        self._wake = threading.Event()
        self._stop = False
        self._done = threading.Condition()
        self.flushes = 0
        self.failures = 0
        self._restore()
        self._thread = threading.Thread(target=self._loop, name="qfleet-prompt-sample", daemon=True)
        self._thread.start()

    def _restore(self) -> None:
        """A restarted container of the same pod (same host name) continues from its own file."""
        now = self.clock()
        for entry in ps.fresh(ps.read_file(self.path), now, self.retention):
            if entry.tokenizer == self.fingerprint:
                self._insert(entry.ids, entry.time)

    def _insert(self, ids: Sequence[int], when: float) -> None:
        key = array("i", ids[: self.max_tokens]).tobytes()
        self._ring.pop(key, None)
        self._ring[key] = when
        while len(self._ring) > self.max_entries:
            self._ring.popitem(last=False)

    def offer(self, ids: Sequence[int]) -> None:
        """Called on the request path with the served prompt's ids: never blocks on I/O."""
        if not ids:
            return
        with self._lock:
            self._insert(ids, self.clock())
            self._pending += 1
            due = self._pending >= self.flush_every
        if due:
            self._wake.set()

    def entries(self) -> list[ps.Entry]:
        """The ring's fresh entries, oldest first (what the next flush writes)."""
        with self._lock:
            items = list(self._ring.items())
        now = self.clock()
        return ps.fresh((ps.Entry(when, tuple(array("i", key)), self.fingerprint) for key, when in items), now,
                        self.retention)

    def flush(self) -> None:
        """Writes the pod's file now (the thread calls this; tests and `close` may too)."""
        with self._lock:
            self._pending = 0
            oldest = self.clock() - self.retention
            while self._ring and next(iter(self._ring.values())) < oldest:
                self._ring.popitem(last=False)
        try:
            self._write(self.entries())
            self._remove_expired_files()
        except OSError as error:
            self.failures += 1
            log.warning("prompt sample: writing %s failed (%s, errno %s)", self.path, type(error).__name__,
                        error.errno)
        with self._done:
            self.flushes += 1
            self._done.notify_all()

    def _write(self, entries: list[ps.Entry]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.writelines(ps.encode(e) + "\n" for e in entries)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _remove_expired_files(self) -> None:
        oldest = self.clock() - self.retention
        for path in ps.sample_files(self.directory):
            if path != self.path:
                try:
                    if path.stat().st_mtime < oldest:
                        path.unlink()
                except FileNotFoundError:
                    pass  # another pod removed it first

    def wait_flushes(self, count: int, timeout: float) -> bool:
        """Waits until at least `count` flushes have finished; True when they have."""
        with self._done:
            return self._done.wait_for(lambda: self.flushes >= count, timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop:
                return
            if self._pending:
                self.flush()

    def close(self) -> None:
        """Stops the thread and writes what is pending (the model's finalize, on SIGTERM)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        if self._pending:
            self.flush()
