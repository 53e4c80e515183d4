"""What Kopf does for every watch event that qfleet has no use for, turned off.

qfleet registers indexers and event watchers only (handlers.py): no handler that reacts to a change reads a diff, so
Kopf's copy of each event's body to diff against (a deep copy per event, about a sixth of the operator's CPU while a
thousand models go to serving) is never read; and each event's "Indexer 'x' succeeded." and "Handler 'y' succeeded."
INFO lines (80,000 lines for a thousand models' first rollout) tell nothing that a failure's traceback would not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """Nothing to diff against, since no handler reads a diff; nothing is stored on the objects either."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class QuietSuccesses(logging.Filter):
    """Drops Kopf's per-event success lines of the named indexers and event watchers; their failures still log."""

    def __init__(self, handler_names: Iterable[str]) -> None:
        super().__init__()
        self.lines = frozenset(f"{kind} '{name}' succeeded." for name in handler_names
                               for kind in ("Handler", "Indexer"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.lines


def quiet(settings: kopf.OperatorSettings, handler_names: Iterable[str]) -> None:
    settings.persistence.diffbase_storage = NoDiffBase()
    objects = logging.getLogger("kopf.objects")
    for old in [f for f in objects.filters if isinstance(f, QuietSuccesses)]:
        objects.removeFilter(old)  # a restart in the same process (the tests) installs it again
    objects.addFilter(QuietSuccesses(handler_names))
