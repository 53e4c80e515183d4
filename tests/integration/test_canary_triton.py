"""The canary end to end on the local fleet: real pipeline Jobs and real Triton servers (`qfleet-runtime serve`) on
the executor node, real traffic through the Traefik gateway by the HTTPRoute's weights, and the gates read from the
fleet's real Prometheus. Slow (a real evaluation per revision on 2 CPU cores), so one module-scoped stable revision
serves both stories: a healthy canary holds on Inconclusive with its counts until its step has the evidence, then is
promoted through three steps, holding its weight while Prometheus is stopped in the middle; a canary with injected
latency, judged by an operator that reads the gateway's own latency histogram (Traefik's, `QFLEET_LATENCY_SOURCE=
gateway`), is aborted within one analysis interval, the stable revision untouched. Every verdict rests on the sample
sizes and confidence bounds it records."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from datetime import datetime

import pytest
from kubernetes import client as k8s

from localfleet import loadgen, nodes
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.api import metrics as m
from qfleet.promql import traefik_service
from test_canary import GATEWAY, weights
from test_pipeline import condition, create, objects, read, wait_for_condition  # noqa: F401

pytestmark = pytest.mark.usefixtures("operator_process", "artifacts_claim")

INFER = json.dumps({"inputs": [
    {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["The capital of France is"]},
    {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]}]}).encode()


MIN_REQUESTS = 40
GATES = {
    # Two CPU servers share 2 cores with the load, so the p99 is noisy: the bounds are loose, and a step is judged
    # on 40 requests a side (a CPU server answers about one a second), not the default 500. The injected latency
    # (8 s on requests of about a second) puts even a few requests' lower bound past the abort bound.
    "p99LatencyRatio": {"max": "2", "abortAbove": "3", "minSamples": MIN_REQUESTS},
    # No fallbacks on BF16 KV: the Wilson upper bound of 0 in n tokens is under 0.5% from 540 tokens on.
    "fallbackRate": {"max": "0.005", "minSamples": 600},
    # Scored prompt tokens of the canary: 4 a sampled request here ("The capital of France is").
    "qualityDrop": {"max": "0.05", "abortAbove": "0.2", "minSamples": 20},
}
SAMPLED = ("p99LatencyRatio", "fallbackRate", "qualityDrop")


def smollm(prometheus: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": {"name": "smollm"},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            # BF16 KV needs no calibration: the fastest real pipeline (build and evaluation only).
            "quantization": {"weights": "bf16", "kvCache": "bf16"},
            "nodePool": {"nodeSelector": {nodes.EXECUTOR_LABEL: "true", "nvidia.com/gpu.family": "hopper"},
                         "tolerations": [nodes.EXECUTOR_TOLERATION], "gpusPerReplica": 1},
            # Half the requests are scored against BF16, so the quality gate gets its samples within minutes.
            "serving": {"image": "qfleet/runtime:dev", "replicas": 1, "qualitySampleShare": "0.5"},
            "rollout": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": "smollm-route"}},
                "steps": [{"weight": "20", "pause": "1s"}, {"weight": "50", "pause": "1s"}, {"weight": "100"}],
                # A fresh server's first requests pay lazy set-up: on 40 requests, one of them is the p99.
                "analysis": {"interval": "30s", "prometheus": {"address": prometheus}, "minRequests": MIN_REQUESTS,
                             "warmup": "20s", "failureLimit": 1, "gates": GATES},
            },
            "artifacts": {"uri": "pvc://qfleet-artifacts/smollm"},
        },
    }


def gateway_traffic(url: str, host: str) -> loadgen.SteadyTraffic:
    return loadgen.SteadyTraffic(url, {"Host": host, "Content-Type": "application/json"}, INFER)


@pytest.fixture
def serving_smollm(api, objects, namespace, fleet, operator_process):
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "smollm-route", "namespace": namespace},
             "spec": {"parentRefs": [{"name": "fleet", "namespace": "localfleet"}], "hostnames": [f"{namespace}.test"],
                      "rules": [{"backendRefs": [{"name": "smollm-stable", "port": 8000}]}]}}
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(*GATEWAY, namespace, "httproutes", route)
    create(objects, namespace, smollm(fleet.prometheus_url()))
    serving = wait_for_condition(objects, namespace, "smollm", "Ready", "True", operator_process,
                                 reason="RevisionServing", timeout=600)
    url = fleet.gateway_url() + "/v2/models/qfleet/infer"
    headers = {"Host": f"{namespace}.test", "Content-Type": "application/json"}
    # Traefik programs the route a moment after the Service's endpoints appear, which can be after Ready
    wait_until("a first answer through the gateway", lambda: loadgen.run(
        url, 1, concurrency=1, max_seconds=30, timeout=30, headers=headers, data=INFER).ok == 1, 60, interval=1)
    first = loadgen.run(url, 2, concurrency=1, max_seconds=60, timeout=30, headers=headers, data=INFER)
    assert first.ok == 2, first.as_dict()
    return serving["status"]["revision"]["stable"], url


def new_revision(objects, namespace: str, env: list[dict], stable: str, operator_process) -> str:
    """Edits the spec into a new revision and waits for its pipeline to hand it to the canary. Traffic starts only
    after that: a real evaluation beside a loaded server on 2 cores would take many minutes."""
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "smollm",
                                           {"spec": {"runtime": {"env": env}}})

    def canary() -> str | None:
        return (read(objects, namespace, "smollm")["status"].get("revision") or {}).get("canary")

    try:
        wait_until("the new revision's pipeline to pass and its canary to start", lambda: canary() not in
                   (None, stable), 600, interval=1)
    except Exception:
        print(read(objects, namespace, "smollm").get("status"), "\n", operator_process.log_tail())
        raise
    return canary()


@pytest.mark.timeout(1500)
def test_a_healthy_canary_is_promoted_through_three_steps_under_real_traffic(
        api, objects, namespace, fleet, serving_smollm, operator_process):
    """The first step's first analyses lack samples: the canary holds at its weight with the counts in its condition
    (HoldingForEvidence: the 1s pause is over), and passes once the step has accumulated enough, every sampled gate
    with its minimum and an upper bound within its max. With an outage in the middle: once an analysis has passed,
    Prometheus is stopped; the next analysis is Inconclusive and the canary holds its weight (no promotion on
    silence); Prometheus back, the rollout goes on."""
    stable, url = serving_smollm
    seen_weights = set()
    outage: dict = {}
    held: list[tuple] = []
    passes: list[dict] = []
    new_revision(objects, namespace, [{"name": "QFLEET_NOTE", "value": "same model, new revision"}], stable,
                 operator_process)
    with gateway_traffic(url, f"{namespace}.test") as traffic:

        def promoted() -> bool:
            document = read(objects, namespace, "smollm")
            canary = document["status"].get("canary") or {}
            analysis = canary.get("lastAnalysis") or {}
            seen_weights.add(canary.get("weight"))
            revision = document["status"].get("revision") or {}
            healthy = condition(document, "CanaryHealthy")
            if not outage and healthy.get("reason") == "HoldingForEvidence":
                held.append((canary.get("step"), canary.get("weight"), healthy.get("message", "")))
            if analysis.get("verdict") == "Pass" and analysis not in passes:
                passes.append(analysis)
            if condition(document, "RolledBack").get("status") == "True":
                raise AssertionError(f"the healthy canary was rolled back: {condition(document, 'RolledBack')}")
            if not outage and analysis.get("verdict") == "Pass":
                fleet.stop_prometheus()
                outage.update(passed_at=analysis["at"], weight=canary["weight"], step=canary["step"])
            elif "inconclusive" not in outage and outage and analysis.get("at") != outage["passed_at"]:
                outage["inconclusive"] = (analysis.get("verdict"), canary.get("weight"), canary.get("step"),
                                          revision.get("stable"), condition(document, "CanaryHealthy"))
                fleet.start_prometheus()
            return revision.get("stable") not in (None, stable)

        try:
            wait_until("the canary to be promoted", promoted, 900, interval=1)
        except Exception:
            print(read(objects, namespace, "smollm").get("status"), "\n", operator_process.log_tail())
            raise
        finally:
            if outage and "inconclusive" not in outage:
                fleet.start_prometheus()
    verdict, weight, step, stable_then, healthy = outage["inconclusive"]
    assert (verdict, weight, step, stable_then) == ("Inconclusive", outage["weight"], outage["step"], stable)
    assert healthy["reason"] == "HoldingForEvidence" and "Prometheus" in healthy["message"]
    first_step_held = [message for step_held, weight_held, message in held if step_held == 0]
    assert first_step_held and all(w == "20" for s_, w, _ in held if s_ == 0), held
    assert "canary requests since the step started" in first_step_held[0] or "needs" in first_step_held[0]
    print("held:", first_step_held[0])
    for analysis in passes:  # what every pass rested on, printed for the log and checked
        print("passed:", analysis)
        for gate in (g for g in analysis["gates"] if g["name"] in SAMPLED):
            assert gate["canarySamples"] >= gate["minSamples"] and float(gate["upper"]) <= float(gate["max"]), gate
            if gate["name"] == "p99LatencyRatio":  # the other two judge the canary alone
                assert gate["stableSamples"] >= gate["minSamples"], gate
    done = read(objects, namespace, "smollm")
    assert {"20", "50"} <= seen_weights
    assert condition(done, "Ready")["reason"] == "RevisionServing"
    assert [h["outcome"] for h in done["status"]["history"]][-2:] == ["Superseded", "Promoted"]
    assert weights(api, namespace, "smollm-route") == {"smollm-stable": 100, "smollm-canary": 0}
    assert traffic.failures() == 0, traffic.failed_reports()
    assert operator_process.metric("qfleet_operator_promotions_total") >= 1


@pytest.fixture
def gateway_operator(operator_process, fleet, tmp_path):
    """The operator as a chart with `analysis.latencySource: gateway` runs it (the p99 gate reads Traefik's
    per-backend histogram), in place of the session's, which is paused meanwhile."""
    operator_process.stop()
    own = OperatorProcess(fleet.kubeconfig, tmp_path / "gateway-operator.log", env={"QFLEET_LATENCY_SOURCE": "gateway"})
    own.start()
    yield own
    own.stop()
    operator_process.start()


