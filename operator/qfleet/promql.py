"""PromQL for the gates, comparing the canary with the stable revision over the same window.

Pure: a query is a string built from the model, namespace, both revisions and the window. The built-in gates read
counts (`increase` over the window, evaluated at now: one cheap range query however long the window) from which
`qfleet.evidence` makes estimates with sample sizes and confidence bounds; the prefix-cache gate and custom gates are
one value each. A custom gate's query may use the placeholders {{revision}} (the canary), {{stable}}, {{model}},
{{namespace}} and {{window}}. `combine` and `split` make an analysis's queries one request and its answer theirs
again. The p99 gate and the canary's request count read the latency source a `Latency` names: the runtime's own
histogram by revision labels, or the gateway's per-backend histogram by the Traefik service of each role's Service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qfleet.api import metrics as m
from qfleet.gates import KV_CACHE_HIT_RATE_DROP


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


RUNTIME_LATENCY = "runtime"
"""The runtime's `qfleet_request_duration_seconds` (arrival at the pod to the last token), selected by revision."""
GATEWAY_LATENCY = "gateway"
"""The gateway's `traefik_service_request_duration_seconds` of the model's canary and stable Services (network and
queue included, any serving runtime), selected by Traefik's service label. Needs routing by an HTTPRoute."""
LATENCY_SOURCES = (RUNTIME_LATENCY, GATEWAY_LATENCY)


@dataclass(frozen=True)
class Latency:
    """Where the p99 gate and the canary's request count (minRequests) read: the source, and with `gateway` the
    Kubernetes Services the HTTPRoute sends each side's share to (per role, so a window from the step's start counts
    only the current canary's requests on the canary side)."""

    source: str = RUNTIME_LATENCY
    canary_service: str = ""
    stable_service: str = ""

    @property
    def histogram(self) -> str:
        return m.GATEWAY_REQUEST_DURATION if self.source == GATEWAY_LATENCY else m.REQUEST_DURATION


def traefik_name(name: str) -> str:
    """Traefik's `provider.Normalize`: every run of characters that are neither letters nor digits becomes one `-`
    (so the result holds only letters, digits and `-`, none of them special in a regular expression)."""
    return "-".join(re.findall(r"[^\W_]+", name))


def traefik_service(namespace: str, service: str) -> str:
    """A regular expression for the `service` label Traefik's Kubernetes Gateway provider (v3) gives an HTTPRoute
    backendRef to the Kubernetes Service `service` in `namespace`, on any port: `<namespace>-<service>-http-<port>`
    normalised, then `@kubernetesgateway` (pkg/provider/kubernetes/gateway/httproute.go, loadService). Every route
    and rule sending to that Service and port shares that one Traefik service, and so its histogram."""
    return f"{traefik_name(f'{namespace}-{service}-http')}-[0-9]+@{m.GATEWAY_PROVIDER}"


def latency_selector(window: Window, latency: Latency, side: str) -> str:
    """The label selector of one side (`canary` or `stable`) in the latency source."""
    if latency.source == GATEWAY_LATENCY:
        service = latency.canary_service if side == "canary" else latency.stable_service
        return f'{m.GATEWAY_SERVICE_LABEL}=~"{traefik_service(window.namespace, service)}"'
    return window.selector(window.canary if side == "canary" else window.stable)


def latency_buckets(window: Window, latency: Latency, side: str) -> str:
    """One side's latency observations over the window by bucket (`le`, cumulative), in the latency source."""
    selector = latency_selector(window, latency, side)
    return f"sum by (le) (increase({latency.histogram}_bucket{{{selector}}}[{window.range}]))"


def latency_requests(window: Window, latency: Latency, side: str = "canary") -> str:
    """One side's requests over the window: the runtime's `qfleet_requests_total` (every outcome), or with the
    gateway source the gateway histogram's `_count` (every status code: what reached the side's pods through
    the gateway)."""
    if latency.source == GATEWAY_LATENCY:
        selector = latency_selector(window, latency, side)
        return f"sum(increase({latency.histogram}_count{{{selector}}}[{window.range}]))"
    return count(window, m.REQUESTS, window.canary if side == "canary" else window.stable)


