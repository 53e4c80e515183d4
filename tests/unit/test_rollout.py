"""The canary's pure decisions as tables: gate verdicts, analysis verdicts, and the rollout state machine."""
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
    INTERVAL_WINDOW,
    P99_LATENCY_RATIO,
    QUALITY_DROP,
    Estimate,
    GateBound,
    IntervalVerdict,
    effective_gates,
    effective_interval,
    judge_analysis,
    judge_gate,
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
ROLLBACK_POLICY = rollout(steps=FAST.model_dump(by_alias=True)["steps"],
                          analysis={"interval": "5s", "inconclusivePolicy": "rollback", "inconclusiveLimit": 3})


@dataclass
class GateCase:
    reason: str
    bound: GateBound
    estimate: Estimate | None
    verdict: Verdict
    window: str = "step"
    says: str = ""


def sure(value: str, lower: str, upper: str, canary: int = 5000, stable: int | None = 50000) -> Estimate:
    return Estimate(D(value), D(lower), D(upper), canary, stable)


P99 = GateBound(P99_LATENCY_RATIO, D("1.2"), D("1.5"), min_samples=500)
FALLBACK = GateBound(FALLBACK_RATE, D("0.005"), min_samples=2000)
GATE_CASES = [
    GateCase("the whole interval within the bound passes", P99, sure("1.04", "0.98", "1.1"), Verdict.PASS),
    GateCase("an upper bound exactly at the bound passes", P99, sure("1.1", "1.0", "1.2"), Verdict.PASS),
    GateCase("a value within the bound but an interval across it is not sure", P99, sure("1.1", "0.9", "1.35"),
             Verdict.INCONCLUSIVE, says="straddles its bound 1.2: not yet sure"),
    GateCase("a lower bound above the bound fails", P99, sure("1.35", "1.25", "1.45"), Verdict.FAIL),
    GateCase("a value above the bound with an interval across it is not sure", P99, sure("1.3", "1.1", "1.5"),
             Verdict.INCONCLUSIVE),
    GateCase("a lower bound above the abort bound aborts", P99, sure("1.9", "1.6", "2.2"), Verdict.ABORT),
    GateCase("an unbounded tail never passes", P99, sure("1.0", "0.9", "Infinity"), Verdict.INCONCLUSIVE,
             says="[0.9, +Inf]"),
    GateCase("too few canary requests is inconclusive, with the counts", P99, sure("1.0", "0.99", "1.01", 120),
             Verdict.INCONCLUSIVE, says="120 canary and 50,000 stable requests, needs 500 of each"),
    GateCase("too few stable requests too", P99, sure("1.0", "0.99", "1.01", 900, 80), Verdict.INCONCLUSIVE,
             says="900 canary and 80 stable requests"),
    GateCase("too few samples still aborts over the last interval", P99, sure("6", "4", "9", 2),
             Verdict.ABORT, INTERVAL_WINDOW),
    GateCase("the last interval never passes or fails: it only aborts", P99, sure("1.35", "1.25", "1.45"),
             Verdict.INCONCLUSIVE, INTERVAL_WINDOW),
    GateCase("no data is inconclusive", P99, None, Verdict.INCONCLUSIVE, says="no data"),
    GateCase("a rate whose upper bound is within max passes", FALLBACK,
             Estimate(D("0.001"), D("0.0008"), D("0.0013"), 90000), Verdict.PASS),
    GateCase("the fallback rate counts KV tokens", FALLBACK, Estimate(D("0"), D("0"), D("0.003"), 900),
             Verdict.INCONCLUSIVE, says="900 canary KV tokens, needs 2,000"),
    GateCase("no abort bound: only fails", FALLBACK, Estimate(D("0.5"), D("0.4"), D("0.6"), 9000), Verdict.FAIL),
    GateCase("a gate without bounds is judged on its value", GateBound("ttft", D("0.8")), Estimate(D("0.81")),
             Verdict.FAIL),
    GateCase("quality: abort bound equal to max aborts above it", GateBound(QUALITY_DROP, D("0.01"), D("0.01"), None,
             100), sure("0.02", "0.011", "0.03", 400), Verdict.ABORT),
]


@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: c.reason)
def test_gate_verdicts(case: GateCase) -> None:
    result = judge_gate(case.bound, case.estimate, case.window)
    assert result.verdict is case.verdict, result.explanation
    assert case.says in result.explanation


BOUNDS = effective_gates(RUNBOOK.analysis)


@dataclass
class AnalysisCase:
    reason: str
    step: dict[str, Estimate]
    requests: int | None
    verdict: Verdict
    message_has: str = ""
    interval: dict[str, Estimate] = field(default_factory=dict)


GOOD = {P99_LATENCY_RATIO: sure("1.05", "0.98", "1.1"), FALLBACK_RATE: sure("0.001", "0.0009", "0.0012", 90000, None),
        QUALITY_DROP: sure("0.002", "-0.001", "0.005", 9000, None)}
