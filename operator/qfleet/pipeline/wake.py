"""When a model next needs a visit that no watch event will bring: the next analysis of a running canary, the end of a
superseded revision's scale-down delay (a calibration refresh's next schedule, drift check or back-off end come from
qfleet.pipeline.refresh; decide takes the earliest). Everything else (a Job finishing, replicas becoming ready, a spec edit, a
route edit) arrives as an event of the model or one of its children, so a serving model with no canary has nothing
due and is not visited until something changes (besides the slow resync).

Pure: spec, status and the time in, a time (or None) out.
"""

from __future__ import annotations

from datetime import datetime

from qfleet.api.conditions import Outcome
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import QuantizedModelStatus
from qfleet.gates import effective_interval
from qfleet.pipeline.release_types import SCALE_DOWN_DELAY


def next_wake(spec: QuantizedModelSpec, status: QuantizedModelStatus, now: datetime) -> datetime | None:
    """The earliest time something is due for this model, never before `now`; None when nothing is."""
    due = [when for when in (_analysis_due(spec, status), _scale_down_due(status, now)) if when is not None]
    return max(min(due), now) if due else None


def _analysis_due(spec: QuantizedModelSpec, status: QuantizedModelStatus) -> datetime | None:
    canary = status.canary
    if canary is None or canary.step_started_at is None:
        return None  # no canary, or one waiting for its route or replicas: their events wake it
    steps = spec.rollout.steps
    step = steps[min(canary.step, len(steps) - 1)]
    since = canary.last_analysis.at if canary.last_analysis is not None else canary.step_started_at
    return since + effective_interval(spec.rollout.analysis, step)


def _scale_down_due(status: QuantizedModelStatus, now: datetime) -> datetime | None:
    """A revision superseded by a promotion keeps its replicas for SCALE_DOWN_DELAY, then goes to zero."""
    ends = [entry.at + SCALE_DOWN_DELAY for entry in status.history
            if entry.outcome == Outcome.SUPERSEDED and entry.at + SCALE_DOWN_DELAY > now]
    return min(ends) if ends else None

