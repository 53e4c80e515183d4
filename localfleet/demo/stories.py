"""The demo's four stories, as a platform engineer would play them with kubectl, on SmolLM2-135M and real parts.

1. `fp8-stable`: a QuantizedModel in FP8 goes through real ModelOpt calibration, the build and the evaluation, serves
   through the gateway, and becomes stable.
2. `nvfp4-canary` (left out of the short variant): the spec moves to NVFP4 (with `layerFallback.maxLayerKL`: the
   layers whose calibration KL is above it keep BF16 KV). Judged on the default quality and fallback bounds, it is
   either refused by the evaluation, rolled back by a live gate, or canaried 20% -> 50% -> 100% and promoted; the
   story reports which, with the numbers, and returns the spec to FP8 when NVFP4 did not make it.
3. `regression-rolled-back`: a revision with the runtime's fault switch (QFLEET_FAULT_KV_SCALE=0.5: a stale
   calibration, so K/V values overflow their scales and fall back to BF16) is caught by the fallback-rate gate and
   rolled back, the stable revision serving every request meanwhile.
4. `auto-on-h100`: `kvCache: auto` with the ladder [nvfp4, fp8, bf16] on the H100 pool picks FP8 and says why.

The gates are the defaults (fallbackRate max 0.005; qualityDrop max 0.01, abortAbove 0.01; their minSamples too),
with one documented exception for a CPU reason: `p99LatencyRatio` (max 2, abortAbove 4, 40 requests a side), because
two CPU servers share two cores with the traffic and the live-quality rescoring, and NVFP4's packing costs about 1.3x
on CPU where a GPU kernel does not (docs/runtime.md). Durations are seconds instead of the runbook's hours, through
the same spec fields, and the steps are 20% and 50% rather than 1% and 10% (a CPU server answers about a request a
second: 1% of that is no sample a verdict could rest on within a demo). Every verdict rests on confidence bounds at
95%: the report states, for each, the interval and the sample sizes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from kubernetes import client as k8s

from localfleet import loadgen
from localfleet.demo.manifests import (
    AUTO_MODEL,
    FAULT,
    INFER,
    LAYER_FALLBACK,
    MODEL,
    NVFP4_CANARY_SECONDS,
    PIPELINE_TIMEOUT,
    ROLLOUT_TIMEOUT,
    llama_auto,
    smollm,
)
from localfleet.demo.story_actions import StoryActions
from localfleet.demo.story_result import StoryResult
from localfleet.demo.watch import Recorder, StoryFailed, condition
from localfleet.fleet import Fleet
from localfleet.processes import ProcessFailed, wait_until
from qfleet.api import GROUP, PLURAL, VERSION


class Demo(StoryActions):
    def __init__(self, fleet: Fleet, api: k8s.ApiClient, namespace: str, short: bool, log: Callable = print):
        self.fleet, self.api, self.namespace, self.short, self.log = fleet, api, namespace, short, log
        self.objects = k8s.CustomObjectsApi(api)
        self.started = time.monotonic()
        self.recorder = Recorder(self.objects, namespace, self.started, out=log)
        self.results: list[StoryResult] = []
        self.url = fleet.gateway_url() + "/v2/models/qfleet/infer"
        self.host = f"{MODEL}.{namespace}.localfleet"

    # ---- the whole run -------------------------------------------------------------------------------------------
    def run(self) -> bool:
        stories = [("fp8-stable", "FP8 through the real pipeline to stable", self.fp8_stable),
                   ("nvfp4-canary", "NVFP4 (with per-layer fallback) judged on the default gates", self.nvfp4_canary),
                   ("regression-rolled-back", "a stale-calibration regression caught and rolled back",
                    self.regression_rolled_back),
                   ("auto-on-h100", "kvCache: auto on an H100-only pool picks FP8", self.auto_on_h100)]
        if self.short:
            stories = [s for s in stories if s[0] != "nvfp4-canary"]
        for key, title, play in stories:
            result = StoryResult(key, title, started=self.recorder.now())
            self.results.append(result)
            self.log(f"\n== {len(self.results)}. {title} ==")
            try:
                play(result)
                result.passed = True
            except StoryFailed as failure:
                result.summary = f"FAILED: {failure}"
                self.log(result.summary)
                return False
            finally:
                result.finished = self.recorder.now()
            self.log(f"-- {result.summary} ({result.finished - result.started:.0f} s)")
        return True

    # ---- the stories ---------------------------------------------------------------------------------------------
    def fp8_stable(self, result: StoryResult) -> None:
        self._create_route()
        self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                     smollm(self.fleet.prometheus_url()))
        self.log(f"kubectl apply: QuantizedModel {MODEL} (kvCache: fp8); calibration, build and evaluation run as "
                 "Jobs on the executor node")
        done = self._follow(result, lambda d: condition(d, "Ready").get("reason") == "RevisionServing"
                            and condition(d, "Ready").get("status") == "True", PIPELINE_TIMEOUT,
                            "the FP8 revision to serve")
        status = done["status"]
        try:  # Traefik programs the route a moment after the Service's endpoints appear
            wait_until("a first answer through the gateway", lambda: loadgen.run(
                self.url, 1, concurrency=1, max_seconds=60, timeout=60, headers=self._headers(), data=INFER).ok == 1,
                60, interval=1)
        except ProcessFailed as failure:
            raise StoryFailed(str(failure)) from None
        first = loadgen.run(self.url, 3, concurrency=1, max_seconds=120, timeout=60, headers=self._headers(),
                            data=INFER)
        if first.ok != 3:
            raise StoryFailed(f"requests through the gateway failed: {first.as_dict()}")
        result.facts.update(self._pipeline_facts(status))
        result.facts["gateway p50 (3 requests)"] = f"{first.percentile(0.5):.2f} s"
        result.summary = (f"revision {status['revision']['stable']} (fp8) is stable; evaluation quality drop "
                          f"{status['evaluation']['qualityDrop']} against BF16")
        evaluation = status["evaluation"]
        result.formats["fp8"] = (f"passed the evaluation at the default bound 0.01: quality drop "
                                 f"{evaluation.get('qualityDrop')} (BF16 next-token accuracy "
                                 f"{evaluation.get('baselineScore')}, FP8 {evaluation.get('score')}); stable")

    def nvfp4_canary(self, result: StoryResult) -> None:
        stable = self._stable()
        self._patch({"quantization": {"kvCache": "nvfp4", "layerFallback": LAYER_FALLBACK}})
        self.log(f"kubectl patch: kvCache nvfp4, layerFallback {LAYER_FALLBACK} (a new revision; NVFP4 needs compute "
                 "capability 10, the B200 node)")
        self.log("the new revision's pipeline runs first (traffic waits: an evaluation beside a loaded CPU server "
                 "takes many minutes)")
        done = self._follow(result, lambda d: self._refused(d) or (d["status"].get("revision") or {}).get("canary")
                            not in (None, stable), PIPELINE_TIMEOUT, "the NVFP4 revision to be judged",
                            allow=("QualityGateFailed",))
        status = done["status"]
        result.facts.update(self._pipeline_facts(status))
        evaluation = status.get("evaluation") or {}
        fallback_layers = ((status.get("calibration") or {}).get("report") or {}).get("fallbackLayers") or []
        plan = f"NVFP4 with {len(fallback_layers)} BF16 layer(s) {fallback_layers}"
        if self._refused(done):
            why = condition(done, "Evaluated").get("message") or ""
            result.formats["nvfp4"] = (f"failed the evaluation at the default qualityDrop bound 0.01: {plan}, quality "
                                       f"drop {evaluation.get('qualityDrop')} (BF16 next-token accuracy "
                                       f"{evaluation.get('baselineScore')}, NVFP4 {evaluation.get('score')})")
            result.facts["Evaluated"] = why
            result.summary = f"NVFP4 refused before serving: {result.formats['nvfp4']}; {stable} keeps serving"
            self._back_to_fp8(stable)
            return
        canary = status["revision"]["canary"]
        give_up = time.monotonic() + NVFP4_CANARY_SECONDS
        with self._traffic(result) as traffic:
            done = self._follow(result, lambda d: condition(d, "RolledBack").get("status") == "True" or
                                self._promoted(d, stable) or time.monotonic() > give_up,
                                NVFP4_CANARY_SECONDS + 60, "the NVFP4 canary to be promoted or rolled back")
        if traffic.failures():
            raise StoryFailed(f"requests failed during the canary: {traffic.failed_reports()}")
        weights = sorted({s.weight for s in self.recorder.samples if s.story == result.key and s.weight})
        if condition(done, "RolledBack").get("status") != "True" and not self._promoted(done, stable):
            last = (done["status"].get("canary") or {}).get("lastAnalysis") or {}
            gates = "; ".join(f"{g['name']} {g.get('value')} [{g.get('lower')}, {g.get('upper')}] max {g.get('max')} "
                              f"{g.get('verdict')} (n {g.get('canarySamples')})" for g in last.get("gates") or [])
            held = f"{weights[-1]:g}%" if weights else "?"
            result.formats["nvfp4"] = (f"undecided after {NVFP4_CANARY_SECONDS} s of canary (up to {held}): {plan}, "
                                       f"offline quality drop {evaluation.get('qualityDrop')}; the last "
                                       f"analysis: {last.get('verdict')}: {gates}")
            result.facts["last analysis"] = gates
            result.summary = (f"revision {canary} (nvfp4) neither passed nor failed the default gates within "
                              f"{NVFP4_CANARY_SECONDS} s; {stable} keeps serving")
            self._back_to_fp8(stable)
            return
        entry = done["status"]["history"][-1]
        result.facts["weights the canary held"] = ", ".join(f"{w:g}%" for w in weights)
        result.facts["history"] = ", ".join(f"{h['revision']} {h['outcome']}" for h in done["status"]["history"])
        if done["status"]["revision"]["stable"] == canary:
            result.facts["route after promotion"] = str(self._route_weights())
            result.facts["promotion"] = entry.get("message") or ""
            result.formats["nvfp4"] = (f"passed: {plan}, offline quality drop {evaluation.get('qualityDrop')}; "
                                       f"promoted through {len(weights)} weights on the default fallback and quality "
                                       f"bounds ({entry.get('message') or ''})")
            result.summary = f"revision {canary} (nvfp4) promoted through {len(weights)} weights; {stable} superseded"
            return
        result.formats["nvfp4"] = (f"rolled back by a live gate: {plan}, offline quality drop "
                                   f"{evaluation.get('qualityDrop')}; {entry.get('message') or ''}")
        result.facts["rollback"] = entry.get("message") or ""
        result.summary = f"revision {canary} (nvfp4) rolled back: {entry.get('message')}; {stable} keeps serving"
        self._back_to_fp8(stable)

    def _refused(self, document: dict) -> bool:
        return condition(document, "Evaluated").get("reason") == "QualityGateFailed"

    def _back_to_fp8(self, stable: str) -> None:
        """The spec back to the stable revision's (FP8, no layer fallback; a merge patch's null removes a field)."""
        self._patch({"quantization": {"kvCache": "fp8", "layerFallback": None}})
        self.log(f"kubectl patch: kvCache back to fp8, no layerFallback (the spec of {stable}, which kept serving)")
        try:  # so that the next story's canary is its own, not this one's last status
            self.recorder.follow(MODEL, "nvfp4-canary", lambda d: (d["status"].get("revision") or {}).get("canary")
                                 in (None, stable), 180, "the NVFP4 canary to end")
        except StoryFailed as late:
            self.log(f"(the spec is back to fp8, but {late})")

    def regression_rolled_back(self, result: StoryResult) -> None:
        stable = self._stable()
        self._patch({"runtime": {"env": [FAULT]}})
        self.log(f"kubectl patch: runtime.env {FAULT['name']}={FAULT['value']} (the runtime's fault switch: a "
                 "stale calibration, K/V values overflow their scales)")
        canary = self._await_canary(result, stable)
        with self._traffic(result) as traffic:
            done = self._follow(result, lambda d: condition(d, "RolledBack").get("status") == "True",
                                ROLLOUT_TIMEOUT, "the regression to be rolled back")
        status = done["status"]
        entry = status["history"][-1]
        route = self._route_weights()
        problems = []
        if entry["revision"] != canary or entry["outcome"] != "RolledBack":
            problems.append(f"the last history entry is {entry}")
        if "fallbackRate" not in (entry.get("message") or ""):
            problems.append(f"the fallback-rate gate did not decide: {entry.get('message')}")
        if status["revision"]["stable"] != stable:
            problems.append(f"the stable revision changed to {status['revision']['stable']}")
        if route.get(f"{MODEL}-canary", 0) != 0:
            problems.append(f"the canary still has weight: {route}")
        if traffic.failures():
            problems.append(f"requests failed: {traffic.failed_reports()}")
        if problems:
            raise StoryFailed("; ".join(problems))
        rolled = condition(done, "RolledBack")
        result.facts.update(self._pipeline_facts(status))  # its pipeline passed: the fault only shows when serving
        result.facts.update({"revision": canary, "RolledBack reason": rolled["reason"],
                             "why": entry.get("message") or "", "route after rollback": str(route),
                             "stable": f"{stable} (unchanged)"})
        result.summary = f"revision {canary} rolled back ({rolled['reason']}): {entry.get('message')}"
        result.formats["a stale calibration (QFLEET_FAULT_KV_SCALE=0.5)"] = (
            f"passed the evaluation, then rolled back by the default fallbackRate bound 0.005: {entry.get('message')}")

    def auto_on_h100(self, result: StoryResult) -> None:
        self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, llama_auto())
        self.log(f"kubectl apply: QuantizedModel {AUTO_MODEL} (kvCache: auto, ladder nvfp4, fp8, bf16) on the "
                 "simulated H100 pool")
        done = self.recorder.follow(AUTO_MODEL, result.key, lambda d: any(
            e.get("outcome") == "Selected" for e in (d.get("status") or {}).get("ladder") or []), 120,
            "the ladder to select a format")
        ladder = done["status"]["ladder"]
        selected = next(e for e in ladder if e["outcome"] == "Selected")
        for entry in ladder:
            result.facts[f"{entry['kvCache']}: {entry['outcome']}"] = entry.get("message") or ""
        capacity = done["status"].get("capacity") or {}
        if capacity.get("message"):
            result.facts["capacity"] = capacity["message"]
        if selected["kvCache"] != "fp8":
            raise StoryFailed(f"auto picked {selected['kvCache']}, not fp8: {ladder}")
        result.summary = f"auto picked fp8: {selected.get('message') or ''}"
        for entry in ladder:
            result.formats[f"auto on H100: {entry['kvCache']}"] = f"{entry['outcome']}: {entry.get('message') or ''}"


def timestamp() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
