"""The two legs of the race. Each starts from a fresh fleet (the caller's), installs its controller to run as the
product documents (qfleet: the chart's command, arguments, environment and ServiceAccount, as a local process;
Argo Rollouts: its controller binary out of cluster with --kubeconfig holding its own ServiceAccount's token), then
runs the three phases on the same workload and returns their figures."""
from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from benchmarks.fleet import awaiting, workload as wl
from benchmarks.fleet.measure import Phase, PhaseClock
from localfleet import binaries, kube, processes
from localfleet.fleet import Fleet
from localfleet.operator_process import free_port, from_chart
from qfleet.api import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
CHART, CRD = REPO / "charts" / "qfleet", REPO / "crds" / "qfleet.io_quantizedmodels.yaml"
QFLEET_NAMESPACE, QFLEET_ACCOUNT = "qfleet-system", "qfleet-bench-qfleet"
ARGO_NAMESPACE, ARGO_ACCOUNT = "argo-rollouts", "argo-rollouts"
QUIET_SECONDS = 60


def _create(call, *args) -> None:
    try:
        call(*args)
    except ApiException as error:
        if error.status != 409:
            raise


def _namespace(core: k8s.CoreV1Api, name: str) -> None:
    _create(core.create_namespace, k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    kube.wait_for(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", 60,
                  f"ServiceAccount default in {name}", namespace=name)


def _apply_crd(api: k8s.ApiClient, manifest: dict) -> None:
    extensions = k8s.ApiextensionsV1Api(api)
    _create(extensions.create_custom_resource_definition, manifest)
    name = manifest["metadata"]["name"]
    kube.wait_for(extensions.list_custom_resource_definition, lambda c: c.metadata.name == name and any(
        cond.type == "Established" and cond.status == "True" for cond in (c.status.conditions or [])), 60,
        f"CRD {name} Established")


def _create_all(api: k8s.ApiClient, group: str, version: str, plural: str, documents: list[tuple[str, dict]]) -> None:
    objects = k8s.CustomObjectsApi(api)
    for namespace, document in documents:
        _create(objects.create_namespaced_custom_object, group, version, namespace, plural, document)


def _patch_all(api, group, version, plural, names: list[tuple[str, str]], patch: dict) -> None:
    objects = k8s.CustomObjectsApi(api)
    for namespace, name in names:
        objects.patch_namespaced_custom_object(group, version, namespace, plural, name, patch)


def _quiet(clock_factory) -> Phase:
    clock = clock_factory("quiet minute")
    time.sleep(QUIET_SECONDS)  # the measurement window itself: nothing to await, the point is that nothing happens
    return clock.end()


# ---- qfleet ----------------------------------------------------------------------------------------------------------
def run_qfleet(fleet: Fleet, work: wl.Workload, prometheus: str, work_dir: Path, timeout: float, log=print) \
        -> tuple[list[Phase], dict]:
    api = kube.client(fleet.kubeconfig)
    core = k8s.CoreV1Api(api)
    _apply_crd(api, yaml.safe_load(CRD.read_text()))
    for namespace in [QFLEET_NAMESPACE, *work.namespace_names()]:
        _namespace(core, namespace)
    for namespace in work.namespace_names():
        kube.bind_artifacts_claim(api, namespace, "qfleet-artifacts", f"bench-{namespace}", work_dir / "artifacts")
    helm = [str(binaries.path_of("helm")), f"--kubeconfig={fleet.kubeconfig}"]
    subprocess.run([*helm, "upgrade", "--install", "bench", str(CHART), "-n", QFLEET_NAMESPACE, "--set",
                    "crds.install=false", "--set", "replicas=0", "--set", f"serviceAccount.name={QFLEET_ACCOUNT}"],
                   check=True, capture_output=True, timeout=120)
    manifest = list(yaml.safe_load_all(subprocess.run([*helm, "get", "manifest", "bench", "-n", QFLEET_NAMESPACE],
                                                      check=True, capture_output=True, text=True).stdout))
    deployment = next(d for d in manifest if d and d["kind"] == "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = kube.service_account_kubeconfig(fleet.kubeconfig, api, QFLEET_NAMESPACE, account,
                                                 work_dir / "qfleet-kubeconfig", seconds=12 * 3600)
    # The chart's log level (INFO), not the tests' --verbose: DEBUG lines for every request cost CPU no cluster pays.
    operator, liveness = from_chart(manifest, kubeconfig, work_dir / "qfleet-operator.log", verbose=False)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    settings = {e["name"]: e["value"] for e in container.get("env", [])
                if e["name"].startswith("QFLEET_") and "value" in e}
    pid = operator.start()
    try:
        processes.wait_until("the operator's liveness endpoint", lambda: urllib.request.urlopen(
            liveness, timeout=2).status == 200, 60, process=operator.process, log=operator.log_path)
        user = f"system:serviceaccount:{QFLEET_NAMESPACE}:{account}"
        metrics = f"http://127.0.0.1:{operator.metrics_port}/metrics"

        def clock(name: str) -> PhaseClock:
            return PhaseClock(name, pid, fleet.audit_log, user, metrics)

        placement = work.placement()
        expected = set(placement)
        phases = []
        started = clock("1 apply -> serving")
        _create_all(api, GROUP, VERSION, PLURAL, [(ns, wl.quantized_model(name, work, prometheus))
                                                   for ns, name in placement])
        stable: dict[tuple[str, str], str] = {}

        def serving(obj: dict) -> bool:
            status = obj.get("status") or {}
            ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
            if ready.get("reason") == "RevisionServing" and ready.get("status") == "True":
                stable[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = status["revision"]["stable"]
                return True
            return False

        awaiting.all_reach(api, GROUP, VERSION, PLURAL, expected, serving, timeout, "qfleet models serving", log)
        phases.append(started.end())
        log(f"  phase 1: {phases[-1].wall_s:.0f} s")

        started = clock("2 update -> promoted")
        _patch_all(api, GROUP, VERSION, PLURAL, placement, {"spec": {"serving": {"image": wl.SERVING_IMAGES[1]}}})

        outcome: dict[tuple[str, str], str] = {}

        def decided(obj: dict) -> bool:
            """Promoted (a new stable), or rolled back by a gate: either way the canary is over. A rollback of
            these healthy canaries is a finding, counted in the results."""
            status = obj.get("status") or {}
            revision = status.get("revision") or {}
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if status.get("observedGeneration") != obj["metadata"]["generation"] or revision.get("canary"):
                return False
            if revision.get("stable") not in (None, stable[key]):
                outcome[key] = "promoted"
            elif status.get("phase") == "RolledBack":
                outcome[key] = "rolled back"
            return key in outcome

        awaiting.all_reach(api, GROUP, VERSION, PLURAL, expected, decided, timeout, "qfleet canaries decided", log)
        # done means done: the superseded revisions are down to zero (after qfleet's 30 s scale-down delay)
        awaiting.all_reach(api, "apps", "v1", "deployments",
                           {(ns, f"{n}-{stable[(ns, n)]}") for ns, n in placement if outcome[(ns, n)] == "promoted"},
                           _scaled_to_zero, timeout, "superseded Deployments at zero", log)
        phases.append(started.end())
        log(f"  phase 2: {phases[-1].wall_s:.0f} s")
        phases.append(_quiet(clock))
        rollbacks = sorted(f"{ns}/{n}" for (ns, n), result in outcome.items() if result == "rolled back")
        return phases, {"settings": settings, "rollbacks": len(rollbacks), "rolled_back": rollbacks[:20]}
    finally:
        operator.stop()


# ---- Argo Rollouts ---------------------------------------------------------------------------------------------------
def _argo_rbac(api: k8s.ApiClient, role: dict) -> None:
    rbac = k8s.RbacAuthorizationV1Api(api)
    core = k8s.CoreV1Api(api)
    _create(core.create_namespaced_service_account, ARGO_NAMESPACE,
            k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=ARGO_ACCOUNT)))
    role = {**role, "metadata": {"name": ARGO_ACCOUNT}}
    _create(rbac.create_cluster_role, role)
    _create(rbac.create_cluster_role_binding, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": ARGO_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ARGO_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ARGO_ACCOUNT, "namespace": ARGO_NAMESPACE}]})


def run_argo(fleet: Fleet, work: wl.Workload, prometheus: str, work_dir: Path, timeout: float, log=print) \
        -> tuple[list[Phase], dict]:
    api = kube.client(fleet.kubeconfig)
    core = k8s.CoreV1Api(api)
    assets = binaries.component_dir(binaries.ARGO_ROLLOUTS)
    for crd in sorted(assets.glob("*-crd.yaml")):
        _apply_crd(api, yaml.safe_load(crd.read_text()))
    for namespace in [ARGO_NAMESPACE, *work.namespace_names()]:
        _namespace(core, namespace)
    _argo_rbac(api, yaml.safe_load((assets / "argo-rollouts-clusterrole.yaml").read_text()))
    objects = k8s.CustomObjectsApi(api)
    for namespace in work.namespace_names():
        _create(objects.create_namespaced_custom_object, "argoproj.io", "v1alpha1", namespace, "analysistemplates",
                wl.analysis_template(work, prometheus))
    kubeconfig = kube.service_account_kubeconfig(fleet.kubeconfig, api, ARGO_NAMESPACE, ARGO_ACCOUNT,
                                                 work_dir / "argo-kubeconfig", seconds=12 * 3600)
    metrics_port, healthz_port = free_port(), free_port()
    log_path = work_dir / "argo-rollouts.log"
    with open(log_path, "ab") as out:
        controller = subprocess.Popen([str(binaries.path_of("rollouts-controller")), f"--kubeconfig={kubeconfig}",
                                       f"--metricsPort={metrics_port}", f"--healthzPort={healthz_port}",
                                       "--leader-elect=false", "--loglevel=warn"],
                                      stdout=out, stderr=subprocess.STDOUT)
    try:
        processes.wait_until("the Argo Rollouts controller's healthz", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{healthz_port}/healthz", timeout=2).status == 200, 60, process=controller,
            log=log_path)
        user = f"system:serviceaccount:{ARGO_NAMESPACE}:{ARGO_ACCOUNT}"

        def clock(name: str) -> PhaseClock:
            return PhaseClock(name, controller.pid, fleet.audit_log, user)

        placement = work.placement()
        expected = set(placement)
        phases = []
        started = clock("1 apply -> serving")
        _create_all(api, "argoproj.io", "v1alpha1", "rollouts",
                    [(ns, wl.rollout(name, ns, work)) for ns, name in placement])
        first: dict[tuple[str, str], str] = {}

        def healthy(obj: dict) -> bool:
            status = obj.get("status") or {}
            settled = (status.get("phase") == "Healthy" and status.get("stableRS")
                       and status.get("stableRS") == status.get("currentPodHash")
                       and str(status.get("observedGeneration")) == str(obj["metadata"]["generation"]))
            if settled:
                first[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = status["stableRS"]
            return bool(settled)

        awaiting.all_reach(api, "argoproj.io", "v1alpha1", "rollouts", expected, healthy, timeout,
                           "Rollouts Healthy", log)
        phases.append(started.end())
        log(f"  phase 1: {phases[-1].wall_s:.0f} s")

        started = clock("2 update -> promoted")
        _patch_all(api, "argoproj.io", "v1alpha1", "rollouts", placement,
                   {"spec": {"template": {"spec": {"containers": [{"name": "server",
                                                                    "image": wl.SERVING_IMAGES[1]}]}}}})

        first_seen = dict(first)
        aborted: set[tuple[str, str]] = set()

        def decided(obj: dict) -> bool:
            if (obj.get("status") or {}).get("abort"):  # an analysis failed: the rollout went back to stable
                aborted.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
                return True
            return _promoted_from(obj, first_seen)

        awaiting.all_reach(api, "argoproj.io", "v1alpha1", "rollouts", expected, decided, timeout,
                           "Rollouts decided", log)
        awaiting.all_reach(api, "apps", "v1", "replicasets",
                           {(ns, f"{n}-{first_seen[(ns, n)]}") for ns, n in placement if (ns, n) not in aborted},
                           _scaled_to_zero, timeout, "superseded ReplicaSets at zero", log)
        phases.append(started.end())
        log(f"  phase 2: {phases[-1].wall_s:.0f} s")
        phases.append(_quiet(clock))
        return phases, {"settings": {"qps": "40", "burst": "80", "rollout-threads": "10",
                                    "analysis-threads": "30", "note": "the controller's defaults"},
                        "rollbacks": len(aborted), "rolled_back": sorted(f"{ns}/{n}" for ns, n in aborted)[:20]}
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=20)
        except subprocess.TimeoutExpired:
            controller.kill()


def _scaled_to_zero(obj: dict) -> bool:
    return obj["spec"].get("replicas") == 0 and not (obj.get("status") or {}).get("replicas")


def _promoted_from(obj: dict, first: dict) -> bool:
    status = obj.get("status") or {}
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    return (status.get("phase") == "Healthy" and status.get("stableRS") == status.get("currentPodHash")
            and str(status.get("observedGeneration")) == str(obj["metadata"]["generation"])
            and status.get("stableRS") not in (None, first.get(key)))
