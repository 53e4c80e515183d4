"""Watch-fed views of what visits read: no GET on a visit. Kopf's event handlers feed every change of the operator's
objects here (`apply`), and each change names the model it concerns, which is then woken if what its decisions read
changed (`take_changed`): a pod's IP, a Job's active count, a Deployment's observedGeneration, or the watch's echo of
the operator's own write wake nobody. A Job and its pods are compared as the visit reads them (`views.job_view`), so
a pod that ends before its Job does, or a Job's Complete after its SuccessCriteriaMet, wakes nobody either. A visit
reads a `Snapshot` of its own model.

What is kept is only what a decision reads: a Job's conditions and uid, the termination state of its pods, a serving
Deployment's replica counts, a role Service's selector, the user's HTTPRoute, and each Node as its admission view,
grouped: nodes that differ only in their name are one group with a count, so a visit costs the same with 10 nodes or
10,000. Updated on the event loop and read from the worker threads, under one lock.

What is stored is copied from the event (its body stays Kopf's) and then never changed in place: a change replaces
it. So a snapshot hands out the stored dicts themselves, uncopied, and a visit only reads them.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from qfleet import views as view_of
from qfleet.manifests.names import LABEL_MODEL
from qfleet.pipeline import JobView, NodeView
from qfleet.pipeline.release_types import DeploymentView

ModelKey = tuple[str, str]
"""(namespace, name) of a QuantizedModel."""
DELETED = "DELETED"


@dataclass(frozen=True)
class Snapshot:
    """One model and its children, as the watches last saw them: the cache's own dicts, to be read, not changed."""

    key: ModelKey
    body: dict[str, Any]
    jobs: dict[str, JobView]
    deployments: dict[str, DeploymentView]
    services: dict[str, dict[str, Any]]
    route: dict[str, Any] | None
    nodes: list[NodeView]


@dataclass
class _Model:
    body: dict[str, Any]
    route: str | None = None
    waits_for_nodes: bool = False
    """No node could admit it (Ready False, NoCompatibleNodePool): a node change may."""


