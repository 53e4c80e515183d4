"""One reconcile visit, decided: admission, then calibrate -> build -> evaluate for the current revision.

`decide(observed)` is pure. Everything it needs (spec, generation, old status, the child Jobs that exist, the nodes,
the time) comes in as plain data; it returns the whole new status, the Jobs to create and the Events to post. It is
level-based: each visit recomputes the step from the Jobs that exist, so a restart anywhere carries on, and a visit
with nothing new returns the status unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any

from qfleet.api import SpecError, parse_spec
from qfleet.api.conditions import PIPELINE_STEPS, ConditionStatus, ConditionType, Reason
from qfleet.api.jobs import Step, step_invocation
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import (
    CalibrationStatus,
    CapacityStatus,
    Condition,
    EngineStatus,
    EvaluationStatus,
    LadderEntry,
    QuantizedModelStatus,
    RevisionStatus,
)
from qfleet.capacity import plan_capacity
from qfleet.conditions import derive_phase, find_condition, set_condition, with_unknown_conditions
from qfleet.formats import format_compute_capability, kv_format, weight_format
from qfleet.gpus import GPUS
from qfleet.manifests.jobs import Owner, job_name, step_job
from qfleet.pipeline.admission import Admission, NodeView, admit
from qfleet.pipeline.release import DeploymentView, Measured, ReleaseChanges, ReleaseInput, Servable, release
from qfleet.revision import revision_of


class JobState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobView:
    """What the operator saw of one child Job: its state, the step's summary, and why it failed."""

    name: str
    state: JobState
    summary: Mapping[str, Any] = field(default_factory=dict)
    failure: str = ""
    waiting: str = ""
    """Why a running Job's pod has not started (e.g. unschedulable), if it has not."""
    finished_at: str | None = None
    """When the Job completed or failed, as the Job's status says (RFC 3339)."""


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
    action: str | None = None
    """A person's rollout action (the qfleet.io/rollout-action annotation)."""


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


STEP_CONDITION = {Step.CALIBRATE: ConditionType.CALIBRATED, Step.BUILD: ConditionType.ENGINE_BUILT,
                  Step.EVALUATE: ConditionType.EVALUATED}
IN_PROGRESS = {Step.CALIBRATE: Reason.CALIBRATING, Step.BUILD: Reason.BUILDING, Step.EVALUATE: Reason.EVALUATING}
SUCCEEDED = {Step.CALIBRATE: Reason.CALIBRATION_SUCCEEDED, Step.BUILD: Reason.ENGINE_BUILD_SUCCEEDED,
             Step.EVALUATE: Reason.EVALUATION_PASSED}
FAILED = {Step.CALIBRATE: Reason.CALIBRATION_FAILED, Step.BUILD: Reason.ENGINE_BUILD_FAILED,
          Step.EVALUATE: Reason.EVALUATION_FAILED}
