"""One reconcile visit, decided: admission, then calibrate -> build -> evaluate for the current revision.

`decide(observed)` is pure. Everything it needs (spec, generation, old status, the child Jobs that exist, the nodes,
the time) comes in as plain data; it returns the whole new status, the Jobs to create and the Events to post. It is
level-based: each visit recomputes the step from the Jobs that exist, so a restart anywhere carries on, and a visit
with nothing new returns the status unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from qfleet.api import SpecError, parse_spec
from qfleet.api.conditions import CALIBRATION_STALE, PIPELINE_STEPS, ConditionStatus, ConditionType, Reason
from qfleet.api.jobs import Step, step_invocation
from qfleet.api.conditions import StepOutcome
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE, QuantizedModelSpec
from qfleet.api.status import (
    CapacityStatus,
    Condition,
    EvaluationStatus,
    LadderEntry,
    QuantizedModelStatus,
    RevisionStatus,
    StepRecord,
)
from qfleet.capacity import plan_capacity
from qfleet.conditions import derive_phase, find_condition, set_condition, with_unknown_conditions
from qfleet.formats import format_compute_capability, kv_format, weight_format
from qfleet.gpus import GPUS
from qfleet.manifests.jobs import Owner, job_name, step_job
from qfleet.pipeline import records
from qfleet.pipeline.analysis import Measured, MeasureRequest
from qfleet.pipeline.admission import Admission, NodeView, admit
from qfleet.pipeline.records import JobState, JobView
from qfleet.pipeline.refresh import RefreshInput, RefreshStep, refresh_step
from qfleet.pipeline.release import DeploymentView, ReleaseChanges, ReleaseInput, Servable, release
from qfleet.pipeline.wake import next_wake
from qfleet.revision import calibration_key, revision_of

__all__ = ["Decision", "Event", "JobState", "JobView", "Observed", "decide"]


@dataclass(frozen=True)
class Observed:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    jobs: Mapping[str, JobView]
    nodes: Sequence[NodeView]
    now: datetime
    deployments: Mapping[str, DeploymentView] = field(default_factory=dict)
    route: Mapping[str, Any] | None = None
    """The user's HTTPRoute (spec.rollout.trafficRouting.gatewayAPI.httpRoute), as read this visit."""
    measured: Measured | None = None
    """Prometheus's answers to the queries a first pass of this visit asked for (ReleaseChanges.measure)."""
    drift_measured: Measured | None = None
    """Its answers to the drift queries a first pass asked for (Decision.drift_measure)."""
    action: str | None = None
    """A person's rollout action (the qfleet.io/rollout-action annotation)."""
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """The operator's runtime image (QFLEET_RUNTIME_IMAGE, the chart's runtime.image): the default of
    spec.runtime.image, and through it of spec.serving.image."""


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    release: ReleaseChanges = field(default_factory=ReleaseChanges)
    wake: datetime | None = None
    """When the model next needs a visit no event will bring (qfleet.pipeline.wake); None: only events and resync."""
    drift_measure: MeasureRequest | None = None
    """A calibration-refresh drift check is due: run these queries and decide again with the answers."""


STEP_CONDITION = {Step.CALIBRATE: ConditionType.CALIBRATED, Step.BUILD: ConditionType.ENGINE_BUILT,
                  Step.EVALUATE: ConditionType.EVALUATED}
IN_PROGRESS = {Step.CALIBRATE: Reason.CALIBRATING, Step.BUILD: Reason.BUILDING, Step.EVALUATE: Reason.EVALUATING}
SUCCEEDED = {Step.CALIBRATE: Reason.CALIBRATION_SUCCEEDED, Step.BUILD: Reason.ENGINE_BUILD_SUCCEEDED,
             Step.EVALUATE: Reason.EVALUATION_PASSED}
FAILED = {Step.CALIBRATE: Reason.CALIBRATION_FAILED, Step.BUILD: Reason.ENGINE_BUILD_FAILED,
          Step.EVALUATE: Reason.EVALUATION_FAILED}
