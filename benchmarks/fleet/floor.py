"""The fleet's own floor for phase 1: the Jobs and Deployments qfleet creates for N models (calibrate, build,
evaluate, each after the previous one succeeded, then one serving Deployment), created directly by this script as
soon as each can be, with no controller of ours in between. The time the fleet's controllers (Job, ReplicaSet,
scheduler, KWOK) take for that is the floor qfleet's phase 1 is compared with."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException

from benchmarks.fleet import awaiting, workload as wl
from benchmarks.fleet.legs import _namespace
from benchmarks.fleet.measure import MachineClock, Phase
from localfleet import kube
from localfleet.fleet import Fleet

STEPS = ("calibrate", "build", "evaluate")


def job(model: str, step: str) -> dict:
    """A step Job shaped like qfleet's: the labels KWOK's step stage keys on, 1 GPU, the artifacts claim."""
    labels = {"qfleet.io/model": model, "qfleet.io/step": step, "qfleet.io/kv-format": "fp8",
              "qfleet.io/revision": "floor", "bench.qfleet.io/floor": "true"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{model}-{step}", "labels": labels},
            "spec": {"backoffLimit": 1, "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never", "nodeSelector": {"nvidia.com/gpu.family": "blackwell"},
                "containers": [{"name": step, "image": "ghcr.io/qfleet/qfleet-runtime:0.1.0",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                                "volumeMounts": [{"name": "artifacts", "mountPath": "/artifacts"}]}],
                "volumes": [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "qfleet-artifacts"}}]}}}}


def deployment(model: str) -> dict:
    labels = {"bench.qfleet.io/floor-server": model}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{model}-floor"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                     "spec": {"nodeSelector": {"nvidia.com/gpu.family": "blackwell"},
                              "containers": [{"name": "server", "image": wl.SERVING_IMAGES[0],
                                              "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


def run_floor(fleet: Fleet, work: wl.Workload, prometheus: str, work_dir: Path, timeout: float, log=print) \
        -> tuple[list[Phase], dict]:
    api = kube.client(fleet.kubeconfig)
    core, batch, apps = k8s.CoreV1Api(api), k8s.BatchV1Api(api), k8s.AppsV1Api(api)
    for namespace in work.namespace_names():
        _namespace(core, namespace)
        kube.bind_artifacts_claim(api, namespace, "qfleet-artifacts", f"floor-{namespace}", work_dir / "artifacts")
    placement = work.placement()
    machine = MachineClock()
    started = time.monotonic()
    for namespace, model in placement:
        batch.create_namespaced_job(namespace, job(model, STEPS[0]))
    remaining = {(ns, model): 0 for ns, model in placement}  # index of the step running
    selector = "bench.qfleet.io/floor=true"

    def advance(found) -> None:
        """The next step of a model whose running step's Job succeeded; any other Job, or one seen again, is
        ignored, so a Job met both in a listing and in a watch acts once."""
        key = (found.metadata.namespace, found.metadata.labels["qfleet.io/model"])
        if key not in remaining or not (found.status and found.status.succeeded):
            return
        if STEPS[remaining[key]] != found.metadata.labels["qfleet.io/step"]:
            return
        remaining[key] += 1
        if remaining[key] < len(STEPS):
            batch.create_namespaced_job(key[0], job(key[1], STEPS[remaining[key]]))
        else:
            apps.create_namespaced_deployment(key[0], deployment(key[1]))
            del remaining[key]

    deadline = started + timeout
    while remaining and time.monotonic() < deadline:
        # Level-based: every round starts from a listing, so a watch that ends early (a resourceVersion too old for
        # the apiserver's watch cache under a thousand nodes' churn) loses no Job's success.
        listing = batch.list_job_for_all_namespaces(label_selector=selector)
        for found in listing.items:
            advance(found)
        try:
            for event in watch.Watch().stream(batch.list_job_for_all_namespaces, label_selector=selector,
                                              resource_version=listing.metadata.resource_version, timeout_seconds=30):
                if event["type"] != "ERROR":
                    advance(event["object"])
                if not remaining:
                    break
        except ApiException as error:
            if error.status != 410:  # Gone: the next round lists again
                raise
    if remaining:
        raise awaiting.NotReached(f"floor: {len(remaining)} models' Jobs unfinished after {timeout:.0f} s")
    awaiting.all_reach(api, "apps", "v1", "deployments", {(ns, f"{m}-floor") for ns, m in placement},
                       lambda d: (d.get("status") or {}).get("readyReplicas") == 1, timeout,
                       "floor Deployments ready", log)
    wall = time.monotonic() - started
    log(f"  floor: {wall:.0f} s")
    floor = Phase("1 apply -> serving (floor)", wall, Counter(), 0.0, 0.0, machine_cpu_s=machine.busy(),
                  cpu_by_process=machine.by_process())
    return [floor], {"settings": {
        "what": "3 Jobs then 1 Deployment per model, created by the script as soon as each can be"}}
