"""The operator on the local fleet: admission against the real node pools, then calibration, build and evaluation Jobs
placed by the real scheduler and finished by the real Job controller (pods simulated by KWOK's Stages)."""
from __future__ import annotations

import copy

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import kube
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.gpus import LABEL_COMPUTE_MAJOR

pytestmark = pytest.mark.usefixtures("operator_process", "artifacts_claim")

LLAMA = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "QuantizedModel",
    "metadata": {"name": "llama"},
    "spec": {
        "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
        "quantization": {"weights": "bf16", "kvCache": "nvfp4"},
        "nodePool": {"nodeSelector": {"nvidia.com/gpu.family": "blackwell"}, "gpusPerReplica": 8},
        "serving": {"image": "qfleet/runtime:test", "replicas": 2},
        "rollout": {"trafficRouting": {"replicas": {}}},
        "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
    },
}


def model(name: str = "llama", **spec_changes) -> dict:
    document = copy.deepcopy(LLAMA)
    document["metadata"]["name"] = name
    for path, value in spec_changes.items():
        *parents, leaf = path.split("__")
        node = document["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return document


@pytest.fixture
def objects(api) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def create(objects, namespace: str, document: dict) -> None:
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)


def read(objects, namespace: str, name: str) -> dict:
    return objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def condition(document: dict, kind: str) -> dict:
    return next((c for c in document.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def wait_for_condition(objects, namespace: str, name: str, kind: str, status: str, operator_process,
                       reason: str | None = None, timeout: float = 60) -> dict:
    def reached() -> bool:
        document = read(objects, namespace, name)
        found = condition(document, kind)
        if status == "True" and document.get("status", {}).get("phase") == "Failed":
            raise AssertionError(f"{name} failed while waiting for {kind}=True: {document['status'].get('conditions')}")
        return found.get("status") == status and (reason is None or found.get("reason") == reason)

    try:
        wait_until(f"{name}: {kind}={status} {reason or ''}", reached, timeout, interval=0.3)
    except Exception:
        print(read(objects, namespace, name).get("status"), "\n", operator_process.log_tail())
        raise
    return read(objects, namespace, name)


def jobs_of(batch, namespace: str, name: str) -> list[k8s.V1Job]:
    return batch.list_namespaced_job(namespace, label_selector=f"qfleet.io/model={name}").items


def test_nvfp4_on_blackwell_is_calibrated_built_and_evaluated(objects, batch, core, namespace, operator_process):
    create(objects, namespace, model())
    done = wait_for_condition(objects, namespace, "llama", "Evaluated", "True", operator_process)

    status = done["status"]
    assert condition(done, "Calibrated")["reason"] == "CalibrationSucceeded"
    assert condition(done, "EngineBuilt")["reason"] == "EngineBuildSucceeded"
    assert status["observedGeneration"] == done["metadata"]["generation"]
    assert status["calibration"]["report"]["kvFormat"] == "nvfp4"
    assert status["engine"]["kvCacheDtype"] == "nvfp4"
    assert status["engine"]["computeCapability"] == "10.0"
    assert status["evaluation"]["passed"] is True
    assert status["capacity"]["kvBytesPerToken"] == 92_160
    assert status["revision"]["current"]

    jobs = jobs_of(batch, namespace, "llama")
    assert sorted(j.metadata.labels["qfleet.io/step"] for j in jobs) == ["build", "calibrate", "evaluate"]
    for job in jobs:
        assert job.metadata.owner_references[0].kind == "QuantizedModel"
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items
        node = core.read_node(pods[0].spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.family"] == "blackwell"
        assert node.metadata.labels[LABEL_COMPUTE_MAJOR] == "10"

    reasons = {e.reason for e in core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=llama").items}
    assert {"CalibrationSucceeded", "EngineBuildSucceeded", "EvaluationPassed"} <= reasons
    assert operator_process.metric("qfleet_operator_children_created_total", kind="Job") >= 3
    assert operator_process.metric("qfleet_operator_transitions_total", reason="EvaluationPassed") >= 1
    assert operator_process.metric("qfleet_operator_reconciles_total", outcome="updated") >= 3


    serving = wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process,
                                 reason="RevisionServing")
    revision = serving["status"]["revision"]
    assert revision["stable"] == revision["current"]
    apps = k8s.AppsV1Api(batch.api_client)
    deployment = apps.read_namespaced_deployment(f"llama-{revision['stable']}", namespace)
    assert deployment.metadata.owner_references[0].kind == "QuantizedModel"
    assert deployment.spec.template.spec.node_selector[LABEL_COMPUTE_MAJOR] == "10"
    stable_service = core.read_namespaced_service("llama-stable", namespace)
    assert stable_service.spec.selector == {"qfleet.io/model": "llama"}  # no router: every revision's pods
    assert serving["status"]["phase"] == "Serving"


def test_nvfp4_on_hopper_only_pool_is_refused_and_starts_no_job(objects, batch, namespace, operator_process):
    create(objects, namespace, model(nodePool={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                                               "gpusPerReplica": 8}))
    refused = wait_for_condition(objects, namespace, "llama", "Ready", "False", operator_process,
                                 reason="NoCompatibleNodePool")
    message = condition(refused, "Ready")["message"]
    assert "nvfp4" in message and "10.0" in message and "9.0" in message and "NVIDIA-H100-80GB-HBM3" in message
    assert refused["status"]["phase"] == "Failed"
    assert jobs_of(batch, namespace, "llama") == []


def test_auto_on_hopper_picks_fp8_and_says_why(objects, namespace, operator_process):
    create(objects, namespace, model(quantization={"kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]},
                                     nodePool={"nodeSelector": {"nvidia.com/gpu.family": "hopper"},
                                               "gpusPerReplica": 8}))
    done = wait_for_condition(objects, namespace, "llama", "Evaluated", "True", operator_process)
    ladder = {entry["kvCache"]: entry for entry in done["status"]["ladder"]}
    assert ladder["nvfp4"]["outcome"] == "Unsupported" and "10.0" in ladder["nvfp4"]["message"]
    assert ladder["fp8"]["outcome"] == "Selected"
    assert done["status"]["engine"]["kvCacheDtype"] == "fp8"
    assert done["status"]["engine"]["computeCapability"] == "9.0"


def test_failing_calibration_stops_the_revision_and_keeps_the_stable_one(objects, namespace, operator_process):
    create(objects, namespace, model(runtime={"env": [{"name": "QFLEET_FAULT_STEP", "value": "calibrate"}]}))
    # A stable revision from an earlier rollout: a failing new revision must leave it alone.
    for attempt in range(20):  # the operator writes status too: retry on a conflict, as a controller would
        current = read(objects, namespace, "llama")
        try:
            objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "llama", {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": {"revision": {"stable": "0123456789"}}})
            break
        except ApiException as error:
            if error.status != 409 or attempt == 19:
                raise
    failed = wait_for_condition(objects, namespace, "llama", "Calibrated", "False", operator_process,
                                reason="CalibrationFailed")
    message = condition(failed, "Calibrated")["message"]
    assert "exit code 3" in message and "QFLEET_FAULT_STEP=calibrate" in message
    assert condition(failed, "EngineBuilt")["status"] == "Unknown"
    assert failed["status"]["revision"]["stable"] == "0123456789"
    assert failed["status"]["phase"] == "Failed"


def test_rollout_only_edit_starts_no_new_job(objects, batch, namespace, operator_process):
    create(objects, namespace, model())
    before = wait_for_condition(objects, namespace, "llama", "Evaluated", "True", operator_process)
    job_names = sorted(j.metadata.name for j in jobs_of(batch, namespace, "llama"))

    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama", {
        "spec": {"rollout": {"steps": [{"weight": 5, "pause": "1h"}, {"weight": 100}]}, "serving": {"replicas": 3}}})
    generation = read(objects, namespace, "llama")["metadata"]["generation"]
    wait_until("the edit to be observed",
               lambda: read(objects, namespace, "llama")["status"].get("observedGeneration") == generation, 30)

    after = read(objects, namespace, "llama")
    assert after["status"]["revision"]["current"] == before["status"]["revision"]["current"]
    assert condition(after, "Evaluated")["status"] == "True"
    assert sorted(j.metadata.name for j in jobs_of(batch, namespace, "llama")) == job_names


def test_deleting_the_model_removes_its_jobs(objects, batch, namespace, operator_process):
    create(objects, namespace, model())
    wait_for_condition(objects, namespace, "llama", "EngineBuilt", "True", operator_process)
    assert jobs_of(batch, namespace, "llama")
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama")
    wait_until("the garbage collector to remove the Jobs", lambda: not jobs_of(batch, namespace, "llama"), 60,
               interval=0.5)


def test_restarting_the_operator_mid_pipeline_creates_no_duplicate_job(objects, batch, core, namespace,
                                                                       operator_process):
    create(objects, namespace, model())
    kube.wait_for(batch.list_namespaced_job, lambda j: j.metadata.labels.get("qfleet.io/step") == "calibrate", 30,
                  "the calibration Job", namespace=namespace)
    operator_process.stop()
    operator_process.start()
    wait_for_condition(objects, namespace, "llama", "Evaluated", "True", operator_process)
    jobs = jobs_of(batch, namespace, "llama")
    assert len(jobs) == 3
    for job in jobs:
        assert len(core.list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}").items) == 1
