from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from qfleet.api import Condition, ConditionStatus, ConditionType, Phase, Reason
from qfleet.conditions import derive_phase, find_condition, set_condition, with_unknown_conditions

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=7, microseconds=123)

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def condition(type: str, status: ConditionStatus, reason: str = "Reason") -> Condition:
    return Condition(
        type=type, status=status, reason=reason, message="", last_transition_time=T0, observed_generation=1
    )


def test_new_condition_is_appended_with_the_time_in_whole_seconds() -> None:
    existing = [condition("Calibrated", TRUE)]

    result = set_condition(existing, "EngineBuilt", UNKNOWN, Reason.BUILDING, "Build Job created", T1, 2)

    assert [c.type for c in result] == ["Calibrated", "EngineBuilt"]
    assert result[1].last_transition_time == T1.replace(microsecond=0)
    assert result[1].observed_generation == 2
    assert existing == [condition("Calibrated", TRUE)]


def test_same_status_keeps_the_transition_time_but_takes_reason_and_message() -> None:
    existing = [condition("Ready", FALSE, "Calibrating")]

    (updated,) = set_condition(existing, "Ready", FALSE, Reason.BUILDING, "Engine building", T1, 2)

    assert updated.last_transition_time == T0
    assert (updated.reason, updated.message, updated.observed_generation) == ("Building", "Engine building", 2)


def test_status_flip_moves_the_transition_time() -> None:
    (updated,) = set_condition([condition("Ready", FALSE)], "Ready", TRUE, Reason.REVISION_SERVING, "", T1, 2)

    assert updated.last_transition_time == T1.replace(microsecond=0)


def test_order_of_other_conditions_is_kept() -> None:
    existing = [condition("Ready", FALSE), condition("Calibrated", UNKNOWN), condition("EngineBuilt", UNKNOWN)]

    result = set_condition(existing, "Calibrated", TRUE, Reason.CALIBRATION_SUCCEEDED, "", T1, 1)

    assert [c.type for c in result] == ["Ready", "Calibrated", "EngineBuilt"]


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        set_condition([], "Ready", TRUE, Reason.REVISION_SERVING, "", datetime(2026, 1, 1), 1)


def test_first_visit_sets_every_condition_unknown() -> None:
    result = with_unknown_conditions([condition("Calibrated", TRUE)], T1, 1)

    assert {c.type for c in result} == set(ConditionType)
    assert find_condition(result, "Calibrated") == condition("Calibrated", TRUE)
    assert all(c.status == UNKNOWN and c.reason == Reason.RECONCILING for c in result if c.type != "Calibrated")


def test_conditions_serialise_in_metav1_shape() -> None:
    (ready,) = set_condition([], "Ready", TRUE, Reason.REVISION_SERVING, "Serving 52aa52aa52", T1, 3)

    assert ready.model_dump(mode="json") == {
        "type": "Ready",
        "status": "True",
        "reason": "RevisionServing",
        "message": "Serving 52aa52aa52",
        "lastTransitionTime": "2026-01-02T03:11:05Z",
        "observedGeneration": 3,
    }


def pipeline(calibrated: ConditionStatus, built: ConditionStatus, evaluated: ConditionStatus) -> list[Condition]:
    return [
        condition("Calibrated", calibrated),
        condition("EngineBuilt", built),
        condition("Evaluated", evaluated),
    ]


@dataclass(frozen=True)
class PhaseCase:
    reason: str
    conditions: list[Condition]
    phase: Phase


PHASE_CASES = [
    PhaseCase("never reconciled", [], Phase.PENDING),
    PhaseCase("first visit: all Unknown", with_unknown_conditions([], T0, 1), Phase.CALIBRATING),
    PhaseCase(
        "invalid spec wins over everything",
        [condition("Ready", FALSE, Reason.INVALID_SPEC), *pipeline(TRUE, TRUE, TRUE)],
        Phase.INVALID,
    ),
    PhaseCase(
        "calibration running", [condition("Ready", FALSE), *pipeline(UNKNOWN, UNKNOWN, UNKNOWN)], Phase.CALIBRATING
    ),
    PhaseCase("building", pipeline(TRUE, UNKNOWN, UNKNOWN), Phase.BUILDING),
    PhaseCase("evaluating", pipeline(TRUE, TRUE, UNKNOWN), Phase.EVALUATING),
    PhaseCase(
        "canary after evaluation", [*pipeline(TRUE, TRUE, TRUE), condition("CanaryHealthy", UNKNOWN)], Phase.CANARY
    ),
    PhaseCase(
        "a failing interval is still a canary",
        [*pipeline(TRUE, TRUE, TRUE), condition("CanaryHealthy", FALSE, Reason.ANALYSIS_FAILED)],
        Phase.CANARY,
    ),
    PhaseCase(
        "paused canary", [condition("Ready", FALSE, Reason.ROLLOUT_PAUSED), *pipeline(TRUE, TRUE, TRUE)], Phase.PAUSED
    ),
    PhaseCase(
        "promoted", [condition("Ready", TRUE, Reason.REVISION_SERVING), *pipeline(TRUE, TRUE, TRUE)], Phase.SERVING
    ),
    PhaseCase(
        "rolled back",
        [condition("Ready", FALSE), *pipeline(TRUE, TRUE, TRUE), condition("RolledBack", TRUE, Reason.GATE_ABORTED)],
        Phase.ROLLED_BACK,
    ),
    PhaseCase(
        "no node runs the format",
        [condition("Ready", FALSE, Reason.NO_COMPATIBLE_NODE_POOL), *pipeline(UNKNOWN, UNKNOWN, UNKNOWN)],
        Phase.FAILED,
    ),
    PhaseCase(
        "quality gate failed offline",
        [*pipeline(TRUE, TRUE, FALSE)[:2], condition("Evaluated", FALSE, Reason.QUALITY_GATE_FAILED)],
        Phase.FAILED,
    ),
    PhaseCase(
        "an internal error does not fail the phase",
        [condition("Ready", UNKNOWN, Reason.INTERNAL_ERROR), *pipeline(TRUE, UNKNOWN, UNKNOWN)],
        Phase.BUILDING,
    ),
    PhaseCase(
        "calibration not required counts as done",
        [condition("Calibrated", TRUE, Reason.CALIBRATION_NOT_REQUIRED), condition("EngineBuilt", UNKNOWN)],
        Phase.BUILDING,
    ),
]


@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda case: case.reason)
def test_phase_is_derived_from_conditions(case: PhaseCase) -> None:
    assert derive_phase(case.conditions) == case.phase
