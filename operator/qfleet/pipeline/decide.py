"""One reconcile visit, decided: admission, then calibrate -> build -> evaluate for the current revision.

`decide(observed)` is pure. Everything it needs (spec, generation, old status, the child Jobs that exist, the nodes,
the time) comes in as plain data; it returns the whole new status, the Jobs to create and the Events to post. It is
level-based: each visit recomputes the step from the Jobs that exist, so a restart anywhere carries on, and a visit
with nothing new returns the status unchanged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from qfleet.api import SpecError, parse_spec
from qfleet.api.conditions import CALIBRATION_STALE, ConditionStatus, ConditionType, Reason
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import Condition, QuantizedModelStatus, RevisionStatus
from qfleet.conditions import derive_phase, find_condition
from qfleet.pipeline import records
from qfleet.pipeline.refresh import RefreshInput, RefreshStep, follow_up, refresh_step
from qfleet.pipeline.release import release
from qfleet.pipeline.release_types import ReleaseInput
from qfleet.pipeline.steps import FAILED, run_pipeline
from qfleet.pipeline.visit import Decision, Event, Observed, Visit, VisitConditions
from qfleet.pipeline.wake import next_wake
from qfleet.revision import revision_of

WARNING_REASONS = {Reason.INVALID_SPEC, Reason.DRIFT_DETECTED, Reason.REFRESH_BACKING_OFF, Reason.NO_COMPATIBLE_NODE_POOL, Reason.QUALITY_GATE_FAILED, Reason.ANALYSIS_FAILED,
                   Reason.GATE_ABORTED, Reason.FAILURE_LIMIT_REACHED, Reason.INCONCLUSIVE_LIMIT_REACHED,
                   Reason.MAX_HOLD_REACHED, Reason.ROLLOUT_ABORTED, Reason.HOLDING_FOR_EVIDENCE,
                   *FAILED.values()}
ANNOUNCED_UNKNOWN = {Reason.HOLDING_FOR_EVIDENCE}
"""Unknown conditions that still deserve an Event: a canary held past its pause for want of evidence."""
NOTHING_HAPPENED = {(ConditionType.ROLLED_BACK, Reason.NOT_ROLLED_BACK),
                    (ConditionType.CANARY_HEALTHY, Reason.PROMOTED)}
"""A condition leaving its first-visit placeholder for one of these says that nothing happened (no rollback; the first
revision served without a canary): no Event, since each is a write and a thousand models' first rollout would post
two thousand of them that Ready=True already tells."""
PARSED_SPECS = 1024
"""Specs kept parsed: a model's spec rarely changes, and a visit that measures decides twice."""
_parsed: OrderedDict[tuple[str, str], QuantizedModelSpec] = OrderedDict()
_parsed_lock = threading.Lock()


def decide(observed: Observed) -> Decision:
    old = QuantizedModelStatus.model_validate(observed.status or {})
    status = QuantizedModelStatus.model_validate(observed.status or {})  # a deep copy, in a seventh of the time
    conditions = VisitConditions(old.conditions, observed.now, observed.generation)
    status.observed_generation = observed.generation
    try:
        spec = _spec(observed.spec, observed.runtime_image)
    except SpecError as error:
        conditions.set(ConditionType.READY, ConditionStatus.FALSE, Reason.INVALID_SPEC, str(error))
        return _finish(old, status, conditions, [])

    refresh = refresh_step(RefreshInput(
        spec, old, observed.now, observed.namespace, observed.name, observed.runtime_image,
        observed.drift_measured.values if observed.drift_measured else None))
    status.refresh = refresh.status
    revision = revision_of(spec, generation=refresh.generation)
    status.revision = (status.revision or RevisionStatus()).model_copy(update={"current": revision})
    visit = Visit(observed, spec, revision, old, status, conditions, generation=refresh.generation)
    run_pipeline(visit)
    _record_refresh(visit, refresh)
    changes = release(ReleaseInput(
        name=observed.name, namespace=observed.namespace, uid=observed.uid, spec=spec, revision=revision,
        servable=visit.servable, deployments=observed.deployments, route=observed.route, measured=observed.measured,
        action=observed.action, now=observed.now,
        results=lambda of: records.results_of(of, status, old), latency_source=observed.latency_source),
        status, conditions.set)
    decision = _finish(old, status, conditions, visit.create)
    decision.events = [*visit.events, *decision.events, *(Event(*event) for event in changes.events)]
    decision.release = changes
    due = [when for when in (next_wake(spec, status, observed.now), refresh.wake,
                             follow_up(spec, old, status, revision, observed.now)) if when is not None]
    decision.wake = max(min(due), observed.now) if due else None
    decision.drift_measure = refresh.measure
    return decision


def _spec(raw: Mapping[str, Any], runtime_image: str) -> QuantizedModelSpec:
    """The parsed spec with its images, from the last PARSED_SPECS parsed (a frozen model, so shared). Keyed by the
    raw spec's repr, which tells apart all that validation does (1 from 1.0 and True, a list from a tuple); an invalid
    spec is not kept, and raises SpecError each time."""
    key = (repr(raw), runtime_image)
    with _parsed_lock:
        spec = _parsed.get(key)
        if spec is not None:
            _parsed.move_to_end(key)
            return spec
    spec = parse_spec(raw).with_images(runtime_image)
    with _parsed_lock:
        _parsed[key] = spec
        if len(_parsed) > PARSED_SPECS:
            _parsed.popitem(last=False)
    return spec


def _record_refresh(visit: Visit, refresh: RefreshStep) -> None:
    """CalibrationStale (only on models with a refresh), and the refresh's generation and cause on the calibration it
    ran."""
    conditions = visit.conditions
    if refresh.condition is None:
        conditions.items = [c for c in conditions.items if c.type != CALIBRATION_STALE]
    else:
        conditions.set(CALIBRATION_STALE, *refresh.condition)
    calibration, state = visit.status.calibration, refresh.status
    if calibration is not None and calibration.revision == visit.revision and visit.generation and state is not None:
        visit.status.calibration = calibration.model_copy(update={"generation": visit.generation,
                                                                  "refresh_reason": state.reason})


def _finish(old: QuantizedModelStatus, status: QuantizedModelStatus, conditions: VisitConditions,
            create: list[dict[str, Any]]) -> Decision:
    status.conditions = conditions.items
    status.phase = derive_phase(status.conditions)
    return Decision(status=status.model_dump(mode="json", by_alias=True, exclude_none=True), create=create,
                    events=_transitions(old.conditions, status.conditions))


def _transitions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Event]:
    """An Event for each condition whose status or reason changed (the first-visit Unknowns, and a first settling that
    says nothing happened, excepted)."""
    events = []
    for condition in new:
        before = find_condition(old, condition.type)
        if before is not None and (before.status, before.reason) == (condition.status, condition.reason):
            continue
        placeholder = before is None or before.reason == Reason.RECONCILING
        if placeholder and (condition.type, condition.reason) in NOTHING_HAPPENED:
            continue
        if condition.status == ConditionStatus.UNKNOWN and condition.reason not in ANNOUNCED_UNKNOWN:
            continue
        kind = "Warning" if condition.reason in WARNING_REASONS else "Normal"
        events.append(Event(kind, condition.reason, f"{condition.type}={condition.status}: {condition.message}"))
    return events
