"""Calibration refresh (issue 23) on the local fleet: real ModelOpt calibration, build and evaluation Jobs, real Triton
servers (`qfleet-runtime serve`) on the executor node, traffic through the Traefik gateway, the drift triggers and the
canary gates read from the fleet's real Prometheus, and the served-prompt sample on the artifacts claim.

- `make test` (short): drift on a stable FP8 revision makes it CalibrationStale; a new calibration generation is
  calibrated on the recent traffic sample, canaried and promoted, after which the stable's fallback rate is back
  under the trigger's bound. **The drift is stood in for by the runtime's fault switch**, QFLEET_FAULT_KV_SCALE=0.5
  set on the stable revision's Deployment only (not in the spec): the stable's calibrated K/V amax is halved, which is
  what a calibration that no longer covers its traffic looks like to the serving path (values pass the scale and fall
  back to BF16; docs/runtime.md, "Fault switch"). It is used because a real traffic shift's size on SmolLM2-135M is
  not known in advance (the per-entry fallback rate of a healthy FP8 revision here is about 0.0008), while the fault
  reliably takes the rate to about 0.5 (docs/development.md, the demo). It stands for "today's prompts push K/V
  past the calibrated range"; it does NOT show that re-calibrating fixes that: the refresh revision's Deployment is
  made from the spec, so it simply runs without the fault. (Not in `spec.runtime.env`: that is part of the revision,
  so the refresh would inherit the fault and be rolled back.) What the test does show for real: the operator's drift
  check, the condition, the generation, the calibration Job on the recent sample (`datasetMix.recent`), the canary
  and the promotion, and the rate measured from Prometheus before, during and after.
- QFLEET_RECALIBRATION=full (`make test-recalibration`, long): (1) a real traffic shift and no fault: the stable is
  calibrated on a handful of short greetings, the load generator sends long technical passages, and the refresh
  calibrates on those passages (recentShare 1), so the re-calibration itself is what brings the rate back under the
  bound; (2) a scheduled refresh (a cron expression) with unchanged traffic, canaried and then promoted or rolled
  back, with no edit after the schedule's.

Traffic is paused while a pipeline runs (an evaluation beside a loaded CPU server takes many minutes, as in
test_canary_triton) and runs while drift is watched and while the canary is analysed. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client as k8s
from test_canary import GATEWAY, weights
from test_pipeline import condition, create, read

from localfleet import loadgen, nodes
from localfleet.demo.traffic import PASSAGES, infer_body, traffic_body
from localfleet.fleet import Fleet
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.api import metrics as m
from qfleet.api.jobs import ARTIFACTS_MOUNT, traffic_sample
from qfleet.manifests.serving import deployment_name

pytestmark = pytest.mark.usefixtures("operator_process", "artifacts_claim")

FULL = os.environ.get("QFLEET_RECALIBRATION", "") == "full"
long_variant = pytest.mark.skipif(not FULL, reason="make test-recalibration only (QFLEET_RECALIBRATION=full): two "
                                                   "more real pipelines and canaries each")

MODEL, ROUTE = "smollm", "smollm-route"
URI = f"pvc://qfleet-artifacts/{MODEL}"
INTERVAL_S = 20
"""rollout.analysis.interval: the drift check's cadence and window, and the canary's analysis interval. At about a
request a second of ~75 KV tokens, one window holds about 1,500 KV tokens, above the 500 a check needs."""
FAULT = {"name": "QFLEET_FAULT_KV_SCALE", "value": "0.5"}
GATES = {
    # As test_canary_triton: two CPU servers share 2 cores with the load, so the p99 bounds are loose and a step is
    # judged on 40 requests a side.
    "p99LatencyRatio": {"max": "2", "abortAbove": "3", "minSamples": 40},
    # The default bound. A healthy FP8 revision sits near 0.0008 here: its Wilson upper bound is under 0.005 from
    # about 1,000 KV tokens on.
    "fallbackRate": {"max": "0.005", "minSamples": 1000},
    # Half the requests are rescored against BF16, ~70 prompt tokens each.
    "qualityDrop": {"max": "0.05", "abortAbove": "0.2", "minSamples": 200},
}
PIPELINE_S = 900
"""Calibration (4 samples), build and a 7k-token evaluation on 2 CPU cores, with no traffic beside them."""
CANARY_S = 600


@pytest.fixture
def objects(api) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def smollm(prometheus: str, refresh: dict, calibration: dict | None = None) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "metadata": {"name": MODEL},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "quantization": {"weights": "bf16", "kvCache": "fp8",
                             "calibration": {"dataset": "builtin", "samples": 4, "maxSeqLen": 128,
                                             **(calibration or {}), "refresh": refresh}},
            "nodePool": {"nodeSelector": {nodes.EXECUTOR_LABEL: "true", "nvidia.com/gpu.family": "hopper"},
                         "tolerations": [nodes.EXECUTOR_TOLERATION], "gpusPerReplica": 1},
            "serving": {"image": "qfleet/runtime:dev", "replicas": 1, "qualitySampleShare": "0.5"},
            "rollout": {
                "trafficRouting": {"gatewayAPI": {"httpRoute": ROUTE}},
                # One judged step at half the traffic, then promotion (the next step's weight is 100).
                "steps": [{"weight": "50", "pause": "1s"}, {"weight": "100"}],
                "analysis": {"interval": f"{INTERVAL_S}s", "prometheus": {"address": prometheus},
                             "minRequests": 20, "warmup": "20s", "gates": GATES},
            },
            "artifacts": {"uri": URI},
        },
    }


# ---- reading the fleet ----------------------------------------------------------------------------------------------

@dataclass
class Served:
    """A model serving through the gateway, and what its test reads it with."""

    objects: k8s.CustomObjectsApi
    api: k8s.ApiClient
    namespace: str
    fleet: Fleet
    operator: OperatorProcess
    claim: Path
    url: str
    headers: dict[str, str]
    stable: str

    def document(self) -> dict:
        return read(self.objects, self.namespace, MODEL)

    def follow(self, what: str, done: Callable[[dict], bool], timeout: float) -> dict:
        """Reads the model once a second until done(document); a failed pipeline step fails at once. On failure the
        status and the operator's log tail are printed."""
        seen: dict = {}

        def check() -> bool:
            document = self.document()
            for kind in ("Calibrated", "EngineBuilt", "Evaluated"):
                step = condition(document, kind)
                if step.get("status") == "False" and step.get("reason", "").endswith("Failed"):
                    raise AssertionError(f"{what}: {kind} {step['reason']}: {step.get('message')}")
            seen["document"] = document
            return done(document)

        try:
            wait_until(what, check, timeout, interval=1)
        except BaseException:
            print(json.dumps(self.document().get("status"), indent=1), "\n", self.operator.log_tail(80))
            raise
        return seen["document"]

    def traffic(self, body: Callable[[int], bytes]) -> loadgen.SteadyTraffic:
        return loadgen.SteadyTraffic(self.url, self.headers, body, timeout=60)

    def fallback_rate(self, revision: str, seconds: float) -> tuple[float | None, float]:
        """The revision's per-entry fallback rate over the last `seconds`, read from Prometheus by the test itself
        (fallback entries over entries, docs/metrics.md), and the KV tokens behind it."""
        selector = (f'namespace="{self.namespace}",{m.POD_LABELS["model"]}="{MODEL}",'
                    f'{m.POD_LABELS["revision"]}="{revision}"')

        def total(metric: str) -> float:
            query = f"sum(increase({metric}{{{selector}}}[{max(1, int(seconds))}s]))"
            url = f"{self.fleet.prometheus_url()}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
                result = json.load(response)["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        entries = total(m.KV_ENTRIES)
        return (total(m.KV_FALLBACK_ENTRIES) / entries if entries else None), total(m.KV_TOKENS)

    def sample(self) -> list[dict]:
        """Every entry of the model's served-prompt sample, as the serving pods left it on the claim."""
        directory = self.claim / traffic_sample(URI, MODEL).path.removeprefix(ARTIFACTS_MOUNT).strip("/")
        entries = []
        for file in sorted(directory.glob("*.jsonl")):
            assert stat.S_IMODE(file.stat().st_mode) == 0o640, f"{file} is not mode 0640"
            entries += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        return entries


def serve(objects, api, namespace, fleet, operator_process, claim: Path, document: dict) -> Served:
    """The route, the model, its first revision through the real pipeline to stable, and a first answer through the
    gateway."""
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": ROUTE, "namespace": namespace},
             "spec": {"parentRefs": [{"name": "fleet", "namespace": "localfleet"}], "hostnames": [f"{namespace}.test"],
                      "rules": [{"backendRefs": [{"name": f"{MODEL}-stable", "port": 8000}]}]}}
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(*GATEWAY, namespace, "httproutes", route)
    create(objects, namespace, document)
    served = Served(objects, api, namespace, fleet, operator_process, claim,
                    fleet.gateway_url() + "/v2/models/qfleet/infer",
                    {"Host": f"{namespace}.test", "Content-Type": "application/json"}, stable="")
    done = served.follow("the first FP8 revision to serve", lambda d: condition(d, "Ready").get("reason") ==
                         "RevisionServing" and condition(d, "Ready").get("status") == "True", PIPELINE_S)
    status = done["status"]
    served.stable = status["revision"]["stable"]
    # Refresh is policy: the first revision is generation 0, its calibration no refresh's, and it is current.
    assert refresh_of(done).get("generation", 0) == 0 and "generation" not in status["calibration"], status
    assert (condition(done, "CalibrationStale")["status"], condition(done, "CalibrationStale")["reason"]) == \
        ("False", "CalibrationCurrent")
    wait_until("a first answer through the gateway", lambda: loadgen.run(
        served.url, 1, concurrency=1, max_seconds=60, timeout=60, headers=served.headers,
        data=infer_body(PASSAGES[0])).ok == 1, 60, interval=1)
    return served


