"""qfleet.prom against the fleet's real Prometheus: numbers, counts by bucket, silence, a query the combined request
cannot hold, and a Prometheus that is not there."""
from __future__ import annotations

from decimal import Decimal

from localfleet.processes import free_ports
from qfleet.prom import measure


def test_measure_reads_numbers_and_treats_silence_and_nan_as_no_value(fleet):
    result = measure(fleet.prometheus_url(), {
        "up": 'sum(up{job="prometheus"})',
        "nothing": 'qfleet_requests_total{qfleet_io_revision="never-deployed"}',
        "zero_by_zero": "vector(0) / vector(0)",
    })
    assert result.values == {"up": Decimal(1), "nothing": None, "zero_by_zero": None}
    assert result.errors == {}


def test_histogram_queries_give_their_buckets(fleet):
    buckets = ('sum by (le) (label_replace(vector(3), "le", "0.5", "", "") or '
               'label_replace(vector(7), "le", "+Inf", "", ""))')
    result = measure(fleet.prometheus_url(), {}, {"latency": buckets, "silent": 'x_bucket{le="1"}'})
    assert sorted(result.histograms["latency"]) == [(0.5, Decimal(3)), (float("inf"), Decimal(7))]
    assert result.histograms["silent"] is None and result.errors == {}


def test_a_bad_query_is_an_error_not_a_value(fleet):
    result = measure(fleet.prometheus_url(), {"broken": "sum(rate(x[5m]"})
    assert result.values == {"broken": None}
    assert "broken" in result.errors


def test_an_unreachable_prometheus_gives_no_values_and_says_why():
    port = free_ports(1)[0]  # nothing listens there
    result = measure(f"http://127.0.0.1:{port}", {"step/requests/canary": "vector(1)"},
                     {"step/p99LatencyRatio/canary": "vector(1)"}, timeout=2)
    assert result.values == {"step/requests/canary": None} and result.histograms == {"step/p99LatencyRatio/canary": None}
    assert "Connection" in result.errors["step/requests/canary"]
    assert result.errors["step/p99LatencyRatio/canary"] == result.errors["step/requests/canary"]  # asked once


def test_a_query_the_combined_request_cannot_hold_is_asked_alone_and_the_others_keep_their_values(fleet):
    """A scalar (label_replace needs an instant vector) and a broken query fail the combined query: each is then asked
    alone, the broken one's error is its own, the scalar reads no value (as asked alone it always did)."""
    result = measure(fleet.prometheus_url(), {
        "up": 'sum(up{job="prometheus"})', "scalar": "scalar(vector(2))", "broken": "sum(rate(x[5m]",
        "unaggregated": 'label_replace(vector(5), "a", "x", "", "") or label_replace(vector(6), "a", "y", "", "")',
    }, {"latency": 'label_replace(vector(3), "le", "0.5", "", "")'})
    assert result.values == {"up": Decimal(1), "scalar": None, "broken": None, "unaggregated": Decimal(5)}
    assert result.histograms == {"latency": [(0.5, Decimal(3))]}
    assert set(result.errors) == {"broken"} and "bad_data" in result.errors["broken"]


def test_queries_combined_read_as_each_alone(fleet):
    """An unaggregated query gives its first series, as alone; a trailing comment ends at its line."""
    result = measure(fleet.prometheus_url(), {
        "unaggregated": 'label_replace(vector(5), "a", "x", "", "") or label_replace(vector(6), "a", "y", "", "")',
        "commented": "vector(1) # a comment",
    })
    assert result.values == {"unaggregated": Decimal(5), "commented": Decimal(1)} and result.errors == {}
