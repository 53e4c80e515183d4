"""The one module that talks to the Kubernetes API. Reads come from watches (qfleet.cache), so what is here writes:
each write that another writer could race carries a precondition (a resourceVersion, or a JSON-patch `test` of the
value it replaces) and reports a lost race as False, so the visit re-reads and recomputes instead of writing over.
Every call of the operator's visits passes a client-side rate limit (`configure(qps, burst)`), as Argo Rollouts'
and Flagger's `--kube-api-qps/--kube-api-burst` do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from qfleet.api.group import GROUP, PLURAL, VERSION
from qfleet.manifests.names import LABEL_MODEL

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = (5, 30)
"""(connect, read) seconds for every call: a stuck API server must not stall a visit forever."""
JSON_PATCH, MERGE_PATCH = "application/json-patch+json", "application/merge-patch+json"
LOST_RACE = (404, 409, 422)
"""Gone, a stale resourceVersion, a failed JSON-patch `test`."""
UNAVAILABLE = (429, 500, 502, 503, 504)
"""The apiserver answered but could not serve: throttled, or it or its storage (etcd) is down."""


class TokenBucket:
    """`qps` calls a second on average, bursts of `burst`; `acquire` blocks the calling thread until a token is
    free. qps 0 turns it off."""

    def __init__(self, qps: float, burst: int, clock=time.monotonic, sleep=time.sleep) -> None:
        self.qps, self.burst = qps, max(1, burst)
        self._clock, self._sleep = clock, sleep
        self._tokens, self._at = float(self.burst), clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Takes a token; returns the seconds it waited."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait:
            self._sleep(wait)
        return wait


LIMIT = TokenBucket(qps=0, burst=1)


def configure(qps: float = 0, burst: int = 1, connections: int = 0) -> k8s.ApiClient:
    """In-cluster credentials when running as a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config); the rate
    limit every call below honours; a pool of at least `connections` connections to the apiserver, one for each thread
    that calls at once (the client's default, 5 per CPU, can be fewer than the workers, and urllib3 drops a connection
    given back to a full pool, so the next call opens a new one)."""
    global LIMIT
    LIMIT = TokenBucket(qps, burst)
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, connections)
    api = k8s.ApiClient(configuration)
    api.user_agent = user_agent()
    return api


def user_agent() -> str:
    """`qfleet-operator/<pod or host>-<pid>`: the apiserver's audit log tells replicas apart by it (and server-side
    apply names the field manager `qfleet-operator`)."""
    return f"qfleet-operator/{os.environ.get('QFLEET_POD_NAME') or socket.gethostname()}-{os.getpid()}"


def create_job(api: k8s.ApiClient, manifest: dict) -> dict | None:
    """Creates the Job; an existing one (409) counts as success. Returns the Job as created (the apiserver's JSON, the
    watch's shape) when this call created it, None when it existed."""
    LIMIT.acquire()
    try:
        created = k8s.BatchV1Api(api).create_namespaced_job(manifest["metadata"]["namespace"], manifest,
                                                            _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            return None
        raise
    log.info("Created Job %s/%s", manifest["metadata"]["namespace"], manifest["metadata"]["name"])
    return _answer(created)


def _answer(response: Any) -> dict:
    """The object in a response asked for unparsed (`_preload_content=False`), as the apiserver's JSON: making it the
    client's model classes and those a dict again cost a visit that creates a child a fifth of its CPU."""
    return json.loads(response.data)


def namespace_terminating(error: BaseException) -> bool:
    """The apiserver refused a write because the namespace is being deleted (403 with the NamespaceTerminating cause):
    the model goes with it, so there is nothing to retry."""
    if not isinstance(error, ApiException) or error.status != 403 or not error.body:
        return False
    try:
        causes = (json.loads(error.body).get("details") or {}).get("causes") or []
    except (ValueError, AttributeError):
        return False
    return any(cause.get("reason") == "NamespaceTerminating" for cause in causes)


def unavailable(error: BaseException) -> bool:
    """The apiserver could not be reached or could not serve: not the model's fault, so its visit is retried once the
    apiserver is ready again (`ready`), not after a back-off that grows with the outage."""
    if isinstance(error, ApiException):
        return error.status in UNAVAILABLE
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError))