def refresh_of(document: dict) -> dict:
    return (document.get("status") or {}).get("refresh") or {}


def drift_figure(document: dict, name: str = "fallbackRate") -> dict:
    return next((f for f in refresh_of(document).get("drift") or [] if f["name"] == name), {})


def checked_after(document: dict, when: datetime) -> bool:
    """A drift check with data (a value, so at least 500 KV tokens) made after `when`."""
    last = refresh_of(document).get("lastCheckedAt")
    return last is not None and _time(last) > when and drift_figure(document).get("value") is not None


def wait_for_sample(served: Served, at_least: int) -> list[dict]:
    """The serving pods write their sample every 32 new prompts or 30 s: wait for `at_least` entries on the claim."""
    found: dict = {}

    def enough() -> bool:
        found["entries"] = served.sample()
        return len(found["entries"]) >= at_least

    wait_until(f"{at_least} entries in the served-prompt sample", enough, 90, interval=2)
    for entry in found["entries"]:  # token ids and their tokenizer's fingerprint, never text
        assert set(entry) == {"t", "tok", "ids"} and all(isinstance(i, int) for i in entry["ids"]), entry
    return found["entries"]


# ---- a drift refresh, from stale to promoted ------------------------------------------------------------------------

@dataclass
class Drifted:
    document: dict
    refresh_revision: str
    rate: float
    """The stable's fallback rate while it drifted, measured by the test."""
    bound: float


