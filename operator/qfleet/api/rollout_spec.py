"""`spec.rollout`: traffic routing, canary steps, analysis gates and rollback policy.

Defaults follow the runbook: 1% for 72h, then 10% for 48h, then 100%; an interval passes while the
canary's p99 latency is at most 1.2x the stable one's, its fallback rate at most 0.5% and its
quality drop at most 1%; the rollout aborts when p99 goes above 1.5x or quality drops more than 1%.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Literal

from pydantic import Field, field_validator

from qfleet.api import rules
from qfleet.api.base import SpecObject, default_of, rules_error
from qfleet.api.errors import FieldError
from qfleet.api.values import (
    AnalysisInterval,
    Confidence,
    DnsLabel,
    DnsSubdomain,
    Duration,
    HttpUrl,
    StepWeight,
    Threshold,
)

RUNBOOK_STEPS = ({"weight": 1, "pause": "72h"}, {"weight": 10, "pause": "48h"}, {"weight": 100})
DEFAULT_PROMETHEUS_ADDRESS = "http://prometheus-operated.monitoring.svc:9090"
FULL_TRAFFIC = Decimal(100)


class GatewayAPIRouting(SpecObject):
    http_route: DnsSubdomain = Field(examples=["llama-route"])


class ReplicaRouting(SpecObject):
    """Weights by replica counts: no fields; the canary gets its share of the serving replicas."""


class TrafficRouting(SpecObject):
    gateway_api: GatewayAPIRouting | None = Field(default=None, alias="gatewayAPI")
    replicas: ReplicaRouting | None = None

    def violations(self) -> Iterator[FieldError]:
        if (self.gateway_api is None) == (self.replicas is None):
            yield FieldError("", rules.ONE_TRAFFIC_ROUTING)


class Gate(SpecObject):
    """A measured value must stay at most `max` to pass; above `abortAbove` the rollout aborts."""

    max: Threshold = Field(examples=['"1.2"'])
    abort_above: Threshold | None = None

    def violations(self) -> Iterator[FieldError]:
        if self.abort_above is not None and self.abort_above < self.max:
            yield FieldError("abortAbove", rules.ABORT_AT_LEAST_MAX)


class SampledGate(Gate):
    """A built-in gate whose evidence qfleet counts: `minSamples` is how much it needs before it judges (the default
    depends on the gate: `qfleet.gates.DEFAULT_MIN_SAMPLES`)."""

    min_samples: int | None = Field(default=None, ge=1, le=1_000_000_000)


class CustomGate(Gate):
    """A Flagger-style gate: a PromQL query whose value is compared like a built-in gate's."""

    name: DnsLabel = Field(examples=["ttft-p95"])
    query: str = Field(min_length=1, max_length=4096, examples=['"<PromQL with {{revision}}>"'])


def _duplicate_names(gates: list[CustomGate] | None, field: str) -> Iterator[FieldError]:
    seen: set[str] = set()
    for index, gate in enumerate(gates or ()):
        if gate.name in seen:
            yield FieldError(
                f"{field}[{index}]", f"a second gate named {gate.name!r}: give every custom gate its own name"
            )
        seen.add(gate.name)


class Gates(SpecObject):
    p99_latency_ratio: SampledGate = Field(
        default_factory=default_of(SampledGate, {"max": "1.2", "abortAbove": "1.5"}))
    fallback_rate: SampledGate = Field(default_factory=default_of(SampledGate, {"max": "0.005"}))
    quality_drop: SampledGate = Field(
        default_factory=default_of(SampledGate, {"max": "0.01", "abortAbove": "0.01"}))
    kv_cache_hit_rate_drop: Gate | None = None
    custom: list[CustomGate] | None = Field(default=None, max_length=10)

    def violations(self) -> Iterator[FieldError]:
        yield from _duplicate_names(self.custom, "custom")


class GateOverrides(SpecObject):
    """Per-step gates: each one given replaces the rollout's gate of the same name for that step."""

    p99_latency_ratio: SampledGate | None = None
    fallback_rate: SampledGate | None = None
    quality_drop: SampledGate | None = None
    kv_cache_hit_rate_drop: Gate | None = None
    custom: list[CustomGate] | None = Field(default=None, max_length=10)

    def violations(self) -> Iterator[FieldError]:
        yield from _duplicate_names(self.custom, "custom")


class Prometheus(SpecObject):
    address: HttpUrl = DEFAULT_PROMETHEUS_ADDRESS


InconclusivePolicy = Literal["hold", "rollback"]
"""hold: keep the weight and gather evidence, roll back only once maxHold past the step's pause has run out;
rollback: roll back after inconclusiveLimit inconclusive analyses in a row."""


class Analysis(SpecObject):
    interval: AnalysisInterval = timedelta(minutes=5)
    prometheus: Prometheus = Field(default_factory=Prometheus)
    min_requests: int = Field(default=200, ge=0, le=1_000_000_000)
    gates: Gates = Field(default_factory=Gates)
    warmup: Duration = timedelta(0)
    confidence: Confidence = Decimal("0.95")
    failure_limit: int = Field(default=2, ge=1, le=100)
    inconclusive_policy: InconclusivePolicy = "hold"
    inconclusive_limit: int = Field(default=3, ge=1, le=100)
    max_hold: Duration = timedelta(hours=24)


class StepAnalysis(SpecObject):
    interval: AnalysisInterval | None = None
    gates: GateOverrides | None = None


class Step(SpecObject):
    weight: StepWeight = Field(examples=["10"])
    pause: Duration | None = None
    analysis: StepAnalysis | None = None


def _runbook_steps() -> list[Step]:
    return [Step.model_validate(step) for step in RUNBOOK_STEPS]


class Rollout(SpecObject):
    traffic_routing: TrafficRouting = Field(default_factory=default_of(TrafficRouting, {"replicas": {}}))
    steps: list[Step] = Field(default_factory=_runbook_steps, min_length=1, max_length=20)
    analysis: Analysis = Field(default_factory=Analysis)
    auto_rollback: bool = True
    canary_replicas: int | None = Field(default=None, ge=1, le=1000)
    paused: bool = False

    @field_validator("steps")
    @classmethod
    def _weights_climb_to_full_traffic(cls, steps: list[Step]) -> list[Step]:
        weights = [step.weight for step in steps]
        found = []
        if any(later <= earlier for earlier, later in pairwise(weights)):
            found.append(FieldError("", f"{rules.STEPS_STRICTLY_INCREASE}; got {', '.join(map(str, weights))}"))
        if weights and weights[-1] != FULL_TRAFFIC:
            found.append(FieldError("", f"{rules.STEPS_END_AT_FULL_TRAFFIC}; the last is {weights[-1]}"))
        if found:
            raise rules_error(found)
        return steps
