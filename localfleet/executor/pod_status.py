"""The pod status the executor reports: each container's state, the pod's phase and conditions, patched only when
they change."""
from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet.executor.pod_runs import PodRun, _now


class PodStatusReporting:
    """Reporting a pod's status to the API server (a mixin of localfleet.executor.kubelet.Executor)."""

    core: k8s.CoreV1Api
    host_ip: str
    _sent: dict[str, str]

    # ---- status --------------------------------------------------------------------------------------------------
    def _report(self, run: PodRun, pod: dict) -> str:
        status = self._pod_status(run, pod)
        digest = json.dumps(status, sort_keys=True)
        if self._sent.get(run.uid) == digest:
            return status["phase"]
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
        except ApiException as error:
            if error.status != 404:
                raise
        self._sent[run.uid] = digest
        return status["phase"]

    def _pod_status(self, run: PodRun, pod: dict) -> dict:
        policy = pod["spec"].get("restartPolicy", "Always")
        statuses = []
        for container in pod["spec"]["containers"]:
            state = run.containers[container["name"]]
            entry: dict[str, Any] = {"name": container["name"], "image": container["image"], "imageID": "",
                                     "restartCount": state.restarts, "ready": state.ready,
                                     "started": state.exit is None and state.shim_pid != 0}
            if run.failed is not None:
                entry["state"] = {"waiting": run.failed}
            elif state.exit is not None:
                entry["state"] = {"terminated": _terminated(state.exit)}
            elif state.shim_pid:
                entry["state"] = {"running": {"startedAt": state.started_at}}
            else:
                entry["state"] = {"waiting": {"reason": "ContainerCreating"}}
            if state.last_exit is not None:
                entry["lastState"] = {"terminated": _terminated(state.last_exit)}
            statuses.append(entry)
        phase = _phase(run, statuses, policy)
        all_ready = bool(statuses) and all(s["ready"] for s in statuses)
        transition = run.containers and next(iter(run.containers.values())).started_at or _now()
        conditions = [{"type": t, "status": s, "lastTransitionTime": transition} for t, s in (
            ("PodReadyToStartContainers", "True"), ("Initialized", "True"), ("PodScheduled", "True"),
            ("ContainersReady", "True" if all_ready else "False"), ("Ready", "True" if all_ready else "False"))]
        return {"phase": phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": self.host_ip,
                "hostIPs": [{"ip": self.host_ip}], "containerStatuses": statuses, "conditions": conditions,
                "startTime": pod.get("status", {}).get("startTime") or transition}


def _terminated(exit: dict) -> dict:
    code = exit["exitCode"]
    return {"exitCode": code, "reason": exit.get("reason") or ("Completed" if code == 0 else "Error"),
            "message": exit.get("message") or None, "startedAt": exit.get("startedAt"),
            "finishedAt": exit.get("finishedAt")}


def _phase(run: PodRun, statuses: list[dict], policy: str) -> str:
    if run.failed is not None:
        return "Pending" if policy == "Always" else "Failed"  # as a kubelet: Deployments' pods wait, Jobs' fail
    states = [s["state"] for s in statuses]
    if any("running" in s for s in states):
        return "Running"
    terminated = [s["terminated"] for s in states if "terminated" in s]
    if len(terminated) == len(states) and states:
        if all(t["exitCode"] == 0 for t in terminated) and policy != "Always":
            return "Succeeded"
        if policy == "Never" or (policy == "OnFailure" and all(t["exitCode"] == 0 for t in terminated)):
            return "Failed" if any(t["exitCode"] != 0 for t in terminated) else "Succeeded"
        return "Running"
    return "Pending"
