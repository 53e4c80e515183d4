"""Kopf registrations only: gather what exists (from Kopf's in-memory indexes), call decide(), apply the result.

Every QuantizedModel is visited on each of its watch events and by a timer (the level-based safety net); a visit
recomputes everything from the spec, the status and the children, so it may run any number of times.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
from typing import Any

import kopf

from qfleet import kube, prom, telemetry
from qfleet.api.group import GROUP, PLURAL, VERSION
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.manifests.names import LABEL_MODEL, MANAGED_BY
from qfleet.pipeline import Decision, Observed, decide
from qfleet.pipeline.release import ACTION_ANNOTATION, Measured

PREFIX = "qfleet.io"
RECONCILE_INTERVAL = float(os.environ.get("QFLEET_RECONCILE_INTERVAL", "10"))
METRICS_PORT = int(os.environ.get("QFLEET_METRICS_PORT", "0"))
RUNTIME_IMAGE = os.environ.get("QFLEET_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE
"""The default of spec.runtime.image (the chart's runtime.image)."""
NAMESPACED = os.environ.get("QFLEET_NAMESPACED", "") == "true"
"""Set by the chart with clusterScoped=false: the Role grants no right to list namespaces, and Kopf's namespace
scanning would retry that list for about a minute before serving the namespaces it was given."""
"""Port of the operator's /metrics (0: not served). The chart sets it from `metrics.port`."""
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY["app.kubernetes.io/managed-by"]}
API: dict[str, Any] = {}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events describe transitions; Kopf posts only its problems
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.scanning.disabled = NAMESPACED
    API["client"] = kube.configure()
    if METRICS_PORT and not API.get("metrics_served"):
        telemetry.serve(METRICS_PORT)
        API["metrics_served"] = True


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.index("batch", "v1", "jobs", labels=OURS)
def qfleet_jobs(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels.get(LABEL_MODEL)): _plain(body)}


@kopf.index("", "v1", "pods", labels=OURS)
def qfleet_pods(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels.get("job-name")): _plain(body)}


@kopf.index("apps", "v1", "deployments", labels=OURS)
def qfleet_deployments(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels.get(LABEL_MODEL)): _plain(body)}


@kopf.index("", "v1", "services", labels=OURS)
def qfleet_services(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, name): _plain(body)}


@kopf.index("", "v1", "nodes")
def qfleet_nodes(body: kopf.Body, **_: Any) -> dict:
    return {"nodes": _plain(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_event(type: str | None, body: kopf.Body, **kwargs: Any) -> None:
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    reconcile(body=body, **kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL)
def on_timer(body: kopf.Body, **kwargs: Any) -> None:
    reconcile(body=body, **kwargs)


def reconcile(body: kopf.Body, qfleet_jobs: kopf.Index, qfleet_pods: kopf.Index, qfleet_nodes: kopf.Index,
              qfleet_deployments: kopf.Index, qfleet_services: kopf.Index, logger: logging.Logger,
              **_: Any) -> None:
    with telemetry.reconcile_timer() as result:
        result["outcome"] = _reconcile(body, qfleet_jobs, qfleet_pods, qfleet_nodes, qfleet_deployments,
                                       qfleet_services, logger)


def _reconcile(body: kopf.Body, qfleet_jobs: kopf.Index, qfleet_pods: kopf.Index, qfleet_nodes: kopf.Index,
               qfleet_deployments: kopf.Index, qfleet_services: kopf.Index, logger: logging.Logger) -> str:
    """One visit; returns what came of it (the outcome label of qfleet_operator_reconciles_total)."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    api = API["client"]
    jobs = {}
    for job in qfleet_jobs.get((namespace, name), []):
        view = kube.job_view(job, qfleet_pods.get((namespace, job["metadata"]["name"]), []))
        jobs[view.name] = view
    deployments = {view.name: view for view in map(kube.deployment_view, qfleet_deployments.get((namespace, name), []))}
    spec = _plain(body.get("spec", {}))
    route_name = (((spec.get("rollout") or {}).get("trafficRouting") or {}).get("gatewayAPI") or {}).get("httpRoute")
    route = None
    if route_name:
        with telemetry.api_call("read_route"):
            route = kube.read_route(api, namespace, route_name)
    observed = Observed(
        name=name, namespace=namespace, uid=meta["uid"], generation=int(meta.get("generation", 0)),
        spec=spec, status=_plain(body.get("status", {})), jobs=jobs,
        nodes=[kube.node_view(node) for node in qfleet_nodes.get("nodes", [])],
        now=datetime.datetime.now(datetime.UTC), deployments=deployments, route=route,
        action=(meta.get("annotations") or {}).get(ACTION_ANNOTATION), runtime_image=RUNTIME_IMAGE)
    decision = decide(observed)
    request = decision.release.measure
    if request is not None:
        with telemetry.api_call("prometheus_query"):
            measured = prom.measure(request.address, request.queries, request.histograms)
        for query, error in measured.errors.items():
            telemetry.API_ERRORS.labels("prometheus_query", "none").inc()
            logger.warning("Prometheus query %s failed: %s", query, error)
        decision = decide(dataclasses.replace(observed, measured=Measured(measured.values, measured.histograms,
                                                                          measured.errors)))
    _apply_children(api, namespace, decision, qfleet_services)
    outcome = "unchanged"
    if decision.status != observed.status:
        with telemetry.api_call("replace_status"):
            written = kube.replace_status(api, _plain(body), decision.status)
        if not written:
            logger.info("Status of QuantizedModel %s/%s changed meanwhile; the next visit recomputes it",
                        namespace, name)
            return "conflict"
        _count(decision)
        outcome = "updated"
    if decision.release.action_done and observed.action is not None:
        with telemetry.api_call("remove_annotation"):
            kube.remove_annotation(api, namespace, name, ACTION_ANNOTATION, observed.action)
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
        telemetry.TRANSITIONS.labels(event.reason, event.type).inc()
    return outcome


def _apply_children(api: Any, namespace: str, decision: Decision, services: kopf.Index) -> None:
    """Creates what is missing and sets what differs; every call is idempotent, so a visit cut short is redone."""
    for manifest in decision.create:
        with telemetry.api_call("create_job"):
            if kube.create_job(api, manifest):
                telemetry.CHILDREN_CREATED.labels("Job").inc()
    changes = decision.release
    for manifest in changes.deployments:
        with telemetry.api_call("create_deployment"):
            if kube.create_deployment(api, manifest):
                telemetry.CHILDREN_CREATED.labels("Deployment").inc()
    for manifest in changes.services:
        existing = next(iter(services.get((namespace, manifest["metadata"]["name"]), [])), None)
        with telemetry.api_call("ensure_service"):
            kube.ensure_service(api, manifest, existing)
    for deployment, replicas in changes.scale.items():
        with telemetry.api_call("scale_deployment"):
            kube.scale_deployment(api, namespace, deployment, replicas)
    if changes.route_rules is not None:
        route, rules = changes.route_rules
        with telemetry.api_call("set_route_rules"):
            kube.set_route_rules(api, namespace, route, rules)


def _count(decision: Decision) -> None:
    changes = decision.release
    for gate, verdict in changes.verdicts:
        telemetry.GATE_VERDICTS.labels(gate, verdict).inc()
    if changes.rollback_cause:
        telemetry.ROLLBACKS.labels(changes.rollback_cause).inc()
    if changes.promoted:
        telemetry.PROMOTIONS.inc()