@dataclass
class FleetCache:
    models: dict[ModelKey, _Model] = field(default_factory=dict)
    jobs: dict[ModelKey, dict[str, dict]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, dict]] = field(default_factory=dict)
    """(namespace, Job name) -> pod uid -> the pod's termination and waiting state."""
    deployments: dict[ModelKey, dict[str, DeploymentView]] = field(default_factory=dict)
    services: dict[ModelKey, dict[str, dict]] = field(default_factory=dict)
    routes: dict[tuple[str, str], dict] = field(default_factory=dict)
    nodes: dict[str, NodeView] = field(default_factory=dict)
    node_groups: dict[Hashable, tuple[NodeView, int]] = field(default_factory=dict)
    """Group key -> (a representative view, how many nodes)."""
    _versions: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """(kind, namespace, name) -> the newest resourceVersion seen of a child this operator also writes."""
    _nodes_changed: set[str] = field(default_factory=set)
    """Nodes whose view changed since their event handler last asked (`node_changed`)."""
    _changed: set[ModelKey] = field(default_factory=set)
    """Models whose own view or a child's changed since their event handler last asked (`take_changed`)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- feeding ------------------------------------------------------------------------------------------------
    def apply_model(self, event: str | None, body: Mapping[str, Any], written: bool = False) -> ModelKey:
        """`written`: the answer to this operator's own write (read your own write), which wakes nobody."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if event == DELETED:
                self.models.pop(key, None)
            elif _older(meta, self.models.get(key)):
                pass  # the watch delivers a version this operator already wrote past
            else:
                spec = body.get("spec") or {}
                route = (((spec.get("rollout") or {}).get("trafficRouting") or {}).get("gatewayAPI") or {}) \
                    .get("httpRoute")
                waits = any(c.get("type") == "Ready" and c.get("reason") == "NoCompatibleNodePool"
                            for c in (body.get("status") or {}).get("conditions") or [])
                model = _Model(_model_body(body), route, waits)
                self._store(key, self.models, key, model, written)
        return key

    def apply_job(self, event: str | None, body: Mapping[str, Any]) -> ModelKey | None:
        meta = body["metadata"]
        key = _owner(meta)
        if key is None:
            return None
        with self._lock:
            jobs = self.jobs.setdefault(key, {})
            if event == DELETED:
                jobs.pop(meta["name"], None)
            else:
                before = self._job_seen(key, meta["namespace"], meta["name"])
                self._store_job(key, body)
                if self._job_seen(key, meta["namespace"], meta["name"]) != before:
                    self._changed.add(key)
        return key

    def _store_job(self, key: ModelKey, body: Mapping[str, Any]) -> None:
        """What `views.job_view` reads of a Job: its name, uid, conditions and completion time."""
        meta, status = body["metadata"], body.get("status") or {}
        self.jobs.setdefault(key, {})[meta["name"]] = {
            "metadata": {"name": meta["name"], "uid": meta.get("uid")},
            "status": {"conditions": _copied(status.get("conditions") or []),
                       "completionTime": status.get("completionTime")}}

    def _job_seen(self, key: ModelKey, namespace: str, job: str) -> JobView | None:
        """The Job as a visit reads it (its view, with its pods), less when it finished: a Job's events and its
        pods' wake the model only when this changes. So a pod that ends before its Job does, or a Job's Complete
        after its SuccessCriteriaMet (whose visit recorded the result), wakes nobody."""
        body = self.jobs.get(key, {}).get(job)
        if body is None:
            return None
        return replace(view_of.job_view(body, list(self.pods.get((namespace, job), {}).values())), finished_at=None)

    def job_created(self, body: Mapping[str, Any]) -> None:
        """A Job this operator just created, before its watch event: kept only if the watch has not brought it yet
        (the watch's copy is as new or newer)."""
        key = _owner(body["metadata"])
        if key is None:
            return
        with self._lock:
            if body["metadata"]["name"] not in self.jobs.get(key, {}):
                self._store_job(key, body)

    def apply_pod(self, event: str | None, body: Mapping[str, Any]) -> ModelKey | None:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        job = labels.get("job-name")
        if job is None:
            return None
        key = _owner(meta)
        with self._lock:
            pods = self.pods.setdefault((meta["namespace"], job), {})
            if event == DELETED:
                pods.pop(meta.get("uid"), None)
                return key
            before = self._job_seen(key, meta["namespace"], job) if key is not None else None
            pods[meta.get("uid")] = _step_pod(body.get("status") or {})
            if key is not None and self._job_seen(key, meta["namespace"], job) != before:
                self._changed.add(key)
        return key

    def apply_deployment(self, event: str | None, body: Mapping[str, Any], written: bool = False) -> ModelKey | None:
        meta = body["metadata"]
        key = _owner(meta)
        if key is None:
            return None
        with self._lock:
            views = self.deployments.setdefault(key, {})
            if event == DELETED:
                views.pop(meta["name"], None)
            elif self._newer(("Deployment", meta["namespace"], meta["name"]), meta.get("resourceVersion")):
                self._store(key, views, meta["name"], view_of.deployment_view(body), written)
        return key

    def scaled(self, key: ModelKey, name: str, replicas: int, version: str) -> None:
        """This operator scaled the Deployment: its watch event comes a moment later, and a visit in between must
        not act on the old size."""
        with self._lock:
            view = self.deployments.get(key, {}).get(name)
            if view is not None and self._newer(("Deployment", key[0], name), version):
                self.deployments[key][name] = replace(view, replicas=replicas)

    def _newer(self, child: tuple[str, str, str], version: str | None) -> bool:
        """Records `version` unless an older one than already seen (then False: the event is stale)."""
        seen = self._versions.get(child)
        if seen is not None and version is not None and _before(version, seen):
            return False
        if version is not None:
            self._versions[child] = version
        return True

    def _store(self, key: ModelKey | None, where: dict, name: Hashable, value: Any, written: bool) -> None:
        """Stores a view; marks its model changed when it differs from the one it replaces (unless `written`: the
        writer visits with what it wrote)."""
        if not written and key is not None and where.get(name) != value:
            self._changed.add(key)
        where[name] = value

    def take_changed(self, key: ModelKey | None) -> bool:
        """Whether what the model's decisions read changed since this was last asked for it (once per change)."""
        with self._lock:
            if key in self._changed:
                self._changed.discard(key)
                return True
            return False

    def apply_service(self, event: str | None, body: Mapping[str, Any]) -> ModelKey | None:
        meta = body["metadata"]
        key = _owner(meta)
        if key is None:
            return None
        with self._lock:
            services = self.services.setdefault(key, {})
            if event == DELETED:
                services.pop(meta["name"], None)
            else:
                before = services.get(meta["name"])
                selector = dict((body.get("spec") or {}).get("selector") or {})
                services[meta["name"]] = {
                    "metadata": {"name": meta["name"], "resourceVersion": meta.get("resourceVersion")},
                    "spec": {"selector": selector}}
                if before is None or before["spec"]["selector"] != selector:
                    self._changed.add(key)
        return key

    def apply_route(self, event: str | None, body: Mapping[str, Any], written: bool = False) -> list[ModelKey]:
        """The models whose spec names this HTTPRoute (marked changed when its spec changed, unless `written`)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self._lock:
            models = self._route_models(namespace, name)
            if event == DELETED:
                self.routes.pop((namespace, name), None)
            elif self._newer(("HTTPRoute", namespace, name), meta.get("resourceVersion")):
                before = self.routes.get((namespace, name))
                spec = _copied(body.get("spec") or {})
                self.routes[(namespace, name)] = {"metadata": {"name": name, "namespace": namespace,
                                                               "resourceVersion": meta.get("resourceVersion")},
                                                  "spec": spec}
                if not written and (before is None or before["spec"] != spec):
                    self._changed.update(models)
            return models

    def route_models(self, namespace: str, name: str) -> list[ModelKey]:
        with self._lock:
            return self._route_models(namespace, name)

    def _route_models(self, namespace: str, name: str) -> list[ModelKey]:
        return [key for key, model in self.models.items() if key[0] == namespace and model.route == name]

    def apply_node(self, event: str | None, body: Mapping[str, Any]) -> bool:
        """True when what admission sees changed (not for a heartbeat)."""
        name = body["metadata"]["name"]
        view = None if event == DELETED else view_of.node_view(body)
        with self._lock:
            before = self.nodes.get(name)
            if before == view:
                return False
            if before is not None:
                self._count(before, -1)
                del self.nodes[name]
            if view is not None:
                self.nodes[name] = view
                self._count(view, +1)
            self._nodes_changed.add(name)
        return True

    def node_changed(self, name: str) -> bool:
        """Whether the node's view changed since the last time this was asked (once per change)."""
        with self._lock:
            if name in self._nodes_changed:
                self._nodes_changed.discard(name)
                return True
            return False

    def _count(self, view: NodeView, change: int) -> None:
        group = _group_key(view)
        representative, count = self.node_groups.get(group, (view, 0))
        if count + change <= 0:
            self.node_groups.pop(group, None)
        else:
            self.node_groups[group] = (representative, count + change)

    # -- reading ------------------------------------------------------------------------------------------------
    def keys(self) -> list[ModelKey]:
        with self._lock:
            return list(self.models)

    def waiting_for_nodes(self) -> list[ModelKey]:
        """Models that no node could admit: a node change may let them in."""
        with self._lock:
            return [key for key, model in self.models.items() if model.waits_for_nodes]

    def snapshot_nodes(self) -> list[NodeView]:
        with self._lock:
            return self._node_views()

    def _node_views(self) -> list[NodeView]:
        return [replace(view, count=count) for view, count in self.node_groups.values()]

    def snapshot(self, key: ModelKey) -> Snapshot | None:
        namespace = key[0]
        with self._lock:
            model = self.models.get(key)
            if model is None:
                return None
            jobs = {name: view_of.job_view(job, list(self.pods.get((namespace, name), {}).values()))
                    for name, job in self.jobs.get(key, {}).items()}
            route = self.routes.get((namespace, model.route)) if model.route else None
            return Snapshot(
                key=key, body=model.body, jobs=jobs, deployments=dict(self.deployments.get(key, {})),
                services=dict(self.services.get(key, {})), route=route, nodes=self._node_views())


