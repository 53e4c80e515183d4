"""One reconcile visit's data: what it observed, the status and conditions it builds, the Decision it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qfleet.api.conditions import ConditionStatus
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE, QuantizedModelSpec
from qfleet.api.status import Condition, QuantizedModelStatus
from qfleet.conditions import set_condition, with_unknown_conditions
from qfleet.pipeline.admission import NodeView
from qfleet.pipeline.analysis import Measured, MeasureRequest
from qfleet.pipeline.records import JobView
from qfleet.pipeline.release_types import DeploymentView, ReleaseChanges, Servable
from qfleet.promql import RUNTIME_LATENCY


@dataclass(frozen=True)
class Observed:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    jobs: Mapping[str, JobView]
    nodes: Sequence[NodeView]
    now: datetime
    deployments: Mapping[str, DeploymentView] = field(default_factory=dict)
    route: Mapping[str, Any] | None = None
    """The user's HTTPRoute (spec.rollout.trafficRouting.gatewayAPI.httpRoute), as read this visit."""
    measured: Measured | None = None
    """Prometheus's answers to the queries a first pass of this visit asked for (ReleaseChanges.measure)."""
    drift_measured: Measured | None = None
    """Its answers to the drift queries a first pass asked for (Decision.drift_measure)."""
    action: str | None = None
    """A person's rollout action (the qfleet.io/rollout-action annotation)."""
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    """The operator's runtime image (QFLEET_RUNTIME_IMAGE, the chart's runtime.image): the default of
    spec.runtime.image, and through it of spec.serving.image."""
    latency_source: str = RUNTIME_LATENCY
    """The operator's latency source (QFLEET_LATENCY_SOURCE, the chart's analysis.latencySource)."""


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    release: ReleaseChanges = field(default_factory=ReleaseChanges)
    wake: datetime | None = None
    """When the model next needs a visit no event will bring (qfleet.pipeline.wake); None: only events and resync."""
    drift_measure: MeasureRequest | None = None
    """A calibration-refresh drift check is due: run these queries and decide again with the answers."""


class VisitConditions:
    """The condition list under construction for this visit."""

    def __init__(self, old: Sequence[Condition], now: datetime, generation: int):
        self.now, self.generation = now, generation
        self.items = with_unknown_conditions(old, now, generation)
        self.before = {c.type: c for c in self.items}

    def set(self, type: str, status: ConditionStatus, reason: str, message: str) -> None:
        """Later setters win (the release after the pipeline); the transition time is judged against the status the
        visit started from, so a value set twice in one visit is no transition."""
        items = set_condition(self.items, type, status, reason, message, self.now, self.generation)
        before = self.before.get(type)
        if before is not None and before.status == status:
            items = [c.model_copy(update={"last_transition_time": before.last_transition_time}) if c.type == type
                     else c for c in items]
        self.items = items


@dataclass
class Visit:
    observed: Observed
    spec: QuantizedModelSpec
    revision: str
    old: QuantizedModelStatus
    status: QuantizedModelStatus
    conditions: VisitConditions
    create: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    servable: Servable | None = None
    generation: int = 0
    """The calibration generation (status.refresh.generation) the revision is hashed and calibrated with."""
