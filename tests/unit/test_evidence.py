"""Verdicts from evidence: the runbook's step (1% for 72 hours) judged on what it accumulated, with the default
settings, and the statistics under it (rank intervals of a quantile over histogram buckets, the Wilson interval, the
paired difference of accuracies)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import pytest

from qfleet.api.conditions import Verdict
from qfleet.api.rollout_spec import Rollout
from qfleet.gates import FALLBACK_RATE, P99_LATENCY_RATIO, QUALITY_DROP, effective_gates
from qfleet.pipeline.analysis import judge
from qfleet.stats import Histogram, binomial_ranks, histogram_quantile, proportion_interval, quantile_interval

from .answers import LATENCY_BUCKETS, Traffic, answers

RUNBOOK = Rollout.model_validate({})
BOUNDS = effective_gates(RUNBOOK.analysis)
STEP_SECONDS = 72 * 3600
MODEL_RPS = 5
CANARY_REQUESTS = MODEL_RPS * STEP_SECONDS * 0.01  # 12,960
STABLE_REQUESTS = MODEL_RPS * STEP_SECONDS * 0.99
INTERVAL_SHARE = 300 / STEP_SECONDS


@dataclass
class StepCase:
    reason: str
    canary: Traffic
    stable: Traffic
    verdict: Verdict
    deciding: str | None = None
    says: str = ""


SAME = Traffic(CANARY_REQUESTS)
STABLE = Traffic(STABLE_REQUESTS)
STEP_CASES = [
    StepCase("a canary as good as the stable passes the 72h step", SAME, STABLE, Verdict.PASS),
    StepCase("35% slower beyond the 1.2 bound fails", Traffic(CANARY_REQUESTS, median_seconds=0.54), STABLE,
             Verdict.FAIL, P99_LATENCY_RATIO),
    StepCase("twice as slow aborts", Traffic(CANARY_REQUESTS, median_seconds=0.8), STABLE, Verdict.ABORT,
             P99_LATENCY_RATIO),
    StepCase("25% slower is too close to the bound to call", Traffic(CANARY_REQUESTS, median_seconds=0.5), STABLE,
             Verdict.INCONCLUSIVE, P99_LATENCY_RATIO, "straddles its bound 1.2"),
    StepCase("a fallback rate of 1% fails its 0.5% bound", Traffic(CANARY_REQUESTS, fallback_rate=0.01), STABLE,
             Verdict.FAIL, FALLBACK_RATE),
    StepCase("a fallback rate of 3% (per-token: nearly every token) fails", Traffic(CANARY_REQUESTS, fallback_rate=0.03),
             STABLE, Verdict.FAIL, FALLBACK_RATE),
    StepCase("a live quality drop of 2 points aborts at the default bound (abortAbove = max = 0.01)",
             Traffic(CANARY_REQUESTS, drop=0.02), STABLE, Verdict.ABORT, QUALITY_DROP),
    StepCase("a drop of 0.008 with many changed positions is too close to call",
             Traffic(CANARY_REQUESTS, drop=0.008, changed=0.2), STABLE, Verdict.INCONCLUSIVE, QUALITY_DROP),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.reason)
def test_the_runbook_step_at_1_percent_of_5_requests_a_second(case: StepCase) -> None:
    verdict = judge(RUNBOOK.analysis, BOUNDS, answers(case.canary, case.stable, INTERVAL_SHARE))
    assert verdict.verdict is case.verdict, verdict.message
    assert (verdict.deciding_gate.name if verdict.deciding_gate else None) == case.deciding
    assert case.says in verdict.message
    latency = next(g for g in verdict.gates if g.name == P99_LATENCY_RATIO).estimate
    assert (latency.canary_samples, latency.stable_samples) == (12960, 1283040)


@pytest.mark.parametrize("requests", range(1, 8))
@pytest.mark.parametrize("slower", [1.0, 0.5])
def test_one_to_seven_requests_are_never_a_pass(requests: int, slower: float) -> None:
    canary = Traffic(requests, median_seconds=0.4 * slower, changed=0.0, fallback_rate=0)
    verdict = judge(RUNBOOK.analysis, BOUNDS, answers(canary, STABLE, 1.0))
    assert verdict.verdict is Verdict.INCONCLUSIVE
    assert all(g.verdict is Verdict.INCONCLUSIVE for g in verdict.gates)
    assert f"{requests} canary and" in verdict.message and "needs 500 of each" in verdict.message


def test_the_first_hours_of_the_step_are_inconclusive_then_the_evidence_decides() -> None:
    """500 canary requests take 2h47m at 1% of 5 requests a second: until then the step gathers evidence."""
    verdicts = {hours: judge(RUNBOOK.analysis, BOUNDS, answers(
        Traffic(MODEL_RPS * 3600 * hours * 0.01), Traffic(MODEL_RPS * 3600 * hours * 0.99), 300 / (3600 * hours)))
        for hours in (0.5, 2, 6, 72)}
    assert verdicts[0.5].verdict is verdicts[2].verdict is Verdict.INCONCLUSIVE
    assert "90 canary and 8,910 stable requests, needs 500 of each" in verdicts[0.5].message
    assert verdicts[72].verdict is Verdict.PASS, verdicts[72].message


def test_a_latency_fault_aborts_on_the_last_interval_before_the_step_has_evidence() -> None:
    """Ten minutes into a step: the step window has 30 canary requests (far from 500), but the last interval's 15,
    each 8 s slower, put the p99 ratio's lower bound above 1.5."""
    faulted = Traffic(15, median_seconds=8.4)
    verdict = judge(RUNBOOK.analysis, BOUNDS, answers(Traffic(30), Traffic(2970), 0.5, recent_canary=faulted))
    assert verdict.verdict is Verdict.ABORT, verdict.message
    assert verdict.deciding_gate.window == "interval" and verdict.deciding_gate.name == P99_LATENCY_RATIO