WARNING_REASONS = {Reason.INVALID_SPEC, Reason.DRIFT_DETECTED, Reason.REFRESH_BACKING_OFF, Reason.NO_COMPATIBLE_NODE_POOL, Reason.QUALITY_GATE_FAILED, Reason.ANALYSIS_FAILED,
                   Reason.GATE_ABORTED, Reason.FAILURE_LIMIT_REACHED, Reason.INCONCLUSIVE_LIMIT_REACHED,
                   Reason.MAX_HOLD_REACHED, Reason.ROLLOUT_ABORTED, Reason.HOLDING_FOR_EVIDENCE,
                   *FAILED.values()}
ANNOUNCED_UNKNOWN = {Reason.HOLDING_FOR_EVIDENCE}
"""Unknown conditions that still deserve an Event: a canary held past its pause for want of evidence."""


class _Conditions:
    """The condition list under construction for this visit."""

    def __init__(self, old: Sequence[Condition], now: datetime, generation: int):
        self.now, self.generation = now, generation
        self.items = with_unknown_conditions(old, now, generation)
        self.before = {c.type: c for c in self.items}

    def set(self, type: str, status: ConditionStatus, reason: str, message: str) -> None:
        """Later setters win (the release after the pipeline); the transition time is judged against the status the
        visit started from, so a value set twice in one visit is no transition."""
        items = set_condition(self.items, type, status, reason, message, self.now, self.generation)
        before = self.before.get(type)
        if before is not None and before.status == status:
            items = [c.model_copy(update={"last_transition_time": before.last_transition_time}) if c.type == type
                     else c for c in items]
        self.items = items


@dataclass
class _Visit:
    observed: Observed
    spec: QuantizedModelSpec
    revision: str
    old: QuantizedModelStatus
    status: QuantizedModelStatus
    conditions: _Conditions
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    servable: Servable | None = None
    generation: int = 0
    """The calibration generation (status.refresh.generation) the revision is hashed and calibrated with."""


def decide(observed: Observed) -> Decision:
    old = QuantizedModelStatus.model_validate(observed.status or {})
    status = old.model_copy(deep=True)
    conditions = _Conditions(old.conditions, observed.now, observed.generation)
    status.observed_generation = observed.generation
    try:
        spec = parse_spec(observed.spec).with_images(observed.runtime_image)
    except SpecError as error:
        conditions.set(ConditionType.READY, ConditionStatus.FALSE, Reason.INVALID_SPEC, str(error))
        return _finish(old, status, conditions, [])

    refresh = refresh_step(RefreshInput(
        spec, old, observed.now, observed.namespace, observed.name, observed.runtime_image,
        observed.drift_measured.values if observed.drift_measured else None))
    status.refresh = refresh.status
    revision = revision_of(spec, generation=refresh.generation)
    status.revision = (status.revision or RevisionStatus()).model_copy(update={"current": revision})
    visit = _Visit(observed, spec, revision, old, status, conditions, generation=refresh.generation)
    _pipeline(visit)
    _record_refresh(visit, refresh)
    changes = release(ReleaseInput(
        name=observed.name, namespace=observed.namespace, uid=observed.uid, spec=spec, revision=revision,
        servable=visit.servable, deployments=observed.deployments, route=observed.route, measured=observed.measured,
        action=observed.action, now=observed.now,
        results=lambda of: records.results_of(of, status, old)), status, conditions.set)
    decision = _finish(old, status, conditions, visit.create)
    decision.events = [*visit.events, *decision.events, *(Event(*event) for event in changes.events)]
    decision.release = changes
    due = [when for when in (next_wake(spec, status, observed.now), refresh.wake) if when is not None]
    decision.wake = max(min(due), observed.now) if due else None
    decision.drift_measure = refresh.measure
    return decision


def _record_refresh(visit: _Visit, refresh: RefreshStep) -> None:
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


def _pipeline(visit: _Visit) -> None:
    """Admission, then the steps for the first candidate format; for `auto`, a format whose evaluation fails the
    quality gate is passed over for the next one the pool can run."""
    spec, status = visit.spec, visit.status
    rejected = _recorded_rejections(visit)
    while True:
        admission = admit(spec, visit.observed.nodes, excluded=[name for name, _ in rejected])
        status.ladder = _ladder(spec, admission, rejected)
        if not admission.admitted:
            _no_pool(visit, admission, rejected)
            return
        _plan(visit, admission)
        outcome = _run_steps(visit, admission)
        status.capacity = records.with_fallback_layers(status.capacity, spec, status.calibration)
        if outcome is None or not isinstance(outcome, _QualityFailed) or not _has_next(spec, admission, rejected):
            return
        rejected.append((admission.kv_format, outcome.message))


