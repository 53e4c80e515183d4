"""The wake-up scheduler as a table: spec + status + now -> when the model next needs a visit no event brings."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.status import QuantizedModelStatus
from qfleet.pipeline.wake import next_wake

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SPEC = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
    "quantization": {"kvCache": "fp8"},
    "rollout": {"steps": [{"weight": 1, "pause": "72h"}, {"weight": 10, "pause": "48h", "analysis": {"interval": "1m"}},
                          {"weight": 100}],
                "analysis": {"interval": "5m"}},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
}


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).isoformat()


def canary(step: int, started: float, last: float | None = None, **extra: Any) -> dict:
    status: dict[str, Any] = {"step": step, "weight": "1", "stepStartedAt": at(started), **extra}
    if last is not None:
        status["lastAnalysis"] = {"at": at(last), "verdict": "Pass"}
    return {"revision": {"stable": "a", "canary": "b"}, "canary": status}


def superseded(minutes_ago: float) -> dict:
    return {"revision": {"stable": "b"}, "history": [
        {"revision": "a", "outcome": "Superseded", "at": at(-minutes_ago), "reason": "Promoted"},
        {"revision": "b", "outcome": "Promoted", "at": at(-minutes_ago), "reason": "Promoted"}]}


@dataclass(frozen=True)
class WakeCase:
    reason: str
    status: dict
    due_in_minutes: float | None
    spec: dict | None = None


CASES = [
    WakeCase("nothing recorded yet: events drive the pipeline", {}, None),
    WakeCase("serving, no canary, nothing superseded: not visited", {"revision": {"stable": "a"}}, None),
    WakeCase("a canary waiting for its replicas (no step start): their events wake it",
             {"revision": {"stable": "a", "canary": "b"}, "canary": {"step": 0, "weight": "0"}}, None),
    WakeCase("first analysis: one interval after the step started", canary(0, started=-2), 3),
    WakeCase("later analyses: one interval after the last", canary(0, started=-60, last=-1), 4),
    WakeCase("a step's own interval", canary(1, started=-10, last=-0.5), 0.5),
    WakeCase("overdue: now, not in the past", canary(0, started=-60, last=-30), 0),
    WakeCase("a promotion's scale-down delay (30 s)", superseded(minutes_ago=0.25), 0.25),
    WakeCase("a scale-down delay that ended: nothing due", superseded(minutes_ago=5), None),
    WakeCase("the earliest of analysis and scale-down",
             {**canary(0, started=-1), "history": superseded(minutes_ago=0.1)["history"]}, 0.4),
    WakeCase("a paused canary still analyses", canary(0, started=-2), 3,
             spec={**SPEC, "rollout": {**SPEC["rollout"], "paused": True}}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.reason)
def test_next_wake(case: WakeCase) -> None:
    spec = parse_spec(copy.deepcopy(case.spec or SPEC))
    due = next_wake(spec, QuantizedModelStatus.model_validate(case.status), NOW)
    expected = None if case.due_in_minutes is None else NOW + timedelta(minutes=case.due_in_minutes)
    assert due == expected
