"""The operator's own Prometheus metrics (not the serving metrics the gates read: those are in qfleet.api.metrics).

Served by `serve()` on QFLEET_METRICS_PORT (the chart's `metrics.port`); docs/operations.md lists them and
docs/grafana/qfleet-operator.json charts them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "qfleet_operator_reconciles_total", "Visits of a QuantizedModel, by what came of them: "
    "unchanged (nothing to write), updated (status written), conflict (someone wrote first), error.",
    ["outcome"], registry=REGISTRY)
RECONCILE_DURATION = Histogram(
    "qfleet_operator_reconcile_duration_seconds", "Time one visit of a QuantizedModel took, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
CHILDREN_CREATED = Counter(
    "qfleet_operator_children_created_total", "Children this operator created (an existing one is not counted).",
    ["kind"], registry=REGISTRY)
TRANSITIONS = Counter(
    "qfleet_operator_transitions_total", "Kubernetes Events posted for transitions, by reason and type.",
    ["reason", "type"], registry=REGISTRY)
GATE_VERDICTS = Counter(
    "qfleet_operator_gate_verdicts_total", "Canary analysis results, by gate and verdict (Pass, Fail, Abort, "
    "Inconclusive).", ["gate", "verdict"], registry=REGISTRY)
ROLLBACKS = Counter(
    "qfleet_operator_rollbacks_total", "Canaries rolled back, by the cause (the failing gate, or manual).",
    ["cause"], registry=REGISTRY)
PROMOTIONS = Counter(
    "qfleet_operator_promotions_total", "Canaries promoted to stable.", registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "qfleet_operator_queue_depth", "Models due for a visit and waiting for a worker.", registry=REGISTRY)
SCHEDULED_WAKEUPS = Gauge(
    "qfleet_operator_scheduled_wakeups", "Models with a visit scheduled for later (a canary's next analysis, a "
    "scale-down delay).", registry=REGISTRY)
WAKEUP_LAG = Histogram(
    "qfleet_operator_wakeup_lag_seconds", "From the moment a model was due to the start of its visit, by cause: "
    "scheduled (a due time a visit asked for came: a canary's next analysis, a pause's end, a retry) or event (woken "
    "at once by its watch event or a child's).", ["cause"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=REGISTRY)
API_ERRORS = Counter(
    "qfleet_operator_api_errors_total", "Failed calls to the Kubernetes API or Prometheus, by operation and HTTP "
    "status (\"none\" when no response came).", ["operation", "status"], registry=REGISTRY)


@contextlib.contextmanager
def api_call(operation: str) -> Iterator[None]:
    """Counts an exception leaving the block as an API error of `operation`, then lets it go on."""
    try:
        yield
    except Exception as error:
        API_ERRORS.labels(operation, str(getattr(error, "status", None) or "none")).inc()
        raise


@contextlib.contextmanager
def reconcile_timer() -> Iterator[dict[str, str]]:
    """Times a visit; the block sets result["outcome"]. An exception counts as outcome "error"."""
    result = {"outcome": "unchanged"}
    started = time.perf_counter()
    try:
        yield result
    except Exception:
        result["outcome"] = "error"
        raise
    finally:
        RECONCILE_DURATION.observe(time.perf_counter() - started)
        RECONCILES.labels(result["outcome"]).inc()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Starts the /metrics endpoint in a daemon thread (prometheus_client's own server)."""
    prometheus_client.start_http_server(port, addr=address, registry=REGISTRY)
