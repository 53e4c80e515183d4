"""Calibration refresh, decided: when a calibration is stale, and the new calibration generation that replaces it.

The generation is an artifact input (qfleet.revision), so a refresh is a new revision: calibrated again (on the recent
traffic sample when the model opted in), built, evaluated and canaried like any revision while the stable one keeps
serving; a refresh that does not hold up is rolled back like any canary. Refreshes start only from a steady model
(the spec's revision is the stable one, or the last refresh's, which was rolled back or failed), never on top of a
person's change. After a refresh that was rolled back or failed the next one waits a doubling back-off and then for
its cause again: the schedule's next time, or a trigger's `for` from the first check after the back-off. So a
refresh that cannot help does not re-run forever.

Drift is read on the stable revision every `rollout.analysis.interval`, over that interval, like the canary's abort
window; a trigger fires when its figure was above its bound at every check for its `for` (Prometheus alerting's
`for`). A check with no data, or too few samples, neither confirms nor clears a run of checks above the bound.
Nothing is asked of Prometheus for a model without triggers, and nothing is due for a model without a refresh.

Pure: spec, the visit's starting status, the time and Prometheus's answers in; the refresh status, the generation,
the CalibrationStale condition, the queries to ask and the next due time out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from qfleet.api.conditions import ConditionStatus, Outcome, Reason
from qfleet.api.schedule import MIN_INTERVAL
from qfleet.api.refresh_spec import FALLBACK_RATE, OUT_OF_RANGE, QUALITY_DROP, Refresh, Trigger
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import DriftFigure, QuantizedModelStatus, RefreshStatus
from qfleet.api.values import format_duration
from qfleet.conditions import FAILURE_REASONS, find_condition
from qfleet.gates import text as _text
from qfleet.pipeline.analysis import MeasureRequest
from qfleet.promql import Window, drift_queries
from qfleet.revision import revision_of

SCHEDULE = "schedule"
IN_PROGRESS, FAILED = "InProgress", "Failed"
BACKOFF_BASE, BACKOFF_CAP = timedelta(hours=1), timedelta(hours=24)
MIN_SAMPLES = {FALLBACK_RATE: 500, QUALITY_DROP: 500, OUT_OF_RANGE: 500}
"""Per check: KV tokens (fallbackRate, outOfRange) or scored prompt positions (qualityDrop) the stable must have
served in the window; fewer is no data. Lower than a canary gate's: a trigger needs every check over `for` above."""


@dataclass(frozen=True)
class DriftReading:
    """One trigger's figure over one check's window; value None is no data."""

    value: Decimal | None
    samples: int | None = None


@dataclass(frozen=True)
class DriftVerdict:
    name: str
    value: Decimal | None
    bound: Decimal
    above_since: datetime | None
    stale: bool
    samples: int | None = None


def text(value: Decimal) -> str:
    """A figure for status and messages, to four significant digits."""
    return _text(Decimal(f"{value:.4g}"))


def drift_verdict(name: str, trigger: Trigger, reading: DriftReading, above_since: datetime | None,
                  now: datetime) -> DriftVerdict:
    """Whether `trigger` has held: its figure above `max` at this check and at every check since `above_since`, for
    at least `for`. No data (or too few samples) keeps the run as it is but does not fire it."""
    value, bound = reading.value, trigger.max
    enough = value is not None and (reading.samples or 0) >= MIN_SAMPLES.get(name, 0)
    if not enough:
        return DriftVerdict(name, None, bound, above_since, False, reading.samples)
    assert value is not None
    if value <= bound:
        return DriftVerdict(name, value, bound, None, False, reading.samples)
    since = above_since or now
    return DriftVerdict(name, value, bound, since, now - since >= trigger.for_, reading.samples)


