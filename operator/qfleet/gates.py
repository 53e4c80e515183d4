"""Gate verdicts from what the canary has shown: each gate's estimate with its sample sizes and confidence bounds.

Pure: estimates come in as plain data (`qfleet.evidence` makes them from Prometheus' answers); the bounds come from the
spec, with a step's own gates replacing the rollout's gates of the same name. A gate judges only with the evidence it
needs (`minSamples`), passes only when its upper confidence bound is within `max`, fails only when its lower bound is
above `max`, and aborts when its lower bound is above `abortAbove`. Everything else is Inconclusive, with what is
missing in the message: a gate never passes on silence, on a handful of requests, or on a value it is not sure of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from qfleet.api.conditions import Verdict
from qfleet.api.rollout_spec import Analysis, Gate, SampledGate, Step

P99_LATENCY_RATIO = "p99LatencyRatio"
FALLBACK_RATE = "fallbackRate"
QUALITY_DROP = "qualityDrop"
KV_CACHE_HIT_RATE_DROP = "kvCacheHitRateDrop"
BUILT_IN = (P99_LATENCY_RATIO, FALLBACK_RATE, QUALITY_DROP, KV_CACHE_HIT_RATE_DROP)
_FIELDS = {P99_LATENCY_RATIO: "p99_latency_ratio", FALLBACK_RATE: "fallback_rate", QUALITY_DROP: "quality_drop",
           KV_CACHE_HIT_RATE_DROP: "kv_cache_hit_rate_drop"}
_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2, Verdict.ABORT: 3}

LATENCY_QUANTILE = 0.99
DEFAULT_MIN_SAMPLES = {
    # Five requests expected above the p99 on each side: fewer, and the p99 is the slowest request or two.
    P99_LATENCY_RATIO: 500,
    # KV tokens (the interval's sample size, docs/metrics.md): ten expected at the default bound of 0.5%.
    FALLBACK_RATE: 2000,
    # Scored prompt positions of the canary: at a drop near 0 with ~5% of positions changing (FP8 here), 2000 bring
    # the normal interval's half-width to about 0.01, the default bound.
    QUALITY_DROP: 2000,
}
SAMPLE_UNITS = {P99_LATENCY_RATIO: "requests", FALLBACK_RATE: "KV tokens", QUALITY_DROP: "scored tokens"}

STEP_WINDOW = "step"
"""Evidence from the step's start (the canary's start for the first step) up to now: what Pass and Fail rest on."""
INTERVAL_WINDOW = "interval"
"""The last analysis interval only: the fast abort signal, which never waits for the step's evidence to add up."""


@dataclass(frozen=True)
class GateBound:
    name: str
    max: Decimal
    abort_above: Decimal | None = None
    query: str | None = None
    """A custom gate's PromQL (with {{revision}} placeholders); built-in gates use the documented defaults."""
    min_samples: int | None = None
    """Samples (SAMPLE_UNITS) needed on each side before the gate judges; None for gates without counted samples."""


@dataclass(frozen=True)
class Estimate:
    """A gate's value over one window, how sure it is, and what it rests on. Without bounds (custom gates, the
    prefix-cache gate) the value is judged as it is; an infinite upper bound is a tail the histogram cannot bound."""

    value: Decimal | None
    lower: Decimal | None = None
    upper: Decimal | None = None
    canary_samples: int | None = None
    stable_samples: int | None = None
    """None when the gate reads the canary alone (the fallback rate)."""

    @property
    def interval(self) -> str:
        return "" if self.lower is None or self.upper is None else f"[{text(self.lower)}, {text(self.upper)}]"


def text(number: Decimal) -> str:
    """A value as status and messages write it: plain digits, or +Inf for a bound the data cannot give."""
    if number.is_infinite():
        return "+Inf" if number > 0 else "-Inf"
    return format(number.normalize(), "f")


@dataclass(frozen=True)
class GateVerdict:
    name: str
    estimate: Estimate
    bound: GateBound
    verdict: Verdict
    window: str = STEP_WINDOW

    @property
    def value(self) -> Decimal | None:
        return self.estimate.value

    @property
    def explanation(self) -> str:
        value = "" if self.value is None else text(self.value)
        shown = " ".join(part for part in (self.name, value, self.estimate.interval) if part)
        if self.verdict is Verdict.ABORT:
            return f"{shown} is above its abort bound {self.bound.abort_above}" + (
                " over the last interval" if self.window == INTERVAL_WINDOW else "")
        if self.verdict is Verdict.FAIL:
            return f"{shown} is above its bound {self.bound.max}"
        if self.verdict is Verdict.PASS:
            return f"{shown} is within {self.bound.max}"
        if self.value is None:
            return f"{self.name}: no data"
        if self.missing:
            return f"{self.name}: {self.missing}"
        return f"{shown} straddles its bound {self.bound.max}: not yet sure"

    @property
    def missing(self) -> str:
        """The samples the gate still lacks ('' when it has them)."""
        needed, estimate = self.bound.min_samples, self.estimate
        if needed is None or estimate.canary_samples is None:
            return ""
        sides = [("canary", estimate.canary_samples)]
        if estimate.stable_samples is not None:
            sides.append(("stable", estimate.stable_samples))
        if all(count >= needed for _, count in sides):
            return ""
        unit = SAMPLE_UNITS.get(self.name, "samples")
        counts = " and ".join(f"{count:,} {side}" for side, count in sides)
        return f"{counts} {unit}, needs {needed:,}" + (" of each" if len(sides) > 1 else "")


