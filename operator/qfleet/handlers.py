"""Kopf registrations only: gather what exists (from Kopf's in-memory indexes), call decide(), apply the result.

Every QuantizedModel is visited on each of its watch events and by a timer (the level-based safety net); a visit
recomputes everything from the spec, the status and the children, so it may run any number of times.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
from typing import Any

import kopf

from qfleet import kube
from qfleet.api.group import GROUP, PLURAL, VERSION
from qfleet.manifests.names import LABEL_MODEL, MANAGED_BY
from qfleet.pipeline import Observed, decide

PREFIX = "qfleet.io"
RECONCILE_INTERVAL = float(os.environ.get("QFLEET_RECONCILE_INTERVAL", "10"))
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
    API["client"] = kube.configure()


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.index("batch", "v1", "jobs", labels=OURS)
def qfleet_jobs(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels.get(LABEL_MODEL)): _plain(body)}


@kopf.index("", "v1", "pods", labels=OURS)
def qfleet_pods(namespace: str, labels: dict, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels.get("job-name")): _plain(body)}


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
              logger: logging.Logger, **_: Any) -> None:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    jobs = {}
    for job in qfleet_jobs.get((namespace, name), []):
        view = kube.job_view(job, qfleet_pods.get((namespace, job["metadata"]["name"]), []))
        jobs[view.name] = view
    observed = Observed(
        name=name, namespace=namespace, uid=meta["uid"], generation=int(meta.get("generation", 0)),
        spec=_plain(body.get("spec", {})), status=_plain(body.get("status", {})), jobs=jobs,
        nodes=[kube.node_view(node) for node in qfleet_nodes.get("nodes", [])],
        now=datetime.datetime.now(datetime.UTC))
    decision = decide(observed)
    api = API["client"]
    for manifest in decision.create:
        kube.create_job(api, manifest)
    if decision.status == observed.status:
        return
    if not kube.replace_status(api, _plain(body), decision.status):
        logger.info("Status of QuantizedModel %s/%s changed meanwhile; the next visit recomputes it", namespace, name)
        return
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