def histogram(latencies: list[float]) -> Histogram:
    return Histogram.of([(le, sum(1 for x in latencies if x <= le)) for le in LATENCY_BUCKETS]
                        + [(math.inf, len(latencies))])


def test_the_quantile_is_histogram_quantile_and_its_bounds_bracket_it() -> None:
    observed = histogram([0.2] * 90 + [0.6] * 9 + [1.2])
    assert histogram_quantile(observed, 0.5) == pytest.approx(0.1 + 0.15 * 50 / 90)
    interval = quantile_interval(observed, 0.99, 0.95)
    assert interval.lower <= interval.value <= interval.upper
    assert interval.upper == 1.5, "with 100 requests the p99's upper bound is the top of the slowest one's bucket"


def test_a_tail_in_the_inf_bucket_has_no_upper_bound() -> None:
    assert quantile_interval(histogram([0.3] * 50 + [90.0]), 0.99, 0.95).upper == math.inf


@pytest.mark.parametrize("n, expected", [(1, (1, 2)), (40, (38, 41)), (12960, (12808, 12853))])
def test_binomial_ranks_bracket_the_quantile(n: int, expected: tuple[int, int]) -> None:
    assert binomial_ranks(n, 0.99, 0.975) == expected


def test_no_fallbacks_in_few_tokens_is_not_evidence_of_a_low_rate() -> None:
    assert proportion_interval(0, 300, 0.95).upper > 0.005
    assert proportion_interval(0, 3000, 0.95).upper < 0.005


def test_the_interval_is_deterministic() -> None:
    measured = answers(SAME, STABLE, INTERVAL_SHARE)
    assert judge(RUNBOOK.analysis, BOUNDS, measured) == judge(RUNBOOK.analysis, BOUNDS, measured)
    assert Decimal(next(g for g in judge(RUNBOOK.analysis, BOUNDS, measured).gates
                        if g.name == QUALITY_DROP).estimate.upper) < Decimal("0.01")


def test_the_wilson_interval_is_exact_at_its_ends() -> None:
    assert proportion_interval(0, 140, 0.95).lower == 0.0 and proportion_interval(140, 140, 0.95).upper == 1.0


@pytest.mark.parametrize(("fallback", "entries", "tokens", "value", "samples"), [
    (2, 18_000, 100, 2 / 18_000, 100),   # the rate per entry, the tokens as the interval's sample size
    (0, 0, 700, 0.0, 700),               # a BF16 revision quantizes nothing: rate 0 on its tokens
    (0, 0, 0, None, 0),                  # no traffic: no data
])
def test_the_fallback_rate_is_per_entry_with_tokens_as_its_sample_size(
        fallback: int, entries: int, tokens: int, value: float | None, samples: int) -> None:
    from qfleet.evidence import key
    from qfleet.evidence import estimates as estimate_all

    bound = next(b for b in BOUNDS if b.name == FALLBACK_RATE)
    values = {key("step", FALLBACK_RATE, "fallback"): Decimal(fallback),
              key("step", FALLBACK_RATE, "entries"): Decimal(entries),
              key("step", FALLBACK_RATE, "tokens"): Decimal(tokens)}
    found = estimate_all([bound], "step", values, {}, Decimal("0.95"))[FALLBACK_RATE]
    assert (None if found.value is None else float(found.value)) == (None if value is None else pytest.approx(value, rel=1e-3))
    assert found.canary_samples == samples
    if value is not None:
        assert found.lower <= Decimal(repr(value)) <= found.upper
    if entries:  # never as sure as if every entry were an independent sample
        assert float(found.upper) >= proportion_interval(fallback, entries, 0.95).upper