@dataclass(frozen=True)
class IntervalVerdict:
    """One analysis: the worst gate's verdict over the step's evidence (or an abort over the last interval)."""

    verdict: Verdict
    gates: tuple[GateVerdict, ...]
    requests: int | None
    message: str

    @property
    def deciding_gate(self) -> GateVerdict | None:
        """The gate that made the verdict: the first with the worst verdict, if a gate did."""
        worst = [g for g in self.gates if g.verdict is self.verdict and g.verdict is not Verdict.PASS]
        return worst[0] if worst else None


def _bound(name: str, gate: Gate, query: str | None = None) -> GateBound:
    min_samples = None
    if name in DEFAULT_MIN_SAMPLES:
        given = gate.min_samples if isinstance(gate, SampledGate) else None
        min_samples = given or DEFAULT_MIN_SAMPLES[name]
    return GateBound(name, gate.max, gate.abort_above, query, min_samples)


def effective_gates(analysis: Analysis, step: Step | None = None) -> list[GateBound]:
    """The rollout's gates, each replaced by the step's gate of the same name where the step has one."""
    overrides = step.analysis.gates if step is not None and step.analysis is not None else None
    bounds = []
    for name in BUILT_IN:
        gate = getattr(overrides, _FIELDS[name], None) if overrides is not None else None
        gate = gate or getattr(analysis.gates, _FIELDS[name])
        if gate is not None:
            bounds.append(_bound(name, gate))
    custom = {g.name: g for g in analysis.gates.custom or []}
    if overrides is not None:
        custom.update({g.name: g for g in overrides.custom or []})
    bounds.extend(_bound(name, gate, gate.query) for name, gate in custom.items())
    return bounds


def effective_interval(analysis: Analysis, step: Step | None = None) -> timedelta:
    if step is not None and step.analysis is not None and step.analysis.interval is not None:
        return step.analysis.interval
    return analysis.interval


def judge_gate(bound: GateBound, estimate: Estimate | None, window: str = STEP_WINDOW) -> GateVerdict:
    estimate = estimate or Estimate(None)
    verdict = GateVerdict(bound.name, estimate, bound, Verdict.INCONCLUSIVE, window)
    if estimate.value is None or (window == STEP_WINDOW and verdict.missing):
        return verdict
    lower = estimate.value if estimate.lower is None else estimate.lower
    upper = estimate.value if estimate.upper is None else estimate.upper
    if bound.abort_above is not None and lower > bound.abort_above:
        return GateVerdict(bound.name, estimate, bound, Verdict.ABORT, window)
    if window == INTERVAL_WINDOW:
        return verdict
    if lower > bound.max:
        return GateVerdict(bound.name, estimate, bound, Verdict.FAIL, window)
    if upper <= bound.max:
        return GateVerdict(bound.name, estimate, bound, Verdict.PASS, window)
    return verdict


def judge_analysis(bounds: list[GateBound], step: Mapping[str, Estimate], interval: Mapping[str, Estimate],
                   requests: int | None, min_requests: int) -> IntervalVerdict:
    """The verdict of one analysis: each gate judged on the step's evidence, and a gate with an abort bound also on the
    last interval alone (an abort there wins: a fast signal never waits for the step). The worst gate decides (Abort >
    Fail > Inconclusive > Pass). With fewer canary requests in the step than min_requests the analysis is
    Inconclusive whatever the gates say, except that an abort still aborts: a canary too broken to serve traffic must
    not hide behind its own silence."""
    gates = []
    for bound in bounds:
        verdict = judge_gate(bound, step.get(bound.name))
        if bound.abort_above is not None and verdict.verdict is not Verdict.ABORT:
            recent = judge_gate(bound, interval.get(bound.name), INTERVAL_WINDOW)
            verdict = recent if recent.verdict is Verdict.ABORT else verdict
        gates.append(verdict)
    worst = max((g.verdict for g in gates), key=_SEVERITY.__getitem__, default=Verdict.INCONCLUSIVE)
    if worst is not Verdict.ABORT and (requests is None or requests < min_requests):
        seen = "no request count" if requests is None else f"{requests:,} canary requests"
        unsure = [g.explanation for g in gates if g.verdict is Verdict.INCONCLUSIVE]
        return IntervalVerdict(Verdict.INCONCLUSIVE, tuple(gates), requests, "; ".join(
            [f"{seen} since the step started, fewer than minRequests {min_requests:,}", *unsure]))
    message = "; ".join(g.explanation for g in gates if g.verdict is worst) if worst is not Verdict.PASS \
        else "every gate passed: " + "; ".join(g.explanation for g in gates)
    return IntervalVerdict(worst, tuple(gates), requests, message)
