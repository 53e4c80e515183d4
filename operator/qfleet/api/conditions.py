"""Condition types, their reasons, and the display phase: the vocabulary of QuantizedModel status.

Types are adjectives or past-tense verbs (API conventions); reasons are one CamelCase word each.
`Ready` is the summary: True when the spec's current revision serves all traffic.
"""

from enum import StrEnum


class ConditionType(StrEnum):
    READY = "Ready"
    CALIBRATED = "Calibrated"
    ENGINE_BUILT = "EngineBuilt"
    EVALUATED = "Evaluated"
    CANARY_HEALTHY = "CanaryHealthy"
    ROLLED_BACK = "RolledBack"


PIPELINE_STEPS: tuple[ConditionType, ...] = (
    ConditionType.CALIBRATED,
    ConditionType.ENGINE_BUILT,
    ConditionType.EVALUATED,
)
"""The steps that make a revision's artifact, in the order they run."""

CALIBRATION_STALE = "CalibrationStale"
"""Set only on models with spec.quantization.calibration.refresh (so not a ConditionType, which every model gets):
True while a refresh is due or runs, with the measured figure and its bound in the message (qfleet.recalibration)."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    # Any condition.
    RECONCILING = "Reconciling"
    """First visit: every condition starts Unknown with this reason."""
    INVALID_SPEC = "InvalidSpec"
    WAITING_FOR_PREVIOUS_STEP = "WaitingForPreviousStep"
    """A pipeline step that waits for the one before it (or for a compatible node pool)."""
    INTERNAL_ERROR = "InternalError"
    """An unexpected error; the message asks to check the operator's logs."""

    # Admission (on Ready).
    NO_COMPATIBLE_NODE_POOL = "NoCompatibleNodePool"
    """No node the pool selects can run the requested KV format (or any format of the ladder)."""

    # Calibrated.
    CALIBRATING = "Calibrating"
    CALIBRATION_SUCCEEDED = "CalibrationSucceeded"
    CALIBRATION_NOT_REQUIRED = "CalibrationNotRequired"
    CALIBRATION_REUSED = "CalibrationReused"
    """An earlier revision's calibration had the same inputs (model, formats, dataset, runtime image and env)."""
    CALIBRATION_FAILED = "CalibrationFailed"

    # EngineBuilt.
    BUILDING = "Building"
    ENGINE_BUILD_SUCCEEDED = "EngineBuildSucceeded"
    ENGINE_BUILD_FAILED = "EngineBuildFailed"

    # Evaluated.
    EVALUATING = "Evaluating"
    EVALUATION_PASSED = "EvaluationPassed"
    EVALUATION_FAILED = "EvaluationFailed"
    """The evaluation Job failed."""
    QUALITY_GATE_FAILED = "QualityGateFailed"
    """The evaluation ran, and the quality drop is above `gates.qualityDrop.max`."""

    # CanaryHealthy.
    WAITING_FOR_ANALYSIS = "WaitingForAnalysis"
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    HOLDING_FOR_EVIDENCE = "HoldingForEvidence"
    """The step's pause is over but its evidence does not yet decide: the weight holds (inconclusivePolicy hold)."""

    # RolledBack.
    NOT_ROLLED_BACK = "NotRolledBack"
    GATE_ABORTED = "GateAborted"
    """A measured value went above a gate's `abortAbove`."""
    FAILURE_LIMIT_REACHED = "FailureLimitReached"
    INCONCLUSIVE_LIMIT_REACHED = "InconclusiveLimitReached"
    MAX_HOLD_REACHED = "MaxHoldReached"
    """The evidence still did not decide maxHold after the step's pause ended (inconclusivePolicy hold)."""
    ROLLOUT_ABORTED = "RolloutAborted"
    """A person aborted the canary."""
    PROMOTED = "Promoted"
    """The canary passed every step (or a person promoted it) and became stable."""

    # Ready.
    REVISION_SERVING = "RevisionServing"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_PAUSED = "RolloutPaused"
    """`spec.rollout.paused` holds the canary at its current weight."""

    # Events only (no condition carries them).
    JOB_RECREATED = "JobRecreated"
    """A step's Job was deleted before it finished and was created again (at most MAX_JOB_RECREATIONS times)."""
    ROLLOUT_ACTION_IGNORED = "RolloutActionIgnored"
    """A qfleet.io/rollout-action annotation for no running canary, or for another revision, was dropped."""

    # CalibrationStale (calibration refresh)
    CALIBRATION_CURRENT = "CalibrationCurrent"
    """False: no refresh is due; the message gives the drift figures and the next scheduled refresh."""
    DRIFT_DETECTED = "DriftDetected"
    """True: a trigger's figure stayed above its bound for its `for`; a refresh runs (message: value and bound)."""
    REFRESH_SCHEDULED = "RefreshScheduled"
    """True: the schedule came due; a refresh runs."""
    REFRESH_BACKING_OFF = "RefreshBackingOff"
    """True: the last refresh was rolled back or failed; the next waits for its back-off and its cause again."""


class Phase(StrEnum):
    """`status.phase`: derived from the conditions for display, never read back as state."""

    PENDING = "Pending"
    INVALID = "Invalid"
    CALIBRATING = "Calibrating"
    BUILDING = "Building"
    EVALUATING = "Evaluating"
    CANARY = "Canary"
    PAUSED = "Paused"
    SERVING = "Serving"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class Verdict(StrEnum):
    """The outcome of one analysis interval."""

    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"
    ABORT = "Abort"


class StepOutcome(StrEnum):
    """How a pipeline step's Job ended, as recorded in status."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Outcome(StrEnum):
    """How a revision left the canary, in `status.history`."""

    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    SUPERSEDED = "Superseded"
