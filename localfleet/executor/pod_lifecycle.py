"""A pod's life on the executor: its network and containers set up, its containers supervised (exits, restarts,
probes), and its termination with the grace period."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet.executor import netns, podspec
from localfleet.executor.pod_runs import ContainerRun, PodRun, _now
from localfleet.executor.podspec import PodSetupError
from localfleet.executor.probes import ProbeBook
from localfleet.processes import is_ours, stop as stop_process

TERMINATION_MESSAGE_LIMIT = 4096


class PodLifecycle:
    """Setting up, supervising and stopping pods (a mixin of localfleet.executor.kubelet.Executor)."""

    core: k8s.CoreV1Api
    dir: Path
    images: dict
    host_ip: str
    probes: ProbeBook
    pods: dict[str, PodRun]
    subnet: netns.Subnet | None

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
                    # To the shim alone, which passes it to the container's main process, as a container runtime
                    # signals PID 1: a server that drains before stopping its children (qfleet-runtime serve)
                    # must not have them stopped under it by a signal to the whole group.
                    try:
                        os.kill(state.shim_pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
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

    # ---- what a pod's volumes and env read from the API ----------------------------------------------------------
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
