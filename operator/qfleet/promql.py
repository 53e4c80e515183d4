"""Default PromQL for each gate, comparing the canary with the stable revision over the same window.

Pure: a query is a string built from the model, namespace, both revisions and the window. A custom gate's query
may use the placeholders {{revision}} (the canary), {{stable}}, {{model}}, {{namespace}} and {{window}}.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfleet.api import metrics as m
from qfleet.gates import FALLBACK_RATE, KV_CACHE_HIT_RATE_DROP, P99_LATENCY_RATIO, QUALITY_DROP, GateBound

REQUESTS_KEY = "requests"
"""Not a gate: the canary's request count in the window, which minRequests is checked against."""


@dataclass(frozen=True)
class Window:
    namespace: str
    model: str
    canary: str
    stable: str
    seconds: int

    @property
    def range(self) -> str:
        return f"{self.seconds}s"

    def selector(self, revision: str) -> str:
        labels = m.POD_LABELS
        return f'namespace="{self.namespace}",{labels["model"]}="{self.model}",{labels["revision"]}="{revision}"'


def _rate(window: Window, metric: str, revision: str) -> str:
    return f"sum(rate({metric}{{{window.selector(revision)}}}[{window.range}]))"


def _p99(window: Window, revision: str) -> str:
    return (f"histogram_quantile(0.99, sum by (le) (rate({m.REQUEST_DURATION}_bucket{{{window.selector(revision)}}}"
            f"[{window.range}])))")


def _mean(window: Window, histogram: str, revision: str) -> str:
    return f"({_rate(window, histogram + '_sum', revision)} / {_rate(window, histogram + '_count', revision)})"


def _hit_rate(window: Window, revision: str) -> str:
    hits = _rate(window, m.PREFIX_CACHE_HITS, revision)
    return f"({hits} / ({hits} + {_rate(window, m.PREFIX_CACHE_MISSES, revision)}))"


def default_query(gate: str, window: Window) -> str:
    """The built-in gates: p99 ratio canary/stable; fallback rate of the canary; live quality drop as the fall in
    top-1 agreement with BF16 (stable minus canary); prefix-cache hit-rate drop (stable minus canary)."""
    if gate == P99_LATENCY_RATIO:
        return f"{_p99(window, window.canary)} / {_p99(window, window.stable)}"
    if gate == FALLBACK_RATE:
        return f"{_rate(window, m.KV_FALLBACK_TOKENS, window.canary)} / {_rate(window, m.KV_TOKENS, window.canary)}"
    if gate == QUALITY_DROP:
        return f"{_mean(window, m.QUALITY_TOP1, window.stable)} - {_mean(window, m.QUALITY_TOP1, window.canary)}"
    if gate == KV_CACHE_HIT_RATE_DROP:
        return f"{_hit_rate(window, window.stable)} - {_hit_rate(window, window.canary)}"
    raise KeyError(f"no default query for gate {gate!r}")


def render_custom(template: str, window: Window) -> str:
    values = {"revision": window.canary, "stable": window.stable, "model": window.model,
              "namespace": window.namespace, "window": window.range}
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def queries(bounds: list[GateBound], window: Window) -> dict[str, str]:
    """Every gate's query for this window, plus the canary's request count."""
    result = {b.name: render_custom(b.query, window) if b.query else default_query(b.name, window) for b in bounds}
    result[REQUESTS_KEY] = f"sum(increase({m.REQUESTS}{{{window.selector(window.canary)}}}[{window.range}]))"
    return result
