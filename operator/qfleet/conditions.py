"""Pure condition bookkeeping, and the display phase derived from the conditions.

`set_condition` returns a new list and keeps `lastTransitionTime` unless the status flips.
`derive_phase` reads the conditions only: the phase is for `kubectl get`, never state to act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from qfleet.api.conditions import PIPELINE_STEPS, ConditionStatus, ConditionType, Phase, Reason
from qfleet.api.status import Condition

FAILURE_REASONS = frozenset(
    {
        Reason.NO_COMPATIBLE_NODE_POOL,
        Reason.CALIBRATION_FAILED,
        Reason.ENGINE_BUILD_FAILED,
        Reason.EVALUATION_FAILED,
        Reason.QUALITY_GATE_FAILED,
    }
)
"""Reasons that stop the pipeline until the spec or the cluster changes: the phase is Failed."""

_STEP_PHASES = {
    ConditionType.CALIBRATED: Phase.CALIBRATING,
    ConditionType.ENGINE_BUILT: Phase.BUILDING,
    ConditionType.EVALUATED: Phase.EVALUATING,
}


def find_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == type), None)


def is_true(conditions: Sequence[Condition], type: str) -> bool:
    condition = find_condition(conditions, type)
    return condition is not None and condition.status == ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int,
) -> list[Condition]:
    """A copy of `conditions` with `type` set; a new type is appended, order is kept otherwise.

    `lastTransitionTime` becomes `now` (whole seconds, as metav1.Time stores it) only when the
    condition is new or its status changes; a new reason or message alone keeps the old time.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    existing = find_condition(conditions, type)
    keeps_time = existing is not None and existing.status == status
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=existing.last_transition_time if keeps_time and existing else now.replace(microsecond=0),
        observed_generation=observed_generation,
    )
    if existing is None:
        return [*conditions, updated]
    return [updated if condition.type == type else condition for condition in conditions]


def with_unknown_conditions(
    conditions: Sequence[Condition], now: datetime, observed_generation: int
) -> list[Condition]:
    """Every condition type present: the ones missing are added as Unknown (first visit)."""
    result = list(conditions)
    for type in ConditionType:
        if find_condition(result, type) is None:
            result = set_condition(
                result,
                type,
                ConditionStatus.UNKNOWN,
                Reason.RECONCILING,
                "Starting reconciliation",
                now,
                observed_generation,
            )
    return result


def derive_phase(conditions: Sequence[Condition]) -> Phase:
    """The phase the conditions describe; the first rule that matches wins.

    Pending (no conditions yet), Invalid (any InvalidSpec), RolledBack (RolledBack True),
    Failed (a condition False for a reason in FAILURE_REASONS), Serving (Ready True), Paused (Ready
    False for RolloutPaused), then the first pipeline step not yet True (Calibrating, Building,
    Evaluating), else Canary.
    """
    if not conditions:
        return Phase.PENDING
    if any(condition.reason == Reason.INVALID_SPEC for condition in conditions):
        return Phase.INVALID
    if is_true(conditions, ConditionType.ROLLED_BACK):
        return Phase.ROLLED_BACK
    if any(c.status == ConditionStatus.FALSE and c.reason in FAILURE_REASONS for c in conditions):
        return Phase.FAILED
    if is_true(conditions, ConditionType.READY):
        return Phase.SERVING
    ready = find_condition(conditions, ConditionType.READY)
    if ready is not None and ready.reason == Reason.ROLLOUT_PAUSED:
        return Phase.PAUSED
    for step in PIPELINE_STEPS:
        if not is_true(conditions, step):
            return _STEP_PHASES[step]
    return Phase.CANARY