def _gateway_requests(fleet, namespace: str, service: str) -> float:
    """Requests Traefik timed for the Kubernetes Service, as the fleet's Prometheus has scraped them, selected the
    way the gateway latency source selects them."""
    query = f'sum({m.GATEWAY_REQUEST_DURATION}_count{{service=~"{traefik_service(namespace, service)}"}})'
    url = f"{fleet.prometheus_url()}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


@pytest.mark.timeout(1500)
def test_a_canary_with_injected_latency_is_rolled_back_and_the_stable_serves_on(
        api, objects, namespace, fleet, gateway_operator, serving_smollm):
    """Judged on the gateway's latency (`QFLEET_LATENCY_SOURCE=gateway`): Traefik times the slow canary's requests,
    network and queue included, in the same 5% buckets as the runtime; the healthy canary above reads the runtime's."""
    operator_process = gateway_operator
    stable, url = serving_smollm
    apps = k8s.AppsV1Api(api)
    new_revision(objects, namespace, [{"name": "QFLEET_FAULT_LATENCY_SECONDS", "value": "8"}], stable,
                 operator_process)
    with gateway_traffic(url, f"{namespace}.test") as traffic:
        rolled = wait_for_condition(objects, namespace, "smollm", "RolledBack", "True", operator_process,
                                    timeout=900)
    status = rolled["status"]
    entry = status["history"][-1]
    assert entry["outcome"] == "RolledBack" and "p99LatencyRatio" in entry["message"]
    assert condition(rolled, "RolledBack")["reason"] == "GateAborted"
    deciding = next(g for g in entry["analysis"]["gates"] if g["name"] == "p99LatencyRatio")
    print("aborted on:", deciding)
    assert deciding["window"] == "interval" and float(deciding["lower"]) > 3
    analysed = entry["analysis"]
    # The step had a handful of canary requests, far from its 40: the last interval's abort did not wait for them.
    # Traffic starts as the canary does, so its first requests are in the first or second interval.
    assert (_time(analysed["at"]) - _time(analysed["since"])).total_seconds() <= 2 * 30 + 15, analysed
    assert [h["outcome"] for h in status["history"] if h["revision"] == entry["revision"]] == ["RolledBack"]
    assert status["revision"]["stable"] == stable
    assert weights(api, namespace, "smollm-route") == {"smollm-stable": 100, "smollm-canary": 0}
    assert apps.read_namespaced_deployment(f"smollm-{entry['revision']}", namespace).spec.replicas == 0
    assert apps.read_namespaced_deployment(f"smollm-{stable}", namespace).status.ready_replicas == 1
    assert traffic.failures() == 0, traffic.failed_reports()
    # The gate's selectors match what Traefik really exports for the route's two Services.
    assert _gateway_requests(fleet, namespace, "smollm-canary") >= 1
    assert _gateway_requests(fleet, namespace, "smollm-stable") >= deciding["stableSamples"]


