"""The qfleet chart without a cluster: lint, render every ci/ scenario, least-privilege RBAC, the CRD copy."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from .conftest import CHART, CI_VALUES, REPO, render

CRD_SOURCE = REPO / "crds" / "qfleet.io_quantizedmodels.yaml"
CRD_COPY = CHART / "files" / "crds" / "qfleet.io_quantizedmodels.yaml"


def kinds(documents: list[dict]) -> dict[str, dict]:
    """One document per kind; the leader-election Role and RoleBinding (`<release>-leader`) are left out: see
    `leader_election`."""
    return {d["kind"]: d for d in documents if not d["metadata"]["name"].endswith("-leader")}


def leader_election(documents: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in documents if d["metadata"]["name"].endswith("-leader")}


def of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d["kind"] == kind]


def test_ci_scenarios_exist():
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "namespaced-values.yaml", "no-crds-values.yaml",
                                           "podmonitor-values.yaml"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_is_clean_for_every_scenario(helm, values):
    result = subprocess.run([helm, "lint", str(CHART), "--strict", "-f", str(values)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_scenario_renders_labelled_objects(helm, values):
    documents = render(helm, "-f", str(values))
    assert documents
    for document in documents:
        labels = document["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "qfleet"
        assert labels["app.kubernetes.io/instance"] == "qfleet"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "qfleet-0.1.0"


def test_schema_rejects_unknown_keys(helm):
    result = subprocess.run([helm, "template", "qfleet", str(CHART), "--set", "replicaCount=2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "replicaCount" in result.stderr
    result = subprocess.run([helm, "template", "qfleet", str(CHART), "--set", "crds.instal=false"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "instal" in result.stderr


def test_schema_closes_every_object_with_declared_properties():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, path
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "#")


def test_every_value_is_documented_key_first():
    """Each key of values.yaml is preceded by a comment that starts with its dotted path (helm best practices)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if stripped.endswith(":") and path in ("crds", "image", "rbac", "serviceAccount", "podMonitor", "runtime",
                                               "runtime.image", "analysis"):
            continue  # a group: its keys are documented one by one
        if path.startswith("resources."):
            continue
        previous = lines[index - 1].strip()
        comment_block = [previous]
        back = index - 1
        while back > 0 and lines[back - 1].strip().startswith("#"):
            back -= 1
            comment_block.insert(0, lines[back].strip())
        assert previous.startswith("#"), f"{path} has no comment"
        assert comment_block[0].startswith(f"# {path} -- "), f"{path}: the comment must start with the key"


