"""Prometheus' answers to an analysis's queries, made from a description of the traffic: what the unit tables feed the
gates. Latencies are log-normal, spread over the runtime's latency buckets; the fallback rate counts K/V entries
(SmolLM2-135M: 30 layers x 3 KV heads x K and V = 180 a token); live quality counts scored prompt positions, of which a
share `changed` predicts differently with the served plan than with BF16 KV, split into lost and gained so that
(lost - gained) / scored is the drop asked."""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from statistics import NormalDist

from qfleet.evidence import REQUESTS, key
from qfleet.gates import FALLBACK_RATE, INTERVAL_WINDOW, P99_LATENCY_RATIO, QUALITY_DROP, STEP_WINDOW
from qfleet.pipeline.analysis import Measured

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
"""A coarse bucket layout, as a histogram of another server's might have (the runtime's own, qfleet_runtime.
serving_metrics.LATENCY_BUCKETS, is 5% apart): the tables' expected verdicts rest on these bounds' resolution, and
finer buckets narrow the p99's interval (a 25% slower canary becomes decidable)."""


@dataclass(frozen=True)
class Traffic:
    """What one revision served in one window."""

    requests: float
    median_seconds: float = 0.4
    fallback_rate: float = 0.0002
    kv_tokens_per_request: float = 200
    entries_per_token: float = 180
    scored_share: float = 0.1
    scored_tokens_per_request: float = 100
    drop: float = 0.0
    changed: float = 0.05

    def latency(self) -> list[tuple[float, Decimal]]:
        spread = NormalDist(math.log(self.median_seconds), 0.5)
        return [(le, _count(self.requests * spread.cdf(math.log(le)))) for le in LATENCY_BUCKETS] + \
            [(math.inf, _count(self.requests))]

    @property
    def scored(self) -> float:
        return self.requests * self.scored_share * self.scored_tokens_per_request

    def lost(self) -> Decimal:
        return _count(self.scored * (self.changed + self.drop) / 2)

    def gained(self) -> Decimal:
        return _count(self.scored * (self.changed - self.drop) / 2)

    def kv_entries(self) -> Decimal:
        return _count(self.requests * self.kv_tokens_per_request * self.entries_per_token)

    def fallbacks(self) -> Decimal:
        return _count(self.requests * self.kv_tokens_per_request * self.entries_per_token * self.fallback_rate)


def _count(value: float) -> Decimal:
    return Decimal(repr(round(value, 6)))


def window_answers(window: str, canary: Traffic, stable: Traffic) -> tuple[dict, dict]:
    values = {key(window, FALLBACK_RATE, "fallback"): canary.fallbacks(),
              key(window, FALLBACK_RATE, "entries"): canary.kv_entries(),
              key(window, FALLBACK_RATE, "tokens"): _count(canary.requests * canary.kv_tokens_per_request),
              key(window, QUALITY_DROP, "scored"): _count(canary.scored),
              key(window, QUALITY_DROP, "lost"): canary.lost(),
              key(window, QUALITY_DROP, "gained"): canary.gained()}
    histograms = {key(window, P99_LATENCY_RATIO, "canary"): canary.latency(),
                  key(window, P99_LATENCY_RATIO, "stable"): stable.latency()}
    return values, histograms


def answers(canary: Traffic, stable: Traffic, last_interval: float = 1.0,
            recent_canary: Traffic | None = None) -> Measured:
    """Both windows: the step's (the traffic given) and the last interval's (a share `last_interval` of it, or
    `recent_canary` for a canary that changed in the last interval)."""
    values, histograms = window_answers(STEP_WINDOW, canary, stable)
    recent = recent_canary or Traffic(**{**canary.__dict__, "requests": canary.requests * last_interval})
    more_values, more_histograms = window_answers(
        INTERVAL_WINDOW, recent, Traffic(**{**stable.__dict__, "requests": stable.requests * last_interval}))
    values.update(more_values)
    histograms.update(more_histograms)
    values[key(STEP_WINDOW, REQUESTS, "canary")] = _count(canary.requests)
    return Measured(values, histograms)


NO_DATA = Measured({key(STEP_WINDOW, REQUESTS, "canary"): None})