@pytest.mark.timeout(2400)
def test_without_a_router_the_replica_ratio_carries_the_canary_both_ways(
        api, objects, namespace, fleet, serving_smollm, operator_process):
    """No router: the stable Service selects every revision of the model, so one canary replica beside one stable
    replica takes about half of the traffic, and status says so. The same traffic (the HTTPRoute now only reaches
    that Service) rolls back a canary with injected latency and promotes a healthy one."""
    stable, url = serving_smollm
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "smollm", {
        "spec": {"rollout": {"trafficRouting": {"gatewayAPI": None, "replicas": {}}}}})
    seen: list[tuple] = []

    def watch(until) -> None:
        def check() -> bool:
            document = read(objects, namespace, "smollm")
            canary = document["status"].get("canary") or {}
            seen.append((canary.get("weight"), condition(document, "Ready").get("message", "")))
            return until(document)
        try:
            wait_until("the rollout without a router", check, 900, interval=1)
        except Exception:
            print(read(objects, namespace, "smollm").get("status"), "\n", operator_process.log_tail())
            raise

    slow = new_revision(objects, namespace, [{"name": "QFLEET_FAULT_LATENCY_SECONDS", "value": "8"}], stable,
                        operator_process)
    with gateway_traffic(url, f"{namespace}.test") as traffic:
        watch(lambda d: condition(d, "RolledBack").get("status") == "True")
    rolled = read(objects, namespace, "smollm")["status"]
    assert (rolled["history"][-1]["revision"], rolled["history"][-1]["outcome"]) == (slow, "RolledBack")
    assert "p99LatencyRatio" in rolled["history"][-1]["message"]
    assert rolled["revision"]["stable"] == stable
    assert apps.read_namespaced_deployment(f"smollm-{slow}", namespace).spec.replicas == 0
    assert core.read_namespaced_service("smollm-stable", namespace).spec.selector == {"qfleet.io/model": "smollm"}
    assert any(weight == "50.00" and "no router: 1 canary and 1 stable replicas" in message
               for weight, message in seen), seen[-5:]
    assert traffic.failures() == 0, traffic.failed_reports()

    healthy = new_revision(objects, namespace, [{"name": "QFLEET_NOTE", "value": "healthy, no router"}], stable,
                           operator_process)

    def promoted(document: dict) -> bool:
        last = document["status"]["history"][-1]
        if last["revision"] == healthy and last["outcome"] == "RolledBack":
            raise AssertionError(f"the healthy canary was rolled back: {last}")
        return document["status"]["revision"].get("stable") == healthy

    with gateway_traffic(url, f"{namespace}.test") as traffic:
        watch(promoted)
    done = read(objects, namespace, "smollm")["status"]
    assert [(h["revision"], h["outcome"]) for h in done["history"]][-2:] == [(stable, "Superseded"),
                                                                             (healthy, "Promoted")]
    assert traffic.failures() == 0, traffic.failed_reports()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