def went_stale(served: Served, not_before: datetime, measured_from: float, bound: float) -> Drifted:
    """Waits for CalibrationStale True (DriftDetected) and checks what status says against the stable's rate as the
    test reads it from Prometheus since `measured_from` (a monotonic time; the drifting traffic, which must be
    running). No check before `not_before` (when the drift began) was above the bound."""
    stale = served.follow("the stable's calibration to go stale (DriftDetected)", lambda d: (
        condition(d, "CalibrationStale").get("status"), condition(d, "CalibrationStale").get("reason")) ==
        ("True", "DriftDetected"), 300)
    rate, tokens = served.fallback_rate(served.stable, time.monotonic() - measured_from)
    print(f"drifted: the stable's fallback rate {rate} over {tokens:.0f} KV tokens (bound {bound}); status "
          f"{refresh_of(stale)}")
    assert rate is not None and rate > bound and tokens >= 500, (rate, tokens)
    refresh = refresh_of(stale)
    figure = drift_figure(stale)
    # The deciding check's figure, above the bound at every check since one after the drift began, for `for` (30s).
    assert float(figure["value"]) > bound and float(figure["max"]) == bound and figure["samples"] >= 500, figure
    assert figure["aboveSince"] is not None and _time(figure["aboveSince"]) >= not_before, figure
    assert _time(refresh["requestedAt"]) - _time(figure["aboveSince"]) >= timedelta(seconds=30), refresh
    assert (refresh["generation"], refresh["reason"], refresh["outcome"]) == (1, "fallbackRate", "InProgress")
    assert refresh["basedOn"] == served.stable and refresh["revision"] not in (None, served.stable), refresh
    message = condition(stale, "CalibrationStale")["message"]
    assert "fallbackRate" in message and f"(max {figure['max']})" in message and refresh["revision"] in message
    # The spec's revision is now the refresh's while the old one serves, though nobody edited the spec.
    served.follow("the refresh's revision to be the current one", lambda d: d["status"]["revision"]["current"] ==
                  refresh["revision"] and d["status"]["revision"]["stable"] == served.stable, 30)

    def drift_event() -> list[k8s.CoreV1Event]:
        return [e for e in k8s.CoreV1Api(served.api).list_namespaced_event(
            served.namespace, field_selector=f"involvedObject.name={MODEL}").items if e.reason == "DriftDetected"]

    wait_until("a DriftDetected Event", drift_event, 30, interval=0.5)
    event = drift_event()[-1]
    assert event.type == "Warning" and "CalibrationStale=True" in event.message, event
    assert refresh["revision"] in event.message and "from the recent traffic sample" in event.message, event.message
    return Drifted(stale, refresh["revision"], rate, bound)


