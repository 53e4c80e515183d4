"""Step records: what a calibration, build or evaluation Job reported, recorded once in status and from then on the
record. A finished step is never recomputed from its Job or pod (either may be garbage-collected, or cleaned up by a
person) and never run again because they are gone; an earlier revision's records live in its `status.history[]`
entry, so a revision that returns (a rollback, a revert) reuses them too.

Pure: the old status and what was observed of the Jobs come in; records come out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qfleet.api.conditions import StepOutcome
from qfleet.api.jobs import Step
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import (
    CalibrationStatus,
    CapacityStatus,
    EngineStatus,
    EvaluationStatus,
    QuantizedModelStatus,
    StepRecord,
)
from qfleet.capacity import mixed_kv_bytes_per_token
from qfleet.formats import kv_format

MAX_JOB_RECREATIONS = 3
"""A step's Job deleted before it finished is created again, this many times at most; then the step fails."""
IMAGE_CANNOT_RUN = ("ErrImageNeverPull", "InvalidImageName")
"""Pod waiting reasons that no retry fixes: the step fails with the reason instead of waiting for its deadline."""
SECTION = {Step.CALIBRATE: "calibration", Step.BUILD: "engine", Step.EVALUATE: "evaluation"}
RECORD_TYPE: dict[Step, type[StepRecord]] = {Step.CALIBRATE: CalibrationStatus, Step.BUILD: EngineStatus,
                                             Step.EVALUATE: EvaluationStatus}


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
    uid: str | None = None


def _sections(status: QuantizedModelStatus, step: Step) -> Iterator[StepRecord]:
    """The step's record in status, then in the history, newest first."""
    attribute = SECTION[step]
    current = getattr(status, attribute)
    if current is not None:
        yield current
    for entry in reversed(status.history):
        recorded = getattr(entry, attribute)
        if recorded is not None:
            yield recorded


def recorded(status: QuantizedModelStatus, step: Step, job: str) -> StepRecord | None:
    """The record of Job `job`: finished ones from status or the history, else the running one in status."""
    finished = next((r for r in _sections(status, step) if r.job == job and r.outcome is not None), None)
    if finished is not None:
        return finished
    current = getattr(status, SECTION[step])
    return current if current is not None and current.job == job else None


def reusable_calibration(status: QuantizedModelStatus, inputs_hash: str) -> CalibrationStatus | None:
    """A succeeded calibration, in status or the history, with the same inputs."""
    return next((r for r in _sections(status, Step.CALIBRATE)
                 if isinstance(r, CalibrationStatus) and r.inputs_hash == inputs_hash
                 and r.outcome is StepOutcome.SUCCEEDED), None)


def running(step: Step, job: str, revision: str, previous: StepRecord | None, seen: JobView | None,
            inputs_hash: str | None = None, recreated: bool = False) -> StepRecord:
    """The record of a Job that runs (or was just created): its uid once seen, how often it was re-created."""
    recreations = (previous.recreations or 0) if previous is not None else 0
    fields: dict[str, Any] = {"job": job, "revision": revision, "jobUid": seen.uid if seen else None,
                              "recreations": (recreations + 1 if recreated else recreations) or None}
    if step is Step.CALIBRATE:
        fields["inputsHash"] = inputs_hash
    return RECORD_TYPE[step].model_validate(fields)


def with_created_uids(status: Mapping[str, Any], created: Mapping[str, str]) -> dict[str, Any]:
    """The status a visit writes, with the uid of each Job it has just created on that Job's step record (the
    decision was made before the create answered): the next visit, which sees the Job in the cache, then finds
    nothing to write where it would otherwise write the uid alone."""
    if not created:
        return dict(status)
    updated = dict(status)
    for section in SECTION.values():
        record = status.get(section)
        if isinstance(record, Mapping) and record.get("job") in created and not record.get("jobUid"):
            updated[section] = {**record, "jobUid": created[record["job"]]}
    return updated


def failed(step: Step, job: str, revision: str, message: str, previous: StepRecord | None = None,
           inputs_hash: str | None = None) -> StepRecord:
    fields: dict[str, Any] = {"job": job, "revision": revision, "outcome": StepOutcome.FAILED,
                              "message": message[:1024],
                              "recreations": previous.recreations if previous is not None else None}
    if step is Step.CALIBRATE:
        fields["inputsHash"] = inputs_hash
    return RECORD_TYPE[step].model_validate(fields)


def image_failure(job: JobView) -> str | None:
    """Why a running Job's pod can never start, when that is so."""
    if job.waiting.split(":", 1)[0] in IMAGE_CANNOT_RUN:
        return (f"its pod cannot start ({job.waiting}); the Jobs run spec.runtime.image (or the chart's runtime.image): "
                "an image built from runtime_image/Dockerfile")
    return None


