"""One canary analysis, decided: what to ask Prometheus, and the verdict and status record made from its answers.

Pure, like the release it serves: the windows come from the rollout's state in status (the step's start) and the
visit's time, so a restarted operator asks for the same windows and judges the same answers alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from qfleet import evidence
from qfleet.api.rollout_spec import Analysis, GatewayAPIRouting
from qfleet.api.status import AnalysisRun, GateResult
from qfleet.gates import INTERVAL_WINDOW, STEP_WINDOW, GateBound, GateVerdict, IntervalVerdict, judge_analysis, text
from qfleet.manifests.serving import CANARY, STABLE, service_name
from qfleet.promql import GATEWAY_LATENCY, RUNTIME_LATENCY, Latency, Window


@dataclass(frozen=True)
class Measured:
    """This visit's Prometheus answers, by the keys of `qfleet.evidence.queries`; None is no data."""

    values: Mapping[str, Decimal | None]
    histograms: Mapping[str, evidence.Buckets | None] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureRequest:
    address: str
    queries: dict[str, str]
    histograms: dict[str, str] = field(default_factory=dict)
    """Queries answered by a count per bucket (`le`)."""


@dataclass(frozen=True)
class Revisions:
    namespace: str
    model: str
    canary: str
    stable: str


@dataclass(frozen=True)
class LatencyChoice:
    latency: Latency
    note: str = ""
    """Why the configured source was not used ('' when it was): appended to the analysis's message."""


def latency_choice(configured: str, gateway: GatewayAPIRouting | None, model: str) -> LatencyChoice:
    """The latency source the operator is configured for (QFLEET_LATENCY_SOURCE, the chart's
    analysis.latencySource), as this model can use it. The gateway source reads the gateway's histogram of the
    model's canary and stable Services, which only an HTTPRoute's weights keep apart: a model that splits traffic by
    replicas (its stable Service selects every revision's pods) reads the runtime's histogram instead, and says so."""
    if configured != GATEWAY_LATENCY:
        return LatencyChoice(Latency(RUNTIME_LATENCY))
    if gateway is None:
        return LatencyChoice(Latency(RUNTIME_LATENCY), (
            "latency source: the operator is set to read the gateway's latency (analysis.latencySource: gateway), but "
            "this model splits traffic by replicas (spec.rollout.trafficRouting.replicas), which no gateway histogram "
            "tells apart: p99LatencyRatio and the request count read the runtime's qfleet_request_duration_seconds "
            "and qfleet_requests_total"))
    return LatencyChoice(Latency(GATEWAY_LATENCY, service_name(model, CANARY), service_name(model, STABLE)))


def evidence_since(analysis: Analysis, step_started_at: datetime) -> datetime:
    """Where the step window starts: the step's start, after its warm-up (new weight, perhaps new replicas: cold
    caches and lazy set-up are not the revision's steady latency)."""
    return step_started_at + analysis.warmup


def measure_request(analysis: Analysis, bounds: list[GateBound], revisions: Revisions, step_started_at: datetime,
                    interval: timedelta, now: datetime, latency: Latency = Latency()) -> MeasureRequest:
    """The step window (since the step started, after its warm-up) for Pass and Fail, the last interval for the
    abort signals (warm-up included: a broken canary aborts at once); latency in the source given."""
    since = evidence_since(analysis, step_started_at)
    windows = [Window(revisions.namespace, revisions.model, revisions.canary, revisions.stable, seconds)
               for seconds in (evidence.step_seconds(since, now), max(1, int(interval.total_seconds())))]
    asked = evidence.queries(bounds, *windows, latency=latency)
    return MeasureRequest(str(analysis.prometheus.address), asked.values, asked.histograms)


def judge(analysis: Analysis, bounds: list[GateBound], measured: Measured, note: str = "") -> IntervalVerdict:
    confidence = analysis.confidence
    verdict = judge_analysis(
        bounds, evidence.estimates(bounds, STEP_WINDOW, measured.values, measured.histograms, confidence),
        evidence.estimates(bounds, INTERVAL_WINDOW, measured.values, measured.histograms, confidence),
        evidence.requests(measured.values), analysis.min_requests)
    message = verdict.message
    if measured.errors:
        errors = "; ".join(f"{k}: {v}" for k, v in sorted(measured.errors.items()))[:400]
        message = f"{message} (Prometheus: {errors})"
    if note:
        message = f"{message} ({note})"
    if message != verdict.message:
        verdict = IntervalVerdict(verdict.verdict, verdict.gates, verdict.requests, message)
    return verdict


def analysis_run(verdict: IntervalVerdict, now: datetime, since: datetime | None, confidence: Decimal) -> AnalysisRun:
    return AnalysisRun(at=now, verdict=verdict.verdict, since=since, confidence=text(confidence),
                       requests=verdict.requests, gates=[_gate_result(g) for g in verdict.gates])


def _gate_result(gate: GateVerdict) -> GateResult:
    estimate = gate.estimate
    return GateResult(
        name=gate.name, value=None if estimate.value is None else text(estimate.value),
        lower=None if estimate.lower is None else text(estimate.lower),
        upper=None if estimate.upper is None else text(estimate.upper), max=text(gate.bound.max),
        verdict=gate.verdict, window=gate.window, canary_samples=estimate.canary_samples,
        stable_samples=estimate.stable_samples, min_samples=gate.bound.min_samples)


def deciding_gate_text(gate: GateVerdict) -> str:
    """The deciding gate for a rollback's message: its value, interval, bounds and what it rested on."""
    estimate = gate.estimate
    parts = [f"gate {gate.name}: value {text(estimate.value) if estimate.value is not None else 'none'}"]
    if estimate.interval:
        parts.append(f"interval {estimate.interval}")
    parts.append(f"bound {text(gate.bound.max)}")
    if gate.bound.abort_above is not None:
        parts.append(f"abort bound {text(gate.bound.abort_above)}")
    if estimate.canary_samples is not None:
        sides = f"{estimate.canary_samples:,} canary" + (
            f" and {estimate.stable_samples:,} stable" if estimate.stable_samples is not None else "")
        parts.append(f"over {sides} samples ({'the last interval' if gate.window == INTERVAL_WINDOW else 'the step'})")
    return ", ".join(parts)