def canaried_and_promoted(served: Served, drifted: Drifted, body: Callable[[int], bytes], samples: int,
                          recent: int, reason: str = "fallbackRate") -> dict:
    """From a refresh under way (traffic paused) to its promotion and the first drift check after it, under traffic.
    Returns the model once the calibration is current again; the rate is checked against the trigger's bound."""
    refresh_revision, bound = drifted.refresh_revision, drifted.bound

    def canary_started(document: dict) -> bool:
        outcome = refresh_of(document).get("outcome")
        if outcome not in (None, "InProgress"):
            raise AssertionError(f"the refresh ended before its canary: {refresh_of(document)}")
        return (document["status"].get("revision") or {}).get("canary") == refresh_revision

    started = served.follow("the refresh's pipeline to pass and its canary to start", canary_started, PIPELINE_S)
    calibration = started["status"]["calibration"]
    print("refresh calibration:", calibration)
    assert calibration["revision"] == refresh_revision and calibration["outcome"] == "Succeeded", calibration
    assert calibration["generation"] == 1 and calibration["refreshReason"] == reason, calibration
    mix = calibration["datasetMix"]
    assert mix["recent"] == recent and mix["recent"] > 0 and mix["configured"] + mix["recent"] == samples, mix
    assert calibration["samples"] == samples
    assert condition(started, "CalibrationStale")["status"] == "True"  # until the refresh is promoted

    traffic = served.traffic(body).start()
    began = time.monotonic()
    try:
        def promoted(document: dict) -> bool:
            if condition(document, "RolledBack").get("status") == "True":
                raise AssertionError(f"the refresh was rolled back: {condition(document, 'RolledBack')}")
            return (document["status"].get("revision") or {}).get("stable") == refresh_revision

        done = served.follow("the refresh's canary to be promoted", promoted, CANARY_S)
        entry = next(h for h in reversed(done["status"]["history"]) if h["revision"] == refresh_revision)
        assert entry["outcome"] == "Promoted", entry
        at = _time(entry["at"])
        current = served.follow("a drift check on the promoted revision", lambda d: checked_after(d, at), 180)
        rate, tokens = served.fallback_rate(refresh_revision, time.monotonic() - began)
    finally:
        traffic.stop()
    print(f"after: the new stable's fallback rate {rate} over {tokens:.0f} KV tokens (bound {bound}); was "
          f"{drifted.rate}")
    assert rate is not None and rate <= bound < drifted.rate and tokens >= 500, (rate, tokens)
    figure = drift_figure(current)
    assert float(figure["value"]) <= bound and figure.get("aboveSince") is None, figure
    stale = condition(current, "CalibrationStale")
    assert (stale["status"], stale["reason"]) == ("False", "CalibrationCurrent"), stale
    refresh = refresh_of(current)
    assert (refresh["generation"], refresh["outcome"], refresh["consecutiveFailures"]) == (1, "Promoted", 0), refresh
    assert refresh["revision"] == refresh_revision and refresh.get("notBefore") is None
    history = [(h["revision"], h["outcome"]) for h in current["status"]["history"]]
    assert history[-2:] == [(served.stable, "Superseded"), (refresh_revision, "Promoted")], history
    assert weights(served.api, served.namespace, ROUTE) == {f"{MODEL}-stable": 100, f"{MODEL}-canary": 0}
    apps = k8s.AppsV1Api(served.api)
    wait_until("the drifted revision's Deployment scaled to 0", lambda: apps.read_namespaced_deployment(
        deployment_name(MODEL, served.stable), served.namespace).spec.replicas == 0, 120, interval=1)
    assert traffic.failures() == 0, traffic.failed_reports()
    return current


