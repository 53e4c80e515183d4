"""The operator's own metrics: what a visit counts, and that the docs and the Grafana dashboard name only real ones."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from qfleet import telemetry

REPO = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float:
    return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0


def metric_names() -> set[str]:
    return {family.name for family in telemetry.REGISTRY.collect()}


@pytest.mark.parametrize("outcome", ["unchanged", "updated", "conflict"])
def test_a_visit_counts_its_outcome_and_its_duration(outcome):
    before, timed = sample("qfleet_operator_reconciles_total", outcome=outcome), \
        sample("qfleet_operator_reconcile_duration_seconds_count")
    with telemetry.reconcile_timer() as result:
        result["outcome"] = outcome
    assert sample("qfleet_operator_reconciles_total", outcome=outcome) == before + 1
    assert sample("qfleet_operator_reconcile_duration_seconds_count") == timed + 1


def test_a_visit_that_raises_counts_as_error_and_still_raises():
    before = sample("qfleet_operator_reconciles_total", outcome="error")
    with pytest.raises(RuntimeError), telemetry.reconcile_timer() as result:
        result["outcome"] = "updated"
        raise RuntimeError("the API went away")
    assert sample("qfleet_operator_reconciles_total", outcome="error") == before + 1


class FakeApiError(Exception):
    status = 403


@pytest.mark.parametrize("error, status", [(FakeApiError(), "403"), (ConnectionError(), "none")])
def test_a_failed_api_call_counts_by_operation_and_status(error, status):
    before = sample("qfleet_operator_api_errors_total", operation="create_job", status=status)
    with pytest.raises(type(error)), telemetry.api_call("create_job"):
        raise error
    assert sample("qfleet_operator_api_errors_total", operation="create_job", status=status) == before + 1


def test_a_successful_api_call_counts_nothing():
    before = sample("qfleet_operator_api_errors_total", operation="replace_status", status="none")
    with telemetry.api_call("replace_status"):
        pass
    assert sample("qfleet_operator_api_errors_total", operation="replace_status", status="none") == before


def test_operations_doc_lists_every_operator_metric_and_no_other():
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## Metrics"):text.index("## Troubleshooting")]
    documented = set(re.findall(r"^\| `(qfleet_operator_\w+)`", section, re.MULTILINE))
    exposed = {name + "_total" if name + "_total" in documented else name for name in metric_names()}
    assert documented == exposed


def test_grafana_dashboard_queries_only_metrics_the_operator_exposes():
    dashboard = json.loads((REPO / "docs" / "grafana" / "qfleet-operator.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", name)
            for expr in exprs for name in re.findall(r"\bqfleet_operator_\w+", expr)}
    assert used == metric_names(), "every operator metric has a panel, and every panel a real metric"


def test_the_endpoint_serves_the_registry_over_http():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    telemetry.serve(port, address="127.0.0.1")
    telemetry.PROMOTIONS.inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "qfleet_operator_promotions_total" in body
    assert "qfleet_operator_reconcile_duration_seconds_bucket" in body
