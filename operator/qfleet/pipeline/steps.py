"""The pipeline for the current revision: admission, the kvCache ladder, then calibrate -> build -> evaluate, each
step read from its record or its Job (created when missing), and the quality gate that makes the revision servable.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from qfleet.api.conditions import PIPELINE_STEPS, ConditionStatus, ConditionType, Reason, StepOutcome
from qfleet.api.jobs import Step, step_invocation
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import CapacityStatus, EvaluationStatus, LadderEntry, StepRecord
from qfleet.capacity import CapacityPlan, plan_capacity
from qfleet.conditions import find_condition
from qfleet.formats import format_compute_capability, kv_format, weight_format
from qfleet.gpus import GPU, GPUS
from qfleet.manifests.jobs import Owner, job_name, step_job
from qfleet.pipeline import records
from qfleet.pipeline.admission import Admission, admit
from qfleet.pipeline.records import JobState
from qfleet.pipeline.release_types import Servable
from qfleet.pipeline.visit import Event, Visit, VisitConditions
from qfleet.revision import calibration_key
from qfleet.shapes import ModelShape

STEP_CONDITION = {Step.CALIBRATE: ConditionType.CALIBRATED, Step.BUILD: ConditionType.ENGINE_BUILT,
                  Step.EVALUATE: ConditionType.EVALUATED}
IN_PROGRESS = {Step.CALIBRATE: Reason.CALIBRATING, Step.BUILD: Reason.BUILDING, Step.EVALUATE: Reason.EVALUATING}
SUCCEEDED = {Step.CALIBRATE: Reason.CALIBRATION_SUCCEEDED, Step.BUILD: Reason.ENGINE_BUILD_SUCCEEDED,
             Step.EVALUATE: Reason.EVALUATION_PASSED}
FAILED = {Step.CALIBRATE: Reason.CALIBRATION_FAILED, Step.BUILD: Reason.ENGINE_BUILD_FAILED,
          Step.EVALUATE: Reason.EVALUATION_FAILED}


def run_pipeline(visit: Visit) -> None:
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


def _recorded_rejections(visit: Visit) -> list[tuple[str, str]]:
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


def _run_steps(visit: Visit, admission: Admission) -> _QualityFailed | None:
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


def _step_record(visit: Visit, admission: Admission, step: Step, calibrated_by: str | None) -> StepRecord:
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


def _in_progress(visit: Visit, admission: Admission, step: Step, record: StepRecord) -> None:
    job = visit.observed.jobs.get(record.job or "")
    stuck = f"; its pod waits: {job.waiting}" if job is not None and job.waiting else ""
    again = f"; re-created {record.recreations} time(s) after it was deleted before finishing" \
        if record.recreations else ""
    visit.conditions.set(STEP_CONDITION[step], ConditionStatus.UNKNOWN, IN_PROGRESS[step],
                         f"Job {record.job} runs {step.value} of revision {visit.revision} (KV {admission.kv_format}) "
                         f"on {admission.gpu_product}{stuck}{again}")
    _ready(visit.conditions, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
           f"Revision {visit.revision}: {step.value} in progress (Job {record.job})")


def _judge_quality(visit: Visit, record: EvaluationStatus, fmt: str,
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


def _waiting(conditions: VisitConditions, later: Sequence[Step], current: Step) -> None:
    for step in later:
        conditions.set(STEP_CONDITION[step], ConditionStatus.UNKNOWN, Reason.WAITING_FOR_PREVIOUS_STEP,
                       f"Waits for {current.value}")


def _ready(conditions: VisitConditions, status: ConditionStatus, reason: str, message: str) -> None:
    conditions.set(ConditionType.READY, status, reason, message)


def _no_pool(visit: Visit, admission: Admission, rejected: list[tuple[str, str]]) -> None:
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


def _plan(visit: Visit, admission: Admission) -> None:
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
        plan = _capacity_plan(shape, gpu, spec.quantization.weights, spec.node_pool.gpus_per_replica,
                              spec.tensor_parallel, str(spec.engine.kv_cache_free_gpu_memory_fraction),
                              spec.engine.max_seq_len, admission.kv_format)
        row = plan.for_format(admission.kv_format)
        capacity.update(kvBytesPerToken=math.ceil(row.kv_bytes_per_token), maxTokensPerReplica=row.tokens_per_replica,
                        sequencesPerReplica=row.sequences_per_replica,
                        message="; ".join(plan.warnings) or None)
    status.capacity = CapacityStatus.model_validate(capacity)


@functools.lru_cache(maxsize=256)
def _capacity_plan(shape: ModelShape, gpu: GPU, weights: str, gpus: int, tensor_parallel: int, fraction: str,
                   sequence_length: int, kv: str) -> CapacityPlan:
    """The plan for one KV format, kept: it is pure, and every visit of a model plans the same replica again."""
    return plan_capacity(shape, gpu, weight_format(weights), gpus_per_replica=gpus, tensor_parallel=tensor_parallel,
                         kv_memory_fraction=Fraction(fraction), sequence_length=sequence_length,
                         kv_formats=[kv_format(kv)])


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None
