"""What a story does through the API and the gateway: follow the model until a condition, patch its spec, route the
gateway to it, send traffic while a canary is analysed, and read the pipeline's facts."""
from __future__ import annotations

from collections.abc import Callable

from kubernetes import client as k8s

from localfleet import loadgen
from localfleet.demo.manifests import GATEWAY_API, MODEL, PIPELINE_TIMEOUT, ROUTE
from localfleet.demo.story_result import StoryResult
from localfleet.demo.traffic import traffic_body
from localfleet.demo.watch import Recorder, StoryFailed, condition
from qfleet.api import GROUP, PLURAL, VERSION


class StoryActions:
    """The steps the stories share (a mixin of localfleet.demo.stories.Demo)."""

    api: k8s.ApiClient
    objects: k8s.CustomObjectsApi
    namespace: str
    log: Callable
    recorder: Recorder
    url: str
    host: str

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _follow(self, result: StoryResult, done: Callable[[dict], bool], timeout: float, what: str,
                allow: tuple[str, ...] = ()) -> dict:
        def or_failed(document: dict) -> bool:
            for kind in ("Calibrated", "EngineBuilt", "Evaluated"):
                step = condition(document, kind)
                if step.get("status") == "False" and step.get("reason", "").endswith("Failed") \
                        and step.get("reason") not in allow:
                    raise StoryFailed(f"{what}: {kind} {step['reason']}: {step.get('message')}")
            return done(document)
        return self.recorder.follow(MODEL, result.key, or_failed, timeout, what)

    def _await_canary(self, result: StoryResult, stable: str) -> str:
        self.log("the new revision's pipeline runs first (traffic waits: an evaluation beside a loaded CPU server "
                 "takes many minutes)")
        done = self._follow(result, lambda d: ((d["status"].get("revision") or {}).get("canary")
                                               not in (None, stable)), PIPELINE_TIMEOUT,
                            "the new revision's pipeline to pass and its canary to start")
        return done["status"]["revision"]["canary"]

    def _promoted(self, document: dict, stable: str) -> bool:
        if condition(document, "RolledBack").get("status") == "True":
            raise StoryFailed(f"the canary was rolled back: {condition(document, 'RolledBack').get('message')}")
        return (document["status"].get("revision") or {}).get("stable") not in (None, stable)

    def _traffic(self, result: StoryResult) -> _Traffic:
        return _Traffic(loadgen.SteadyTraffic(self.url, self._headers(), traffic_body, timeout=60), result, self.recorder)

    def _stable(self) -> str:
        return self.recorder.read(MODEL)["status"]["revision"]["stable"]

    def _patch(self, spec: dict) -> None:
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, MODEL, {"spec": spec})

    def _headers(self) -> dict[str, str]:
        return {"Host": self.host, "Content-Type": "application/json"}

    def _create_route(self) -> None:
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": ROUTE, "namespace": self.namespace},
                 "spec": {"parentRefs": [{"name": "fleet", "namespace": "localfleet"}], "hostnames": [self.host],
                          "rules": [{"backendRefs": [{"name": f"{MODEL}-stable", "port": 8000}]}]}}
        self.objects.create_namespaced_custom_object(*GATEWAY_API, self.namespace, "httproutes", route)
        self.log(f"HTTPRoute {ROUTE}: host {self.host} on the fleet's Traefik gateway, all traffic to "
                 f"{MODEL}-stable")

    def _route_weights(self) -> dict[str, int]:
        route = self.objects.get_namespaced_custom_object(*GATEWAY_API, self.namespace, "httproutes", ROUTE)
        return {ref["name"]: ref.get("weight", 1) for rule in route["spec"]["rules"]
                for ref in rule.get("backendRefs", [])}

    def _pipeline_facts(self, status: dict) -> dict[str, str]:
        facts = {}
        calibration = status.get("calibration") or {}
        report = calibration.get("report") or {}
        if report:
            facts["calibration"] = (f"ModelOpt {calibration.get('modelOptVersion')} on {calibration.get('device')}, "
                                    f"{calibration.get('samples')} samples; worst layer {report.get('worstLayer')} "
                                    f"KL {report.get('worstLayerKL')}")
        evaluation = status.get("evaluation") or {}
        if evaluation:
            facts["evaluation"] = (f"score {evaluation.get('score')} vs BF16 {evaluation.get('baselineScore')}, "
                                   f"quality drop {evaluation.get('qualityDrop')}")
        capacity = status.get("capacity") or {}
        if capacity:
            facts["capacity (planner)"] = (f"{capacity.get('kvCache')} on {capacity.get('gpu')}: "
                                           f"{capacity.get('kvBytesPerToken')} KV bytes/token, "
                                           f"{capacity.get('maxTokensPerReplica')} tokens per replica")
        for step, key in (("calibrate", "calibration"), ("build", "engine"), ("evaluate", "evaluation")):
            seconds = self._job_seconds((status.get(key) or {}).get("job"))
            if seconds is not None:
                facts[f"{step} Job"] = f"{seconds:.0f} s"
        return facts

    def _job_seconds(self, name: str | None) -> float | None:
        if not name:
            return None
        job = k8s.BatchV1Api(self.api).read_namespaced_job(name, self.namespace)
        if job.status.start_time and job.status.completion_time:
            return (job.status.completion_time - job.status.start_time).total_seconds()
        return None


class _Traffic:
    """Steady traffic through the gateway for the length of a `with` block; its totals go into the story."""

    def __init__(self, traffic: loadgen.SteadyTraffic, result: StoryResult, recorder: Recorder):
        self.traffic, self.result, self.recorder = traffic, result, recorder

    def __enter__(self) -> loadgen.SteadyTraffic:
        self.began = self.recorder.now()
        return self.traffic.start()

    def __exit__(self, *_) -> None:
        self.traffic.stop()
        latencies = self.traffic.latencies()
        self.result.traffic = {
            "from": round(self.began, 1), "to": round(self.recorder.now(), 1), "sent": self.traffic.sent(),
            "failed": self.traffic.failures(), "p50": latencies.percentile(0.5), "p99": latencies.percentile(0.99),
        }
