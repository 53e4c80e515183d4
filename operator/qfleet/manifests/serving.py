"""Serving children: a Deployment per revision, the stable and canary Services, and the HTTPRoute weight edit.

Services select pods by revision (not by role), so promoting a canary moves a selector instead of relabelling pods
(which would restart them). The role is recorded on the Deployment for people and dashboards.
"""

from __future__ import annotations

import copy

from qfleet.api.jobs import (
    ARTIFACTS_MOUNT,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    PROGRAM,
    TRAFFIC_SAMPLE_MOUNT,
    ArtifactLocation,
    samples_traffic,
    serve_args,
    traffic_sample,
)
from qfleet.api.spec import QuantizedModelSpec
from qfleet.gpus import LABEL_COMPUTE_MAJOR, LABEL_COMPUTE_MINOR, RESOURCE_GPU
from qfleet.manifests.jobs import Owner, RUNTIME_UID
from qfleet.manifests.names import (
    LABEL_KV_FORMAT,
    LABEL_MODEL,
    LABEL_REVISION,
    LABEL_ROLE,
    MANAGED_BY,
    child_name,
    owner_reference,
)

STABLE, CANARY = "stable", "canary"


def deployment_name(model: str, revision: str) -> str:
    return child_name(model, revision)


def service_name(model: str, role: str) -> str:
    return child_name(model, role)


def serving_deployment(owner: Owner, spec: QuantizedModelSpec, revision: str, kv_format: str,
                       compute_capability: tuple[int, int], replicas: int, role: str) -> dict:
    pod_labels = {**MANAGED_BY, "app.kubernetes.io/name": "qfleet-server", LABEL_MODEL: owner.name,
                  LABEL_REVISION: revision, LABEL_KV_FORMAT: kv_format}
    resources = (spec.serving.resources.model_dump(mode="json", exclude_none=True)
                 if spec.serving.resources else {})
    resources.setdefault("limits", {})[RESOURCE_GPU] = str(spec.node_pool.gpus_per_replica)
    artifacts = ArtifactLocation.parse(spec.artifacts.uri, revision, kv_format)
    volumes = [{"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if artifacts.claim:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": artifacts.claim,
                                                                       "readOnly": True}})
        mounts.append({"name": "artifacts", "mountPath": ARTIFACTS_MOUNT, "readOnly": True})
    sample = traffic_sample(spec.artifacts.uri, owner.name)
    if samples_traffic(spec) and sample.claim:
        # The one writable path of a serving pod: the model's traffic sample, not the artifacts around it.
        volumes.append({"name": "traffic-sample", "persistentVolumeClaim": {"claimName": sample.claim}})
        mounts.append({"name": "traffic-sample", "mountPath": TRAFFIC_SAMPLE_MOUNT,
                       "subPath": sample.path.removeprefix(ARTIFACTS_MOUNT).strip("/")})
    container = {
        "name": "server", "image": spec.serving_image, "command": [PROGRAM],
        "args": list(serve_args(spec, revision, kv_format, owner.name)),
        "env": [{"name": var.name, "value": var.value} for var in spec.runtime.env or ()],
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "initialDelaySeconds": 30,
                          "periodSeconds": 10, "failureThreshold": 6},
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec = {
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "nodeSelector": {**(spec.node_pool.node_selector or {}), LABEL_COMPUTE_MAJOR: str(compute_capability[0]),
                         LABEL_COMPUTE_MINOR: str(compute_capability[1])},
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                            "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30, "containers": [container], "volumes": volumes,
    }
    if spec.node_pool.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", exclude_none=True) for t in spec.node_pool.tolerations]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": deployment_name(owner.name, revision), "namespace": owner.namespace,
                     "labels": {**pod_labels, LABEL_ROLE: role},
                     "ownerReferences": [owner_reference(owner.name, owner.uid)]},
        "spec": {"replicas": replicas,
                 "selector": {"matchLabels": {LABEL_MODEL: owner.name, LABEL_REVISION: revision}},
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}},
    }


def role_service(owner: Owner, role: str, revision: str) -> dict:
    """`<model>-stable` / `<model>-canary`: the HTTPRoute's backends, pointed at a revision's pods."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(owner.name, role), "namespace": owner.namespace,
                     "labels": {**MANAGED_BY, LABEL_MODEL: owner.name, LABEL_ROLE: role},
                     "ownerReferences": [owner_reference(owner.name, owner.uid)]},
        "spec": {"selector": {LABEL_MODEL: owner.name, LABEL_REVISION: revision},
                 "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"}]},
    }


def weighted_rules(route: dict, stable_service: str, canary_service: str, stable_weight: int,
                   canary_weight: int) -> list[dict]:
    """The route's rules with only the weights of the stable and canary backendRefs changed; a rule that sends to
    the stable Service gains a canary backendRef beside it (same port). Everything else in the route is kept."""
    rules = copy.deepcopy(route.get("spec", {}).get("rules") or [])
    for rule in rules:
        refs = rule.get("backendRefs") or []
        stable = next((r for r in refs if r.get("name") == stable_service and r.get("kind", "Service") == "Service"),
                      None)
        if stable is None:
            continue
        canary = next((r for r in refs if r.get("name") == canary_service), None)
        if canary is None:
            canary = {key: value for key, value in stable.items() if key in ("group", "kind", "namespace", "port")}
            canary["name"] = canary_service
            refs.append(canary)
        stable["weight"], canary["weight"] = stable_weight, canary_weight
        rule["backendRefs"] = refs
    return rules
