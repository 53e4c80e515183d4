"""The canary on the local fleet with simulated serving pods (KWOK): the operator's children, the HTTPRoute's weights
and the analysis against the fleet's real Prometheus. Simulated pods export no metrics, so every analysis is
Inconclusive: these tests show that silence never promotes, holds past the step's pause with an Event and rolls back
when maxHold runs out, and that a person's promote works. The gates against real Triton servers are in
test_canary_triton.py."""
from __future__ import annotations

import pytest
from kubernetes import client as k8s

from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.cli import plugin
from test_pipeline import condition, create, model, objects, read, wait_for_condition  # noqa: F401

pytestmark = pytest.mark.usefixtures("artifacts_claim")

GATEWAY = ("gateway.networking.k8s.io", "v1")


def canary_model(prometheus: str, **rollout) -> dict:
    document = model(rollout={
        "trafficRouting": {"gatewayAPI": {"httpRoute": "llama-route"}},
        "steps": [{"weight": "0.1", "pause": "1s"}, {"weight": "10", "pause": "1s"}, {"weight": "100"}],
        "analysis": {"interval": "2s", "prometheus": {"address": prometheus}, "minRequests": 1,
                     "failureLimit": 1, "maxHold": "8s"},
        **rollout})
    document["spec"]["quantization"]["kvCache"] = "fp8"
    document["spec"]["serving"]["replicas"] = 1  # 8 GPUs a replica: the fleet's Blackwell pool fits stable, canary and Jobs
    return document


@pytest.fixture
def route(api, namespace) -> dict:
    document = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "llama-route", "namespace": namespace},
                "spec": {"parentRefs": [{"name": "fleet", "namespace": "localfleet"}],
                         "hostnames": [f"{namespace}.test"],
                         "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                    "backendRefs": [{"name": "llama-stable", "port": 8000}]}]}}
    return k8s.CustomObjectsApi(api).create_namespaced_custom_object(*GATEWAY, namespace, "httproutes", document)


def weights(api, namespace: str, route: str = "llama-route") -> dict[str, int]:
    found = k8s.CustomObjectsApi(api).get_namespaced_custom_object(*GATEWAY, namespace, "httproutes", route)
    return {ref["name"]: ref.get("weight") for ref in found["spec"]["rules"][0]["backendRefs"]}


def serve_fp8_then_canary_nvfp4(objects, namespace, fleet, operator_process, **rollout) -> tuple[str, str]:
    create(objects, namespace, canary_model(fleet.prometheus_url(), **rollout))
    serving = wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process,
                                 reason="RevisionServing", timeout=90)
    stable = serving["status"]["revision"]["stable"]
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama",
                                           {"spec": {"quantization": {"kvCache": "nvfp4"}}})
    try:
        wait_until("a canary revision", lambda: (read(objects, namespace, "llama")["status"].get("revision") or {})
                   .get("canary") not in (None, stable), 120, interval=0.3)
    except Exception:
        print(read(objects, namespace, "llama").get("status"), "\n", operator_process.log_tail())
        raise
    return stable, read(objects, namespace, "llama")["status"]["revision"]["canary"]


