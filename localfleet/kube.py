"""The few Kubernetes API calls the fleet itself makes (creating its nodes, waiting for them)."""
from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException


def client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


def create_nodes(api: k8s.ApiClient, manifests: list[dict]) -> None:
    core = k8s.CoreV1Api(api)
    for manifest in manifests:
        try:
            core.create_node(manifest)
        except ApiException as error:
            if error.status != 409:
                raise


def node_ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def node_schedulable(node) -> bool:
    """Ready, and the node lifecycle controller has lifted its node.kubernetes.io/* taints (not-ready, unreachable)."""
    lifecycle_taints = [t for t in (node.spec.taints or []) if t.key.startswith("node.kubernetes.io/")]
    return node_ready(node) and not lifecycle_taints


def nodes_ready(api: k8s.ApiClient, names: list[str]) -> bool:
    ready = {n.metadata.name for n in k8s.CoreV1Api(api).list_node().items if node_schedulable(n)}
    return set(names) <= ready


class WaitTimeout(TimeoutError):
    pass


def wait_for(list_fn, predicate, timeout: float, what: str, **list_kwargs):
    """Returns the first object of list_fn(**list_kwargs) for which predicate holds, reading the current list and then
    watching from its resourceVersion, so it reacts to the change itself instead of polling. Bounded by timeout."""
    from kubernetes import watch
    import time

    deadline = time.monotonic() + timeout
    last_seen = None
    while True:
        listing = list_fn(**list_kwargs)
        for item in listing.items:
            last_seen = item
            if predicate(item):
                return item
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last seen: "
                              f"{_summary(last_seen)}")
        stream = watch.Watch().stream(list_fn, resource_version=listing.metadata.resource_version,
                                      timeout_seconds=max(1, int(remaining)), **list_kwargs)
        try:
            for event in stream:
                obj = event["object"]
                last_seen = obj
                if event["type"] != "DELETED" and predicate(obj):
                    return obj
                if time.monotonic() > deadline:
                    break
        except ApiException as error:
            if error.status != 410:  # 410 Gone: the resourceVersion expired; list again
                raise


def _summary(obj) -> str:
    if obj is None:
        return "nothing"
    status = getattr(obj, "status", None)
    return f"{obj.metadata.name}: {status.to_dict() if hasattr(status, 'to_dict') else status}"[:1500]


def service_account_kubeconfig(kubeconfig: Path, api: k8s.ApiClient, namespace: str, account: str, path: Path,
                               seconds: int = 3600) -> Path:
    """A copy of `kubeconfig` that holds only a short-lived token of a ServiceAccount (TokenRequest API): run a
    process with it and it has exactly the rights RBAC gives that account."""
    import yaml

    token = k8s.CoreV1Api(api).create_namespaced_service_account_token(account, namespace, k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))).status.token
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def bind_artifacts_claim(api: k8s.ApiClient, namespace: str, claim: str, volume: str, host_path: Path,
                         size: str = "20Gi", timeout: float = 60) -> None:
    """A hostPath PersistentVolume reserved for `namespace/claim` and that claim, bound by the real PV controller:
    the artifacts volume the examples name (pvc://qfleet-artifacts/...). Existing ones are kept (409)."""
    core = k8s.CoreV1Api(api)
    for create in (
        lambda: core.create_persistent_volume(k8s.V1PersistentVolume(
            metadata=k8s.V1ObjectMeta(name=volume),
            spec=k8s.V1PersistentVolumeSpec(
                capacity={"storage": size}, access_modes=["ReadWriteMany"], storage_class_name="",
                persistent_volume_reclaim_policy="Retain", host_path=k8s.V1HostPathVolumeSource(path=str(host_path)),
                claim_ref=k8s.V1ObjectReference(namespace=namespace, name=claim)))),
        lambda: core.create_namespaced_persistent_volume_claim(namespace, k8s.V1PersistentVolumeClaim(
            metadata=k8s.V1ObjectMeta(name=claim),
            spec=k8s.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], storage_class_name="",
                                                 volume_name=volume, resources=k8s.V1VolumeResourceRequirements(
                                                     requests={"storage": size})))),
    ):
        try:
            create()
        except ApiException as error:
            if error.status != 409:
                raise
    wait_for(core.list_namespaced_persistent_volume_claim,
             lambda c: c.metadata.name == claim and c.status.phase == "Bound", timeout,
             f"the claim {claim} to bind", namespace=namespace)
