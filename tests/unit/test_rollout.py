"""The canary's pure decisions as tables: gate verdicts, interval verdicts, and the rollout state machine."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from qfleet.api.conditions import Reason, Verdict
from qfleet.api.rollout_spec import Rollout
from qfleet.gates import (
    FALLBACK_RATE,
    P99_LATENCY_RATIO,
    QUALITY_DROP,
    GateBound,
    IntervalVerdict,
    effective_gates,
    effective_interval,
    judge_gate,
    judge_interval,
)
from qfleet.rollout import (
    Action,
    Manual,
    RolloutState,
    analysis_due,
    canary_replicas,
    decide,
    replica_ratio_weight,
    route_weights,
    start,
)

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
D = Decimal


def rollout(**raw: Any) -> Rollout:
    return Rollout.model_validate(raw)


RUNBOOK = rollout()  # 1% for 72h, 10% for 48h, 100%
FAST = rollout(steps=[{"weight": 1, "pause": "10s"}, {"weight": 10, "pause": "10s"}, {"weight": 100}],
               analysis={"interval": "5s", "failureLimit": 2, "inconclusiveLimit": 3})


@dataclass
class GateCase:
    reason: str
    bound: GateBound
    value: Decimal | None
    verdict: Verdict


P99 = GateBound(P99_LATENCY_RATIO, D("1.2"), D("1.5"))
GATE_CASES = [
    GateCase("well within", P99, D("1.04"), Verdict.PASS),
    GateCase("exactly at the bound passes", P99, D("1.2"), Verdict.PASS),
    GateCase("above the bound fails", P99, D("1.3"), Verdict.FAIL),
    GateCase("exactly at the abort bound only fails", P99, D("1.5"), Verdict.FAIL),
    GateCase("above the abort bound aborts", P99, D("1.51"), Verdict.ABORT),
    GateCase("no data is inconclusive", P99, None, Verdict.INCONCLUSIVE),
    GateCase("no abort bound: only fails", GateBound(FALLBACK_RATE, D("0.005")), D("0.5"), Verdict.FAIL),
    GateCase("quality: abort bound equal to max aborts above it",
             GateBound(QUALITY_DROP, D("0.01"), D("0.01")), D("0.011"), Verdict.ABORT),
]


@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: c.reason)
def test_gate_verdicts(case: GateCase) -> None:
    assert judge_gate(case.bound, case.value).verdict is case.verdict


BOUNDS = effective_gates(RUNBOOK.analysis)


@dataclass
class IntervalCase:
    reason: str
    measured: dict[str, Decimal | None]
    requests: int | None
    verdict: Verdict
    message_has: str = ""


GOOD = {P99_LATENCY_RATIO: D("1.05"), FALLBACK_RATE: D("0.001"), QUALITY_DROP: D("0.002")}
INTERVAL_CASES = [
    IntervalCase("every gate passes", GOOD, 500, Verdict.PASS, "every gate passed"),
    IntervalCase("too few requests is inconclusive even when the gates pass", GOOD, 50, Verdict.INCONCLUSIVE,
                 "fewer than minRequests 200"),
    IntervalCase("no request count is inconclusive", GOOD, None, Verdict.INCONCLUSIVE),
    IntervalCase("one gate without data", {**GOOD, FALLBACK_RATE: None}, 500, Verdict.INCONCLUSIVE, "no data"),
    IntervalCase("a failing gate fails the interval", {**GOOD, FALLBACK_RATE: D("0.02")}, 500, Verdict.FAIL,
                 "fallbackRate 0.02 is above its bound 0.005"),
    IntervalCase("fail outranks no data", {**GOOD, FALLBACK_RATE: D("0.02"), QUALITY_DROP: None}, 500,
                 Verdict.FAIL),
    IntervalCase("an abort outranks a failure", {**GOOD, P99_LATENCY_RATIO: D("1.7"), FALLBACK_RATE: D("0.02")},
                 500, Verdict.ABORT, "p99LatencyRatio 1.7 is above its abort bound 1.5"),
    IntervalCase("an abort bound aborts even with few requests", {**GOOD, P99_LATENCY_RATIO: D("3")}, 10,
                 Verdict.ABORT),
]


@pytest.mark.parametrize("case", INTERVAL_CASES, ids=lambda c: c.reason)
def test_interval_verdicts(case: IntervalCase) -> None:
    result = judge_interval(BOUNDS, case.measured, case.requests, RUNBOOK.analysis.min_requests)
    assert result.verdict is case.verdict
    assert case.message_has in result.message


def test_a_step_overrides_gates_and_interval_of_the_same_name_only() -> None:
    spec = rollout(steps=[{"weight": 1, "pause": "72h", "analysis": {
        "interval": "30m", "gates": {"p99LatencyRatio": {"max": "1.5"}, "custom": [
            {"name": "ttft-p95", "query": "q", "max": "0.8"}]}}}, {"weight": 100}])
    bounds = {b.name: b for b in effective_gates(spec.analysis, spec.steps[0])}
    assert bounds[P99_LATENCY_RATIO] == GateBound(P99_LATENCY_RATIO, D("1.5"), None)
    assert bounds[FALLBACK_RATE].max == D("0.005")
    assert bounds["ttft-p95"].query == "q"
    assert effective_interval(spec.analysis, spec.steps[0]) == timedelta(minutes=30)
    assert effective_interval(spec.analysis, spec.steps[1]) == timedelta(minutes=5)


def verdict(kind: Verdict, message: str = "") -> IntervalVerdict:
    return IntervalVerdict(kind, (), 500, message or kind.value)


PASS, FAIL, INCONCLUSIVE, ABORT = (verdict(v) for v in (Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE,
                                                         Verdict.ABORT))


@dataclass
class StepCase:
    reason: str
    spec: Rollout
    state: RolloutState
    now: datetime
    analysis: IntervalVerdict | None
    action: Action
    weight: Decimal
    reason_code: str
    manual: Manual | None = None
    expect_state: dict = field(default_factory=dict)


def at(step: int, started: timedelta = timedelta(0), **counters: Any) -> RolloutState:
    return RolloutState(step=step, step_started_at=T0 + started, **counters)


STEP_CASES = [
    StepCase("no analysis yet: hold at the first weight", RUNBOOK, start(T0), T0, None, Action.HOLD, D(1),
             Reason.WAITING_FOR_ANALYSIS),
    StepCase("a pass before the 72h pause is over holds", RUNBOOK, at(0), T0 + timedelta(hours=1), PASS,
             Action.HOLD, D(1), Reason.ANALYSIS_PASSED),
    StepCase("a pass after the pause advances to 10%", RUNBOOK, at(0), T0 + timedelta(hours=72), PASS,
             Action.ADVANCE, D(10), Reason.ANALYSIS_PASSED, expect_state={"step": 1, "consecutive_failures": 0}),
    StepCase("a pass after the last pause promotes", RUNBOOK, at(1), T0 + timedelta(hours=48), PASS,
             Action.PROMOTE, D(100), Reason.PROMOTED),
    StepCase("no data after the pause never promotes", RUNBOOK, at(1), T0 + timedelta(hours=49), INCONCLUSIVE,
             Action.HOLD, D(10), Reason.ANALYSIS_INCONCLUSIVE, expect_state={"consecutive_inconclusive": 1}),
    StepCase("the first failure holds and counts", FAST, at(1), T0, FAIL, Action.HOLD, D(10),
             Reason.ANALYSIS_FAILED, expect_state={"consecutive_failures": 1}),
    StepCase("failureLimit consecutive failures roll back", FAST, at(1, consecutive_failures=1), T0, FAIL,
             Action.ROLLBACK, D(0), Reason.FAILURE_LIMIT_REACHED),
    StepCase("a pass resets the failure count", FAST, at(0, consecutive_failures=1), T0, PASS, Action.HOLD, D(1),
             Reason.ANALYSIS_PASSED, expect_state={"consecutive_failures": 0}),
    StepCase("inconclusiveLimit rolls back", FAST, at(0, consecutive_inconclusive=2), T0, INCONCLUSIVE,
             Action.ROLLBACK, D(0), Reason.INCONCLUSIVE_LIMIT_REACHED),
    StepCase("an abort rolls back at once", FAST, at(0), T0, ABORT, Action.ROLLBACK, D(0), Reason.GATE_ABORTED),
    StepCase("without autoRollback an abort holds for a person",
             rollout(autoRollback=False, steps=[{"weight": 10}, {"weight": 100}]), at(0), T0, ABORT, Action.HOLD,
             D(10), Reason.GATE_ABORTED),
    StepCase("paused holds on a pass", rollout(paused=True), at(0), T0 + timedelta(hours=80),
             PASS, Action.HOLD, D(1), Reason.ROLLOUT_PAUSED),
    StepCase("paused holds on a failure", rollout(paused=True), at(0), T0 + timedelta(hours=80),
             FAIL, Action.HOLD, D(1), Reason.ROLLOUT_PAUSED),
    StepCase("paused still rolls back on an abort", rollout(paused=True), at(0), T0, ABORT, Action.ROLLBACK, D(0),
             Reason.GATE_ABORTED),
    StepCase("a person's abort rolls back", RUNBOOK, at(1), T0, PASS, Action.ROLLBACK, D(0),
             Reason.ROLLOUT_ABORTED, manual=Manual.ABORT),
    StepCase("a person's promote promotes", RUNBOOK, at(0), T0, None, Action.PROMOTE, D(100), Reason.PROMOTED,
             manual=Manual.PROMOTE),
    StepCase("a step without a pause advances on its first pass", rollout(
        steps=[{"weight": "0.1"}, {"weight": 5}, {"weight": 100}]), at(0), T0, PASS, Action.ADVANCE, D(5),
        Reason.ANALYSIS_PASSED),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.reason)
def test_rollout_steps(case: StepCase) -> None:
    result = decide(case.spec, case.state, case.now, case.analysis, case.manual)
    assert (result.action, result.weight, result.reason) == (case.action, case.weight, case.reason_code), \
        result.message
    for name, value in case.expect_state.items():
        assert getattr(result.state, name) == value


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.reason)
def test_a_restarted_operator_decides_the_same(case: StepCase) -> None:
    """Everything the decision needs is in its inputs (status and time): deciding twice gives the same answer."""
    first = decide(case.spec, case.state, case.now, case.analysis, case.manual)
    again = decide(case.spec, case.state, case.now, case.analysis, case.manual)
    assert first == again


def test_analysis_is_due_once_per_interval() -> None:
    state = start(T0)
    assert not analysis_due(FAST, state, T0 + timedelta(seconds=4))
    assert analysis_due(FAST, state, T0 + timedelta(seconds=5))
    after = decide(FAST, state, T0 + timedelta(seconds=5), PASS).state
    assert not analysis_due(FAST, after, T0 + timedelta(seconds=9))


@pytest.mark.parametrize("weight, expected", [
    (D(1), (99, 1)), (D(10), (90, 10)), (D(100), (0, 100)), (D("0.1"), (999, 1)), (D("12.5"), (875, 125)),
    (D("0.05"), (9995, 5)), (D(0), (100, 0)),
])
def test_route_weights(weight: Decimal, expected: tuple[int, int]) -> None:
    assert route_weights(weight) == expected


@pytest.mark.parametrize("weight, stable, fixed, expected", [
    (D(1), 4, None, 1), (D(10), 40, None, 4), (D("12.5"), 10, None, 2), (D("0.1"), 400, None, 1),
    (D(50), 4, 3, 3),
])
def test_canary_replicas_never_double_the_fleet(weight, stable, fixed, expected) -> None:
    assert canary_replicas(weight, stable, fixed) == expected


def test_replica_ratio_states_the_real_share() -> None:
    assert replica_ratio_weight(1, 4) == D("20.00")
    assert replica_ratio_weight(0, 4) == D(0)
