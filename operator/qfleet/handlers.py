"""Kopf registrations only: watch events feed the cache and wake the model they concern; the controller's workers
visit. No timers, daemons or deletion handlers, so Kopf adds no finalizer: a QuantizedModel can be deleted while the
operator is down (its children go with it, by owner reference).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf

from qfleet import election, kube, telemetry, watching
from qfleet.api.group import GROUP, PLURAL, VERSION
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.cache import DELETED, FleetCache
from qfleet.controller import Controller, LoopSettings
from qfleet.manifests.names import LABEL_MODEL, MANAGED_BY
from qfleet.pipeline import Event

PREFIX = "qfleet.io"
METRICS_PORT = int(os.environ.get("QFLEET_METRICS_PORT", "0"))
"""Port of the operator's /metrics (0: not served). The chart sets it from `metricsPort`."""
NAMESPACED = os.environ.get("QFLEET_NAMESPACED", "") == "true"
"""Set by the chart with clusterScoped=false: the Role grants no right to list namespaces, and Kopf's namespace
scanning would retry that list for about a minute before serving the namespaces it was given."""
SETTINGS = LoopSettings(
    workers=int(os.environ.get("QFLEET_WORKERS", LoopSettings.workers)),
    resync_seconds=float(os.environ.get("QFLEET_RESYNC_SECONDS", "600")),
    runtime_image=os.environ.get("QFLEET_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
    latency_source=os.environ.get("QFLEET_LATENCY_SOURCE") or LoopSettings.latency_source,
)
API_QPS = float(os.environ.get("QFLEET_API_QPS", "100"))
API_BURST = int(os.environ.get("QFLEET_API_BURST", "250"))
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY["app.kubernetes.io/managed-by"]}
CACHE = FleetCache()
STATE: dict[str, Any] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events describe transitions; Kopf posts only its problems
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.scanning.disabled = NAMESPACED
    watching.quiet(settings, WATCHERS)
    api = kube.configure(API_QPS, API_BURST, connections=SETTINGS.workers + 1)  # + the Lease's renewals
    if METRICS_PORT and not STATE.get("metrics_served"):
        telemetry.serve(METRICS_PORT)
        STATE["metrics_served"] = True
    STATE["controller"] = Controller(api, CACHE, SETTINGS, _post_event)
    STATE["elector"] = elector = election.from_environment(api)
    STATE["leading"] = leading = asyncio.Event()
    if elector is None:
        leading.set()
    else:  # a candidate from the start, whether or not any model exists yet
        STATE["election"] = asyncio.create_task(_elect(elector, leading))


WATCHERS = ("cache_models", "on_model", "cache_jobs", "on_job", "cache_step_pods", "on_step_pod", "cache_deployments",
            "on_deployment", "cache_services", "on_service", "cache_routes", "on_route", "cache_nodes", "on_node")
"""The indexers and event watchers below: Kopf's line for each of their successes is dropped (qfleet.watching)."""


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    for name in ("election", "loop"):
        task = STATE.pop(name, None)
        if task is not None:
            task.cancel()
    elector = STATE.get("elector")
    if elector is not None:
        await asyncio.to_thread(elector.release)


async def _elect(elector: election.Elector, leading: asyncio.Event) -> None:
    await elector.acquire()
    leading.set()
    await elector.keep()


async def _lead(controller: Controller) -> None:
    """With leader election, the workers (which make every write) start only once this replica holds the Lease; the
    watches and the cache run either way, so a standby takes over warm."""
    await STATE["leading"].wait()
    await controller.run()


