"""The Helm chart on the local fleet: rendered manifests accepted by a real apiserver, `helm install`, the operator
running with nothing but its ServiceAccount's token (the least-privilege proof), and `helm uninstall` keeping the CRD.

CRD ownership: the session fixture `crd` creates the CRD without Helm, so the installs that share it use
`--set crds.install=false`. The CRD-installing path is tested twice without stealing it for good: every ci/ scenario,
CRD included, goes through a server-side dry run, and the uninstall test adopts the session CRD with
`--take-ownership` (Helm 3.17+), uninstalls, and checks that `helm.sh/resource-policy: keep` left it (and the
QuantizedModels) in place.
"""
from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import binaries, kube
from localfleet.operator_process import from_chart
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from tests.integration.test_pipeline import condition, model

pytestmark = pytest.mark.usefixtures("artifacts_claim")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qfleet"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NO_NODE = ["--set", "nodeSelector.qfleet\\.io/test-no-such-node=none"]
"""The chart's own operator pod must stay Pending: the operator under test runs as a subprocess."""


def helm(fleet, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(binaries.path_of("helm")), f"--kubeconfig={fleet.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def kubectl(fleet, *args: str, stdin: str | None = None, kubeconfig: Path | None = None) \
        -> subprocess.CompletedProcess:
    return subprocess.run([str(binaries.path_of("kubectl")), f"--kubeconfig={kubeconfig or fleet.kubeconfig}", *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture
def objects(api) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


@pytest.fixture
def release(fleet, namespace):
    """A release name; whatever it installed is uninstalled afterwards (its ClusterRoles outlive the namespace)."""
    name = f"qf-{uuid.uuid4().hex[:6]}"
    yield name
    helm(fleet, "uninstall", name, "-n", namespace, "--wait", "--timeout=60s", check=False)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_scenario_passes_a_server_side_dry_run(fleet, api, namespace, values):
    rendered = subprocess.run([str(binaries.path_of("helm")), "template", "qf", str(CHART), "-n", namespace,
                               "-f", str(values)], capture_output=True, text=True, timeout=60, check=True).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    served = {group.name for group in k8s.ApisApi(api).get_api_versions().groups}
    # The local fleet runs no prometheus-operator: a PodMonitor is checked only where its API is served.
    skipped = [d for d in documents if d["apiVersion"].split("/")[0] not in served and "/" in d["apiVersion"]]
    assert {d["kind"] for d in skipped} <= {"PodMonitor"}
    kept = [d for d in documents if d not in skipped]
    result = kubectl(fleet, "apply", "--server-side", "--dry-run=server", "--force-conflicts",
                     "--field-manager=qfleet-chart-test", "-n", namespace, "-f", "-",
                     stdin=yaml.safe_dump_all(kept))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == len(kept)


LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d ", re.MULTILINE)
# The apiserver's message, or the operator's line for a visit it dropped because of it (kube.namespace_terminating).
TERMINATING = re.compile(r"in namespace (\S+) because it is being terminated"
                         r"|QuantizedModel ([^/\s]+)/\S+ stopped: its namespace is being deleted")


def refusals(log: str) -> list[str]:
    """The operator's log records (a record with its traceback) that show a 403, less those of namespaces an earlier
    test is still deleting: the apiserver refuses writes there ("is being terminated"), which is the namespace
    lifecycle, not RBAC. The request line of such a 403 does not say why, so its namespace is matched."""
    starts = [m.start() for m in LOG_RECORD.finditer(log)] + [len(log)]
    records = [log[a:b] for a, b in zip(starts, starts[1:])]
    terminating = {name for names in TERMINATING.findall(log) for name in names if name}
    return [record for record in records
            if ("Forbidden" in record or "forbidden" in record or '" 403 ' in record)
            and not any(f"/namespaces/{name}/" in record or f"namespace {name} " in record for name in terminating)]


def test_refusals_leave_out_namespaces_being_deleted_whichever_line_names_them():
    log = "\n".join([
        '[2026-12-01 14:52:15,449] urllib3 [DEBUG] "POST /apis/batch/v1/namespaces/gone-a/jobs HTTP/1.1" 403 536',
        '[2026-12-01 14:52:15,450] qfleet [INFO] Visit of QuantizedModel gone-a/llama stopped: its namespace is being '
        'deleted',
        '[2026-12-01 14:52:15,451] urllib3 [DEBUG] "POST /api/v1/namespaces/gone-b/services HTTP/1.1" 403 536',
        '[2026-12-01 14:52:15,452] kopf [ERROR] Forbidden: unable to create new content in namespace gone-b because it '
        'is being terminated',
        '[2026-12-01 14:52:15,453] urllib3 [DEBUG] "POST /apis/batch/v1/namespaces/mine/jobs HTTP/1.1" 403 536',
    ]) + "\n"
    refused = refusals(log)
    assert len(refused) == 1 and "/namespaces/mine/jobs" in refused[0]


def can_i(fleet, kubeconfig: Path, *args: str) -> bool:
    result = kubectl(fleet, "auth", "can-i", *args, kubeconfig=kubeconfig)
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


@pytest.mark.parametrize("cluster_scoped", [True, False], ids=["cluster-scoped", "namespaced"])
def test_operator_with_the_charts_service_account_runs_the_pipeline(
        fleet, api, core, objects, namespace, release, session_operator_paused, tmp_path, cluster_scoped):
    installed = helm(fleet, "install", release, str(CHART), "-n", namespace, "--set", "crds.install=false",
                     "--set", f"clusterScoped={str(cluster_scoped).lower()}", *NO_NODE)
    assert "kubectl qfleet status" in installed.stdout and "crds/" in installed.stdout  # NOTES: the next commands

    rbac = k8s.RbacAuthorizationV1Api(api)
    cluster_role = rbac.read_cluster_role(f"{release}-qfleet")
    if cluster_scoped:
        assert rbac.read_cluster_role_binding(f"{release}-qfleet").subjects[0].namespace == namespace
    else:
        assert rbac.read_namespaced_role(f"{release}-qfleet", namespace).rules
        assert rbac.read_namespaced_role_binding(f"{release}-qfleet", namespace).subjects[0].name == f"{release}-qfleet"
        assert {r for rule in cluster_role.rules for r in rule.resources} == {"customresourcedefinitions", "nodes"}

    manifest = list(yaml.safe_load_all(helm(fleet, "get", "manifest", release, "-n", namespace).stdout))
    container = next(d for d in manifest if d and d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]
    assert container["command"][0] == "kopf"
    kubeconfig = kube.service_account_kubeconfig(fleet.kubeconfig, api, namespace, f"{release}-qfleet",
                                                 tmp_path / "sa-kubeconfig")
    log_path = tmp_path / "kopf.log"
    operator, liveness = from_chart(manifest, kubeconfig, log_path)
    operator.start()
    try:
        wait_until("the operator's liveness endpoint", lambda: urllib.request.urlopen(liveness, timeout=2).status
                   == 200, 30, process=operator.process, log=log_path)
        objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model())
        try:
            wait_until("llama: Evaluated=True", lambda: condition(objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "llama"), "Evaluated").get("status") == "True", 90,
                interval=0.5, process=operator.process, log=log_path)
        except Exception:
            print(log_path.read_text(errors="replace")[-6000:])
            raise
        done = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama")
        assert condition(done, "EngineBuilt")["reason"] == "EngineBuildSucceeded"
        reasons = {e.reason for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=llama").items}
        assert "EvaluationPassed" in reasons  # Events posted with the ServiceAccount's rights
        assert not done["metadata"].get("finalizers")  # deletable while the operator is down
        assert_plugin_shows_the_timeline(fleet, namespace)
    finally:
        operator.stop()
    # Nothing was refused, except (namespaced install) Kopf's attempt to list namespaces, which it answers by
    # falling back to the one namespace it was given. A 403 for writing into a namespace that an earlier test is
    # still deleting ("is being terminated") is the namespace lifecycle, not RBAC.
    refused = refusals(log_path.read_text(errors="replace"))
    if not cluster_scoped:
        refused = [record for record in refused
                   if "/api/v1/namespaces?" not in record and '"namespaces"' not in record]
    assert not refused, "\n".join(refused[:10])

    # What the ServiceAccount cannot do.
    assert not can_i(fleet, kubeconfig, "get", "secrets", "-n", namespace)
    assert not can_i(fleet, kubeconfig, "list", "secrets", "--all-namespaces")
    assert not can_i(fleet, kubeconfig, "delete", "nodes")
    assert not can_i(fleet, kubeconfig, "delete", "jobs", "-n", namespace)
    assert not can_i(fleet, kubeconfig, "delete", "quantizedmodels.qfleet.io", "-n", namespace)
    assert not can_i(fleet, kubeconfig, "create", "pods", "-n", namespace)
    assert can_i(fleet, kubeconfig, "create", "jobs", "-n", namespace)
    assert can_i(fleet, kubeconfig, "create", "jobs", "-n", "default") is cluster_scoped


def assert_plugin_shows_the_timeline(fleet, namespace: str) -> None:
    """`kubectl qfleet status` (a person's credentials: the admin kubeconfig) reads the model through the API."""
    from qfleet.cli.plugin import main as plugin

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert plugin(["status", "llama", "-n", namespace, "--kubeconfig", str(fleet.kubeconfig)]) == 0
    text = out.getvalue()
    assert f"QuantizedModel {namespace}/llama" in text
    assert [line.split()[0] for line in text.splitlines() if line.startswith("  ") and
            line.split()[0] in ("Calibrated", "EngineBuilt", "Evaluated", "Ready")] == [
        "Calibrated", "EngineBuilt", "Evaluated", "Ready"]
    assert "EvaluationPassed" in text
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "kubectl-qfleet").exists():  # installed by `pip install -e .`: kubectl finds it on PATH
        result = subprocess.run([str(binaries.path_of("kubectl")), "qfleet", "status", "llama", "-n", namespace],
                                capture_output=True, text=True, timeout=60,
                                env={**_environ(), "KUBECONFIG": str(fleet.kubeconfig),
                                     "PATH": f"{bin_dir}:{_environ().get('PATH', '')}"})
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == text.splitlines()[0] and "EvaluationPassed" in result.stdout


def _environ() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}


def test_helm_uninstall_keeps_the_crd_and_the_models(fleet, api, crd, objects, namespace, release):
    installed = helm(fleet, "install", release, str(CHART), "-n", namespace, "--take-ownership", *NO_NODE)
    assert "STATUS: deployed" in installed.stdout
    extensions = k8s.ApiextensionsV1Api(api)
    name = crd["metadata"]["name"]
    owned = extensions.read_custom_resource_definition(name)
    assert owned.metadata.annotations["meta.helm.sh/release-name"] == release
    assert owned.metadata.annotations["helm.sh/resource-policy"] == "keep"
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model())

    helm(fleet, "uninstall", release, "-n", namespace, "--wait", "--timeout=60s")

    assert extensions.read_custom_resource_definition(name).metadata.uid == owned.metadata.uid
    assert objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama")["metadata"]["name"]
    rbac = k8s.RbacAuthorizationV1Api(api)
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(f"{release}-qfleet")
    assert gone.value.status == 404
