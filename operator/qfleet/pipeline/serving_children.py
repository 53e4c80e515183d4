"""The serving children a release visit writes: a Deployment per revision and its size, the stable and canary
Services' selectors, and the weights on the user's HTTPRoute."""

from __future__ import annotations

from decimal import Decimal

from qfleet import rollout
from qfleet.api.rollout_spec import GatewayAPIRouting
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import RevisionStatus
from qfleet.manifests.jobs import Owner
from qfleet.manifests.names import LABEL_MODEL
from qfleet.manifests.serving import (
    CANARY,
    STABLE,
    deployment_name,
    role_service,
    service_name,
    serving_deployment,
    weighted_rules,
)
from qfleet.pipeline.release_types import ReleaseChanges, ReleaseInput


class ServingChildren:
    """The release visit's writes to its children (a mixin of qfleet.pipeline.release._Release)."""

    given: ReleaseInput
    changes: ReleaseChanges
    owner: Owner
    spec: QuantizedModelSpec
    revisions: RevisionStatus
    gateway: GatewayAPIRouting | None

    def _ensure_deployment(self, revision: str, replicas: int) -> str:
        given = self.given
        assert given.servable is not None
        name = deployment_name(given.name, revision)
        view = given.deployments.get(name)
        if view is None:
            self.changes.deployments.append(serving_deployment(
                self.owner, self.spec, revision, given.servable.kv_format, given.servable.compute_capability,
                replicas, CANARY if self.revisions.stable not in (None, revision) else STABLE))
        elif view.replicas != replicas:
            self.changes.scale[name] = replicas
        return name

    def _resize(self, revision: str, replicas: int) -> None:
        view = self.given.deployments.get(deployment_name(self.given.name, revision))
        if view is None or view.replicas != replicas:
            self.changes.scale[deployment_name(self.given.name, revision)] = replicas

    def _scale_stable(self) -> int:
        """The stable revision at the spec's size (never above it for a canary's sake); returns that size."""
        stable = self.revisions.stable
        replicas = self.spec.serving.replicas
        view = self.given.deployments.get(deployment_name(self.given.name, stable or ""))
        if view is not None and view.replicas != replicas:
            self.changes.scale[view.name] = replicas
        return replicas

    def _services(self, stable: str | None, canary: str | None) -> None:
        """Role Services select a revision's pods; with no router the stable one selects every revision's pods, so
        the replica ratio is the traffic ratio."""
        for role, revision in ((STABLE, stable), (CANARY, canary)):
            if revision is None:
                continue
            service = role_service(self.owner, role, revision)
            if self.gateway is None and role == STABLE:
                service["spec"]["selector"] = {LABEL_MODEL: self.given.name}
            self.changes.services.append(service)

    def _route_problem(self) -> str | None:
        """Why the user's HTTPRoute cannot carry the canary's share (None when it can, or without a router)."""
        if self.gateway is None:
            return None
        name, stable = self.gateway.http_route, service_name(self.given.name, STABLE)
        if self.given.route is None:
            return (f"HTTPRoute {name} (spec.rollout.trafficRouting.gatewayAPI.httpRoute) does not exist in namespace "
                    f"{self.given.namespace}: create it with a backendRef to Service {stable}")
        rules = (self.given.route.get("spec") or {}).get("rules") or []
        if not any(ref.get("name") == stable for rule in rules for ref in rule.get("backendRefs") or []):
            return f"HTTPRoute {name} has no backendRef to Service {stable}: add one; qfleet sets only the weights"
        return None

    def _route(self, canary_weight: Decimal) -> None:
        if self.gateway is None:
            return
        route = self.given.route
        if route is None:
            return
        stable_weight, weight = rollout.route_weights(canary_weight)
        rules = weighted_rules(dict(route), service_name(self.given.name, STABLE),
                               service_name(self.given.name, CANARY), stable_weight, weight)
        if rules != (route.get("spec") or {}).get("rules"):
            self.changes.route_rules = (self.gateway.http_route, rules)