def ready(api: k8s.ApiClient) -> bool:
    """Whether the apiserver answers /readyz (which checks its storage too); every ServiceAccount may read it."""
    try:
        method, url, headers, _, _ = api.param_serialize(method="GET", resource_path="/readyz",
                                                         auth_settings=["BearerToken"])
        answer = api.call_api(method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT)
        answer.read()
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return answer.status == 200


def children_selector(model: str) -> str:
    return f"{LABEL_MODEL}={model}"


def replace_status(api: k8s.ApiClient, body: dict, status: dict) -> dict | None:
    """Writes the whole status (a PUT of the status subresource, guarded by resourceVersion, so fields that went away
    are removed) and returns the object as written. None on a conflict: someone wrote meanwhile and the next visit
    recomputes."""
    meta = body["metadata"]
    document = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {
        "name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"]},
        "spec": body.get("spec", {}), "status": status}
    LIMIT.acquire()
    try:
        return k8s.CustomObjectsApi(api).replace_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], document, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status in (404, 409):
            return None
        raise


class NotFound(LookupError):
    """The QuantizedModel asked for does not exist (or its CRD is not installed)."""


def _model_client(namespace: str | None, kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """A client from the kubeconfig, and the namespace to use (the context's when none is given)."""
    api = k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
    if namespace is None:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
        if context is not None:
            active = next(c for c in contexts if c["name"] == context)
        namespace = (active or {}).get("context", {}).get("namespace") or "default"
    return api, namespace


def read_model(name: str, namespace: str | None = None, kubeconfig: str | None = None,
               context: str | None = None) -> dict:
    """One QuantizedModel, read with the kubeconfig (for `kubectl qfleet`); no namespace means the context's."""
    api, namespace = _model_client(namespace, kubeconfig, context)
    try:
        return k8s.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"QuantizedModel {namespace}/{name} not found") from None
        raise


def patch_model(name: str, namespace: str | None, patch: dict, kubeconfig: str | None = None,
                context: str | None = None) -> dict:
    """A JSON merge patch of one QuantizedModel, with the kubeconfig (for `kubectl qfleet`'s rollout verbs)."""
    api, namespace = _model_client(namespace, kubeconfig, context)
    try:
        return k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT,
            _content_type=MERGE_PATCH)
    except ApiException as error:
        if error.status == 404:
            raise NotFound(f"QuantizedModel {namespace}/{name} not found") from None
        raise


def create_deployment(api: k8s.ApiClient, manifest: dict) -> dict | None:
    """Creates the Deployment; an existing one (409) counts as success. Returns the Deployment as created (the
    apiserver's JSON, the watch's shape) when this call created it, None when it existed."""
    LIMIT.acquire()
    try:
        created = k8s.AppsV1Api(api).create_namespaced_deployment(manifest["metadata"]["namespace"], manifest,
                                                                  _request_timeout=REQUEST_TIMEOUT,
                                                                  _preload_content=False)
    except ApiException as error:
        if error.status == 409:
            return None
        raise
    log.info("Created Deployment %s/%s", manifest["metadata"]["namespace"], manifest["metadata"]["name"])
    return _answer(created)


def scale_deployment(api: k8s.ApiClient, namespace: str, name: str, replicas: int, seen: int) -> str | None:
    """Sets the replicas through the scale subresource if they are still `seen` (the JSON-patch `test`). Returns the
    Deployment's new resourceVersion, or None when it is gone or its replicas changed meanwhile."""
    LIMIT.acquire()
    try:
        scale = k8s.AppsV1Api(api).patch_namespaced_deployment_scale(
            name, namespace, [{"op": "test", "path": "/spec/replicas", "value": seen},
                              {"op": "replace", "path": "/spec/replicas", "value": replicas}],
            _request_timeout=REQUEST_TIMEOUT, _content_type=JSON_PATCH)
    except ApiException as error:
        if error.status in LOST_RACE:
            return None
        raise
    log.info("Scaled Deployment %s/%s from %d to %d", namespace, name, seen, replicas)
    return scale.metadata.resource_version


