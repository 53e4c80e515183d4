"""The executor's loop: register nodes and keep their Leases fresh, run the pods bound to them, report their status.

State (each pod's namespace, address and containers' shims) lives in `<run-dir>/executor/state.json`, so a restarted
executor adopts the pods that still run instead of orphaning or restarting them.
"""
from __future__ import annotations

import datetime
import json
import logging
import signal
import time
from dataclasses import asdict
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet.executor import netns, probes
from localfleet.executor.pod_lifecycle import PodLifecycle
from localfleet.executor.pod_runs import ContainerRun, PodRun, _now
from localfleet.executor.pod_status import PodStatusReporting
from localfleet.processes import stop as stop_process

log = logging.getLogger("localfleet.executor")
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10


class Executor(PodLifecycle, PodStatusReporting):
    def __init__(self, api: k8s.ApiClient, run_dir: Path, nodes: list[dict], images: dict, host_ip: str = "127.0.0.1"):
        self.core = k8s.CoreV1Api(api)
        self.leases = k8s.CoordinationV1Api(api)
        self.dir = run_dir / "executor"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_manifests = nodes
        self.node_names = [n["metadata"]["name"] for n in nodes]
        self.images = images
        self.host_ip = host_ip
        self.probes = probes.ProbeBook()
        self.pods: dict[str, PodRun] = {}
        self.subnet: netns.Subnet | None = None
        self._last_lease = 0.0
        self._stopping = False
        self._sent: dict[str, str] = {}
        self._load()

    # ---- persistence -------------------------------------------------------------------------------------------
    def _state_file(self) -> Path:
        return self.dir / "state.json"

    def _load(self) -> None:
        if not self._state_file().exists():
            return
        state = json.loads(self._state_file().read_text())
        self.subnet = netns.Subnet(state["subnet"]) if state.get("subnet") is not None else None
        for uid, raw in state.get("pods", {}).items():
            containers = {n: ContainerRun(**c) for n, c in raw.pop("containers").items()}
            self.pods[uid] = PodRun(**raw, containers=containers)

    def _save(self) -> None:
        state = {"subnet": self.subnet.index if self.subnet else None,
                 "pods": {uid: asdict(run) for uid, run in self.pods.items()}}
        tmp = self._state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self._state_file())

    # ---- nodes ---------------------------------------------------------------------------------------------------
    def register_nodes(self) -> None:
        if self.subnet is None:
            self.subnet = netns.claim_subnet()
        netns.ensure_bridge(self.subnet)
        self._save()
        for manifest in self.node_manifests:
            try:
                self.core.create_node(manifest)
            except ApiException as error:
                if error.status != 409:
                    raise
            self.core.patch_node_status(manifest["metadata"]["name"], {"status": self._node_status(manifest)})
        self.renew_leases(force=True)

    def _node_status(self, manifest: dict) -> dict:
        now = _now()
        conditions = [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now,
                       "lastTransitionTime": now} for t, s, r, m in (
            ("Ready", "True", "KubeletReady", "the local executor is running pods"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            ("PIDPressure", "False", "KubeletHasSufficientPID", ""))]
        return {**manifest["status"], "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": self.host_ip},
                              {"type": "Hostname", "address": manifest["metadata"]["name"]}],
                "nodeInfo": {"kubeletVersion": "localfleet-executor", "containerRuntimeVersion": "localfleet://0",
                             "operatingSystem": "linux", "architecture": "amd64", "osImage": "", "kernelVersion": "",
                             "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}

    def renew_leases(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_lease < LEASE_RENEW_SECONDS:
            return
        now = datetime.datetime.now(datetime.UTC)
        for name in self.node_names:
            try:
                self.leases.patch_namespaced_lease(name, "kube-node-lease", {"spec": {
                    "holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})
            except ApiException as error:
                if error.status != 404:
                    raise
                self.leases.create_namespaced_lease("kube-node-lease", k8s.V1Lease(
                    metadata=k8s.V1ObjectMeta(name=name, namespace="kube-node-lease"),
                    spec=k8s.V1LeaseSpec(holder_identity=name, lease_duration_seconds=LEASE_SECONDS,
                                         renew_time=now)))
        self._last_lease = time.monotonic()

    # ---- the loop ------------------------------------------------------------------------------------------------
    def run(self, interval: float = 0.3) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        self.register_nodes()
        while not self._stopping:
            try:
                self.sync()
            except ApiException as error:
                log.warning("API error during sync: %s %s %s", error.status, error.reason, (error.body or "")[:600])
            except Exception:  # keep the node alive; the next sync retries
                log.exception("Sync failed")
            time.sleep(interval)

    def sync(self) -> None:
        try:
            self.renew_leases()
        except ApiException as error:  # a missed renewal must not stop the pods from being run
            log.warning("Lease renewal failed: %s %s", error.status, error.reason)
        seen = set()
        for node in self.node_names:
            for pod in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
                raw = self.core.api_client.sanitize_for_serialization(pod)
                seen.add(raw["metadata"]["uid"])
                self.sync_pod(raw)
        for uid in [u for u in self.pods if u not in seen]:
            self._teardown(self.pods.pop(uid), grace=0)
        self._save()

    def sync_pod(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        run = self.pods.get(uid)
        if pod["metadata"].get("deletionTimestamp"):
            if run is None or self._terminate(run, pod):
                self.pods.pop(uid, None)
                self._delete_pod(pod)
            return
        if run is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            run = self._setup(pod)
            self.pods[uid] = run
            self._save()
        if run.failed is None and not run.released:
            self._supervise(run, pod)
        phase = self._report(run, pod)
        if phase in ("Succeeded", "Failed") and not run.released:
            netns.remove_pod_network(run.uid)  # as a kubelet tears down a finished pod's sandbox
            run.released = True
            self._save()

    def shutdown_all(self) -> None:
        """Stops every pod's processes and removes their networks and the bridge (used by `localfleet down`)."""
        for run in list(self.pods.values()):
            self._teardown(run, grace=5)
        self.pods.clear()
        if self.subnet is not None:
            netns.remove_bridge(self.subnet)
        self._save()


def cleanup(run_dir: Path) -> list[str]:
    """What `localfleet down` does after stopping the executor: stop every pod process it recorded, remove the pods'
    network namespaces and veths and the fleet's bridge. Returns the namespaces removed."""
    state_file = run_dir / "executor" / "state.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    removed = []
    for uid, pod in state.get("pods", {}).items():
        for container in pod.get("containers", {}).values():
            if container.get("shim_pid"):
                stop_process(container["shim_pid"], uid, grace_seconds=5)
        netns.remove_pod_network(uid)
        removed.append(pod["netns"])
    if state.get("subnet") is not None:
        netns.remove_bridge(netns.Subnet(state["subnet"]))
    state_file.unlink(missing_ok=True)  # the executor may have removed it while stopping
    return removed
