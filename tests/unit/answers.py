"""Prometheus' answers to an analysis's queries, made from a description of the traffic: what the unit tables feed the
gates. Latencies are log-normal, spread over the runtime's latency buckets; live quality is each scored request's
top-1 agreement, 1.0 or 0.75 (one of four next tokens differs), mixed to the mean asked."""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from statistics import NormalDist

from qfleet.evidence import REQUESTS, key
from qfleet.gates import FALLBACK_RATE, INTERVAL_WINDOW, P99_LATENCY_RATIO, QUALITY_DROP, STEP_WINDOW
from qfleet.pipeline.analysis import Measured

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
"""The runtime's latency buckets (qfleet_runtime.serving_metrics.LATENCY_BUCKETS) as this was written."""
RATIO_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


@dataclass(frozen=True)
class Traffic:
    """What one revision served in one window."""

    requests: float
    median_seconds: float = 0.4
    fallback_rate: float = 0.001
    kv_tokens_per_request: float = 200
    scored_share: float = 0.1
    top1: float = 0.95

    def latency(self) -> list[tuple[float, Decimal]]:
        spread = NormalDist(math.log(self.median_seconds), 0.5)
        return [(le, _count(self.requests * spread.cdf(math.log(le)))) for le in LATENCY_BUCKETS] + \
            [(math.inf, _count(self.requests))]

    @property
    def scored(self) -> float:
        return self.requests * self.scored_share

    def quality(self) -> list[tuple[float, Decimal]]:
        partial = self.scored * (1 - self.top1) / 0.25  # requests at 0.75; the rest agree fully
        return [(le, _count(0 if le < 0.75 else partial if le < 1.0 else self.scored)) for le in RATIO_BUCKETS] + \
            [(math.inf, _count(self.scored))]

    def quality_sum(self) -> Decimal:
        return _count(self.scored * self.top1)

    def kv_tokens(self) -> Decimal:
        return _count(self.requests * self.kv_tokens_per_request)

    def fallbacks(self) -> Decimal:
        return _count(self.requests * self.kv_tokens_per_request * self.fallback_rate)


def _count(value: float) -> Decimal:
    return Decimal(repr(round(value, 6)))


def window_answers(window: str, canary: Traffic, stable: Traffic) -> tuple[dict, dict]:
    values = {key(window, FALLBACK_RATE, "fallback"): canary.fallbacks(),
              key(window, FALLBACK_RATE, "tokens"): canary.kv_tokens(),
              key(window, QUALITY_DROP, "canary-sum"): canary.quality_sum(),
              key(window, QUALITY_DROP, "stable-sum"): stable.quality_sum()}
    histograms = {key(window, P99_LATENCY_RATIO, "canary"): canary.latency(),
                  key(window, P99_LATENCY_RATIO, "stable"): stable.latency(),
                  key(window, QUALITY_DROP, "canary"): canary.quality(),
                  key(window, QUALITY_DROP, "stable"): stable.quality()}
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