def _rate(window: Window, metric: str, revision: str) -> str:
    return f"sum(rate({metric}{{{window.selector(revision)}}}[{window.range}]))"


def _hit_rate(window: Window, revision: str) -> str:
    hits = _rate(window, m.PREFIX_CACHE_HITS, revision)
    return f"({hits} / ({hits} + {_rate(window, m.PREFIX_CACHE_MISSES, revision)}))"


def default_query(gate: str, window: Window) -> str:
    """A gate judged on one value: the prefix-cache hit-rate drop (stable minus canary). The other built-in gates are
    judged from counts (`count`, `bucket_counts`) by `qfleet.evidence`."""
    if gate == KV_CACHE_HIT_RATE_DROP:
        return f"{_hit_rate(window, window.stable)} - {_hit_rate(window, window.canary)}"
    raise KeyError(f"no single-value query for gate {gate!r}")


def render_custom(template: str, window: Window) -> str:
    values = {"revision": window.canary, "stable": window.stable, "model": window.model,
              "namespace": window.namespace, "window": window.range}
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def count(window: Window, counter: str, revision: str) -> str:
    """How much a counter (or a histogram's `_sum` or `_count`) grew over the window, for one revision."""
    return f"sum(increase({counter}{{{window.selector(revision)}}}[{window.range}]))"


def bucket_counts(window: Window, histogram: str, revision: str) -> str:
    """A histogram's observations over the window by bucket (`le`, cumulative), for one revision."""
    return f"sum by (le) (increase({histogram}_bucket{{{window.selector(revision)}}}[{window.range}]))"


DRIFT_PARTS = {
    "fallbackRate": (("fallback", m.KV_FALLBACK_ENTRIES), ("entries", m.KV_ENTRIES), ("tokens", m.KV_TOKENS)),
    "qualityDrop": (("scored", m.QUALITY_SCORED_TOKENS), ("lost", m.QUALITY_LOST_TOKENS),
                    ("gained", m.QUALITY_GAINED_TOKENS)),
    "outOfRange": (("outOfRange", m.KV_OUT_OF_RANGE_VALUES), ("values", m.KV_VALUES), ("tokens", m.KV_TOKENS)),
}
"""The counters each calibration-refresh trigger reads (qfleet.pipeline.refresh.readings makes the figure)."""


def drift_queries(window: Window, triggers: list[str]) -> dict[str, str]:
    """The stable revision's counters over the window for each named trigger, keyed `drift/<trigger>/<part>`."""
    return {f"drift/{name}/{part}": count(window, metric, window.stable)
            for name in triggers for part, metric in DRIFT_PARTS[name]}


BATCH_LABEL = "__qfleet_q"
"""The label `combine` gives each part's series: its index among the queries."""


def combine(queries: list[str]) -> str:
    """Many instant queries as one expression, so an analysis is one request: each part's series get the label
    BATCH_LABEL (the part's index; distinct, so `or` keeps every part's series, in order) and keep their own labels
    (`le` included). A part must be an instant vector (label_replace of a scalar or a range is invalid), and one bad
    part fails the whole. The newline ends a `#` comment a query may end with."""
    return " or ".join(f'label_replace({query}\n, "{BATCH_LABEL}", "{index}", "", "")'
                       for index, query in enumerate(queries))


def split(result: list[dict], parts: int) -> list[list[dict]] | None:
    """A combined query's series back by part, without BATCH_LABEL, in the order Prometheus returned them (a part
    that returned several keeps their order: the first is the one a part asked alone would give first). None when a
    series has no part's label (a Prometheus-compatible server that drops `__` labels): the answer cannot be split."""
    found: list[list[dict]] = [[] for _ in range(parts)]
    index = {str(i): series for i, series in enumerate(found)}
    for sample in result:
        metric = dict(sample.get("metric") or {})
        part = index.get(metric.pop(BATCH_LABEL, None))
        if part is None:
            return None
        part.append({**sample, "metric": metric})
    return found