def _recorded_rejections(visit: _Visit) -> list[tuple[str, str]]:
    """kvCache auto: ladder formats this revision's evaluation already failed, as recorded (their records are gone
    from the step sections once the next format runs)."""
    old = visit.old
    if old.revision is None or old.revision.current != visit.revision:
        return []
    return [(entry.kv_cache, entry.message or "") for entry in old.ladder or ()
            if entry.outcome == Reason.QUALITY_GATE_FAILED]


@dataclass(frozen=True)
class _QualityFailed:
    message: str


def _has_next(spec: QuantizedModelSpec, admission: Admission, rejected: list[tuple[str, str]]) -> bool:
    tried = {name for name, _ in rejected} | {admission.kv_format}
    return any(name not in tried for name in spec.quantization.candidate_kv_formats)


def _run_steps(visit: _Visit, admission: Admission) -> _QualityFailed | None:
    """Each step in turn from its record, else from its Job (created when missing); returns _QualityFailed when the
    evaluation failed the gate."""
    revision, fmt = visit.revision, admission.kv_format
    assert fmt is not None and admission.compute_capability is not None
    status, conditions = visit.status, visit.conditions
    status.calibration, status.engine, status.evaluation = None, None, None
    steps = [Step.CALIBRATE, Step.BUILD, Step.EVALUATE]
    calibrated_by: str | None = None
    for index, step in enumerate(steps):
        condition = STEP_CONDITION[step]
        if step is Step.CALIBRATE and not kv_format(fmt).needs_calibration:
            conditions.set(condition, ConditionStatus.TRUE, Reason.CALIBRATION_NOT_REQUIRED,
                           f"KV {fmt} keeps full precision: nothing to calibrate")
            continue
        record = _step_record(visit, admission, step, calibrated_by)
        setattr(status, records.SECTION[step], record)
        if record.outcome is None:
            _in_progress(visit, admission, step, record)
            _waiting(conditions, steps[index + 1:], step)
            return None
        if record.outcome is StepOutcome.FAILED:
            message = f"Job {record.job} failed: {record.message or 'no reason given'}"
            conditions.set(condition, ConditionStatus.FALSE, FAILED[step], message)
            _waiting(conditions, steps[index + 1:], step)
            _ready(conditions, ConditionStatus.FALSE, FAILED[step],
                   f"Revision {revision} stopped: {message}. The stable revision is untouched; edit the spec to retry")
            return None
        if step is Step.CALIBRATE:
            calibrated_by = record.revision
            if record.revision != revision:
                conditions.set(condition, ConditionStatus.TRUE, Reason.CALIBRATION_REUSED,
                               f"KV {fmt}: the calibration of revision {record.revision} (Job {record.job}) is "
                               "reused: model, formats, calibration settings, runtime image and environment are "
                               "unchanged")
                continue
        if step is Step.EVALUATE:
            assert isinstance(record, EvaluationStatus)
            return _judge_quality(visit, record, fmt, admission.compute_capability)
        conditions.set(condition, ConditionStatus.TRUE, SUCCEEDED[step], records.success_message(record, fmt))
    return None