ANALYSIS_CASES = [
    AnalysisCase("every gate passes", GOOD, 5000, Verdict.PASS, "every gate passed"),
    AnalysisCase("too few requests is inconclusive even when the gates pass", GOOD, 50, Verdict.INCONCLUSIVE,
                 "50 canary requests since the step started, fewer than minRequests 200"),
    AnalysisCase("no request count is inconclusive", GOOD, None, Verdict.INCONCLUSIVE),
    AnalysisCase("one gate without data", {**GOOD, FALLBACK_RATE: Estimate(None)}, 5000, Verdict.INCONCLUSIVE,
                 "fallbackRate: no data"),
    AnalysisCase("a failing gate fails the analysis", {**GOOD, FALLBACK_RATE: sure("0.02", "0.015", "0.025")}, 5000,
                 Verdict.FAIL, "fallbackRate 0.02 [0.015, 0.025] is above its bound 0.005"),
    AnalysisCase("fail outranks no data", {**GOOD, FALLBACK_RATE: sure("0.02", "0.015", "0.025"),
                                           QUALITY_DROP: Estimate(None)}, 5000, Verdict.FAIL),
    AnalysisCase("an abort outranks a failure", {**GOOD, P99_LATENCY_RATIO: sure("1.7", "1.6", "1.8"),
                                                 FALLBACK_RATE: sure("0.02", "0.015", "0.025")},
                 5000, Verdict.ABORT, "p99LatencyRatio 1.7 [1.6, 1.8] is above its abort bound 1.5"),
    AnalysisCase("the last interval aborts while the step's evidence is still thin",
                 {**GOOD, P99_LATENCY_RATIO: sure("3", "1.2", "9", 40)}, 40, Verdict.ABORT,
                 "above its abort bound 1.5 over the last interval",
                 interval={P99_LATENCY_RATIO: sure("6", "4", "9", 4)}),
    AnalysisCase("a pass on the step is not undone by a noisy last interval that does not abort", GOOD, 5000,
                 Verdict.PASS, interval={P99_LATENCY_RATIO: sure("1.4", "0.5", "3", 20)}),
]


@pytest.mark.parametrize("case", ANALYSIS_CASES, ids=lambda c: c.reason)
def test_analysis_verdicts(case: AnalysisCase) -> None:
    result = judge_analysis(BOUNDS, case.step, case.interval, case.requests, RUNBOOK.analysis.min_requests)
    assert result.verdict is case.verdict, result.message
    assert case.message_has in result.message


def test_a_step_overrides_gates_and_interval_of_the_same_name_only() -> None:
    spec = rollout(steps=[{"weight": 1, "pause": "72h", "analysis": {
        "interval": "30m", "gates": {"p99LatencyRatio": {"max": "1.5"}, "custom": [
            {"name": "ttft-p95", "query": "q", "max": "0.8"}]}}}, {"weight": 100}])
    bounds = {b.name: b for b in effective_gates(spec.analysis, spec.steps[0])}
    assert bounds[P99_LATENCY_RATIO] == GateBound(P99_LATENCY_RATIO, D("1.5"), None, min_samples=500)
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
    StepCase("inconclusive during the pause gathers evidence", RUNBOOK, at(0), T0 + timedelta(hours=5),
             INCONCLUSIVE, Action.HOLD, D(1), Reason.ANALYSIS_INCONCLUSIVE, expect_state={"consecutive_inconclusive": 1}),
    StepCase("inconclusive after the pause holds for evidence, never promotes", RUNBOOK, at(1),
             T0 + timedelta(hours=49), INCONCLUSIVE, Action.HOLD, D(10), Reason.HOLDING_FOR_EVIDENCE),
    StepCase("hold never counts inconclusive analyses toward a rollback", RUNBOOK,
             at(0, consecutive_inconclusive=40), T0 + timedelta(hours=90), INCONCLUSIVE, Action.HOLD, D(1),
             Reason.HOLDING_FOR_EVIDENCE),
    StepCase("maxHold past the pause without evidence rolls back", RUNBOOK, at(0), T0 + timedelta(hours=96),
             INCONCLUSIVE, Action.ROLLBACK, D(0), Reason.MAX_HOLD_REACHED),
    StepCase("a step without a pause holds from its start", rollout(
        steps=[{"weight": 5}, {"weight": 100}], analysis={"maxHold": "1h"}), at(0), T0 + timedelta(minutes=59),
        INCONCLUSIVE, Action.HOLD, D(5), Reason.HOLDING_FOR_EVIDENCE),
    StepCase("without autoRollback maxHold holds for a person", rollout(autoRollback=False), at(0),
             T0 + timedelta(hours=97), INCONCLUSIVE, Action.HOLD, D(1), Reason.MAX_HOLD_REACHED),
    StepCase("the first failure holds and counts", FAST, at(1), T0, FAIL, Action.HOLD, D(10),
             Reason.ANALYSIS_FAILED, expect_state={"consecutive_failures": 1}),
    StepCase("failureLimit consecutive failures roll back", FAST, at(1, consecutive_failures=1), T0, FAIL,
             Action.ROLLBACK, D(0), Reason.FAILURE_LIMIT_REACHED),
    StepCase("a pass resets the failure count", FAST, at(0, consecutive_failures=1), T0, PASS, Action.HOLD, D(1),
             Reason.ANALYSIS_PASSED, expect_state={"consecutive_failures": 0}),
    StepCase("policy rollback: the first inconclusive analyses hold", ROLLBACK_POLICY, at(0), T0, INCONCLUSIVE,
             Action.HOLD, D(1), Reason.ANALYSIS_INCONCLUSIVE, expect_state={"consecutive_inconclusive": 1}),
    StepCase("policy rollback: inconclusiveLimit rolls back", ROLLBACK_POLICY, at(0, consecutive_inconclusive=2), T0,
             INCONCLUSIVE, Action.ROLLBACK, D(0), Reason.INCONCLUSIVE_LIMIT_REACHED),
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