def _post_event(body: dict[str, Any], event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


def _wake(key: Any) -> None:
    controller = STATE.get("controller")
    if controller is None:
        return
    if "loop" not in STATE:
        # Started from the first event handler, not at startup: the workers' tasks copy this context, which holds
        # Kopf's Event queue (kopf.event needs it, and Kopf sets it only around resource handlers).
        STATE["loop"] = asyncio.create_task(_lead(controller))
    if key is not None:
        controller.wake(key)


def _wake_changed(key: Any) -> None:
    """Wakes the model if what its decisions read changed with this event (the index function just applied it)."""
    if CACHE.take_changed(key):
        _wake(key)


def _on_child(type: str | None, body: kopf.Body, apply: Callable[[str, dict[str, Any]], Any]) -> None:
    """A child's event: its deletion (dropped from the cache here) wakes its model; any other event, if it changed
    what the model's decisions read."""
    if type == DELETED:
        _wake(apply(DELETED, dict(body)))
    else:
        _wake_changed(owner_key(body))


# Each watched kind feeds the cache from an index function: Kopf runs index functions before any other handler and
# holds every event handler until all of them have listed their kind, so no model is visited before the Nodes, Jobs
# and Deployments it depends on are in the cache (a restart must not flap a serving model's status). The index
# functions return None: the cache, not Kopf's index, keeps the views. The event handlers then only wake models whose
# view changed (`_wake_changed`: a pod's new IP or the echo of the operator's own status write wakes nobody), and
# forget what was deleted.


@kopf.index(GROUP, VERSION, PLURAL)
async def cache_models(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_model(None, dict(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_model(type: str | None, body: kopf.Body, **_: Any) -> None:
    if type != DELETED:
        _wake_changed(model_key(body))
        return
    key = CACHE.apply_model(DELETED, dict(body))
    if "controller" in STATE:
        STATE["controller"].forget(key)


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def cache_jobs(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_job(None, dict(body))


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def on_job(type: str | None, body: kopf.Body, **_: Any) -> None:
    _on_child(type, body, CACHE.apply_job)


@kopf.index("", "v1", "pods", labels={**OURS, "qfleet.io/step": kopf.PRESENT})
async def cache_step_pods(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_pod(None, dict(body))


@kopf.on.event("", "v1", "pods", labels={**OURS, "qfleet.io/step": kopf.PRESENT})
async def on_step_pod(type: str | None, body: kopf.Body, **_: Any) -> None:
    _on_child(type, body, CACHE.apply_pod)


@kopf.index("apps", "v1", "deployments", labels=OURS)
async def cache_deployments(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_deployment(None, dict(body))


@kopf.on.event("apps", "v1", "deployments", labels=OURS)
async def on_deployment(type: str | None, body: kopf.Body, **_: Any) -> None:
    _on_child(type, body, CACHE.apply_deployment)


@kopf.index("", "v1", "services", labels=OURS)
async def cache_services(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_service(None, dict(body))


@kopf.on.event("", "v1", "services", labels=OURS)
async def on_service(type: str | None, body: kopf.Body, **_: Any) -> None:
    _on_child(type, body, CACHE.apply_service)


@kopf.index("gateway.networking.k8s.io", "v1", "httproutes")
async def cache_routes(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_route(None, dict(body))


@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes")
async def on_route(type: str | None, body: kopf.Body, **_: Any) -> None:
    if type == DELETED:
        for key in CACHE.apply_route(DELETED, dict(body)):
            _wake(key)
        return
    for key in CACHE.route_models(body["metadata"]["namespace"], body["metadata"]["name"]):
        _wake_changed(key)


@kopf.index("", "v1", "nodes")
async def cache_nodes(body: kopf.Body, **_: Any) -> None:
    CACHE.apply_node(None, dict(body))


@kopf.on.event("", "v1", "nodes")
async def on_node(type: str | None, body: kopf.Body, **_: Any) -> None:
    """A node's heartbeat changes nothing admission sees; a new, lost or relabelled node may admit a waiting model."""
    name = body["metadata"]["name"]
    changed = CACHE.apply_node(DELETED, dict(body)) if type == DELETED else CACHE.node_changed(name)
    if changed:
        for key in CACHE.waiting_for_nodes():
            _wake(key)


def model_key(body: kopf.Body) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def owner_key(body: kopf.Body) -> tuple[str, str] | None:
    model = (body["metadata"].get("labels") or {}).get(LABEL_MODEL)
    return (body["metadata"]["namespace"], model) if model else None
