"""The operator's work queue: which model to visit next, one visit at a time per model.

The contract of client-go's workqueue, in asyncio: a key waits at most once (adding a waiting key changes nothing);
a key is handed to one worker at a time, and adding it while it is being visited hands it out once more when that
visit is done, so any number of wake-ups during a visit coalesce into one more; `add(key, due)` schedules a wake-up,
and a key keeps only its earliest one. Each handed-out key comes with its lag (how long it waited past the moment it
was due, or was added) and its cause: `scheduled` when a due time came, `event` when it was woken at once. The two
lags mean different things: a scheduled one is how late the loop was for what it planned; an event's, in a burst (a
thousand specs applied at once), is the queue's depth at the apiserver's pace.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import NamedTuple

SCHEDULED, EVENT = "scheduled", "event"


class Wake(NamedTuple):
    key: Hashable
    lag: float
    cause: str


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready: deque[Hashable] = deque()
        self._waiting: dict[Hashable, tuple[float, str]] = {}
        """Keys in _ready, with the time each became due and why."""
        self._processing: set[Hashable] = set()
        self._again: dict[Hashable, tuple[float, str]] = {}
        """Keys woken while being visited, with the time they became due and why."""
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        """Keys due and waiting for a worker (the queue depth)."""
        return len(self._ready)

    @property
    def scheduled(self) -> int:
        """Keys with a wake-up in the future."""
        return len(self._due)

    def add(self, key: Hashable, due: float | None = None) -> None:
        """Wake `key` now, or at `due` (on this queue's clock) unless it is woken earlier."""
        now = self._clock()
        if due is None or due <= now:
            self._make_ready(key, now if due is None else due, EVENT if due is None else SCHEDULED)
            return
        if key in self._waiting or self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._changed.set()

    def forget(self, key: Hashable) -> None:
        """Drops a scheduled wake-up (the model is gone); a waiting or running key is left to find it gone."""
        self._due.pop(key, None)

    async def get(self) -> Wake:
        """The next key to visit, its lag in seconds and its cause; waits until one is due."""
        while True:
            self._promote_due()
            if self._ready:
                key = self._ready.popleft()
                since, cause = self._waiting.pop(key)
                self._processing.add(key)
                return Wake(key, max(0.0, self._clock() - since), cause)
            timeout = max(0.0, self._heap[0][0] - self._clock()) if self._heap else None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def done(self, key: Hashable) -> None:
        """The visit of `key` ended; a wake-up that came meanwhile hands it out again."""
        self._processing.discard(key)
        if key in self._again:
            self._make_ready(key, *self._again.pop(key))

    def _make_ready(self, key: Hashable, since: float, cause: str) -> None:
        if key in self._processing:
            self._again[key] = min((since, cause), self._again.get(key, (since, cause)))
            return
        if key in self._waiting:
            return
        self._due.pop(key, None)
        self._waiting[key] = (since, cause)
        self._ready.append(key)
        self._changed.set()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                self._make_ready(key, due, SCHEDULED)
