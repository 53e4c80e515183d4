"""The calibration, build and evaluation Jobs: one per (revision, KV format, step)."""

from __future__ import annotations

from dataclasses import dataclass

from qfleet.api.jobs import ARTIFACTS_MOUNT, PROGRAM, TERMINATION_MESSAGE_PATH, Step, StepInvocation
from qfleet.api.spec import QuantizedModelSpec
from qfleet.gpus import LABEL_COMPUTE_MAJOR, LABEL_COMPUTE_MINOR, RESOURCE_GPU
from qfleet.manifests.names import (
    LABEL_KV_FORMAT,
    LABEL_MODEL,
    LABEL_REVISION,
    LABEL_STEP,
    MANAGED_BY,
    child_name,
    owner_reference,
)

ACTIVE_DEADLINE_SECONDS = {Step.CALIBRATE: 4 * 3600, Step.BUILD: 6 * 3600, Step.EVALUATE: 2 * 3600}
BACKOFF_LIMIT = 1
RUNTIME_UID = 1000


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str


def job_name(model: str, revision: str, kv_format: str, step: Step) -> str:
    return child_name(model, revision, kv_format, step.value)


def step_job(owner: Owner, spec: QuantizedModelSpec, revision: str, kv_format: str,
             compute_capability: tuple[int, int], invocation: StepInvocation) -> dict:
    step = invocation.step
    labels = {**MANAGED_BY, "app.kubernetes.io/name": "qfleet-runtime", "app.kubernetes.io/component": step.value,
              LABEL_MODEL: owner.name, LABEL_REVISION: revision, LABEL_KV_FORMAT: kv_format, LABEL_STEP: step.value}
    # Pinned to the compute capability the engine is built for, on top of the user's pool selector.
    node_selector = {**(spec.node_pool.node_selector or {}), LABEL_COMPUTE_MAJOR: str(compute_capability[0]),
                     LABEL_COMPUTE_MINOR: str(compute_capability[1])}
    volumes = [{"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if invocation.artifacts.claim:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": invocation.artifacts.claim}})
        mounts.append({"name": "artifacts", "mountPath": ARTIFACTS_MOUNT})
    env = [{"name": name, "value": value} for name, value in invocation.env]
    if spec.model.token_secret_ref is not None:
        ref = spec.model.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    container = {
        "name": step.value,
        "image": spec.runtime_image,
        "command": [PROGRAM],
        "args": list(invocation.args),
        "env": env,
        "resources": {"limits": {RESOURCE_GPU: str(spec.node_pool.gpus_per_replica)}},
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": node_selector,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                            "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_pool.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", exclude_none=True) for t in spec.node_pool.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(owner.name, revision, kv_format, step), "namespace": owner.namespace,
                     "labels": labels, "ownerReferences": [owner_reference(owner.name, owner.uid)]},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS[step],
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
