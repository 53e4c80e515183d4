"""Gate verdicts from measured values: what one analysis interval says about the canary.

Pure: measurements come in as numbers (or None for "no data"); the bounds come from the spec, with a step's own
gates replacing the rollout's gates of the same name. No data, or fewer requests than `minRequests`, is
Inconclusive: a gate never passes on silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from qfleet.api.conditions import Verdict
from qfleet.api.rollout_spec import Analysis, Gate, Step

P99_LATENCY_RATIO = "p99LatencyRatio"
FALLBACK_RATE = "fallbackRate"
QUALITY_DROP = "qualityDrop"
KV_CACHE_HIT_RATE_DROP = "kvCacheHitRateDrop"
BUILT_IN = (P99_LATENCY_RATIO, FALLBACK_RATE, QUALITY_DROP, KV_CACHE_HIT_RATE_DROP)
_FIELDS = {P99_LATENCY_RATIO: "p99_latency_ratio", FALLBACK_RATE: "fallback_rate", QUALITY_DROP: "quality_drop",
           KV_CACHE_HIT_RATE_DROP: "kv_cache_hit_rate_drop"}
_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2, Verdict.ABORT: 3}


@dataclass(frozen=True)
class GateBound:
    name: str
    max: Decimal
    abort_above: Decimal | None = None
    query: str | None = None
    """A custom gate's PromQL (with {{revision}} placeholders); built-in gates use the documented defaults."""


@dataclass(frozen=True)
class GateVerdict:
    name: str
    value: Decimal | None
    bound: GateBound
    verdict: Verdict

    @property
    def explanation(self) -> str:
        if self.value is None:
            return f"{self.name}: no data"
        if self.verdict is Verdict.ABORT:
            return f"{self.name} {self.value} is above its abort bound {self.bound.abort_above}"
        if self.verdict is Verdict.FAIL:
            return f"{self.name} {self.value} is above its bound {self.bound.max}"
        return f"{self.name} {self.value} is within {self.bound.max}"


@dataclass(frozen=True)
class IntervalVerdict:
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
    return GateBound(name, gate.max, gate.abort_above, query)


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


def judge_gate(bound: GateBound, value: Decimal | None) -> GateVerdict:
    if value is None:
        verdict = Verdict.INCONCLUSIVE
    elif bound.abort_above is not None and value > bound.abort_above:
        verdict = Verdict.ABORT
    elif value > bound.max:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.PASS
    return GateVerdict(bound.name, value, bound, verdict)


def judge_interval(bounds: list[GateBound], measured: Mapping[str, Decimal | None], requests: int | None,
                   min_requests: int) -> IntervalVerdict:
    """One interval's verdict: the worst gate's (Abort > Fail > Inconclusive > Pass). With fewer canary requests than
    min_requests the interval is Inconclusive whatever the gates say, except that an abort bound still aborts: a
    canary too broken to serve traffic must not hide behind its own silence."""
    gates = tuple(judge_gate(bound, measured.get(bound.name)) for bound in bounds)
    worst = max((g.verdict for g in gates), key=_SEVERITY.__getitem__, default=Verdict.INCONCLUSIVE)
    if worst is not Verdict.ABORT and (requests is None or requests < min_requests):
        seen = "no request count" if requests is None else f"{requests} canary requests"
        return IntervalVerdict(Verdict.INCONCLUSIVE, gates, requests,
                               f"{seen} in the window, fewer than minRequests {min_requests}")
    message = "; ".join(g.explanation for g in gates if g.verdict is worst) if worst is not Verdict.PASS \
        else "every gate passed"
    return IntervalVerdict(worst, gates, requests, message)
