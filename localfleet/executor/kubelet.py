"""The executor's loop: register nodes and keep their Leases fresh, run the pods bound to them, report their status.

State (each pod's namespace, address and containers' shims) lives in `<run-dir>/executor/state.json`, so a restarted
executor adopts the pods that still run instead of orphaning or restarting them.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet.executor import netns, podspec, probes
from localfleet.executor.podspec import PodSetupError
from localfleet.processes import is_ours, stop as stop_process

log = logging.getLogger("localfleet.executor")
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
TERMINATION_MESSAGE_LIMIT = 4096


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    name: str
    shim_pid: int = 0
    restarts: int = 0
    started_at: str = ""
    exit: dict | None = None
    last_exit: dict | None = None
    ready: bool = False
    restart_after: float = 0.0


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    netns: str
    ip: str
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    failed: dict | None = None       # {reason, message}: the pod could not be set up
    stopping_since: float = 0.0
    released: bool = False           # its containers are done for good and its network is gone


class Executor:
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

    # ---- pod lifecycle -------------------------------------------------------------------------------------------
    def _pod_dir(self, uid: str) -> Path:
        return self.dir / "pods" / uid

    def _setup(self, pod: dict) -> PodRun:
        uid = pod["metadata"]["uid"]
        taken = {run.ip for run in self.pods.values()}
        address = next(a for a in self.subnet.pod_addresses() if str(a) not in taken)
        run = PodRun(uid=uid, namespace=pod["metadata"]["namespace"], name=pod["metadata"]["name"],
                     netns=netns.namespace_name(uid), ip=str(address))
        for container in pod["spec"]["containers"]:
            run.containers[container["name"]] = ContainerRun(container["name"])
        try:
            for container in pod["spec"]["containers"]:
                podspec.resolve_image(container["image"], self.images)
            netns.create_pod_network(uid, address, self.subnet)
        except PodSetupError as error:
            run.failed = {"reason": error.reason, "message": str(error)}
        return run

    def _start_container(self, run: PodRun, pod: dict, container: dict) -> None:
        state = run.containers[container["name"]]
        image = podspec.resolve_image(container["image"], self.images)
        pod_dir = self._pod_dir(run.uid)
        cdir = pod_dir / "containers" / container["name"]
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "exit.json").unlink(missing_ok=True)
        termination = cdir / "termination-log"
        termination.write_text("")
        sources = podspec.volume_sources(pod, pod_dir, self._claim_path, self._secret, self._config_map)
        env = podspec.container_env(pod, container, image, run.ip, self.host_ip, self._secret, self._config_map)
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if not command:
            raise PodSetupError("CreateContainerError", "the local executor needs an explicit command")
        spec = {"command": command, "env": env, "workingDir": container.get("workingDir"),
                "mounts": podspec.container_mounts(container, sources, termination, podspec.image_host_paths(image)),
                "exitFile": str(cdir / "exit.json"), "log": str(cdir / "output.log")}
        (cdir / "spec.json").write_text(json.dumps(spec))
        with open(cdir / "shim.log", "ab") as shim_log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", run.netns, "unshare", "--mount", "--propagation", "private",
                 sys.executable, "-m", "localfleet.executor.shim", str(cdir / "spec.json")],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=shim_log,
                cwd=str(Path(__file__).resolve().parents[2]))
        state.shim_pid, state.started_at, state.exit, state.ready = process.pid, _now(), None, False
        self.probes.reset(run.uid, container["name"])

    def _supervise(self, run: PodRun, pod: dict) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        for container in pod["spec"]["containers"]:
            state = run.containers[container["name"]]
            exit_file = self._pod_dir(run.uid) / "containers" / container["name"] / "exit.json"
            if state.shim_pid == 0:
                try:
                    self._start_container(run, pod, container)
                except PodSetupError as error:
                    run.failed = {"reason": error.reason, "message": str(error)}
                    return
                continue
            if state.exit is None and exit_file.exists():
                state.exit = json.loads(exit_file.read_text())
                state.exit["startedAt"] = state.started_at
                state.exit["message"] = (self._termination_message(run, container, state.exit["exitCode"])
                                         or state.exit.get("message", ""))
                state.ready = False
            elif state.exit is None and not is_ours(state.shim_pid, run.uid):
                state.exit = {"exitCode": 137, "reason": "ShimLost", "startedAt": state.started_at,
                              "finishedAt": _now(), "message": "the container's shim disappeared"}
            if state.exit is not None:
                code = state.exit["exitCode"]
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    if state.restart_after == 0.0:
                        state.restart_after = time.monotonic() + min(10.0, 1.0 * 2 ** min(state.restarts, 4))
                    elif time.monotonic() >= state.restart_after:
                        state.last_exit, state.restart_after = state.exit, 0.0
                        state.restarts += 1
                        self._start_container(run, pod, container)
                continue
            verdict = self.probes.check(run, pod, container, state)
            if verdict.restart:
                self._signal(state.shim_pid, signal.SIGKILL)
            state.ready = verdict.ready

    def _termination_message(self, run: PodRun, container: dict, code: int) -> str:
        cdir = self._pod_dir(run.uid) / "containers" / container["name"]
        message = (cdir / "termination-log").read_text(errors="replace")[:TERMINATION_MESSAGE_LIMIT]
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = (cdir / "output.log").read_text(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        return message

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    def _terminate(self, run: PodRun, pod: dict) -> bool:
        """SIGTERM, then SIGKILL after the grace period; True once every container has stopped."""
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace = 30 if grace is None else grace
        if run.stopping_since == 0.0:
            run.stopping_since = time.monotonic()
            for state in run.containers.values():
                if state.shim_pid and state.exit is None:
                    self._signal(state.shim_pid, signal.SIGTERM)
        alive = [s for s in run.containers.values() if s.shim_pid and is_ours(s.shim_pid, run.uid)]
        if alive and time.monotonic() - run.stopping_since < grace:
            return False
        self._teardown(run, grace=0)
        return True

    def _teardown(self, run: PodRun, grace: float) -> None:
        for state in run.containers.values():
            if state.shim_pid:
                stop_process(state.shim_pid, run.uid, grace_seconds=grace)
        netns.remove_pod_network(run.uid)

    def _delete_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0,
                                            body=k8s.V1DeleteOptions(grace_period_seconds=0,
                                                                     preconditions=k8s.V1Preconditions(uid=meta["uid"])))
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def shutdown_all(self) -> None:
        """Stops every pod's processes and removes their networks and the bridge (used by `localfleet down`)."""
        for run in list(self.pods.values()):
            self._teardown(run, grace=5)
        self.pods.clear()
        if self.subnet is not None:
            netns.remove_bridge(self.subnet)
        self._save()

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

    def _claim_path(self, namespace: str, claim: str) -> str:
        """A claim bound to a hostPath volume is that path; any other claim is a directory of the executor's."""
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
            if pvc.spec.volume_name:
                pv = self.core.read_persistent_volume(pvc.spec.volume_name)
                if pv.spec.host_path is not None:
                    return pv.spec.host_path.path
        except ApiException as error:
            if error.status != 404:
                raise
            raise PodSetupError("CreateContainerConfigError", f"persistentvolumeclaim {claim!r} not found") from None
        return str(self.dir / "claims" / namespace / claim)

    def _secret(self, namespace: str, name: str) -> dict:
        try:
            return self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as error:
            if error.status == 404:
                raise PodSetupError("CreateContainerConfigError", f"secret {name!r} not found") from None
            raise

    def _config_map(self, namespace: str, name: str) -> dict:
        try:
            return self.core.read_namespaced_config_map(name, namespace).data or {}
        except ApiException as error:
            if error.status == 404:
                raise PodSetupError("CreateContainerConfigError", f"configmap {name!r} not found") from None
            raise


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
