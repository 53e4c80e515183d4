"""Default gate queries and the metrics contract."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from qfleet.api import metrics
from qfleet.api.rollout_spec import Rollout
from qfleet.evidence import queries
from qfleet.gates import KV_CACHE_HIT_RATE_DROP, effective_gates
from qfleet.promql import (
    BATCH_LABEL,
    GATEWAY_LATENCY,
    Latency,
    Window,
    bucket_counts,
    combine,
    count,
    default_query,
    latency_buckets,
    latency_requests,
    render_custom,
    split,
    traefik_name,
    traefik_service,
)

WINDOW = Window(namespace="inference", model="llama", canary="7c1f000000", stable="52aa000000", seconds=300)
STEP = Window(namespace="inference", model="llama", canary="7c1f000000", stable="52aa000000", seconds=259200)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_counts_are_increases_over_the_window_by_revision_labels() -> None:
    assert count(WINDOW, "qfleet_requests_total", WINDOW.canary) == (
        'sum(increase(qfleet_requests_total{namespace="inference",qfleet_io_model="llama",'
        'qfleet_io_revision="7c1f000000"}[300s]))')
    assert bucket_counts(STEP, "qfleet_request_duration_seconds", STEP.stable).startswith(
        'sum by (le) (increase(qfleet_request_duration_seconds_bucket{namespace="inference",')
    assert "[259200s]" in bucket_counts(STEP, "qfleet_request_duration_seconds", STEP.stable)


GATEWAY = Latency(GATEWAY_LATENCY, canary_service="llama-canary", stable_service="llama-stable")
RUNTIME_SELECTOR = 'namespace="inference",qfleet_io_model="llama",qfleet_io_revision="{}"'
RUNTIME_CANARY, RUNTIME_STABLE = RUNTIME_SELECTOR.format("7c1f000000"), RUNTIME_SELECTOR.format("52aa000000")
CANARY_SERVICE = 'service=~"inference-llama-canary-http-[0-9]+@kubernetesgateway"'
STABLE_SERVICE = 'service=~"inference-llama-stable-http-[0-9]+@kubernetesgateway"'


@dataclass(frozen=True)
class LatencyCase:
    source: Latency
    side: str
    buckets: str
    requests: str


LATENCY_CASES = [
    LatencyCase(Latency(), "canary",
                f"sum by (le) (increase(qfleet_request_duration_seconds_bucket{{{RUNTIME_CANARY}}}[300s]))",
                f"sum(increase(qfleet_requests_total{{{RUNTIME_CANARY}}}[300s]))"),
    LatencyCase(Latency(), "stable",
                f"sum by (le) (increase(qfleet_request_duration_seconds_bucket{{{RUNTIME_STABLE}}}[300s]))",
                f"sum(increase(qfleet_requests_total{{{RUNTIME_STABLE}}}[300s]))"),
    LatencyCase(GATEWAY, "canary",
                f"sum by (le) (increase(traefik_service_request_duration_seconds_bucket{{{CANARY_SERVICE}}}[300s]))",
                f"sum(increase(traefik_service_request_duration_seconds_count{{{CANARY_SERVICE}}}[300s]))"),
    LatencyCase(GATEWAY, "stable",
                f"sum by (le) (increase(traefik_service_request_duration_seconds_bucket{{{STABLE_SERVICE}}}[300s]))",
                f"sum(increase(traefik_service_request_duration_seconds_count{{{STABLE_SERVICE}}}[300s]))"),
]


@pytest.mark.parametrize("case", LATENCY_CASES, ids=lambda c: f"{c.source.source}-{c.side}")
def test_latency_reads_the_runtime_by_revision_or_the_gateway_by_role_service(case: LatencyCase) -> None:
    assert latency_buckets(WINDOW, case.source, case.side) == case.buckets
    assert latency_requests(WINDOW, case.source, case.side) == case.requests


def test_the_runtime_source_asks_exactly_what_it_asked_before_sources_existed() -> None:
    assert latency_buckets(WINDOW, Latency(), "stable") == bucket_counts(
        WINDOW, "qfleet_request_duration_seconds", WINDOW.stable)
    assert latency_requests(WINDOW, Latency()) == count(WINDOW, "qfleet_requests_total", WINDOW.canary)


@pytest.mark.parametrize(("namespace", "service", "label"), [
    # Traefik v3.6 pkg/provider/kubernetes/gateway/httproute.go, loadService: Normalize(ns-name-http) + "-" + port,
    # then the provider's suffix; its own test data has "default-whoami-http-80@kubernetesgateway".
    ("default", "whoami", "default-whoami-http-80@kubernetesgateway"),
    ("inference", "llama-canary", "inference-llama-canary-http-8000@kubernetesgateway"),
    ("team--a", "m-stable", "team-a-m-stable-http-8000@kubernetesgateway"),
])
def test_the_gateway_selector_matches_traefiks_name_for_a_backend_service(namespace, service, label) -> None:
    import re

    assert re.fullmatch(traefik_service(namespace, service), label)
    assert not re.fullmatch(traefik_service(namespace, service), label.replace("-http-", "-grpc-"))
    assert not re.fullmatch(traefik_service(namespace, "other"), label)


def test_traefik_normalises_like_its_provider_does() -> None:
    assert traefik_name("ns-a.b_c--d-http") == "ns-a-b-c-d-http"


def test_every_gate_query_reads_the_gateway_only_for_latency_and_requests() -> None:
    spec = Rollout.model_validate({})
    runtime = queries(effective_gates(spec.analysis), STEP, WINDOW)
    gateway = queries(effective_gates(spec.analysis), STEP, WINDOW, GATEWAY)
    assert set(gateway.values) == set(runtime.values) and set(gateway.histograms) == set(runtime.histograms)
    changed = {k for k in runtime.values if runtime.values[k] != gateway.values[k]}
    assert changed == {"step/requests/canary"}
    assert all("traefik_service_request_duration_seconds_bucket" in q for q in gateway.histograms.values())
    assert CANARY_SERVICE in gateway.histograms["step/p99LatencyRatio/canary"]
    assert STABLE_SERVICE in gateway.histograms["interval/p99LatencyRatio/stable"]


def test_the_prefix_cache_gate_compares_both_revisions_over_the_window() -> None:
    query = default_query(KV_CACHE_HIT_RATE_DROP, WINDOW)
    assert 'qfleet_io_revision="7c1f000000"' in query and 'qfleet_io_revision="52aa000000"' in query
    assert "[300s]" in query


def test_custom_queries_get_their_placeholders_filled() -> None:
    rendered = render_custom('histogram_quantile(0.95, rate(x_bucket{rev="{{revision}}",s="{{stable}}"}[{{window}}]))',
                             WINDOW)
    assert rendered == 'histogram_quantile(0.95, rate(x_bucket{rev="7c1f000000",s="52aa000000"}[300s]))'


def test_every_gate_reads_the_step_window_and_abort_bounds_also_the_last_interval() -> None:
    spec = Rollout.model_validate({"analysis": {"gates": {"custom": [{"name": "ttft", "query": "q{{window}}",
                                                                      "max": "1", "abortAbove": "2"}]}}})
    asked = queries(effective_gates(spec.analysis), STEP, WINDOW)
    assert asked.values["step/ttft/value"] == "q259200s" and asked.values["interval/ttft/value"] == "q300s"
    assert set(asked.histograms) == {f"{window}/{gate}/{side}" for window in ("step", "interval")
                                     for gate in ("p99LatencyRatio",) for side in ("canary", "stable")}
    assert {"step/fallbackRate/fallback", "step/fallbackRate/entries", "step/requests/canary"} <= set(asked.values)
    assert {f"{window}/qualityDrop/{part}" for window in ("step", "interval") for part in ("scored", "lost", "gained")
            } <= set(asked.values), "live quality reads the canary's own counts, as evaluate does"
    assert not any(k.startswith("interval/fallbackRate") for k in asked.values), "no abort bound: no fast signal"
    assert all("259200s" in q for k, q in {**asked.values, **asked.histograms}.items() if k.startswith("step/"))
    assert all("300s" in q for k, q in {**asked.values, **asked.histograms}.items() if k.startswith("interval/"))


def test_unknown_gate_has_no_default() -> None:
    with pytest.raises(KeyError):
        default_query("latency", WINDOW)


def test_every_contract_metric_is_documented_and_used_names_exist() -> None:
    text = DOCS.read_text()
    for name in metrics.ALL:
        assert f"`{name}`" in text
    asked = queries(effective_gates(Rollout.model_validate({"analysis": {"gates": {"kvCacheHitRateDrop": {
        "max": "0.1"}}}}).analysis), STEP, WINDOW)
    for query in [*asked.values.values(), *asked.histograms.values()]:
        for token in query.replace("(", " ").replace("{", " ").split():
            if token.startswith("qfleet_") and not token.startswith("qfleet_io_"):
                base = token.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                assert base in metrics.ALL, token


@dataclass(frozen=True)
class CombineCase:
    reason: str
    queries: list[str]
    expression: str


COMBINE_CASES = [
    CombineCase("nothing asked", [], ""),
    CombineCase("one query is labelled 0", ["sum(x)"], 'label_replace(sum(x)\n, "__qfleet_q", "0", "", "")'),
    CombineCase("parts joined by or, labelled by position", ["sum(x)", 'sum by (le) (y_bucket{a="b"})'],
                'label_replace(sum(x)\n, "__qfleet_q", "0", "", "") or '
                'label_replace(sum by (le) (y_bucket{a="b"})\n, "__qfleet_q", "1", "", "")'),
    CombineCase("a query's own `or` stays inside its part (a function argument)", ["a or b", "c"],
                'label_replace(a or b\n, "__qfleet_q", "0", "", "") or label_replace(c\n, "__qfleet_q", "1", "", "")'),
    CombineCase("a trailing # comment ends at the newline, not at the end of the expression", ["sum(x) # why"],
                'label_replace(sum(x) # why\n, "__qfleet_q", "0", "", "")'),
]


@pytest.mark.parametrize("case", COMBINE_CASES, ids=lambda case: case.reason)
def test_combine_labels_each_part_with_its_index(case: CombineCase) -> None:
    assert combine(case.queries) == case.expression


def series(value: str, **labels: str) -> dict:
    return {"metric": labels, "value": [1796078954.856, value]}


@dataclass(frozen=True)
class SplitCase:
    reason: str
    result: list[dict]
    parts: int
    split: list[list[dict]] | None


SPLIT_CASES = [
    SplitCase("no series: every part empty", [], 2, [[], []]),
    SplitCase("each series to its part, without the batch label",
              [series("1", __qfleet_q="1"), series("NaN", __qfleet_q="0")], 3,
              [[series("NaN")], [series("1")], []]),
    SplitCase("a histogram part keeps its le labels and their order",
              [series("3", __qfleet_q="0", le="0.5"), series("7", __qfleet_q="0", le="+Inf")], 1,
              [[series("3", le="0.5"), series("7", le="+Inf")]]),
    SplitCase("a part that did not aggregate keeps all its series, first first",
              [series("5", __qfleet_q="0", __name__="x", pod="b"), series("6", __qfleet_q="1"),
               series("4", __qfleet_q="0", __name__="x", pod="a")], 2,
              [[series("5", __name__="x", pod="b"), series("4", __name__="x", pod="a")], [series("6")]]),
    SplitCase("a series without the label (a server that drops `__` labels): cannot be split",
              [series("4", __qfleet_q="1"), series("1")], 2, None),
    SplitCase("a series labelled with no part's index: cannot be split",
              [series("4", __qfleet_q="1"), series("2", __qfleet_q="2")], 2, None),
]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda case: case.reason)
def test_split_gives_each_part_its_series(case: SplitCase) -> None:
    assert split(case.result, case.parts) == case.split


def test_split_leaves_the_answer_it_reads_as_it_was() -> None:
    result = [series("1", __qfleet_q="0", le="1")]
    split(result, 1)
    assert result == [series("1", __qfleet_q="0", le="1")] and BATCH_LABEL == "__qfleet_q"