# ---- make test ------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(3600)
def test_drift_on_the_stable_recalibrates_on_recent_traffic_and_the_refresh_is_promoted(
        api, objects, namespace, fleet, operator_process, artifacts_claim):
    """Drift stood in for by QFLEET_FAULT_KV_SCALE=0.5 on the stable's Deployment (see the module's docstring: the
    stable's scales too small for its traffic; the refresh revision runs without it). Healthy traffic first: the
    trigger's figure is checked and under its bound. Then the fault: the rate crosses the bound, CalibrationStale
    True (DriftDetected) with a Warning Event, generation 1 is calibrated on 2 recent prompts + 2 builtin passages,
    canaried at 50% and promoted, and the first check on the new stable is under the bound again."""
    bound = 0.01
    refresh = {"triggers": {"fallbackRate": {"max": str(bound), "for": "30s"}},
               "sampleTraffic": {"enabled": True, "maxPrompts": 64, "retention": "1h"}, "recentShare": "0.5"}
    served = serve(objects, api, namespace, fleet, operator_process, artifacts_claim,
                   smollm(fleet.prometheus_url(), refresh))
    apps = k8s.AppsV1Api(api)
    name = deployment_name(MODEL, served.stable)
    args = apps.read_namespaced_deployment(name, namespace).spec.template.spec.containers[0].args
    assert "--prompt-sample-dir" in args and args[args.index("--prompt-sample-max") + 1] == "64", args

    traffic = served.traffic(lambda i: traffic_body(10_000 + i)).start()
    try:
        # Healthy: a check over this traffic, with data, under the bound; the test's own reading agrees.
        healthy_from, healthy_clock = datetime.now(UTC), time.monotonic()
        healthy = served.follow("a drift check on healthy traffic", lambda d: checked_after(
            d, healthy_from + timedelta(seconds=INTERVAL_S)), 180)
        rate, tokens = served.fallback_rate(served.stable, time.monotonic() - healthy_clock)
        print(f"healthy: the stable's fallback rate {rate} over {tokens:.0f} KV tokens; status {drift_figure(healthy)}")
        assert rate is not None and rate <= bound and float(drift_figure(healthy)["value"]) <= bound, (rate, healthy)
        assert condition(healthy, "CalibrationStale")["reason"] == "CalibrationCurrent"
        assert refresh_of(healthy)["generation"] == 0

        # The stand-in for drift: the stable's own Deployment gets the fault; the operator creates Deployments and
        # only scales them, so it stays until that Deployment is scaled away.
        patched = datetime.now(UTC)
        container = apps.read_namespaced_deployment(name, namespace).spec.template.spec.containers[0]
        env = [{"name": e.name, "value": e.value} for e in container.env or []] + [FAULT]
        apps.patch_namespaced_deployment(name, namespace, [
            {"op": "add", "path": "/spec/template/spec/containers/0/env", "value": env}],
            _content_type="application/json-patch+json")

        def rolled_out() -> bool:
            deployment = apps.read_namespaced_deployment(name, namespace)
            s = deployment.status
            return (s.observed_generation or 0) >= deployment.metadata.generation and s.updated_replicas == 1 \
                and s.ready_replicas == 1 and s.replicas == 1

        wait_until("the stable's pod with the fault to replace the healthy one", rolled_out, 240, interval=1)
        pods = [p for p in k8s.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=f"qfleet.io/revision={served.stable},!qfleet.io/step").items
            if not p.metadata.deletion_timestamp]  # the serving pod, not the pipeline Jobs'
        assert [[(e.name, e.value) for e in p.spec.containers[0].env or [] if e.name == FAULT["name"]]
                for p in pods] == [[(FAULT["name"], FAULT["value"])]], pods
        drifted = went_stale(served, patched, time.monotonic(), bound)
        entries = wait_for_sample(served, 2)
        print(f"served-prompt sample: {len(entries)} entries")
    finally:
        traffic.stop()

    # No prompt text in status, Events or the operator's log (the sample holds token ids only: checked above).
    words = [p[:40] for p in PASSAGES]
    text = json.dumps(drifted.document) + " ".join(e.message or "" for e in k8s.CoreV1Api(api).list_namespaced_event(
        namespace).items) + operator_process.log_path.read_text(errors="replace")
    assert not [w for w in words if w in text]

    canaried_and_promoted(served, drifted, lambda i: traffic_body(20_000 + i), samples=4, recent=2)