def next_refresh_due(refresh: Refresh, status: QuantizedModelStatus) -> datetime | None:
    """When the schedule next asks for a refresh: the interval (or the cron's next time) after the later of the
    current calibration's completion and the last refresh request, and never sooner than MIN_INTERVAL after it (a
    cron such as `* * * * *` or `0 * * * *` names times closer together: those are skipped); None without a schedule
    or a calibration."""
    schedule = refresh.parsed_schedule()
    calibration = status.calibration
    anchors = [when for when in (calibration.completed_at if calibration else None,
                                 status.refresh.requested_at if status.refresh else None) if when is not None]
    if schedule is None or not anchors:
        return None
    last = max(anchors)
    due = schedule.next_after(last)
    earliest = last + MIN_INTERVAL
    if due is not None and due < earliest:
        due = schedule.next_after(earliest - timedelta(microseconds=1))  # the first named minute at or after it
    return due


def backoff(failures: int) -> timedelta:
    """Wait after the `failures`-th refresh in a row that was rolled back or failed: 1h, 2h, 4h, ... at most 24h."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1))


def readings(values: Mapping[str, Decimal | None]) -> dict[str, DriftReading]:
    """Each trigger's figure from the answers to `qfleet.promql.drift_queries`."""
    def part(name: str, key: str) -> Decimal | None:
        return values.get(f"drift/{name}/{key}")

    def ratio(numerator: Decimal | None, denominator: Decimal | None) -> Decimal | None:
        return None if numerator is None or not denominator else numerator / denominator

    def count(value: Decimal | None) -> int | None:
        return None if value is None else int(value)

    lost, gained = part(QUALITY_DROP, "lost"), part(QUALITY_DROP, "gained")
    return {
        FALLBACK_RATE: DriftReading(ratio(part(FALLBACK_RATE, "fallback"), part(FALLBACK_RATE, "entries")),
                                    count(part(FALLBACK_RATE, "tokens"))),
        QUALITY_DROP: DriftReading(ratio(None if lost is None or gained is None else lost - gained,
                                         part(QUALITY_DROP, "scored")), count(part(QUALITY_DROP, "scored"))),
        OUT_OF_RANGE: DriftReading(ratio(part(OUT_OF_RANGE, "outOfRange"), part(OUT_OF_RANGE, "values")),
                                   count(part(OUT_OF_RANGE, "tokens"))),
    }


@dataclass(frozen=True)
class RefreshInput:
    spec: QuantizedModelSpec
    status: QuantizedModelStatus
    """The status the visit started from."""
    now: datetime
    namespace: str
    model: str
    runtime_image: str
    measured: Mapping[str, Decimal | None] | None = None
    """Answers to the drift queries this visit's first pass asked for."""


@dataclass
class RefreshStep:
    generation: int
    status: RefreshStatus | None
    condition: tuple[ConditionStatus, str, str] | None = None
    """CalibrationStale's (status, reason, message); None: the model has no refresh and no such condition."""
    measure: MeasureRequest | None = None
    wake: datetime | None = None


def refresh_step(given: RefreshInput) -> RefreshStep:
    spec, old, now = given.spec, given.status, given.now
    state = (old.refresh or RefreshStatus()).model_copy(deep=True)
    spec_revision = revision_of(spec, given.runtime_image, state.generation)
    if state.outcome == IN_PROGRESS:
        state = _settle(state, old, spec_revision, now)
    refresh = spec.quantization.calibration.refresh
    if refresh is None:
        return RefreshStep(state.generation, state if state.generation else None)
    step = RefreshStep(state.generation, state)
    revisions = old.revision
    stable = revisions.stable if revisions else None
    current = revisions.current if revisions else None
    attempt_over = state.revision == current and state.outcome in (Outcome.ROLLED_BACK, FAILED)
    if stable is None or spec_revision != current or not (current == stable or attempt_over):
        step.condition = _not_steady(state)
        return step
    calibration = old.calibration
    if calibration is None:  # a bf16 KV cache records none (a failed refresh's calibration is a record too)
        step.condition = (ConditionStatus.FALSE, Reason.CALIBRATION_CURRENT,
                          f"Revision {stable} has no calibration to refresh (its KV format keeps full precision)")
        return step
    if state.not_before is not None and now < state.not_before:
        step.condition = (ConditionStatus.TRUE, Reason.REFRESH_BACKING_OFF, _backing_off(state))
        step.wake = state.not_before
        return step
    state.next_scheduled_at = next_refresh_due(refresh, old)
    if state.next_scheduled_at is not None and state.next_scheduled_at <= now:
        return _start(step, given, SCHEDULE, f"the schedule {refresh.schedule} came due at "
                      f"{state.next_scheduled_at.isoformat()} (calibration of {calibration.completed_at})")
    stale = _check_drift(step, given, refresh)
    if stale is not None:
        return _start(step, given, stale.name, f"{_figure(stale)} stayed above its bound for "
                      f"{format_duration(now - stale.above_since) if stale.above_since else '0s'}")
    step.condition = (ConditionStatus.FALSE, Reason.CALIBRATION_CURRENT, _current(state))
    due = [when for when in (state.next_scheduled_at, _next_check(state, spec, refresh)) if when is not None]
    step.wake = min(due) if due else None
    return step