def ensure_service(api: k8s.ApiClient, manifest: dict, existing: Mapping[str, Any] | None) -> bool:
    """Creates the Service, or sets its selector when it selects something else (only while it is still the selector
    seen). Returns False when nothing was written or the race was lost."""
    core = k8s.CoreV1Api(api)
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    selector = manifest["spec"]["selector"]
    if existing is not None:
        seen = (existing.get("spec") or {}).get("selector")
        if seen == selector:
            return False
        LIMIT.acquire()
        try:  # replaced as a whole: a merge patch would keep stale selector keys
            core.patch_namespaced_service(name, namespace, [{"op": "test", "path": "/spec/selector", "value": seen},
                                                            {"op": "replace", "path": "/spec/selector",
                                                             "value": selector}],
                                          _request_timeout=REQUEST_TIMEOUT, _content_type=JSON_PATCH)
        except ApiException as error:
            if error.status in LOST_RACE:
                return False
            raise
        return True
    LIMIT.acquire()
    try:
        core.create_namespaced_service(namespace, manifest, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


HTTPROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")


def set_route_rules(api: k8s.ApiClient, route: Mapping[str, Any], rules: list[dict]) -> dict | None:
    """Replaces spec.rules of the user's HTTPRoute (only the weights of qfleet's backendRefs differ from what was
    read) if the route is still the version read: a person's edit in between is never written over. Returns the
    route as written, or None when the race was lost."""
    meta = route["metadata"]
    LIMIT.acquire()
    try:
        return k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            *HTTPROUTE[:2], meta["namespace"], HTTPROUTE[2], meta["name"],
            [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
             {"op": "replace", "path": "/spec/rules", "value": rules}],
            _request_timeout=REQUEST_TIMEOUT, _content_type=JSON_PATCH)
    except ApiException as error:
        if error.status in LOST_RACE:
            return None
        raise


def drop_finalizer(api: k8s.ApiClient, namespace: str, name: str, finalizers: list[str], finalizer: str) -> bool:
    """Removes a finalizer an earlier qfleet added (it needs none: children are owned by the model), while the list is
    still the one seen."""
    index = finalizers.index(finalizer)
    LIMIT.acquire()
    try:
        k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
             {"op": "remove", "path": f"/metadata/finalizers/{index}"}],
            _request_timeout=REQUEST_TIMEOUT, _content_type=JSON_PATCH)
    except ApiException as error:
        if error.status in LOST_RACE:
            return False
        raise
    return True


def remove_annotation(api: k8s.ApiClient, namespace: str, name: str, key: str, value: str) -> bool:
    """Removes the annotation only while it still holds `value` (a JSON-patch `test`): an action a person wrote
    meanwhile is kept for the next visit. Returns False when it changed or is gone."""
    path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
    LIMIT.acquire()
    try:
        k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}],
            _request_timeout=REQUEST_TIMEOUT, _content_type=JSON_PATCH)
    except ApiException as error:
        if error.status in LOST_RACE:
            return False
        raise
    return True


def read_lease(api: k8s.ApiClient, namespace: str, name: str) -> tuple[dict | None, str | None]:
    """The leader-election Lease's spec (API field names) and resourceVersion; (None, None) when there is none. Lease
    calls skip the rate limit: a renewal must never queue behind a visit's writes."""
    try:
        lease = k8s.CoordinationV1Api(api).read_namespaced_lease(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status == 404:
            return None, None
        raise
    return api.sanitize_for_serialization(lease.spec) or {}, lease.metadata.resource_version


def write_lease(api: k8s.ApiClient, namespace: str, name: str, spec: dict, resource_version: str | None) -> bool:
    """Creates the Lease (no resourceVersion) or replaces it if it is still `resource_version`. False when another
    candidate wrote first (the caller reads again)."""
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec,
             "metadata": {"name": name, "namespace": namespace,
                          **({"resourceVersion": resource_version} if resource_version else {})}}
    coordination = k8s.CoordinationV1Api(api)
    try:
        if resource_version is None:
            coordination.create_namespaced_lease(namespace, lease, _request_timeout=REQUEST_TIMEOUT)
        else:
            coordination.replace_namespaced_lease(name, namespace, lease, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as error:
        if error.status in LOST_RACE:
            return False
        raise
    return True