# ---- make test-recalibration ----------------------------------------------------------------------------------------

GREETINGS = ["Hi there!", "Hello, how are you?", "Good morning.", "Thanks, see you soon."]
"""The stable's calibration data in the traffic-shift test: four short chat greetings (about 30 tokens in all)."""


def long_prompt(index: int) -> bytes:
    """The shifted traffic: all four technical passages (about 290 tokens) in one of four rotations, behind a request
    number so that no two prompts share a prefix block."""
    turn = index % len(PASSAGES)
    return infer_body(f"Request {index}. " + " ".join(PASSAGES[turn:] + PASSAGES[:turn]))


@long_variant
@pytest.mark.timeout(3600)
def test_a_traffic_shift_past_the_calibrated_range_is_fixed_by_recalibrating_on_recent_traffic(
        api, objects, namespace, fleet, operator_process, artifacts_claim):
    """No fault: the stable FP8 revision is calibrated on four short greetings, and the traffic is long technical
    passages, far from that data (longer, other words, later positions). Its fallback rate rises past the bound,
    CalibrationStale True (DriftDetected), and generation 1 calibrates on the recent sample alone (recentShare 1: the
    four rotations of the passages the pods saw); canaried and promoted, it serves the same traffic under the bound.
    The outOfRange trigger (bound 0.5, never reached) is there for its figure: values above amax are a share of the
    entries that fall back, so it is never above the fallback rate."""
    bound = 0.003
    dataset = artifacts_claim / "calibration" / "greetings.jsonl"
    dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_text("".join(json.dumps({"text": g}) + "\n" for g in GREETINGS))
    dataset.chmod(0o644)
    refresh = {"triggers": {"fallbackRate": {"max": str(bound), "for": "30s"}, "outOfRange": {"max": "0.5"}},
               "sampleTraffic": {"enabled": True, "maxPrompts": 64, "retention": "1h"}, "recentShare": "1"}
    calibration = {"dataset": f"{ARTIFACTS_MOUNT}/calibration/greetings.jsonl", "samples": 4, "maxSeqLen": 512}
    served = serve(objects, api, namespace, fleet, operator_process, artifacts_claim,
                   smollm(fleet.prometheus_url(), refresh, calibration))
    first = served.document()["status"]["calibration"]
    assert first["samples"] == 4 and first["datasetMix"] == {"configured": 4, "recent": 0}, first

    traffic = served.traffic(lambda i: long_prompt(10_000 + i)).start()
    try:
        drifted = went_stale(served, datetime.now(UTC), time.monotonic(), bound)
        out_of_range = drift_figure(drifted.document, "outOfRange")
        assert float(out_of_range["value"]) <= float(drift_figure(drifted.document)["value"]), out_of_range
        wait_for_sample(served, 4)
    finally:
        traffic.stop()
    done = canaried_and_promoted(served, drifted, lambda i: long_prompt(20_000 + i), samples=4, recent=4)
    assert done["status"]["calibration"]["datasetHash"] != first["datasetHash"]  # other data: the recent sample