WARNING_REASONS = {Reason.INVALID_SPEC, Reason.NO_COMPATIBLE_NODE_POOL, Reason.QUALITY_GATE_FAILED, Reason.ANALYSIS_FAILED,
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
    status: QuantizedModelStatus
    conditions: _Conditions
    create: list[dict[str, Any]] = field(default_factory=list)
    servable: Servable | None = None


def decide(observed: Observed) -> Decision:
    old = QuantizedModelStatus.model_validate(observed.status or {})
    status = old.model_copy(deep=True)
    conditions = _Conditions(old.conditions, observed.now, observed.generation)
    status.observed_generation = observed.generation
    try:
        spec = parse_spec(observed.spec)
    except SpecError as error:
        conditions.set(ConditionType.READY, ConditionStatus.FALSE, Reason.INVALID_SPEC, str(error))
        return _finish(old, status, conditions, [])

    revision = revision_of(spec)
    status.revision = (status.revision or RevisionStatus()).model_copy(update={"current": revision})
    visit = _Visit(observed, spec, revision, status, conditions)
    _pipeline(visit)
    changes = release(ReleaseInput(
        name=observed.name, namespace=observed.namespace, uid=observed.uid, spec=spec, revision=revision,
        servable=visit.servable, deployments=observed.deployments, route=observed.route, measured=observed.measured,
        action=observed.action, now=observed.now), status, conditions.set)
    decision = _finish(old, status, conditions, visit.create)
    decision.release = changes
    return decision


def _pipeline(visit: _Visit) -> None:
    """Admission, then the steps for the first candidate format; for `auto`, a format whose evaluation fails the
    quality gate is passed over for the next one the pool can run."""
    spec, status = visit.spec, visit.status
    rejected: list[tuple[str, str]] = []
    while True:
        admission = admit(spec, visit.observed.nodes, excluded=[name for name, _ in rejected])
        status.ladder = _ladder(spec, admission, rejected)
        if not admission.admitted:
            _no_pool(visit, admission, rejected)
            return
        _plan(visit, admission)
        outcome = _run_steps(visit, admission)
        if outcome is None or not isinstance(outcome, _QualityFailed) or not _has_next(spec, admission, rejected):
            return
        rejected.append((admission.kv_format, outcome.message))


@dataclass(frozen=True)
class _QualityFailed:
    message: str


def _has_next(spec: QuantizedModelSpec, admission: Admission, rejected: list[tuple[str, str]]) -> bool:
    tried = {name for name, _ in rejected} | {admission.kv_format}
    return any(name not in tried for name in spec.quantization.candidate_kv_formats)


def _run_steps(visit: _Visit, admission: Admission) -> _QualityFailed | None:
    """Creates or reads the Job of each step in turn; returns _QualityFailed when the evaluation failed the gate."""
    spec, revision, fmt = visit.spec, visit.revision, admission.kv_format
    assert fmt is not None and admission.compute_capability is not None
    status, conditions, observed = visit.status, visit.conditions, visit.observed
    status.calibration, status.engine, status.evaluation = None, None, None
    owner = Owner(observed.name, observed.namespace, observed.uid)
    steps = [Step.CALIBRATE, Step.BUILD, Step.EVALUATE]
    for index, step in enumerate(steps):
        condition = STEP_CONDITION[step]
        if step is Step.CALIBRATE and not kv_format(fmt).needs_calibration:
            conditions.set(condition, ConditionStatus.TRUE, Reason.CALIBRATION_NOT_REQUIRED,
                           f"KV {fmt} keeps full precision: nothing to calibrate")
            continue
        name = job_name(observed.name, revision, fmt, step)
        job = observed.jobs.get(name)
        if job is None or job.state is JobState.RUNNING:
            if job is None:
                invocation = step_invocation(step, spec, revision, fmt, admission.compute_capability)
                visit.create.append(step_job(owner, spec, revision, fmt, admission.compute_capability, invocation))
            stuck = f"; its pod waits: {job.waiting}" if job is not None and job.waiting else ""
            conditions.set(condition, ConditionStatus.UNKNOWN, IN_PROGRESS[step],
                           f"Job {name} runs {step.value} of revision {revision} (KV {fmt}) on "
                           f"{admission.gpu_product}{stuck}")
            _waiting(conditions, steps[index + 1:], step)
            _ready(conditions, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
                   f"Revision {revision}: {step.value} in progress (Job {name})")
            return None
        _record(visit, step, job, fmt, admission)
        if job.state is JobState.FAILED:
            message = f"Job {name} failed: {job.failure or 'no reason given'}"
            conditions.set(condition, ConditionStatus.FALSE, FAILED[step], message)
            _waiting(conditions, steps[index + 1:], step)
            _ready(conditions, ConditionStatus.FALSE, FAILED[step],
                   f"Revision {revision} stopped: {message}. The stable revision is untouched; edit the spec to retry")
            return None
        if step is Step.EVALUATE:
            return _judge_quality(visit, job, fmt, admission.compute_capability)
        conditions.set(condition, ConditionStatus.TRUE, SUCCEEDED[step], _success_message(step, job, fmt))
    return None


def _judge_quality(visit: _Visit, job: JobView, fmt: str, compute_capability: tuple[int, int]) -> _QualityFailed | None:
    conditions, revision = visit.conditions, visit.revision
    bound = visit.spec.rollout.analysis.gates.quality_drop.max
    drop = _decimal(job.summary.get("qualityDrop"))
    if drop is None:
        message = f"Job {job.name} reported no qualityDrop in its summary, so the quality gate cannot be judged"
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


def _record(visit: _Visit, step: Step, job: JobView, fmt: str, admission: Admission) -> None:
    """Copies what a finished Job reported into the status section of its step."""
    s, spec, when = job.summary, visit.spec, job.finished_at
    status = visit.status
    if step is Step.CALIBRATE:
        status.calibration = CalibrationStatus.model_validate({
            "job": job.name, "completedAt": when,
            "dataset": spec.quantization.calibration.dataset, "datasetHash": s.get("datasetHash"),
            "samples": s.get("samples", spec.quantization.calibration.samples),
            "modelOptVersion": s.get("modelOptVersion"), "device": s.get("device"),
            "report": {"kvFormat": s.get("kvFormat", fmt), "worstLayer": s.get("worstLayer"),
                       "worstLayerKL": _text(s.get("worstLayerKL")),
                       "fallbackLayers": list(s.get("fallbackLayers") or [])},
        })
    elif step is Step.BUILD:
        status.engine = EngineStatus.model_validate({
            "job": job.name, "builtAt": when, "artifact": s.get("artifact"),
            "kvCacheDtype": s.get("kvCacheDtype", fmt),
            "computeCapability": format_compute_capability(admission.compute_capability),
        })
    else:
        drop = _decimal(s.get("qualityDrop"))
        bound = spec.rollout.analysis.gates.quality_drop.max
        status.evaluation = EvaluationStatus.model_validate({
            "job": job.name, "completedAt": when, "qualityDrop": _text(s.get("qualityDrop")),
            "score": _text(s.get("score")), "baselineScore": _text(s.get("baselineScore")),
            "passed": None if drop is None else drop <= bound,
        })


def _success_message(step: Step, job: JobView, fmt: str) -> str:
    s = job.summary
    if step is Step.CALIBRATE:
        layers = s.get("fallbackLayers") or []
        return (f"KV {fmt} calibrated: worst layer {s.get('worstLayer', '?')} with KL {s.get('worstLayerKL', '?')}; "
                f"{len(layers)} fallback layer(s)")
    return f"Engine with KV {s.get('kvCacheDtype', fmt)} built by Job {job.name}"


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
        capacity.update(kvBytesPerToken=int(row.kv_bytes_per_token), maxTokensPerReplica=row.tokens_per_replica,
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


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
