"""The serving metrics as the runtime exports them: the contract's names (qfleet.api.metrics), kinds, extra labels and
histogram buckets, and two sinks: one recording in memory (tests, no Triton) and one on Triton's metrics port
(`pb_utils.MetricFamily`, used inside the Python backend only).

Every metric carries the labels `model` (the Triton model name) and `kv_format`; `qfleet_requests_total` adds
`outcome`, `qfleet_tokens_total` adds `kind`. Histograms are in seconds (latency), nats (KL) or a ratio (0..1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from qfleet.api import metrics as m

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

LATENCY_BUCKETS = tuple(float(f"{0.01 * 1.05 ** i:.4g}") for i in range(190))
"""Request latency and TTFT: 10 ms to about 101 s in steps of 5% (each bucket's upper bound 1.05x the one below, 4
significant digits), so a p99 ratio of 1.2 spans three to four buckets and the rank interval on the ratio can tell it
from 1.0. Strictly increasing (Triton refuses a metric whose boundaries are not)."""
TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
KL_BUCKETS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RATIO_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    description: str
    labels: tuple[str, ...] = ()
    """Labels beside model and kv_format."""
    buckets: tuple[float, ...] = ()


SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec(m.REQUESTS, COUNTER, "Finished requests by outcome (success, error)", ("outcome",)),
    MetricSpec(m.REQUEST_DURATION, HISTOGRAM, "Request latency in seconds, arrival to last token",
               buckets=LATENCY_BUCKETS),
    MetricSpec(m.TIME_TO_FIRST_TOKEN, HISTOGRAM, "Seconds from arrival to the first generated token",
               buckets=LATENCY_BUCKETS),
    MetricSpec(m.TIME_PER_OUTPUT_TOKEN, HISTOGRAM, "Seconds per generated token after the first",
               buckets=TOKEN_BUCKETS),
    MetricSpec(m.TOKENS, COUNTER, "Tokens by kind (prompt, generated)", ("kind",)),
    MetricSpec(m.KV_ENTRIES, COUNTER, "K/V entries (one token, one KV head, K or V) written to quantized layers"),
    MetricSpec(m.KV_FALLBACK_ENTRIES, COUNTER,
               "Of those, entries kept at higher precision (calibrated scale exceeded or outlier): the fallback rate"),
    MetricSpec(m.KV_VALUES, COUNTER, "K/V values written to quantized layers"),
    MetricSpec(m.KV_OUT_OF_RANGE_VALUES, COUNTER,
               "Of those, values whose magnitude is above the calibrated amax: the calibration's coverage"),
    MetricSpec(m.KV_TOKENS, COUNTER, "Tokens whose K/V were written to the KV cache"),
    MetricSpec(m.KV_FALLBACK_TOKENS, COUNTER,
               "Tokens with at least one K/V entry kept at higher precision in some quantized layer"),
    MetricSpec(m.KV_CACHE_BYTES, GAUGE, "KV cache bytes in use: prefix cache plus requests in flight"),
    MetricSpec(m.KV_BYTES_PER_TOKEN, GAUGE, "Measured KV bytes per token over all layers, as stored, last request"),
    MetricSpec(m.PREFIX_CACHE_HITS, COUNTER, "Prompt KV blocks served from the prefix cache"),
    MetricSpec(m.PREFIX_CACHE_MISSES, COUNTER, "Prompt KV blocks that had to be computed"),
    MetricSpec(m.QUALITY_SCORED_TOKENS, COUNTER, "Prompt positions of sampled requests scored (served plan, BF16 KV)"),
    MetricSpec(m.QUALITY_LOST_TOKENS, COUNTER, "Scored positions BF16 KV predicts right and the served plan does not"),
    MetricSpec(m.QUALITY_GAINED_TOKENS, COUNTER, "Scored positions the served plan predicts right and BF16 KV does not"),
    MetricSpec(m.QUALITY_KL, HISTOGRAM, "Mean next-token KL (nats) of a sampled request's prompt, BF16 KV || served",
               buckets=KL_BUCKETS),
    MetricSpec(m.QUALITY_TOP1, HISTOGRAM, "Share of a sampled request's prompt positions agreeing with BF16 KV",
               buckets=RATIO_BUCKETS),
)}
assert set(SPECS) == set(m.ALL), "the runtime must export exactly the contract's metrics"


class Sink:
    """Where the engine reports. `labels` are the extra labels of the metric's spec, by name."""

    def add(self, name: str, value: float, **labels: str) -> None:
        raise NotImplementedError

    def set(self, name: str, value: float) -> None:
        raise NotImplementedError

    def observe(self, name: str, value: float) -> None:
        raise NotImplementedError


class RecordingSink(Sink):
    """In memory, for tests and for callers without Triton."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.observations: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, value: float, **labels: str) -> None:
        _check(name, COUNTER, labels)
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def set(self, name: str, value: float) -> None:
        _check(name, GAUGE, {})
        self.gauges[name] = value

    def observe(self, name: str, value: float) -> None:
        _check(name, HISTOGRAM, {})
        self.observations[name].append(value)

    def counter(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)


class TritonSink(Sink):
    """`pb_utils.MetricFamily` metrics on Triton's metrics port; created inside the Python backend's stub."""

    def __init__(self, pb_utils: Any, model: str, kv_format: str) -> None:
        kinds = {COUNTER: pb_utils.MetricFamily.COUNTER, GAUGE: pb_utils.MetricFamily.GAUGE,
                 HISTOGRAM: pb_utils.MetricFamily.HISTOGRAM}
        self._base = {"model": model, "kv_format": kv_format}
        self._families = {name: pb_utils.MetricFamily(name=name, description=spec.description, kind=kinds[spec.kind])
                          for name, spec in SPECS.items()}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        # Series known up front appear at 0 on the first scrape (a rate over them is 0, not absent).
        for name, spec in SPECS.items():
            if not spec.labels:
                self._metric(name, {})
        for outcome in ("success", "error"):
            self._metric(m.REQUESTS, {"outcome": outcome})
        for kind in ("prompt", "generated"):
            self._metric(m.TOKENS, {"kind": kind})

    def _metric(self, name: str, labels: dict[str, str]) -> Any:
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            spec = SPECS[name]
            all_labels = self._base | labels
            if spec.kind == HISTOGRAM:
                metric = self._families[name].Metric(labels=all_labels, buckets=list(spec.buckets))
            else:
                metric = self._families[name].Metric(labels=all_labels)
            self._metrics[key] = metric
        return metric

    def add(self, name: str, value: float, **labels: str) -> None:
        _check(name, COUNTER, labels)
        self._metric(name, labels).increment(float(value))

    def set(self, name: str, value: float) -> None:
        _check(name, GAUGE, {})
        self._metric(name, {}).set(float(value))

    def observe(self, name: str, value: float) -> None:
        _check(name, HISTOGRAM, {})
        self._metric(name, {}).observe(float(value))


def _check(name: str, kind: str, labels: dict[str, str]) -> None:
    spec = SPECS.get(name)
    if spec is None or spec.kind != kind:
        raise ValueError(f"{name} is not a {kind} of the serving metrics contract")
    if set(labels) != set(spec.labels):
        raise ValueError(f"{name} takes the labels {spec.labels}, got {tuple(labels)}")