def finished(step: Step, job: JobView, revision: str, fmt: str, spec: QuantizedModelSpec,
             compute_capability: str, inputs_hash: str | None = None) -> StepRecord:
    """What a finished Job reported, as the step's record."""
    s, when = job.summary, job.finished_at
    outcome = StepOutcome.SUCCEEDED if job.state is JobState.SUCCEEDED else StepOutcome.FAILED
    common: dict[str, Any] = {"job": job.name, "revision": revision, "outcome": outcome,
                              "message": None if outcome is StepOutcome.SUCCEEDED else
                              (job.failure or "no reason given")[:1024]}
    if step is Step.CALIBRATE:
        requested = spec.quantization.calibration.dataset
        used = s.get("datasetUsed") or requested
        return CalibrationStatus.model_validate(common | {
            "completedAt": when, "inputsHash": inputs_hash,
            "dataset": used, "datasetRequested": requested if used != requested else None,
            "datasetHash": s.get("datasetHash"),
            "samples": s.get("samples", spec.quantization.calibration.samples),
            "modelOptVersion": s.get("modelOptVersion"), "device": s.get("device"),
            "datasetMix": _mix(s.get("datasetMix")),
            "report": {"kvFormat": s.get("kvFormat", fmt), "worstLayer": s.get("worstLayer"),
                       "worstLayerKL": _text(s.get("worstLayerKL")),
                       "fallbackLayers": list(s.get("fallbackLayers") or [])},
        })
    if step is Step.BUILD:
        return EngineStatus.model_validate(common | {
            "builtAt": when, "artifact": s.get("artifact"), "kvCacheDtype": s.get("kvCacheDtype", fmt),
            "computeCapability": compute_capability,
        })
    return EvaluationStatus.model_validate(common | {
        "completedAt": when, "qualityDrop": _text(s.get("qualityDrop")), "score": _text(s.get("score")),
        "baselineScore": _text(s.get("baselineScore")),
    })


def with_fallback_layers(capacity: CapacityStatus | None, spec: QuantizedModelSpec,
                         calibration: CalibrationStatus | None) -> CapacityStatus | None:
    """The capacity plan of the mixed plan the calibration chose: its fallback layers keep bf16 KV, so the bytes per
    token are `mixed_kv_bytes_per_token`'s (exact) and the tokens per replica shrink in proportion. Unchanged when the
    calibration kept every layer in the format, is not this format's, or the model's shape is not one uniform group."""
    report = calibration.report if calibration else None
    shape = spec.model.resolved_shape()
    if capacity is None or report is None or not report.fallback_layers or shape is None \
            or report.kv_format != capacity.kv_cache or not capacity.kv_bytes_per_token:
        return capacity
    fmt, layers = kv_format(capacity.kv_cache), len(report.fallback_layers)
    try:
        mixed = mixed_kv_bytes_per_token(shape, fmt, kv_format("bf16"), layers)
    except ValueError:
        return capacity
    plain, exact = capacity.kv_bytes_per_token, math.ceil(mixed)
    scale = plain / mixed
    note = (f"{layers} fallback layer(s) {report.fallback_layers} keep bf16 KV: {exact} KV bytes per token "
            f"(all {fmt.name}: {plain})")
    return capacity.model_copy(update={
        "kv_bytes_per_token": exact,
        "max_tokens_per_replica": None if capacity.max_tokens_per_replica is None else
        int(capacity.max_tokens_per_replica * scale),
        "sequences_per_replica": None if capacity.sequences_per_replica is None else
        int(capacity.sequences_per_replica * scale),
        "message": "; ".join(m for m in (capacity.message, note) if m)})


def success_message(record: StepRecord, fmt: str) -> str:
    if isinstance(record, CalibrationStatus):
        report = record.report
        layers = report.fallback_layers if report else []
        worst = report.worst_layer if report and report.worst_layer is not None else "?"
        kl = report.worst_layer_kl if report and report.worst_layer_kl is not None else "?"
        message = f"KV {fmt} calibrated: worst layer {worst} with KL {kl}; {len(layers)} fallback layer(s)"
        if record.dataset_requested:
            message += (f"; calibration dataset {record.dataset_requested} could not be loaded, so {record.dataset} "
                        f"({record.dataset_hash or 'no hash reported'}) was substituted")
        return message
    assert isinstance(record, EngineStatus)
    return f"Engine with KV {record.kv_cache_dtype or fmt} built by Job {record.job}"


@dataclass(frozen=True)
class StepResults:
    calibration: CalibrationStatus | None = None
    engine: EngineStatus | None = None
    evaluation: EvaluationStatus | None = None


def results_of(revision: str, current: QuantizedModelStatus, old: QuantizedModelStatus) -> StepResults:
    """A revision's step results for its history entry: this visit's sections when they are its, else the last
    visit's, else its newest history entry's."""
    for status in (current, old):
        engine, evaluation = status.engine, status.evaluation
        if (engine is not None and engine.revision == revision) or \
                (evaluation is not None and evaluation.revision == revision):
            return StepResults(status.calibration, _own(engine, revision), _own(evaluation, revision))
        if status.calibration is not None and status.calibration.revision == revision:
            return StepResults(status.calibration)
    entry = next((h for h in reversed(old.history) if h.revision == revision
                  and (h.calibration or h.engine or h.evaluation)), None)
    if entry is None:
        return StepResults()
    return StepResults(entry.calibration, entry.engine, entry.evaluation)


def _own(record: Any, revision: str) -> Any:
    return record if record is not None and record.revision == revision else None


def _mix(value: Any) -> dict[str, int] | None:
    """The runtime's `datasetMix` ({"configured": n, "recent": m}), only its counts."""
    if not isinstance(value, Mapping):
        return None
    mix = {key: value[key] for key in ("configured", "recent")
           if isinstance(value.get(key), int) and not isinstance(value.get(key), bool)}
    return mix or None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