def follow_up(spec: QuantizedModelSpec, old: QuantizedModelStatus, new: QuantizedModelStatus, spec_revision: str,
              now: datetime) -> datetime | None:
    """Now, when the visit that judged `old` left a status the refresh step would judge differently: a revision it
    promoted (drift is watched on the new stable from the next visit), or a running refresh it promoted, rolled back
    or failed (the next visit settles its outcome and starts any back-off). A serving model may get no other event
    until the resync, minutes later."""
    if spec.quantization.calibration.refresh is None:
        return None
    stable = new.revision.stable if new.revision else None
    if stable is not None and stable != (old.revision.stable if old.revision else None):
        return now
    state = new.refresh
    if state is not None and state.outcome == IN_PROGRESS and _settle(state, new, spec_revision, now) is not state:
        return now
    return None


def _settle(state: RefreshStatus, old: QuantizedModelStatus, spec_revision: str, now: datetime) -> RefreshStatus:
    """The running refresh's outcome, once it has one: promoted, rolled back, failed in its pipeline, or replaced by
    a spec edit."""
    revisions = old.revision
    entry = next((h for h in reversed(old.history) if h.revision == state.revision), None)
    ready = find_condition(old.conditions, "Ready")
    if revisions is not None and revisions.stable == state.revision:
        outcome = Outcome.PROMOTED.value
    elif entry is not None and entry.outcome == Outcome.ROLLED_BACK:
        outcome = Outcome.ROLLED_BACK.value
    elif revisions is not None and revisions.current == state.revision and ready is not None \
            and ready.status == ConditionStatus.FALSE and ready.reason in FAILURE_REASONS:
        outcome = FAILED
    elif spec_revision != state.revision:
        outcome = Outcome.SUPERSEDED.value
    else:
        return state
    failed = outcome in (Outcome.ROLLED_BACK, FAILED)
    failures = state.consecutive_failures + 1 if failed else 0
    drift = [figure.model_copy(update={"above_since": None}) for figure in state.drift]
    return state.model_copy(update={"outcome": outcome, "consecutive_failures": failures, "drift": drift,
                                    "not_before": now + backoff(failures) if failed else None})


def _start(step: RefreshStep, given: RefreshInput, reason: str, why: str) -> RefreshStep:
    state = step.status
    assert state is not None
    generation = state.generation + 1
    revision = revision_of(given.spec, given.runtime_image, generation)
    stable = given.status.revision.stable if given.status.revision else None
    step.status = state.model_copy(update={
        "generation": generation, "reason": reason, "requested_at": given.now, "revision": revision,
        "based_on": stable, "outcome": IN_PROGRESS, "not_before": None})
    step.generation = generation
    kind = Reason.REFRESH_SCHEDULED if reason == SCHEDULE else Reason.DRIFT_DETECTED
    step.condition = (ConditionStatus.TRUE, kind, f"Calibration of revision {stable} is stale: {why}; "
                      f"re-calibration generation {generation} runs as revision {revision}{_data(given.spec)}, "
                      f"and revision {stable} serves until it is promoted")
    step.wake = None
    return step


