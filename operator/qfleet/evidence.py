"""What the canary has shown: the two windows an analysis reads, the Prometheus queries for them, and each gate's
estimate (value, confidence bounds, sample sizes) made from the answers.

Pure: the queries are strings, the answers plain numbers and bucket lists. The step window runs from the step's start
(kept in status, so a restarted operator reads the same window; after `analysis.warmup`) to now and carries Pass and
Fail; the interval window is the last analysis interval and carries only the fast abort signal of gates with
`abortAbove`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from qfleet import stats
from qfleet.api import metrics as m
from qfleet.gates import (
    FALLBACK_RATE,
    INTERVAL_WINDOW,
    LATENCY_QUANTILE,
    P99_LATENCY_RATIO,
    QUALITY_DROP,
    STEP_WINDOW,
    Estimate,
    GateBound,
)
from qfleet.promql import Latency, Window, count, default_query, latency_buckets, latency_requests, render_custom

REQUESTS = "requests"
"""Not a gate: the canary's requests over the step window, which minRequests is checked against."""
SIGNIFICANT_DIGITS = 4

Buckets = Sequence[tuple[float, Decimal]]
"""A histogram query's answer: (le, cumulative count) per bucket."""


@dataclass(frozen=True)
class Queries:
    values: dict[str, str]
    """Queries answered by one number."""
    histograms: dict[str, str]
    """Queries answered by one count per bucket (`le`)."""


def key(window: str, gate: str, part: str) -> str:
    return f"{window}/{gate}/{part}"


def step_seconds(since: datetime, now: datetime) -> int:
    """The step window's length: whole seconds since its evidence started, at least one."""
    return max(1, math.ceil((now - since) / timedelta(seconds=1)))


def queries(bounds: Sequence[GateBound], step: Window, interval: Window, latency: Latency = Latency()) -> Queries:
    """Every gate over the step window, the gates with an abort bound also over the interval window, and the canary's
    request count over the step window; the p99 gate and the request count in the latency source given."""
    found = Queries({key(STEP_WINDOW, REQUESTS, "canary"): latency_requests(step, latency)}, {})
    for bound in bounds:
        _gate_queries(bound, step, STEP_WINDOW, found, latency)
        if bound.abort_above is not None:
            _gate_queries(bound, interval, INTERVAL_WINDOW, found, latency)
    return found


def _gate_queries(bound: GateBound, window: Window, name: str, into: Queries, latency: Latency) -> None:
    if bound.query:
        into.values[key(name, bound.name, "value")] = render_custom(bound.query, window)
    elif bound.name == P99_LATENCY_RATIO:
        for side in ("canary", "stable"):
            into.histograms[key(name, bound.name, side)] = latency_buckets(window, latency, side)
    elif bound.name == FALLBACK_RATE:
        into.values[key(name, bound.name, "fallback")] = count(window, m.KV_FALLBACK_ENTRIES, window.canary)
        into.values[key(name, bound.name, "entries")] = count(window, m.KV_ENTRIES, window.canary)
        into.values[key(name, bound.name, "tokens")] = count(window, m.KV_TOKENS, window.canary)
    elif bound.name == QUALITY_DROP:
        for part, metric in (("scored", m.QUALITY_SCORED_TOKENS), ("lost", m.QUALITY_LOST_TOKENS),
                             ("gained", m.QUALITY_GAINED_TOKENS)):
            into.values[key(name, bound.name, part)] = count(window, metric, window.canary)
    else:
        into.values[key(name, bound.name, "value")] = default_query(bound.name, window)


def requests(values: Mapping[str, Decimal | None]) -> int | None:
    found = values.get(key(STEP_WINDOW, REQUESTS, "canary"))
    return None if found is None else round(found)


@dataclass(frozen=True)
class _Answers:
    """One window's answers, read by gate and part."""

    window: str
    values: Mapping[str, Decimal | None]
    histograms: Mapping[str, Buckets | None]

    def value(self, gate: str, part: str) -> Decimal | None:
        return self.values.get(key(self.window, gate, part))

    def histogram(self, gate: str, side: str) -> stats.Histogram | None:
        buckets = self.histograms.get(key(self.window, gate, side))
        return stats.Histogram.of([(le, float(n)) for le, n in buckets]) if buckets else None