def _step_record(visit: _Visit, admission: Admission, step: Step, calibrated_by: str | None) -> StepRecord:
    """The step's record: the finished one kept in status (or history), a reusable calibration, or what its Job
    says now; a missing Job is created (again, with an Event, when one seen running was deleted)."""
    spec, revision, observed = visit.spec, visit.revision, visit.observed
    fmt, capability = admission.kv_format, admission.compute_capability
    assert fmt is not None and capability is not None
    name = job_name(observed.name, revision, fmt, step)
    inputs = calibration_key(spec, fmt, visit.generation) if step is Step.CALIBRATE else None
    previous = records.recorded(visit.old, step, name)
    if previous is not None and previous.outcome is not None:
        return previous
    if inputs is not None and (reused := records.reusable_calibration(visit.old, inputs)) is not None:
        return reused
    job = observed.jobs.get(name)
    if job is not None and job.state is not JobState.RUNNING:
        return records.finished(step, job, revision, fmt, spec, format_compute_capability(capability), inputs)
    if job is not None:
        cannot_run = records.image_failure(job)
        if cannot_run is not None:
            return records.failed(step, name, revision, cannot_run, previous, inputs)
        return records.running(step, name, revision, previous, job, inputs)
    deleted = previous is not None and previous.job_uid is not None
    if deleted and (previous.recreations or 0) >= records.MAX_JOB_RECREATIONS:
        return records.failed(step, name, revision, f"it was deleted before it finished, {records.MAX_JOB_RECREATIONS + 1} "
                              "times; edit the spec to retry", previous, inputs)
    invocation = step_invocation(step, spec, revision, fmt, capability, calibrated_by, observed.name,
                                 visit.generation)
    owner = Owner(observed.name, observed.namespace, observed.uid)
    visit.create.append(step_job(owner, spec, revision, fmt, capability, invocation))
    if deleted:
        visit.events.append(Event("Warning", Reason.JOB_RECREATED,
                                  f"Job {name} ({step.value} of revision {revision}) was deleted before it finished; "
                                  "created again"))
    return records.running(step, name, revision, previous, None, inputs, recreated=deleted)


def _in_progress(visit: _Visit, admission: Admission, step: Step, record: StepRecord) -> None:
    job = visit.observed.jobs.get(record.job or "")
    stuck = f"; its pod waits: {job.waiting}" if job is not None and job.waiting else ""
    again = f"; re-created {record.recreations} time(s) after it was deleted before finishing" \
        if record.recreations else ""
    visit.conditions.set(STEP_CONDITION[step], ConditionStatus.UNKNOWN, IN_PROGRESS[step],
                         f"Job {record.job} runs {step.value} of revision {visit.revision} (KV {admission.kv_format}) "
                         f"on {admission.gpu_product}{stuck}{again}")
    _ready(visit.conditions, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
           f"Revision {visit.revision}: {step.value} in progress (Job {record.job})")


def _judge_quality(visit: _Visit, record: EvaluationStatus, fmt: str,
                   compute_capability: tuple[int, int]) -> _QualityFailed | None:
    conditions, revision = visit.conditions, visit.revision
    bound = visit.spec.rollout.analysis.gates.quality_drop.max
    drop = _decimal(record.quality_drop)
    visit.status.evaluation = record.model_copy(update={"passed": None if drop is None else drop <= bound})
    if drop is None:
        message = f"Job {record.job} reported no qualityDrop in its summary, so the quality gate cannot be judged"
        conditions.set(ConditionType.EVALUATED, ConditionStatus.FALSE, Reason.EVALUATION_FAILED, message)
        _ready(conditions, ConditionStatus.FALSE, Reason.EVALUATION_FAILED, f"Revision {revision} stopped: {message}")
        return None
    if drop > bound:
        message = (f"KV {fmt}: quality drop {drop} is above gates.qualityDrop.max {bound}; "
                   "this revision gets no traffic")
        conditions.set(ConditionType.EVALUATED, ConditionStatus.FALSE, Reason.QUALITY_GATE_FAILED, message)
        _ready(conditions, ConditionStatus.FALSE, Reason.QUALITY_GATE_FAILED, f"Revision {revision}: {message}")
        return _QualityFailed(message)
    conditions.set(ConditionType.EVALUATED, ConditionStatus.TRUE, Reason.EVALUATION_PASSED,
                   f"KV {fmt}: quality drop {drop} is within gates.qualityDrop.max {bound}")
    visit.servable = Servable(fmt, compute_capability)
    _ready(conditions, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
           f"Revision {revision} (KV {fmt}) passed calibration, build and evaluation and is ready to roll out")
    return None


def _waiting(conditions: _Conditions, later: Sequence[Step], current: Step) -> None:
    for step in later:
        conditions.set(STEP_CONDITION[step], ConditionStatus.UNKNOWN, Reason.WAITING_FOR_PREVIOUS_STEP,
                       f"Waits for {current.value}")


def _ready(conditions: _Conditions, status: ConditionStatus, reason: str, message: str) -> None:
    conditions.set(ConditionType.READY, status, reason, message)


