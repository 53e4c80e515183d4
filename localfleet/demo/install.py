"""Puts qfleet on a local fleet the way a platform team would, and takes it off again.

The fleet (started if it is not running), the CRD (`kubectl apply --server-side -f crds/`, the documented upgrade
path), the chart in the demo namespace (namespaced: a Role there, the ClusterRole only for nodes and CRDs) with
`replicas=0`, and the operator as a local process running the chart's own command with nothing but a token of the
chart's ServiceAccount. What was started is written to `<fleet run dir>/demo/state.json`, which `down` reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import binaries, kube, processes
from localfleet.fleet import Fleet
from localfleet.operator_process import OperatorProcess, from_chart

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qfleet"
CRDS = REPO / "crds"
RELEASE = "qfleet"
CLAIM = "qfleet-artifacts"


@dataclass
class DemoState:
    namespace: str
    started_fleet: bool
    operator_pid: int | None = None
    operator_metrics_port: int | None = None
    volume: str | None = None


class Installation:
    def __init__(self, fleet: Fleet, namespace: str, log=print):
        self.fleet, self.namespace, self.log = fleet, namespace, log
        self.work_dir = fleet.run_dir / "demo"
        self.state_file = self.work_dir / "state.json"

    @property
    def operator_log(self) -> Path:
        return self.work_dir / "operator.log"

    @property
    def artifacts_dir(self) -> Path:
        return self.work_dir / "artifacts"

    def api(self) -> k8s.ApiClient:
        return kube.client(self.fleet.kubeconfig)

    def state(self) -> DemoState | None:
        return DemoState(**json.loads(self.state_file.read_text())) if self.state_file.exists() else None

    def _save(self, state: DemoState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    # ---- up ------------------------------------------------------------------------------------------------------
    def up(self) -> DemoState:
        started_fleet = not self.fleet.is_up()
        if started_fleet:
            self.log("starting the local fleet (control plane, KWOK GPU pools, executor, Prometheus, Traefik)")
            self.fleet.up(log=self.log)
        previous = self.state()
        if previous is not None:  # an earlier demo left things behind: start from a clean namespace
            self.down(stop_fleet=False)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(exist_ok=True)
        state = DemoState(namespace=self.namespace, started_fleet=started_fleet or bool(previous and
                                                                                         previous.started_fleet))
        self._save(state)
        api = self.api()
        self._apply_crds()
        self._create_namespace(api)
        state.volume = self._artifacts_claim(api)
        self._save(state)
        self._helm("upgrade", "--install", RELEASE, str(CHART), "-n", self.namespace, "--set", "crds.install=false",
                   "--set", "clusterScoped=false", "--set", "replicas=0")
        self.log(f"installed the chart in {self.namespace} (replicas=0: the operator runs here, with the chart's "
                 "ServiceAccount token)")
        operator, liveness = self._operator(api)
        state.operator_pid = operator.start(detached=True)
        state.operator_metrics_port = operator.metrics_port
        self._save(state)
        processes.wait_until("the operator's liveness endpoint", lambda: urllib.request.urlopen(
            liveness, timeout=2).status == 200, 60, process=operator.process, log=self.operator_log)
        self.log(f"operator running (pid {state.operator_pid}, log {self.operator_log})")
        return state

    def _apply_crds(self) -> None:
        self._kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=qfleet-demo", "-f", str(CRDS))
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/quantizedmodels.qfleet.io")

    def _create_namespace(self, api: k8s.ApiClient) -> None:
        core = k8s.CoreV1Api(api)
        try:
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=self.namespace)))
        except ApiException as error:
            if error.status != 409:
                raise
        kube.wait_for(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", 60,
                      f"ServiceAccount default in {self.namespace}", namespace=self.namespace)

    def _artifacts_claim(self, api: k8s.ApiClient) -> str:
        """The claim the models name (pvc://qfleet-artifacts/...), bound to a hostPath volume in the demo's dir."""
        volume = f"qfleet-demo-{self.namespace}"[:63]
        kube.bind_artifacts_claim(api, self.namespace, CLAIM, volume, self.artifacts_dir)
        return volume

    def _operator(self, api: k8s.ApiClient) -> tuple[OperatorProcess, str]:
        manifest = list(yaml.safe_load_all(self._helm("get", "manifest", RELEASE, "-n", self.namespace)))
        deployment = next(d for d in manifest if d and d["kind"] == "Deployment")
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = kube.service_account_kubeconfig(self.fleet.kubeconfig, api, self.namespace, account,
                                                     self.work_dir / "operator-kubeconfig", seconds=24 * 3600)
        return from_chart(manifest, kubeconfig, self.operator_log)

    # ---- down ----------------------------------------------------------------------------------------------------
    def down(self, stop_fleet: bool = True) -> None:
        state = self.state()
        if state is None:
            self.log(f"demo: nothing recorded in {self.state_file}")
        else:
            if state.operator_pid and processes.stop(state.operator_pid, "qfleet.main"):
                self.log(f"stopped the operator (pid {state.operator_pid})")
            if self.fleet.is_up():
                self._remove_from_cluster(state)
            self.state_file.unlink(missing_ok=True)
        if stop_fleet and state is not None and state.started_fleet and self.fleet.state() is not None:
            self.fleet.down(log=self.log)

    def _remove_from_cluster(self, state: DemoState) -> None:
        core = k8s.CoreV1Api(self.api())  # models carry no finalizer: they go with the namespace
        self._helm("uninstall", RELEASE, "-n", state.namespace, "--wait", "--timeout=60s", check=False)
        for delete in (lambda: core.delete_namespace(state.namespace),
                       lambda: core.delete_persistent_volume(state.volume or "")):
            try:
                delete()
            except ApiException as error:
                if error.status != 404:
                    raise
        processes.wait_until(f"namespace {state.namespace} to be deleted", lambda: _gone(core.read_namespace,
                                                                                         state.namespace), 180)
        self.log(f"removed the demo's namespace {state.namespace}, its volume and the chart")

    # ---- tools ---------------------------------------------------------------------------------------------------
    def _helm(self, *args: str, check: bool = True) -> str:
        return _run([str(binaries.path_of("helm")), f"--kubeconfig={self.fleet.kubeconfig}", *args], check)

    def _kubectl(self, *args: str) -> str:
        return _run([str(binaries.path_of("kubectl")), f"--kubeconfig={self.fleet.kubeconfig}", *args], True)


def _gone(read, name: str) -> bool:
    try:
        read(name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _run(argv: list[str], check: bool) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                            env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout

