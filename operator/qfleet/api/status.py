"""`QuantizedModel.status`: what the operator observed, written only by the operator."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from qfleet.api.base import StatusObject
from qfleet.api.conditions import ConditionStatus, Outcome, Phase, StepOutcome, Verdict

MAX_HISTORY = 10


class Condition(StatusObject):
    """A `metav1.Condition`."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: datetime
    observed_generation: int | None = None


class RevisionStatus(StatusObject):
    current: str | None = None
    stable: str | None = None
    canary: str | None = None


class CapacityStatus(StatusObject):
    gpu: str | None = None
    compute_capability: str | None = None
    kv_cache: str | None = None
    kv_bytes_per_token: int | None = None
    max_tokens_per_replica: int | None = None
    sequences_per_replica: int | None = None
    message: str | None = None


class CalibrationReport(StatusObject):
    kv_format: str | None = None
    worst_layer: int | None = None
    worst_layer_kl: str | None = Field(default=None, alias="worstLayerKL")
    fallback_layers: list[int] = Field(default_factory=list)


class StepRecord(StatusObject):
    """What the operator recorded of one pipeline step's Job. Once `outcome` is set it is the record: never recomputed
    from the Job or its pod, which may be gone (docs/operations.md)."""

    job: str | None = None
    revision: str | None = None
    """The revision the Job ran for (a reused calibration names the revision that ran it)."""
    outcome: StepOutcome | None = None
    """Succeeded or Failed; absent while the Job runs."""
    message: str | None = Field(default=None, max_length=1024)
    """Why the step failed."""
    job_uid: str | None = None
    """The running Job's uid once seen: a Job missing after that was deleted before it finished."""
    recreations: int | None = None
    """Times the Job was re-created after being deleted before it finished."""


class DatasetMix(StatusObject):
    """How many calibration samples came from the configured dataset and how many from the recent traffic sample."""

    configured: int | None = None
    recent: int | None = None


class CalibrationStatus(StepRecord):
    inputs_hash: str | None = None
    """`qfleet.revision.calibration_key`: a later revision with the same inputs reuses this calibration."""
    dataset: str | None = None
    """The calibration dataset actually used: the requested one, or `builtin` when a hub dataset could not load."""
    dataset_requested: str | None = None
    """The spec's dataset, only when another one was used (`dataset`)."""
    dataset_hash: str | None = None
    samples: int | None = None
    model_opt_version: str | None = Field(default=None, alias="modelOptVersion")
    device: str | None = None
    report: CalibrationReport | None = None
    completed_at: datetime | None = None
    generation: int | None = None
    """The calibration generation it ran for (status.refresh.generation); absent for generation 0."""
    refresh_reason: str | None = None
    """Why that generation was started: `schedule` or a trigger's name (`fallbackRate`, ...)."""
    dataset_mix: DatasetMix | None = None
    """The runtime's `datasetMix`: samples from the configured dataset and from the recent traffic sample."""


class EngineStatus(StepRecord):
    artifact: str | None = None
    kv_cache_dtype: str | None = None
    compute_capability: str | None = None
    built_at: datetime | None = None


class EvaluationStatus(StepRecord):
    quality_drop: str | None = None
    score: str | None = None
    baseline_score: str | None = None
    passed: bool | None = None
    completed_at: datetime | None = None


class GateResult(StatusObject):
    name: str
    value: str | None = None
    lower: str | None = None
    """The value's lower confidence bound (at `AnalysisRun.confidence`); absent for gates judged on the value alone."""
    upper: str | None = None
    """Its upper confidence bound; "+Inf" when the data cannot bound it."""
    max: str | None = None
    verdict: Verdict
    window: str | None = None
    """What the verdict rests on: `step` (since the step started) or `interval` (an abort over the last interval)."""
    canary_samples: int | None = None
    stable_samples: int | None = None
    min_samples: int | None = None


class AnalysisRun(StatusObject):
    at: datetime
    verdict: Verdict
    since: datetime | None = None
    """Start of the step window the gates were judged over."""
    confidence: str | None = None
    requests: int | None = None
    gates: list[GateResult] = Field(default_factory=list)


class CanaryStatus(StatusObject):
    step: int
    weight: str
    step_started_at: datetime | None = None
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    last_analysis: AnalysisRun | None = None


class HistoryEntry(StatusObject):
    revision: str
    kv_cache: str | None = None
    outcome: Outcome
    at: datetime
    reason: str | None = None
    message: str | None = None
    analysis: AnalysisRun | None = None
    """The interval that decided a promotion or a rollback (None for a manual action or the first revision)."""
    artifact: str | None = Field(default=None, max_length=8192)
    """The spec fields that make this revision as compact JSON (`qfleet.revision.artifact_spec`): what
    `kubectl qfleet rollback --to` writes back into the spec."""
    calibration: CalibrationStatus | None = None
    engine: EngineStatus | None = None
    evaluation: EvaluationStatus | None = None
    """The revision's step results as recorded when it ran: a revision that returns (rollback, a revert) reuses
    them instead of running its Jobs again."""


class LadderEntry(StatusObject):
    """kvCache auto: one ladder format and what became of it (Selected, Unsupported, QualityGateFailed)."""

    kv_cache: str
    outcome: str
    message: str | None = None


class DriftFigure(StatusObject):
    """One drift trigger's figure on the stable revision at the last check."""

    name: str
    value: str | None = None
    """None: no data, or fewer samples than the trigger needs."""
    max: str
    for_: str | None = Field(default=None, alias="for")
    samples: int | None = None
    above_since: datetime | None = None
    """The first check of the current run of checks above max; the calibration is stale once it is `for` old."""


class RefreshStatus(StatusObject):
    """Calibration refresh: the generation the current revision is calibrated for, and the last refresh attempt."""

    generation: int = 0
    reason: str | None = None
    """Why the current generation was started: `schedule` or a trigger's name."""
    requested_at: datetime | None = None
    revision: str | None = None
    """The revision the current generation made."""
    based_on: str | None = None
    """The stable revision it refreshes."""
    outcome: str | None = None
    """InProgress, Promoted, RolledBack, Failed or Superseded (a spec edit replaced it)."""
    consecutive_failures: int = 0
    not_before: datetime | None = None
    """After a refresh that was rolled back or failed: none starts before this (doubling back-off)."""
    next_scheduled_at: datetime | None = None
    last_checked_at: datetime | None = None
    drift: list[DriftFigure] = Field(default_factory=list)


class QuantizedModelStatus(StatusObject):
    observed_generation: int | None = None
    phase: Phase | None = None
    revision: RevisionStatus | None = None
    capacity: CapacityStatus | None = None
    ladder: list[LadderEntry] | None = None
    calibration: CalibrationStatus | None = None
    engine: EngineStatus | None = None
    evaluation: EvaluationStatus | None = None
    canary: CanaryStatus | None = None
    refresh: RefreshStatus | None = None
    history: list[HistoryEntry] = Field(default_factory=list, max_length=MAX_HISTORY)
    conditions: list[Condition] = Field(default_factory=list)