def _check_drift(step: RefreshStep, given: RefreshInput, refresh: Refresh) -> DriftVerdict | None:
    """Checks the triggers when a check is due: asks for the queries on the first pass, judges the answers on the
    second. Returns the first stale trigger."""
    state, spec, now = step.status, given.spec, given.now
    assert state is not None
    triggers = refresh.configured_triggers()
    if not triggers or (state.last_checked_at is not None and
                        now < state.last_checked_at + spec.rollout.analysis.interval):
        return None
    stable = given.status.revision.stable if given.status.revision else None
    assert stable is not None
    if given.measured is None:
        window = Window(given.namespace, given.model, stable, stable,
                        max(1, int(spec.rollout.analysis.interval.total_seconds())))
        step.measure = MeasureRequest(str(spec.rollout.analysis.prometheus.address),
                                      drift_queries(window, [name for name, _ in triggers]))
        return None
    found, before = readings(given.measured), {figure.name: figure for figure in state.drift}
    verdicts = [drift_verdict(name, trigger, found[name],
                              before[name].above_since if name in before else None, now)
                for name, trigger in triggers]
    state.drift = [DriftFigure.model_validate({
        "name": v.name, "value": None if v.value is None else text(v.value), "max": text(v.bound),
        "for": format_duration(trigger.for_), "samples": v.samples, "aboveSince": v.above_since})
        for v, (_, trigger) in zip(verdicts, triggers, strict=True)]
    state.last_checked_at = now
    return next((v for v in verdicts if v.stale), None)


def _next_check(state: RefreshStatus, spec: QuantizedModelSpec, refresh: Refresh) -> datetime | None:
    if not refresh.configured_triggers() or state.last_checked_at is None:
        return None
    return state.last_checked_at + spec.rollout.analysis.interval


def _figure(verdict: DriftVerdict) -> str:
    return f"{verdict.name} {text(verdict.value) if verdict.value is not None else 'no data'} " \
           f"(max {text(verdict.bound)})"


def _figures(state: RefreshStatus) -> str:
    return ", ".join(f"{f.name} {f.value if f.value is not None else 'no data'} (max {f.max})" for f in state.drift)


def _current(state: RefreshStatus) -> str:
    parts = []
    if state.drift:
        parts.append(f"drift within bounds: {_figures(state)}")
    if state.next_scheduled_at is not None:
        parts.append(f"next scheduled refresh at {state.next_scheduled_at.isoformat()}")
    return "Calibration is current" + (f"; {'; '.join(parts)}" if parts else "")


def _not_steady(state: RefreshStatus) -> tuple[ConditionStatus, str, str]:
    if state.outcome == IN_PROGRESS:
        kind = Reason.REFRESH_SCHEDULED if state.reason == SCHEDULE else Reason.DRIFT_DETECTED
        return (ConditionStatus.TRUE, kind,
                f"Re-calibration generation {state.generation} ({state.reason}) runs as revision {state.revision}; "
                f"revision {state.based_on} serves until it is promoted" +
                (f"; at the start: {_figures(state)}" if state.drift and kind == Reason.DRIFT_DETECTED else ""))
    return (ConditionStatus.FALSE, Reason.CALIBRATION_CURRENT,
            "A revision is rolling out: drift is watched again once the spec's revision is stable")


def _backing_off(state: RefreshStatus) -> str:
    assert state.not_before is not None
    return (f"Re-calibration generation {state.generation} ({state.reason}, revision {state.revision}) was "
            f"{'rolled back' if state.outcome == Outcome.ROLLED_BACK else 'stopped by a failed step'} "
            f"({state.consecutive_failures} in a row); revision {state.based_on} keeps serving with its calibration. "
            f"The next refresh waits until {state.not_before.isoformat()}, then for its cause again")


def _data(spec: QuantizedModelSpec) -> str:
    refresh = spec.quantization.calibration.refresh
    if refresh is None or not refresh.sample_traffic.enabled:
        return f" (calibration data: {spec.quantization.calibration.dataset} only; sampleTraffic is off)"
    return f" (calibration data: {text(refresh.recent_share)} from the recent traffic sample)"
