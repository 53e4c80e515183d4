"""Fixtures for tests on the local fleet: one real control plane per test session, a fresh namespace per test."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import binaries, kube
from localfleet.fleet import Fleet
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until

pytestmark = pytest.mark.integration
TEST_NAMESPACE_LABEL = "qfleet.io/test=true"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Fleet:
    absent = binaries.missing()
    if absent:
        pytest.fail("the local fleet's binaries are not built: run `make binaries` (`make test` does it first); "
                    f"missing: {', '.join(c.name for c in absent)}", pytrace=False)
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), name="qfleet-test")
    fleet.up(log=lambda *_: None)
    yield fleet
    try:
        _wait_test_namespaces_gone(kube.client(fleet.kubeconfig))
    finally:
        fleet.down(log=lambda *_: None)


@pytest.fixture(scope="session")
def api(fleet) -> k8s.ApiClient:
    return kube.client(fleet.kubeconfig)


@pytest.fixture(scope="session")
def core(api) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api)


@pytest.fixture(scope="session")
def batch(api) -> k8s.BatchV1Api:
    return k8s.BatchV1Api(api)


@pytest.fixture
def namespace(request, core) -> str:
    """A namespace of its own for each test, deleted afterwards; waits until its default ServiceAccount exists
    (pods are rejected before that) and, at teardown, until the namespace is gone."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL.split("=")[0]: "true"})))
    kube.wait_for(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", 30,
                  f"ServiceAccount default in {name}", namespace=name)
    yield name
    _delete_namespace(core, name)


def _delete_namespace(core: k8s.CoreV1Api, name: str) -> None:
    """Starts the deletion; the session waits once, at its end, until every test namespace is gone."""
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


def _wait_test_namespaces_gone(api: k8s.ApiClient, timeout: float = 120) -> None:
    """Nothing a test created may stay stuck: a pod holding a finalizer is released so its namespace can go."""
    core = k8s.CoreV1Api(api)

    def all_gone() -> bool:
        remaining = core.list_namespace(label_selector=TEST_NAMESPACE_LABEL).items
        for ns in remaining:
            for pod in core.list_namespaced_pod(ns.metadata.name).items:
                if pod.metadata.finalizers and pod.metadata.deletion_timestamp:
                    core.patch_namespaced_pod(pod.metadata.name, ns.metadata.name, {"metadata": {"finalizers": None}})
        return not remaining

    wait_until("test namespaces deleted", all_gone, timeout, interval=1)


CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "qfleet.io_quantizedmodels.yaml"


def install_crd(api: k8s.ApiClient) -> dict:
    """Installs the CRD (create, or replace what an earlier run left) and waits until it serves."""
    extensions = k8s.ApiextensionsV1Api(api)
    manifest = yaml.safe_load(CRD_FILE.read_text())
    name = manifest["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(manifest)
    except ApiException as error:
        if error.status != 409:
            raise
        manifest["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(name).metadata \
            .resource_version
        extensions.replace_custom_resource_definition(name, manifest)
    kube.wait_for(extensions.list_custom_resource_definition,
                  lambda c: c.metadata.name == name and any(
                      cond.type == "Established" and cond.status == "True" for cond in (c.status.conditions or [])),
                  30, f"CRD {name} Established")
    return manifest


@pytest.fixture(scope="session")
def crd(api):
    """The CRD, installed once per session."""
    return install_crd(api)


@pytest.fixture(scope="session")
def operator_process(fleet, crd, tmp_path_factory):
    runner = OperatorProcess(fleet.kubeconfig, tmp_path_factory.mktemp("operator") / "kopf.log")
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture
def session_operator_paused(operator_process):
    """The session's operator (admin credentials, all namespaces) must not do the work of an operator under test: it
    is stopped for the test and started again afterwards."""
    operator_process.stop()
    yield
    operator_process.start()


@pytest.fixture
def artifacts_claim(core, namespace, tmp_path) -> Path:
    """The claim the examples name (pvc://qfleet-artifacts/...), bound by the real PV controller to a hostPath PV on
    tmp_path; yields that directory (what the steps wrote, seen from the host)."""
    pv_name = f"artifacts-{namespace}"[:63]
    kube.bind_artifacts_claim(core.api_client, namespace, "qfleet-artifacts", pv_name, tmp_path, size="10Gi",
                              timeout=30)
    yield tmp_path
    core.delete_persistent_volume(pv_name)


def pytest_terminal_summary(terminalreporter):
    """The chaos scenarios' table (scenario, faults, requests, failed, duplicates, stable disruptions, verdict)."""
    from chaos import print_table

    print_table(terminalreporter.write)
