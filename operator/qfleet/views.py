"""Objects as the decisions see them: a Node as admission reads it, a Job with its pods as the pipeline reads it, a
serving Deployment as the release reads it. Plain conversions of the dicts the watches deliver; no API calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from qfleet.api.jobs import parse_summary
from qfleet.gpus import RESOURCE_GPU
from qfleet.manifests.names import LABEL_REVISION
from qfleet.pipeline import JobState, JobView, NodeView
from qfleet.pipeline.release_types import DeploymentView


def node_view(node: Mapping[str, Any]) -> NodeView:
    """A Node (as a dict, the way Kopf indexes deliver it) seen as the admission check needs it."""
    metadata, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    blocked = any(t.get("effect") == "NoSchedule" and t.get("key", "").startswith("node.kubernetes.io/")
                  for t in spec.get("taints") or [])
    try:
        gpus = int(str((status.get("allocatable") or {}).get(RESOURCE_GPU, "0")))
    except ValueError:
        gpus = 0
    return NodeView(name=metadata.get("name", ""), labels=dict(metadata.get("labels") or {}), allocatable_gpus=gpus,
                    schedulable=ready and not spec.get("unschedulable", False) and not blocked)


def job_view(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> JobView:
    """A Job and its pods: finished or not, the step's summary (termination message) and why it failed. A finished
    Job whose pods are all gone is finished with what the Job says (its summary went with them)."""
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    pods = list(pods)
    terminated = [_terminated(p) for p in pods]
    terminated = [t for t in terminated if t is not None]
    terminated.sort(key=lambda t: t.get("finishedAt") or "")
    last = terminated[-1] if terminated else {}
    name, uid = job["metadata"]["name"], job["metadata"].get("uid")
    finished = {"Complete", "SuccessCriteriaMet", "Failed", "FailureTarget"} & set(conditions)
    if finished and pods and not terminated:
        # The Job's verdict arrived before its pod's final state (two watches): the summary is in the latter, and a
        # result once recorded is the record, so wait for the pod (its event wakes the model).
        return JobView(name, JobState.RUNNING, uid=uid)
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        succeeded = [t for t in terminated if t.get("exitCode") == 0]
        done = conditions.get("Complete") or conditions.get("SuccessCriteriaMet") or {}
        return JobView(name, JobState.SUCCEEDED, parse_summary((succeeded or [last])[-1].get("message")),
                       finished_at=(job.get("status") or {}).get("completionTime") or done.get("lastTransitionTime"),
                       uid=uid)
    if "Failed" in conditions or "FailureTarget" in conditions:
        failed = conditions.get("Failed") or conditions.get("FailureTarget") or {}
        return JobView(name, JobState.FAILED, parse_summary(last.get("message")), _failure(failed, last),
                       finished_at=failed.get("lastTransitionTime"), uid=uid)
    return JobView(name, JobState.RUNNING, waiting=_waiting(pods), uid=uid)


def _waiting(pods: Iterable[Mapping[str, Any]]) -> str:
    """The scheduler's or kubelet's complaint about a pod that has not started, e.g. a missing claim."""
    for pod in pods:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f"{condition.get('reason')}: {condition.get('message', '')}"[:500]
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                return f"{waiting.get('reason')}: {waiting.get('message', '')}"[:500]
    return ""


def _terminated(pod: Mapping[str, Any]) -> dict | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return None


def _failure(condition: Mapping[str, Any], terminated: Mapping[str, Any]) -> str:
    parts = []
    if terminated:
        parts.append(f"exit code {terminated.get('exitCode')}")
        message = (terminated.get("message") or "").strip()
        summary = parse_summary(message)
        if summary.get("error"):
            message = str(summary["error"])
        if message:
            parts.append(message.splitlines()[-1][:500])
    if condition.get("reason") and condition.get("reason") != "BackoffLimitExceeded":
        parts.append(f"{condition.get('reason')}: {condition.get('message', '')}".strip())
    return "; ".join(parts) or str(condition.get("message") or "the Job failed")


def deployment_view(deployment: Mapping[str, Any]) -> DeploymentView:
    """A serving Deployment (as Kopf indexes deliver it): its revision, desired and ready replicas."""
    metadata, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    return DeploymentView(name=metadata["name"], revision=(metadata.get("labels") or {}).get(LABEL_REVISION, ""),
                          replicas=int(spec.get("replicas", 1)), ready_replicas=int(status.get("readyReplicas") or 0))