def estimates(bounds: Sequence[GateBound], window: str, values: Mapping[str, Decimal | None],
              histograms: Mapping[str, Buckets | None], confidence: Decimal) -> dict[str, Estimate]:
    """Each gate's estimate over one window from the answers to `queries`."""
    answers, level = _Answers(window, values, histograms), float(confidence)
    found = {}
    for bound in bounds:
        name = bound.name
        if window == INTERVAL_WINDOW and bound.abort_above is None:
            continue
        if bound.query or name not in (P99_LATENCY_RATIO, FALLBACK_RATE, QUALITY_DROP):
            found[name] = Estimate(answers.value(name, "value"))
        elif name == P99_LATENCY_RATIO:
            found[name] = _latency(answers.histogram(name, "canary"), answers.histogram(name, "stable"), level)
        elif name == FALLBACK_RATE:
            found[name] = _fallback(answers.value(name, "fallback"), answers.value(name, "entries"),
                                    answers.value(name, "tokens"), level)
        else:
            found[name] = _quality(answers.value(name, "lost"), answers.value(name, "gained"),
                                   answers.value(name, "scored"), level)
    return found


def _latency(canary: stats.Histogram | None, stable: stats.Histogram | None, level: float) -> Estimate:
    sizes = _size(canary), _size(stable)
    if canary is None or stable is None or not canary.count or not stable.count:
        return Estimate(None, canary_samples=sizes[0], stable_samples=sizes[1])
    return _estimate(stats.quantile_ratio_interval(canary, stable, LATENCY_QUANTILE, level), *sizes)


def _fallback(fallbacks: Decimal | None, entries: Decimal | None, tokens: Decimal | None, level: float) -> Estimate:
    """Fallback entries over quantized KV entries (docs/metrics.md): the share of quantized KV values at bf16. The
    entries of one token share its activations, so they are not independent samples: the Wilson interval is taken
    with the KV tokens as the sample size (as if every entry of a token fell back together), never tighter."""
    if tokens is None or tokens <= 0:
        return Estimate(None, canary_samples=0)
    # Tokens but no quantized entries: a BF16 revision (or every layer planned at bf16) quantizes nothing, so
    # nothing can fall back, and its rate is 0 on that many tokens.
    rate = min(1.0, float(fallbacks or 0) / float(entries)) if entries else 0.0
    interval = stats.proportion_interval(rate * float(tokens), float(tokens), level)
    return _estimate(interval, round(tokens))


def _quality(lost: Decimal | None, gained: Decimal | None, scored: Decimal | None, level: float) -> Estimate:
    """BF16 KV's next-token accuracy minus the served plan's on the canary's sampled prompts: evaluate's
    `qualityDrop`, measured live (docs/metrics.md)."""
    if scored is None or scored <= 0:
        return Estimate(None, canary_samples=0)
    drop = stats.paired_drop_interval(float(lost or 0), float(gained or 0), float(scored), level)
    return _estimate(drop, round(scored))


def _size(histogram: stats.Histogram | None) -> int:
    return 0 if histogram is None else round(histogram.count)


def _estimate(interval: stats.Interval | None, canary: int, stable: int | None = None) -> Estimate:
    if interval is None:
        return Estimate(None, canary_samples=canary, stable_samples=stable)
    # The bounds are rounded outwards, so rounding never makes a gate surer than its data.
    return Estimate(_rounded(interval.value), _rounded(interval.lower, ROUND_FLOOR),
                    _rounded(interval.upper, ROUND_CEILING), canary, stable)


def _rounded(number: float, rounding: str | None = None) -> Decimal:
    if math.isinf(number):
        return Decimal("Infinity") if number > 0 else Decimal("-Infinity")
    if number == 0:
        return Decimal(0)
    exact = Decimal(repr(number))
    step = Decimal(1).scaleb(exact.adjusted() - SIGNIFICANT_DIGITS + 1)
    return exact.quantize(step, rounding=rounding) if rounding else exact.quantize(step)