def test_a_silent_canary_holds_for_evidence_and_rolls_back_when_max_hold_runs_out(
        api, objects, namespace, fleet, route, operator_process):
    apps = k8s.AppsV1Api(api)
    stable, canary = serve_fp8_then_canary_nvfp4(objects, namespace, fleet, operator_process)
    assert apps.read_namespaced_deployment(f"llama-{canary}", namespace).spec.replicas == 1  # 0.1% of 1: at least one

    wait_until("0.1% of the traffic on the canary once it is ready (integer weights 999 : 1)",
               lambda: weights(api, namespace) == {"llama-stable": 999, "llama-canary": 1}, 90, interval=0.3)
    holding = wait_for_condition(objects, namespace, "llama", "CanaryHealthy", "Unknown", operator_process,
                                 reason="HoldingForEvidence", timeout=60)
    message = condition(holding, "CanaryHealthy")["message"]
    assert "no request count" in message and "p99LatencyRatio: no data" in message and "maxHold 8s" in message
    assert holding["status"]["canary"]["weight"] == "0.1"

    def hold_event() -> list:
        return [e for e in k8s.CoreV1Api(api).list_namespaced_event(
            namespace, field_selector="involvedObject.name=llama").items if e.reason == "HoldingForEvidence"]
    wait_until("an Event for the hold", hold_event, 30, interval=0.5)
    assert "p99LatencyRatio: no data" in hold_event()[0].message
    rolled = wait_for_condition(objects, namespace, "llama", "RolledBack", "True", operator_process,
                                reason="MaxHoldReached", timeout=60)
    status = rolled["status"]
    assert status["revision"]["stable"] == stable and "canary" not in status["revision"]
    assert status["phase"] == "RolledBack"
    assert [h["outcome"] for h in status["history"] if h["revision"] == canary] == ["RolledBack"]
    assert weights(api, namespace) == {"llama-stable": 100, "llama-canary": 0}
    assert apps.read_namespaced_deployment(f"llama-{canary}", namespace).spec.replicas == 0
    assert apps.read_namespaced_deployment(f"llama-{stable}", namespace).spec.replicas == 1
    assert condition(rolled, "Ready")["status"] == "True"
    assert operator_process.metric("qfleet_operator_gate_verdicts_total", gate="interval",
                                   verdict="Inconclusive") >= 2


def test_a_person_promotes_with_kubectl_qfleet_and_the_annotation_is_consumed(api, objects, namespace, fleet, route,
                                                                 operator_process):
    stable, canary = serve_fp8_then_canary_nvfp4(objects, namespace, fleet, operator_process)
    assert plugin.main(["promote", "llama", "-n", namespace, "--kubeconfig", str(fleet.kubeconfig)]) == 0
    wait_until("the promotion", lambda: read(objects, namespace, "llama")["status"]["revision"].get("stable")
               == canary, 60, interval=0.3)
    promoted = read(objects, namespace, "llama")
    assert "qfleet.io/rollout-action" not in (promoted["metadata"].get("annotations") or {})
    assert [(h["revision"], h["outcome"]) for h in promoted["status"]["history"]][-2:] == \
        [(stable, "Superseded"), (canary, "Promoted")]
    service = k8s.CoreV1Api(api).read_namespaced_service("llama-stable", namespace)
    assert service.spec.selector["qfleet.io/revision"] == canary
    assert weights(api, namespace) == {"llama-stable": 100, "llama-canary": 0}

    # Back to the revision it replaced, by name: its fields come from status.history, it canaries again.
    assert plugin.main(["rollback", "llama", "--to", stable, "-n", namespace, "--kubeconfig",
                        str(fleet.kubeconfig)]) == 0
    wait_until("the earlier revision to return as the canary", lambda: read(objects, namespace, "llama")["status"][
        "revision"].get("canary") == stable, 60, interval=0.3)
    again = read(objects, namespace, "llama")
    assert again["spec"]["quantization"]["kvCache"] == "fp8" and again["status"]["revision"]["current"] == stable


def test_prometheus_out_of_reach_is_inconclusive_never_a_pass(api, objects, namespace, fleet, route,
                                                              operator_process):
    create(objects, namespace, canary_model("http://127.0.0.1:9"))
    wait_for_condition(objects, namespace, "llama", "Ready", "True", operator_process, reason="RevisionServing",
                       timeout=90)
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "llama",
                                           {"spec": {"quantization": {"kvCache": "nvfp4"}}})
    analysed = wait_for_condition(objects, namespace, "llama", "CanaryHealthy", "Unknown", operator_process,
                                  reason="HoldingForEvidence", timeout=90)
    assert "Prometheus" in condition(analysed, "CanaryHealthy")["message"]
    assert analysed["status"]["canary"]["step"] == 0
