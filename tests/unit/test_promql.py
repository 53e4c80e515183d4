"""Default gate queries and the metrics contract."""
from __future__ import annotations

from pathlib import Path

import pytest

from qfleet.api import metrics
from qfleet.api.rollout_spec import Rollout
from qfleet.gates import BUILT_IN, effective_gates
from qfleet.promql import REQUESTS_KEY, Window, default_query, queries, render_custom

WINDOW = Window(namespace="inference", model="llama", canary="7c1f000000", stable="52aa000000", seconds=300)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.mark.parametrize("gate", BUILT_IN)
def test_every_built_in_gate_compares_by_revision_labels_over_the_window(gate: str) -> None:
    query = default_query(gate, WINDOW)
    assert 'qfleet_io_revision="7c1f000000"' in query
    assert 'namespace="inference"' in query and 'qfleet_io_model="llama"' in query
    assert "[300s]" in query
    if gate != "fallbackRate":  # the fallback rate is the canary's own; the others compare with stable
        assert 'qfleet_io_revision="52aa000000"' in query


def test_custom_queries_get_their_placeholders_filled() -> None:
    rendered = render_custom('histogram_quantile(0.95, rate(x_bucket{rev="{{revision}}",s="{{stable}}"}[{{window}}]))',
                             WINDOW)
    assert rendered == 'histogram_quantile(0.95, rate(x_bucket{rev="7c1f000000",s="52aa000000"}[300s]))'


def test_queries_cover_every_gate_and_the_request_count() -> None:
    spec = Rollout.model_validate({"analysis": {"gates": {"custom": [{"name": "ttft", "query": "q{{model}}",
                                                                      "max": "1"}]}}})
    built = queries(effective_gates(spec.analysis), WINDOW)
    assert set(built) == {"p99LatencyRatio", "fallbackRate", "qualityDrop", "ttft", REQUESTS_KEY}
    assert built["ttft"] == "qllama"


def test_unknown_gate_has_no_default() -> None:
    with pytest.raises(KeyError):
        default_query("latency", WINDOW)


def test_every_contract_metric_is_documented_and_used_names_exist() -> None:
    text = DOCS.read_text()
    for name in metrics.ALL:
        assert f"`{name}`" in text
    for gate in BUILT_IN:
        for token in default_query(gate, WINDOW).replace("(", " ").replace("{", " ").split():
            if token.startswith("qfleet_") and not token.startswith("qfleet_io_"):
                base = token.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                assert base in metrics.ALL, token