def _model_body(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    kept = ("name", "namespace", "uid", "generation", "resourceVersion", "annotations", "finalizers",
            "deletionTimestamp")
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: _copied(meta[k]) for k in kept if k in meta},
            "spec": _copied(body.get("spec") or {}), "status": _copied(body.get("status") or {})}


def _step_pod(status: Mapping[str, Any]) -> dict[str, Any]:
    """What `views.job_view` reads of a step's pod: a PodScheduled=False condition, and each container's waiting
    state (ContainerCreating aside) or terminated state, in order; a running container or a scheduled pod keeps
    nothing, so their events change nothing."""
    conditions = [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
                   "message": c.get("message")} for c in status.get("conditions") or []
                  if c.get("type") == "PodScheduled" and c.get("status") == "False"]
    containers = []
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if terminated:
            containers.append({"state": {"terminated": _copied(terminated)}})
        elif waiting and waiting.get("reason") not in (None, "ContainerCreating"):
            containers.append({"state": {"waiting": _copied(waiting)}})
    return {"status": {"conditions": conditions, "containerStatuses": containers}}


def _copied(value: Any) -> Any:
    """A deep copy of JSON data (what a watch delivers: dicts, lists, scalars) in a fraction of copy.deepcopy's
    time, which every watch event of a fleet pays."""
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    return value


def _older(meta: Mapping[str, Any], cached: _Model | None) -> bool:
    """True when `meta` is an older version than the cached one."""
    if cached is None:
        return False
    return _before(str(meta.get("resourceVersion", "")), str(cached.body["metadata"].get("resourceVersion", "")))


def _before(version: str, other: str) -> bool:
    """Kubernetes' resourceVersions are opaque; the apiserver's etcd storage makes them increasing integers, and
    anything else is taken as newer."""
    return version.isdigit() and other.isdigit() and int(version) < int(other)


def _owner(meta: Mapping[str, Any]) -> ModelKey | None:
    model = (meta.get("labels") or {}).get(LABEL_MODEL)
    return (meta["namespace"], model) if model else None


def _group_key(view: NodeView) -> Hashable:
    """Nodes alike but for their name (and labels that repeat it, such as kubernetes.io/hostname) group together."""
    labels = tuple(sorted((k, v) for k, v in view.labels.items() if v != view.name))
    return labels, view.allocatable_gpus, view.schedulable
