"""What the release reads and returns: the serving Deployments as seen, the revision that may serve, the visit's
input and the changes it decides; and the scale-down delay after a promotion.

Plain data, so the cache and the views can build a release's input without the decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from qfleet.api.spec import QuantizedModelSpec
from qfleet.pipeline.analysis import Measured, MeasureRequest
from qfleet.promql import RUNTIME_LATENCY
from qfleet.pipeline.records import StepResults

SCALE_DOWN_DELAY = timedelta(seconds=30)
"""How long a superseded stable revision keeps its replicas after a promotion (connections drain, rollback is quick)."""


@dataclass(frozen=True)
class DeploymentView:
    name: str
    revision: str
    replicas: int
    ready_replicas: int


@dataclass(frozen=True)
class Servable:
    """The current revision passed calibration, build and evaluation: what its Deployment needs."""

    kv_format: str
    compute_capability: tuple[int, int]


@dataclass
class ReleaseChanges:
    deployments: list[dict[str, Any]] = field(default_factory=list)
    """Deployments to create (an existing one is left alone)."""
    scale: dict[str, int] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)
    """Services to create, or whose selector to set."""
    route_rules: tuple[str, list[dict[str, Any]]] | None = None
    """(HTTPRoute name, its new rules) when the weights must change."""
    measure: MeasureRequest | None = None
    """Analysis is due: run these queries and decide again with the answers."""
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    rollback_cause: str | None = None
    promoted: bool = False
    action_done: bool = False
    """A person's action was acted upon or dropped: remove the annotation."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) of Events beyond the conditions' transitions."""


@dataclass
class ReleaseInput:
    name: str
    namespace: str
    uid: str
    spec: QuantizedModelSpec
    revision: str
    servable: Servable | None
    deployments: Mapping[str, DeploymentView]
    route: Mapping[str, Any] | None
    measured: Measured | None
    action: str | None
    now: datetime
    results: Callable[[str], StepResults] = lambda _: StepResults()
    """A revision's recorded step results (qfleet.pipeline.records.results_of), kept in its history entry."""
    latency_source: str = RUNTIME_LATENCY
    """The operator's latency source (qfleet.promql.LATENCY_SOURCES; QFLEET_LATENCY_SOURCE, the chart's
    analysis.latencySource): where the p99 gate and the request count read (qfleet.pipeline.analysis.latency_choice)."""


SetCondition = Any
"""callable(type, status, reason, message): the pipeline's condition setter."""