@long_variant
@pytest.mark.timeout(3600)
def test_a_scheduled_refresh_with_unchanged_traffic_is_canaried_and_decided_without_a_person(
        api, objects, namespace, fleet, operator_process, artifacts_claim):
    """A schedule and no trigger: nothing is asked of Prometheus for drift. Once the traffic has filled the sample,
    the calibration is aged by two hours in status (a schedule is never due within an hour of it) and the schedule is set
    to a cron minute about two minutes ahead (editing refresh starts no revision); at that minute
    the operator starts generation 1 on its own (RefreshScheduled, a Normal Event), calibrated on the same traffic's
    recent sample, and canaries it under the same traffic. Promoted or rolled back, the test checks that outcome's
    state, and that the spec was not edited after the schedule."""
    refresh = {"schedule": "168h", "sampleTraffic": {"enabled": True, "maxPrompts": 64, "retention": "1h"},
               "recentShare": "0.5"}
    served = serve(objects, api, namespace, fleet, operator_process, artifacts_claim,
                   smollm(fleet.prometheus_url(), refresh))
    first = served.follow("the schedule's first time in status", lambda d: refresh_of(d).get("nextScheduledAt")
                          is not None, 60)
    completed = _time(first["status"]["calibration"]["completedAt"])
    assert _time(refresh_of(first)["nextScheduledAt"]) == completed + timedelta(hours=168), refresh_of(first)

    traffic = served.traffic(lambda i: traffic_body(10_000 + i)).start()
    try:
        wait_for_sample(served, 2)
        # A schedule is never due within an hour of the calibration (its floor, docs/api.md): rather than wait an
        # hour, the test ages the first calibration by two hours in status, as if it had been made then.
        aged = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, MODEL, {
            "status": {"calibration": {"completedAt": aged}}})
        due = (datetime.now(UTC) + timedelta(seconds=90)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, MODEL, {"spec": {"quantization": {
            "calibration": {"refresh": {"schedule": f"{due.minute} {due.hour} * * *"}}}}})
        edited = served.document()["metadata"]["generation"]
        served.follow("the schedule's next time in status", lambda d: refresh_of(d).get("nextScheduledAt") is not None
                      and _time(refresh_of(d)["nextScheduledAt"]) == due, 60)
        waiting = served.document()
        assert waiting["status"]["revision"]["current"] == served.stable  # refresh is policy: no revision
        assert condition(waiting, "CalibrationStale")["status"] == "False"
        scheduled = served.follow("the scheduled refresh to start", lambda d: (
            condition(d, "CalibrationStale").get("status"), condition(d, "CalibrationStale").get("reason")) ==
            ("True", "RefreshScheduled"), (due - datetime.now(UTC)).total_seconds() + 120)
    finally:
        traffic.stop()
    started = refresh_of(scheduled)
    assert started["reason"] == "schedule" and started["generation"] == 1 and started["basedOn"] == served.stable
    assert _time(started["requestedAt"]) >= due and not started.get("drift") and "lastCheckedAt" not in started
    refresh_revision = started["revision"]
    assert refresh_revision != served.stable, started
    served.follow("the refresh's revision to be the current one", lambda d: d["status"]["revision"]["current"] ==
                  refresh_revision and d["status"]["revision"]["stable"] == served.stable, 30)

    def scheduled_event() -> list[k8s.CoreV1Event]:
        return [e for e in k8s.CoreV1Api(api).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}").items if e.reason == "RefreshScheduled"]

    wait_until("a RefreshScheduled Event", scheduled_event, 30, interval=0.5)
    event = scheduled_event()[-1]
    assert event.type == "Normal" and "schedule" in event.message and refresh_revision in event.message, event

    begun = served.follow("the scheduled refresh's canary to start", lambda d: (
        d["status"].get("revision") or {}).get("canary") == refresh_revision, PIPELINE_S)
    calibration = begun["status"]["calibration"]
    assert (calibration["generation"], calibration["refreshReason"]) == (1, "schedule"), calibration
    assert calibration["datasetMix"]["recent"] == 2 and calibration["datasetMix"]["configured"] == 2, calibration

    traffic = served.traffic(lambda i: traffic_body(20_000 + i)).start()
    try:
        settled = {"Promoted": "CalibrationCurrent", "RolledBack": "RefreshBackingOff"}
        decided = served.follow("the scheduled refresh's canary to be promoted or rolled back", lambda d:
                                condition(d, "CalibrationStale").get("reason") ==
                                settled.get(refresh_of(d).get("outcome")), CANARY_S)
    finally:
        traffic.stop()
    assert decided["metadata"]["generation"] == edited  # no person: the spec is as the schedule's edit left it
    outcome = refresh_of(decided)
    entry = next(h for h in reversed(decided["status"]["history"]) if h["revision"] == refresh_revision)
    stale = condition(decided, "CalibrationStale")
    print(f"scheduled refresh {refresh_revision}: {outcome['outcome']}: {entry.get('message')}")
    if outcome["outcome"] == "Promoted":
        assert decided["status"]["revision"]["stable"] == refresh_revision and entry["outcome"] == "Promoted"
        assert (stale["status"], stale["reason"], outcome["consecutiveFailures"]) == ("False", "CalibrationCurrent", 0)
        assert _time(outcome["nextScheduledAt"]) == due + timedelta(days=1)  # the cron's next time, not a loop
    else:
        assert decided["status"]["revision"]["stable"] == served.stable and entry["outcome"] == "RolledBack"
        assert (stale["status"], stale["reason"], outcome["consecutiveFailures"]) == ("True", "RefreshBackingOff", 1)
        assert abs(_time(outcome["notBefore"]) - _time(entry["at"]) - timedelta(hours=1)) < timedelta(minutes=1)
        assert weights(api, namespace, ROUTE) == {f"{MODEL}-stable": 100, f"{MODEL}-canary": 0}
    assert traffic.failures() == 0, traffic.failed_reports()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
