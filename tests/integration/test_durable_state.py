"""Durable state and safe edits on the local fleet (KWOK Jobs and pods): a recorded step result outlives its Job and
pod, a Job deleted while it runs comes back once with an Event, an image bump is a new revision that reuses the
calibration, a person's action names its canary, and the examples pass admission."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet.processes import wait_until
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.cli import plugin
from test_pipeline import condition, create, jobs_of, model, objects, read, wait_for_condition  # noqa: F401

pytestmark = pytest.mark.usefixtures("operator_process", "artifacts_claim")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def serving_model() -> dict:
    document = model()
    document["spec"]["quantization"]["kvCache"] = "fp8"
    document["spec"]["serving"]["replicas"] = 1
    document["spec"]["rollout"]["analysis"] = {"interval": "1h"}  # KWOK pods export nothing: a person promotes
    return document


def events(core, namespace: str, reason: str) -> list[k8s.CoreV1Event]:
    return [e for e in core.list_namespaced_event(namespace).items
            if e.reason == reason and e.involved_object.name == "llama"]


def visits(operator_process) -> float:
    return sum(operator_process.metric("qfleet_operator_reconciles_total", outcome=outcome)
               for outcome in ("unchanged", "updated", "conflict"))


def visited_again(objects, namespace: str, operator_process, times: int) -> None:
    """Wakes the model `times` times (an annotation of its own, which its visits read; a child's event that changes
    nothing a decision reads wakes nobody) and waits for each visit: the loop visits only when woken, and the metric
    counts every visit."""
    for n in range(times):
        start = visits(operator_process)
        objects.patch_namespaced_custom_object("qfleet.io", "v1alpha1", namespace, "quantizedmodels", "llama",
                                               {"metadata": {"annotations": {"example.com/wake": str(n)}}})
        wait_until("one more visit", lambda: visits(operator_process) > start, 30, interval=0.2)


def delete_jobs_and_pods(batch, core, namespace: str) -> None:
    for job in jobs_of(batch, namespace, "llama"):
        batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")
    for pod in core.list_namespaced_pod(namespace, label_selector="qfleet.io/step").items:
        try:
            core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:  # already collected with its Job
                raise
    wait_until("Jobs and their pods gone",
               lambda: not jobs_of(batch, namespace, "llama")
               and not core.list_namespaced_pod(namespace, label_selector="qfleet.io/step").items, 60, interval=0.3)


def test_results_outlive_their_jobs_and_an_image_bump_reuses_the_calibration(
        objects, batch, core, api, namespace, fleet, operator_process):
    create(objects, namespace, serving_model())
    serving = wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process, "RevisionServing")
    before = {key: serving["status"][key] for key in ("revision", "calibration", "engine", "evaluation", "conditions",
                                                      "phase", "history")}
    assert serving["status"]["calibration"]["outcome"] == "Succeeded"
    warnings_before = [e.reason for e in core.list_namespaced_event(namespace).items if e.type == "Warning"]

    delete_jobs_and_pods(batch, core, namespace)
    visited_again(objects, namespace, operator_process, 3)

    after = read(objects, namespace, "llama")["status"]
    assert {key: after[key] for key in before} == before
    assert jobs_of(batch, namespace, "llama") == []
    assert [e.reason for e in core.list_namespaced_event(namespace).items if e.type == "Warning"] == warnings_before

    # Only the serving image changes: a new revision, built and evaluated on the recorded calibration, then a canary
    # beside the untouched stable Deployment.
    stable = serving["status"]["revision"]["stable"]
    objects.patch_namespaced_custom_object("qfleet.io", "v1alpha1", namespace, "quantizedmodels", "llama",
                                           {"spec": {"serving": {"image": "qfleet/runtime:test-2"}}})
    wait_until("a canary of the new revision",
               lambda: read(objects, namespace, "llama")["status"]["revision"].get("canary") not in (None, stable),
               90, interval=0.3)
    canary_doc = read(objects, namespace, "llama")
    canary = canary_doc["status"]["revision"]["canary"]
    reused = condition(canary_doc, "Calibrated")
    assert (reused["status"], reused["reason"]) == ("True", "CalibrationReused") and stable in reused["message"]
    steps = sorted((j.metadata.labels["qfleet.io/revision"], j.metadata.labels["qfleet.io/step"])
                   for j in jobs_of(batch, namespace, "llama"))
    assert steps == [(canary, "build"), (canary, "evaluate")]
    apps = k8s.AppsV1Api(api)
    old = apps.read_namespaced_deployment(f"llama-{stable}", namespace)
    assert old.spec.replicas == 1 and old.spec.template.spec.containers[0].image == "qfleet/runtime:test"
    new = apps.read_namespaced_deployment(f"llama-{canary}", namespace)
    assert new.spec.template.spec.containers[0].image == "qfleet/runtime:test-2"

    assert plugin.main(["promote", "llama", "-n", namespace, "--kubeconfig", str(fleet.kubeconfig)]) == 0
    wait_until("promoted", lambda: read(objects, namespace, "llama")["status"]["revision"]["stable"] == canary,
               60, interval=0.3)


def test_a_calibration_job_deleted_while_it_runs_is_created_once_again_with_an_event(
        objects, batch, core, namespace, operator_process):
    document = serving_model()
    document["spec"]["runtime"] = {"env": [{"name": "QFLEET_SIMULATED_RUN_FOR", "value": "10m"}]}
    create(objects, namespace, document)
    wait_until("the calibration Job seen running",
               lambda: (read(objects, namespace, "llama").get("status", {}).get("calibration") or {}).get("jobUid"),
               60, interval=0.3)
    [job] = jobs_of(batch, namespace, "llama")
    batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Background")

    def recreated() -> bool:
        found = jobs_of(batch, namespace, "llama")
        return bool(found) and found[0].metadata.uid != job.metadata.uid

    wait_until("the calibration Job created again", recreated, 60, interval=0.3)
    [again] = jobs_of(batch, namespace, "llama")
    assert again.metadata.name == job.metadata.name
    wait_until("the new Job recorded", lambda: read(objects, namespace, "llama")["status"]["calibration"]
               .get("jobUid") == again.metadata.uid, 60, interval=0.3)
    document = read(objects, namespace, "llama")
    assert document["status"]["calibration"]["recreations"] == 1
    assert "re-created 1 time(s)" in condition(document, "Calibrated")["message"]
    assert len(events(core, namespace, "JobRecreated")) == 1
    assert len(jobs_of(batch, namespace, "llama")) == 1


def test_an_action_needs_a_running_canary_of_its_revision(objects, core, namespace, fleet, operator_process, capsys):
    create(objects, namespace, serving_model())
    serving = wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process, "RevisionServing")
    kubeconfig = str(fleet.kubeconfig)
    assert plugin.main(["promote", "llama", "-n", namespace, "--kubeconfig", kubeconfig]) == 1
    assert "no canary is running" in capsys.readouterr().err
    assert "qfleet.io/rollout-action" not in (read(objects, namespace, "llama")["metadata"].get("annotations") or {})

    objects.patch_namespaced_custom_object("qfleet.io", "v1alpha1", namespace, "quantizedmodels", "llama",
                                           {"metadata": {"annotations": {"qfleet.io/rollout-action":
                                                                         "promote:0123456789"}}})
    wait_until("the hand-written action dropped", lambda: "qfleet.io/rollout-action" not in (
        read(objects, namespace, "llama")["metadata"].get("annotations") or {}), 60, interval=0.3)
    wait_until("its Warning Event", lambda: events(core, namespace, "RolloutActionIgnored"), 30, interval=0.3)
    [warning] = events(core, namespace, "RolloutActionIgnored")
    assert warning.type == "Warning" and "no canary is running" in warning.message
    status = read(objects, namespace, "llama")["status"]
    assert status["revision"] == serving["status"]["revision"] and status["history"] == serving["status"]["history"]


def test_the_examples_pass_admission_and_their_jobs_run_the_runtime_image(objects, batch, namespace,
                                                                          operator_process):
    for path in sorted(EXAMPLES.glob("*.yaml")):
        document = copy.deepcopy(yaml.safe_load(path.read_text()))
        document["metadata"]["namespace"] = namespace
        create(objects, namespace, document)
        name = document["metadata"]["name"]
        wait_until(f"{name}: its first Job", lambda: jobs_of(batch, namespace, name), 60, interval=0.3)
        ready = condition(read(objects, namespace, name), "Ready")
        assert ready.get("reason") not in ("InvalidSpec", "NoCompatibleNodePool"), ready
        [job] = jobs_of(batch, namespace, name)[:1]
        assert job.spec.template.spec.containers[0].image == DEFAULT_RUNTIME_IMAGE