def test_default_deployment_runs_kopf_like_an_operator_should(helm):
    deployment = kinds(render(helm))["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["kopf", "run", "-m", "qfleet.main"]
    assert container["args"] == ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert {"name": "liveness", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/qfleet/qfleet-operator:0.1.0"
    assert pod["serviceAccountName"] == "qfleet"


def test_namespaced_install_watches_its_namespace_with_a_role(helm):
    documents = render(helm, "--set", "clusterScoped=false", namespace="ml")
    found = kinds(documents)
    args = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--all-namespaces" not in args
    assert found["Role"]["metadata"]["namespace"] == "ml"
    assert found["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "qfleet", "namespace": "ml"}]
    cluster_rules = found["ClusterRole"]["rules"]
    assert {(g, r) for rule in cluster_rules for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("apiextensions.k8s.io", "customresourcedefinitions"), ("", "nodes")}
    assert all(rule["verbs"] == ["list", "watch"] for rule in cluster_rules)


def rules_by_resource(rules: list[dict]) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found[(group, resource)] = rule["verbs"]
    return found


EXPECTED_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): ["list", "watch"],
    ("", "nodes"): ["list", "watch"],
    ("", "events"): ["create"],
    ("qfleet.io", "quantizedmodels"): ["list", "watch", "patch"],
    ("qfleet.io", "quantizedmodels/status"): ["update"],
    ("qfleet.io", "quantizedmodels/finalizers"): ["update"],
    ("batch", "jobs"): ["list", "watch", "create"],
    ("", "pods"): ["list", "watch"],
    ("apps", "deployments"): ["list", "watch", "create"],
    ("apps", "deployments/scale"): ["patch"],
    ("", "services"): ["list", "watch", "create", "patch"],
    ("gateway.networking.k8s.io", "httproutes"): ["list", "watch", "patch"],
}


def test_cluster_role_grants_exactly_the_rules_the_operator_uses(helm):
    found = kinds(render(helm))
    assert "Role" not in found and "RoleBinding" not in found
    rules = rules_by_resource(found["ClusterRole"]["rules"])
    assert rules == EXPECTED_RULES
    for verbs in rules.values():
        assert "*" not in verbs
    assert not any(resource == "secrets" for _, resource in rules)
    assert found["ClusterRoleBinding"]["roleRef"]["name"] == found["ClusterRole"]["metadata"]["name"]


def test_role_and_small_cluster_role_together_grant_the_same_rules(helm):
    found = kinds(render(helm, "--set", "clusterScoped=false"))
    together = rules_by_resource(found["Role"]["rules"]) | rules_by_resource(found["ClusterRole"]["rules"])
    assert together == EXPECTED_RULES


@pytest.mark.parametrize("cluster_scoped", [True, False])
def test_replicas_elect_a_leader_on_a_lease_in_the_release_namespace(helm, cluster_scoped):
    documents = render(helm, "--set", f"clusterScoped={str(cluster_scoped).lower()}", namespace="ops")
    container = kinds(documents)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["QFLEET_LEADER_ELECTION"] == "true" and env["QFLEET_LEASE_NAMESPACE"] == "ops"
    assert env["QFLEET_LEASE_NAME"] == "qfleet-leader" and env["QFLEET_LEASE_SECONDS"] == "15"
    assert env["QFLEET_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    found = leader_election(documents)
    assert found["Role"]["metadata"]["namespace"] == "ops"
    assert rules_by_resource(found["Role"]["rules"]) == {("coordination.k8s.io", "leases"): ["get", "create", "update"]}
    assert found["RoleBinding"]["roleRef"]["name"] == "qfleet-leader"
    assert found["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "qfleet", "namespace": "ops"}]


def test_rbac_and_service_account_can_be_left_out(helm):
    found = kinds(render(helm, "--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                         "--set", "serviceAccount.name=mine"))
    assert set(found) == {"Deployment", "CustomResourceDefinition"}
    assert found["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_chart_copy_of_the_crd_is_identical_to_crds():
    """charts/qfleet/files/crds/ must be a byte-for-byte copy: `cp crds/*.yaml charts/qfleet/files/crds/`."""
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), "run: cp crds/*.yaml charts/qfleet/files/crds/"
    assert sorted(p.name for p in CRD_COPY.parent.iterdir()) == sorted(p.name for p in CRD_SOURCE.parent.iterdir())


def test_rendered_crd_is_the_source_crd_plus_labels_and_keep(helm):
    crd = kinds(render(helm))["CustomResourceDefinition"]
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"].pop("labels")["app.kubernetes.io/name"] == "qfleet"
    assert crd == source  # nothing lost or changed on the way through fromYaml/toYaml (numbers, quotes, CEL)


def test_crd_switches(helm):
    assert "CustomResourceDefinition" not in kinds(render(helm, "--set", "crds.install=false"))
    crd = kinds(render(helm, "--set", "crds.keep=false"))["CustomResourceDefinition"]
    assert "annotations" not in crd["metadata"]


def test_pod_monitor_scrapes_the_metrics_port(helm):
    assert "PodMonitor" not in kinds(render(helm))
    documents = render(helm, "-f", str(CHART / "ci" / "podmonitor-values.yaml"))
    monitors = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PodMonitor"}
    operator, servers = monitors["qfleet"], monitors["qfleet-servers"]
    deployment = kinds(documents)["Deployment"]
    assert operator["metadata"]["labels"]["release"] == "prometheus"
    assert operator["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert operator["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert {"name": "QFLEET_METRICS_PORT", "value": "9090"} in container["env"]
    assert servers["spec"]["namespaceSelector"] == {"any": True}
    assert servers["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "qfleet-server"


def test_pod_monitor_without_a_metrics_port_is_refused_by_name(helm):
    result = subprocess.run([str(helm), "template", "qfleet", str(CHART), "--set", "podMonitor.enabled=true",
                             "--set", "metricsPort=0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "set metricsPort" in result.stderr


def test_metrics_port_zero_serves_no_metrics(helm):
    container = kinds(render(helm, "--set", "metricsPort=0"))["Deployment"]["spec"]["template"]["spec"][
        "containers"][0]
    assert all(port["name"] != "metrics" for port in container["ports"])
    assert {"name": "QFLEET_METRICS_PORT", "value": "0"} in container["env"]




@pytest.mark.parametrize("cluster_scoped", [True, False])
def test_a_namespaced_operator_does_not_scan_namespaces_it_may_not_list(helm, cluster_scoped):
    container = kinds(render(helm, "--set", f"clusterScoped={str(cluster_scoped).lower()}"))["Deployment"][
        "spec"]["template"]["spec"]["containers"][0]
    assert ({"name": "QFLEET_NAMESPACED", "value": "true"} in container["env"]) is not cluster_scoped


def test_replicas_zero_installs_everything_but_the_operator_and_more_than_five_is_refused(helm):
    documents = render(helm, "--set", "replicas=0")
    assert kinds(documents)["Deployment"]["spec"]["replicas"] == 0
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= set(kinds(documents))
    refused = subprocess.run([str(helm), "template", "qfleet", str(CHART), "--set", "replicas=6"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "replicas" in refused.stderr


def test_the_runtime_image_defaults_to_the_runtime_built_for_this_version_and_can_be_set(helm):
    from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE

    def env(*args):
        container = kinds(render(helm, *args))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    assert env()["QFLEET_RUNTIME_IMAGE"] == DEFAULT_RUNTIME_IMAGE == "ghcr.io/qfleet/qfleet-runtime:0.1.0"
    assert env("--set", "runtime.image.repository=registry.local/runtime", "--set", "runtime.image.tag=1.2")[
        "QFLEET_RUNTIME_IMAGE"] == "registry.local/runtime:1.2"


def test_the_control_loop_settings_reach_the_operator(helm):
    container = kinds(render(helm, "--set", "workers=8", "--set-string", "resyncPeriod=300",
                             "--set-string", "apiQPS=50", "--set", "apiBurst=100"))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert {key: env[key] for key in ("QFLEET_WORKERS", "QFLEET_RESYNC_SECONDS", "QFLEET_API_QPS",
                                      "QFLEET_API_BURST")} == {"QFLEET_WORKERS": "8", "QFLEET_RESYNC_SECONDS": "300",
                                                               "QFLEET_API_QPS": "50", "QFLEET_API_BURST": "100"}


@pytest.mark.parametrize("source", ["runtime", "gateway"])
def test_the_latency_source_reaches_the_operator(helm, source):
    args = () if source == "runtime" else ("--set", f"analysis.latencySource={source}")
    container = kinds(render(helm, *args))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["QFLEET_LATENCY_SOURCE"] == source


def test_an_unknown_latency_source_is_refused_by_the_schema(helm):
    result = subprocess.run([helm, "template", "qfleet", str(CHART), "--set", "analysis.latencySource=traefik"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "latencySource" in result.stderr


def test_the_chart_and_the_operator_default_to_the_same_loop(helm):
    from qfleet.controller import LoopSettings

    container = kinds(render(helm))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["QFLEET_WORKERS"] == str(LoopSettings().workers) == "16"
    assert float(env["QFLEET_RESYNC_SECONDS"]) == LoopSettings().resync_seconds
    assert env["QFLEET_LATENCY_SOURCE"] == LoopSettings().latency_source == "runtime"