def _no_pool(visit: _Visit, admission: Admission, rejected: list[tuple[str, str]]) -> None:
    message = admission.message
    if rejected:
        message = "every ladder format the pool can run failed the quality gate: " + "; ".join(
            f"{name}: {why}" for name, why in rejected)
    _ready(visit.conditions, ConditionStatus.FALSE,
           Reason.QUALITY_GATE_FAILED if rejected else Reason.NO_COMPATIBLE_NODE_POOL, message)
    for step in PIPELINE_STEPS:
        if find_condition(visit.conditions.items, step) is not None and not rejected:
            visit.conditions.set(step, ConditionStatus.UNKNOWN, Reason.WAITING_FOR_PREVIOUS_STEP,
                                 "Waits for a compatible node pool")
    visit.status.capacity = None


def _ladder(spec: QuantizedModelSpec, admission: Admission,
            rejected: list[tuple[str, str]]) -> list[LadderEntry] | None:
    """For kvCache auto: each ladder format, and why it was passed over or chosen."""
    if spec.quantization.kv_cache != "auto":
        return None
    unsupported = dict(admission.skipped)
    failed = dict(rejected)
    entries = []
    for name in spec.quantization.candidate_kv_formats:
        if name in failed:
            entries.append({"kvCache": name, "outcome": "QualityGateFailed", "message": failed[name]})
        elif name in unsupported:
            entries.append({"kvCache": name, "outcome": "Unsupported", "message": unsupported[name]})
        elif name == admission.kv_format:
            entries.append({"kvCache": name, "outcome": "Selected", "message": admission.message})
    return [LadderEntry.model_validate(entry) for entry in entries]


def _plan(visit: _Visit, admission: Admission) -> None:
    spec, status = visit.spec, visit.status
    shape = spec.model.resolved_shape()
    gpu = next((g for g in GPUS.values() if g.product == admission.gpu_product), None)
    capacity: dict[str, Any] = {"gpu": admission.gpu_product, "kvCache": admission.kv_format,
                                "computeCapability": format_compute_capability(admission.compute_capability)}
    if shape is None or gpu is None:
        missing = "the model's shape (set spec.model.shape)" if shape is None else \
            f"the GPU {admission.gpu_product} (not in qfleet's catalog)"
        capacity["message"] = f"No capacity plan: qfleet does not know {missing}"
    else:
        plan = plan_capacity(shape, gpu, weight_format(spec.quantization.weights),
                             gpus_per_replica=spec.node_pool.gpus_per_replica, tensor_parallel=spec.tensor_parallel,
                             kv_memory_fraction=Fraction(str(spec.engine.kv_cache_free_gpu_memory_fraction)),
                             sequence_length=spec.engine.max_seq_len, kv_formats=[kv_format(admission.kv_format)])
        row = plan.for_format(admission.kv_format)
        capacity.update(kvBytesPerToken=math.ceil(row.kv_bytes_per_token), maxTokensPerReplica=row.tokens_per_replica,
                        sequencesPerReplica=row.sequences_per_replica,
                        message="; ".join(plan.warnings) or None)
    status.capacity = CapacityStatus.model_validate(capacity)


def _finish(old: QuantizedModelStatus, status: QuantizedModelStatus, conditions: _Conditions,
            create: list[dict[str, Any]]) -> Decision:
    status.conditions = conditions.items
    status.phase = derive_phase(status.conditions)
    return Decision(status=status.model_dump(mode="json", by_alias=True, exclude_none=True), create=create,
                    events=_transitions(old.conditions, status.conditions))


def _transitions(old: Sequence[Condition], new: Sequence[Condition]) -> list[Event]:
    """An Event for each condition whose status or reason changed (the first-visit Unknowns excepted)."""
    events = []
    for condition in new:
        before = find_condition(old, condition.type)
        if before is not None and (before.status, before.reason) == (condition.status, condition.reason):
            continue
        if condition.status == ConditionStatus.UNKNOWN and condition.reason not in ANNOUNCED_UNKNOWN:
            continue
        kind = "Warning" if condition.reason in WARNING_REASONS else "Normal"
        events.append(Event(kind, condition.reason, f"{condition.type}={condition.status}: {condition.message}"))
    return events


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None
