"""Serving and the canary, decided: a table of visits through decide(), with a tiny in-memory world that applies
each decision the way the handler does (Deployments sized, Services pointed, the route's weights set)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.jobs import Step
from qfleet.manifests.jobs import job_name
from qfleet.pipeline import JobState, JobView, NodeView, Observed, decide
from qfleet.pipeline.analysis import Measured
from qfleet.pipeline.release_types import SCALE_DOWN_DELAY, DeploymentView
from qfleet.gpus import GPUS, gfd_labels
from qfleet.revision import revision_of

from .answers import NO_DATA, Traffic, answers

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llama-route"},
         "spec": {"parentRefs": [{"name": "fleet"}],
                  "rules": [{"backendRefs": [{"name": "llama-stable", "port": 8000}]}]}}
SPEC = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
    "quantization": {"weights": "bf16", "kvCache": "fp8"},
    "nodePool": {"nodeSelector": {"pool": "gpu"}, "gpusPerReplica": 8},
    "serving": {"image": "qfleet/runtime:test", "replicas": 4},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
    "rollout": {
        "trafficRouting": {"gatewayAPI": {"httpRoute": "llama-route"}},
        "steps": [{"weight": "1", "pause": "20s"}, {"weight": "10", "pause": "20s"}, {"weight": "100"}],
        "analysis": {"interval": "10s", "minRequests": 10, "failureLimit": 2, "inconclusiveLimit": 2},
    },
}
NVFP4 = {**copy.deepcopy(SPEC), "quantization": {"weights": "bf16", "kvCache": "nvfp4"}}
STABLE = Traffic(40000)
PASSING = answers(Traffic(4000), STABLE)
HOLD_THEN_ROLLBACK = {"interval": "10s", "minRequests": 10, "failureLimit": 2, "inconclusivePolicy": "rollback",
                      "inconclusiveLimit": 2}


def with_rollout(spec: dict, **changes: Any) -> dict:
    spec = copy.deepcopy(spec)
    spec["rollout"].update(changes)
    return spec


def evaluated_jobs(spec: dict) -> dict[str, JobView]:
    parsed = parse_spec(spec)
    revision, fmt = revision_of(parsed), parsed.quantization.kv_cache
    summaries = {Step.CALIBRATE: {"kvFormat": fmt}, Step.BUILD: {"kvCacheDtype": fmt},
                 Step.EVALUATE: {"qualityDrop": "0.002"}}
    views = [JobView(job_name("llama", revision, fmt, step), JobState.SUCCEEDED, summary,
                     finished_at="2026-11-23T11:00:00Z") for step, summary in summaries.items()]
    return {v.name: v for v in views}


@dataclass
class World:
    """What the handler and the cluster would do with each decision, kept in memory."""

    spec: dict
    now: datetime = T0
    status: dict = field(default_factory=dict)
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    services: dict[str, dict] = field(default_factory=dict)
    route: dict = field(default_factory=lambda: copy.deepcopy(ROUTE))
    jobs: dict[str, JobView] = field(default_factory=dict)
    ready: bool = True
    """Deployments' pods become ready at once (False: they stay unready)."""
    measurements: list[Measured] = field(default_factory=list)
    """Answers for the next analyses, in order; the last one repeats."""
    action: str | None = None
    asked: list[dict[str, str]] = field(default_factory=list)
    asked_histograms: list[dict[str, str]] = field(default_factory=list)
    latency_source: str = "runtime"

    def observed(self, measured: Measured | None = None) -> Observed:
        pool = [NodeView("b200-0", {"pool": "gpu", **gfd_labels(GPUS["B200"], 8)}, 8)]
        return Observed(name="llama", namespace="ns", uid="uid-1", generation=1, spec=self.spec,
                        status=self.status, jobs={**self.jobs, **evaluated_jobs(self.spec)}, nodes=pool, now=self.now,
                        deployments=dict(self.deployments), route=self.route, measured=measured, action=self.action,
                        latency_source=self.latency_source)

    def visit(self):
        decision = decide(self.observed())
        if decision.release.measure is not None:
            self.asked.append(decision.release.measure.queries)
            self.asked_histograms.append(decision.release.measure.histograms)
            answer = self.measurements[0] if len(self.measurements) == 1 else self.measurements.pop(0)
            decision = decide(self.observed(answer))
        changes = decision.release
        for manifest in changes.deployments:
            name = manifest["metadata"]["name"]
            replicas = manifest["spec"]["replicas"]
            revision = manifest["metadata"]["labels"]["qfleet.io/revision"]
            self.deployments[name] = DeploymentView(name, revision, replicas, replicas if self.ready else 0)
        for name, replicas in changes.scale.items():
            view = self.deployments[name]
            self.deployments[name] = replace(view, replicas=replicas, ready_replicas=replicas if self.ready else 0)
        for service in changes.services:
            self.services[service["metadata"]["name"]] = service
        if changes.route_rules is not None:
            self.route = {**self.route, "spec": {**self.route["spec"], "rules": changes.route_rules[1]}}
        if changes.action_done:
            self.action = None
        self.status = decision.status
        return decision

    def at(self, seconds: float) -> World:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def weights(self) -> dict[str, int]:
        return {ref["name"]: ref.get("weight") for ref in self.route["spec"]["rules"][0]["backendRefs"]}

    def condition(self, kind: str) -> tuple[str, str]:
        found = next(c for c in self.status["conditions"] if c["type"] == kind)
        return found["status"], found["reason"]

    def replicas(self, revision: str) -> int:
        return self.deployments[f"llama-{revision}"].replicas


def revision(spec: dict) -> str:
    return revision_of(parse_spec(spec))


def serving_stable(spec: dict = SPEC) -> World:
    world = World(spec)
    world.visit()
    world.visit()
    assert world.status["revision"]["stable"] == revision(spec)
    return world


def start_canary(world: World, spec: dict = NVFP4, measurements: list[Measured] | None = None) -> World:
    world.spec = spec
    world.measurements = measurements or [PASSING]
    world.visit()
    return world


def test_the_first_revision_serves_at_full_size_once_ready_and_without_a_canary() -> None:
    world = World(SPEC, ready=False)
    world.visit()
    first = revision(SPEC)
    assert world.replicas(first) == 4
    assert "stable" not in world.status["revision"]
    assert world.condition("Ready") == ("False", "RolloutInProgress")
    world.ready = True
    world.deployments = {k: replace(v, ready_replicas=v.replicas) for k, v in world.deployments.items()}
    decision = world.visit()
    assert world.status["revision"]["stable"] == first
    assert world.condition("Ready") == ("True", "RevisionServing")
    assert world.status["phase"] == "Serving"
    assert world.status["history"][-1]["outcome"] == "Promoted"
    assert world.services["llama-stable"]["spec"]["selector"]["qfleet.io/revision"] == first
    assert world.weights() == {"llama-stable": 100, "llama-canary": 0}
    assert decision.release.promoted is False  # no canary was promoted: the operator's promotions count canaries


def test_the_first_revision_serving_is_one_event_and_a_cleared_rollback_is_still_told() -> None:
    """Leaving the first-visit placeholder for "nothing was rolled back" or "served without a canary" says nothing
    happened (two writes per model saved); RolledBack going back to False after a rollback did happen."""
    world = World(SPEC, ready=False)
    world.visit()
    world.ready = True
    world.deployments = {k: replace(v, ready_replicas=v.replicas) for k, v in world.deployments.items()}
    assert [e.reason for e in world.visit().events] == ["RevisionServing"]
    assert world.condition("CanaryHealthy") == ("True", "Promoted")
    assert world.condition("RolledBack") == ("False", "NotRolledBack")
    start_canary(world, measurements=[answers(Traffic(4000, median_seconds=1.2), STABLE)])
    world.at(1).visit()
    world.at(11).visit()
    assert world.condition("RolledBack") == ("True", "GateAborted")
    world.spec = SPEC
    assert "NotRolledBack" in [e.reason for e in world.at(20).visit().events]


def test_the_canary_gets_weight_only_once_its_replicas_are_ready() -> None:
    world = serving_stable()
    world.ready = False
    start_canary(world)
    canary = revision(NVFP4)
    assert world.replicas(canary) == 1  # 1% of 4 replicas, at least one
    assert world.status["canary"]["weight"] == "0" and world.weights()["llama-canary"] == 0
    assert world.condition("Ready") == ("False", "RolloutInProgress")
    assert world.asked == []
    world.deployments[f"llama-{canary}"] = replace(world.deployments[f"llama-{canary}"], ready_replicas=1)
    world.at(1).visit()
    assert world.status["canary"]["weight"] == "1" and world.weights() == {"llama-stable": 99, "llama-canary": 1}
    assert world.status["phase"] == "Canary"


def test_a_healthy_canary_climbs_every_step_and_is_promoted() -> None:
    world = start_canary(serving_stable())
    stable, canary = revision(SPEC), revision(NVFP4)
    seen = []
    for second in range(0, 200, 5):
        world.at(second).visit()
        seen.append((world.status.get("canary") or {}).get("weight"))
        assert world.replicas(stable) == 4, "the stable revision is never scaled up or down during the canary"
        if world.status["revision"]["stable"] == canary:
            break
    assert [w for w in dict.fromkeys(seen) if w] == ["1", "10"]
    assert world.status["revision"] == {"current": canary, "stable": canary}
    assert world.condition("Ready") == ("True", "RevisionServing")
    assert world.condition("CanaryHealthy") == ("True", "Promoted")
    outcomes = [(h["revision"], h["outcome"]) for h in world.status["history"]]
    assert outcomes[-2:] == [(stable, "Superseded"), (canary, "Promoted")]
    deciding = world.status["history"][-1]["analysis"]  # the canary status is gone; its last interval is kept
    p99 = next(g for g in deciding["gates"] if g["name"] == "p99LatencyRatio")
    assert deciding["verdict"] == "Pass" and (p99["value"], p99["max"], p99["verdict"]) == ("1", "1.2", "Pass")
    assert world.services["llama-stable"]["spec"]["selector"]["qfleet.io/revision"] == canary
    assert world.weights() == {"llama-stable": 100, "llama-canary": 0}
    assert world.replicas(canary) == 4
    promoted_at = (world.now - T0).total_seconds()
    world.at(promoted_at + 1).visit()
    assert world.replicas(stable) == 4, "the old stable keeps its replicas for the scale-down delay"
    world.at(promoted_at + SCALE_DOWN_DELAY.total_seconds() + 1).visit()
    assert world.replicas(stable) == 0


def test_every_analysis_reads_the_step_since_it_started_and_the_last_interval_for_aborts() -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()  # the canary's replicas are ready: step 1 starts
    world.at(11).visit()
    world.at(21).visit()
    first, second = world.asked[0], world.asked[1]
    assert f'qfleet_io_revision="{revision(NVFP4)}"' in first["step/requests/canary"]
    assert "[10s]" in first["step/fallbackRate/entries"] and "[20s]" in second["step/fallbackRate/entries"]
    assert "[10s]" in second["interval/qualityDrop/scored"]
    analysis = world.status["canary"]["lastAnalysis"]
    assert analysis["verdict"] == "Pass" and analysis["since"] == "2026-11-23T12:00:01Z"  # step 1, now past
    p99 = next(g for g in analysis["gates"] if g["name"] == "p99LatencyRatio")
    assert (p99["canarySamples"], p99["stableSamples"], p99["minSamples"], p99["window"]) == (4000, 40000, 500, "step")
    assert float(p99["lower"]) <= 1 <= float(p99["upper"]) <= 1.2 and analysis["confidence"] == "0.95"


@dataclass
class RollbackCase:
    reason: str
    measurements: list[Measured]
    condition_reason: str
    cause: str
    message_has: tuple[str, ...] = ()
    analysis: dict | None = None


ROLLBACK_CASES = [
    RollbackCase("p99 above the abort bound", [answers(Traffic(4000, median_seconds=0.8), STABLE)], "GateAborted",
                 "p99LatencyRatio", ("p99LatencyRatio", "bound 1.2, abort bound 1.5", "4,000 canary and 40,000 stable")),
    RollbackCase("fallback rate fails twice", [answers(Traffic(4000, fallback_rate=0.05), STABLE)],
                 "FailureLimitReached", "fallbackRate", ("fallbackRate", "value 0.05", "bound 0.005")),
    RollbackCase("quality drop above its abort bound", [answers(Traffic(4000, drop=0.25), STABLE)], "GateAborted",
                 "qualityDrop", ("qualityDrop",)),
    RollbackCase("policy rollback: no data twice rolls back", [NO_DATA], "InconclusiveLimitReached",
                 "p99LatencyRatio", ("inconclusive",), HOLD_THEN_ROLLBACK),
    RollbackCase("policy rollback: too few requests twice rolls back", [answers(Traffic(3), STABLE)],
                 "InconclusiveLimitReached", "p99LatencyRatio", ("3 canary and 40,000 stable requests",),
                 HOLD_THEN_ROLLBACK),
    RollbackCase("policy hold: no evidence past the pause and maxHold rolls back", [answers(Traffic(3), STABLE)],
                 "MaxHoldReached", "p99LatencyRatio", ("maxHold 30s", "3 canary and 40,000 stable requests"),
                 {**HOLD_THEN_ROLLBACK, "inconclusivePolicy": "hold", "maxHold": "30s"}),
]


@pytest.mark.parametrize("case", ROLLBACK_CASES, ids=lambda c: c.reason)
def test_a_failing_gate_rolls_back_at_once_and_leaves_the_stable_alone(case: RollbackCase) -> None:
    spec = with_rollout(NVFP4, analysis=case.analysis) if case.analysis else NVFP4
    world = start_canary(serving_stable(), spec, measurements=case.measurements)
    stable, canary = revision(SPEC), revision(NVFP4)
    decision = None
    for visit in range(1, 12):
        decision = world.at(visit * 11).visit()
        if world.status["revision"].get("canary") is None:
            break
    assert decision is not None and decision.release.rollback_cause == case.cause
    assert world.condition("RolledBack") == ("True", case.condition_reason)
    assert world.status["phase"] == "RolledBack"
    assert world.weights() == {"llama-stable": 100, "llama-canary": 0}
    assert world.replicas(canary) == 0 and world.replicas(stable) == 4
    assert world.status["revision"]["stable"] == stable
    entry = world.status["history"][-1]
    assert (entry["revision"], entry["outcome"], entry["reason"]) == (canary, "RolledBack", case.condition_reason)
    assert entry["analysis"]["verdict"] in ("Fail", "Abort", "Inconclusive")  # the deciding interval, with values
    rolled_back = next(c for c in world.status["conditions"] if c["type"] == "RolledBack")["message"]
    for fragment in case.message_has:
        assert fragment in rolled_back
    assert any(e.reason == case.condition_reason and e.type == "Warning" for e in decision.events)
    again = decide(world.at(visit * 11 + 1).observed())
    assert again.status == world.status and again.events == [], "a rollback is written once"


def test_inconclusive_never_promotes_even_past_every_pause() -> None:
    world = start_canary(serving_stable(), measurements=[NO_DATA])
    for second in range(0, 300, 11):
        world.at(second).visit()
        assert world.status["revision"]["stable"] == revision(SPEC)
    assert world.status["canary"]["weight"] == "1"
    assert world.condition("CanaryHealthy") == ("Unknown", "HoldingForEvidence")


def test_a_low_traffic_canary_holds_with_its_counts_then_passes_once_the_step_has_them() -> None:
    """Six canary requests a second, each scored: the step needs 500 for its p99, so it gathers evidence through its
    20s pause, holds past it (with an Event saying what is missing), and passes once the interval is narrow enough,
    about two and a half minutes in."""
    world = start_canary(serving_stable())
    world.at(1).visit()
    per_second = 6
    events, reasons = [], []
    second = 1
    while world.status["canary"]["step"] == 0 and second < 400:
        second += 10
        elapsed = second - 1
        world.measurements = [answers(Traffic(per_second * elapsed, scored_share=1),
                                      Traffic(per_second * 99 * elapsed, scored_share=1), min(1.0, 10 / elapsed))]
        events += world.at(second).visit().events
        reasons.append(world.condition("CanaryHealthy")[1])
    assert reasons[0] == "AnalysisInconclusive" and "HoldingForEvidence" in reasons
    holding = next(e for e in events if e.reason == "HoldingForEvidence")
    assert "canary and" in holding.message and "needs 500 of each" in holding.message and "maxHold" in holding.message
    assert world.status["canary"]["step"] == 1 and 100 <= second <= 200
    passed = world.status["canary"]["lastAnalysis"]
    assert all(g["verdict"] == "Pass" for g in passed["gates"]), passed


def test_a_rolled_back_revision_is_not_retried() -> None:
    world = start_canary(serving_stable(), measurements=[answers(Traffic(4000, median_seconds=1.2), STABLE)])
    world.at(1).visit()
    world.at(11).visit()
    assert world.condition("RolledBack")[0] == "True"
    before = dict(world.deployments)
    decision = world.at(60).visit()
    assert decision.release.deployments == [] and world.deployments == before
    assert world.asked[1:] == []
    assert world.condition("Ready") == ("True", "RevisionServing")
    assert "not retried" in next(c for c in world.status["conditions"] if c["type"] == "Ready")["message"]


def test_reverting_the_spec_to_the_stable_revision_clears_rolled_back() -> None:
    world = start_canary(serving_stable(), measurements=[answers(Traffic(4000, median_seconds=1.2), STABLE)])
    world.at(1).visit()
    world.at(11).visit()
    assert world.condition("RolledBack") == ("True", "GateAborted")
    world.spec = SPEC
    world.at(20).visit()
    assert world.condition("RolledBack") == ("False", "NotRolledBack")
    assert world.status["phase"] == "Serving"
    assert [h["outcome"] for h in world.status["history"]][-1] == "RolledBack"  # the record stays


@pytest.mark.parametrize("action, outcome", [("promote", "Promoted"), ("abort", "RolledBack")])
def test_a_person_can_promote_or_abort_and_the_annotation_is_consumed(action: str, outcome: str) -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()
    world.action = f"{action}:{revision(NVFP4)}"
    decision = world.at(2).visit()
    assert decision.release.action_done and world.action is None
    assert world.status["history"][-1] == {**world.status["history"][-1], "revision": revision(NVFP4),
                                           "outcome": outcome}
    assert decision.release.rollback_cause == ("manual" if action == "abort" else None)
    assert not [e for e in decision.events if e.reason == "RolloutActionIgnored"]


@pytest.mark.parametrize("action, why", [
    ("promote", "it names no revision: write promote:{canary}"),
    ("promote:0123456789", "it names revision 0123456789, but the canary is revision {canary}"),
    ("abort:0123456789", "it names revision 0123456789, but the canary is revision {canary}"),
    ("finish:{canary}", "it is not an action"),
])
def test_an_action_for_another_revision_is_dropped_with_a_warning_and_changes_nothing(action: str, why: str) -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()
    before = copy.deepcopy(world.status)
    world.action = action.format(canary=revision(NVFP4))
    decision = world.at(2).visit()
    assert decision.release.action_done and world.action is None
    assert world.status["revision"] == before["revision"] and world.status["history"] == before["history"]
    assert world.status["canary"]["step"] == before["canary"]["step"] and not decision.release.promoted
    warnings = [e for e in decision.events if e.reason == "RolloutActionIgnored"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert why.format(canary=revision(NVFP4)) in warnings[0].message


def test_an_action_left_while_no_canary_runs_is_dropped_and_never_promotes_a_later_canary() -> None:
    world = serving_stable()
    world.action = f"promote:{revision(NVFP4)}"  # written for a canary that is not running
    decision = world.at(1).visit()
    warnings = [e for e in decision.events if e.reason == "RolloutActionIgnored"]
    assert world.action is None and "no canary is running" in warnings[0].message
    start_canary(world)
    world.at(10).visit()
    assert world.status["revision"]["canary"] == revision(NVFP4)
    assert [h["outcome"] for h in world.status["history"]] == ["Promoted"]


def test_an_action_for_a_canary_that_is_still_starting_waits_for_it() -> None:
    world = serving_stable()
    world.ready = False
    world.spec = NVFP4
    world.action = f"promote:{revision(NVFP4)}"
    decision = world.at(1).visit()
    assert world.action is not None and not decision.release.action_done
    world.ready = True
    world.deployments = {name: replace(view, ready_replicas=view.replicas) for name, view in world.deployments.items()}
    world.at(2).visit()
    assert world.action is None and world.status["revision"]["stable"] == revision(NVFP4)


def test_pause_holds_the_weight_but_keeps_analysing_and_an_abort_still_rolls_back() -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()
    world.spec = with_rollout(NVFP4, paused=True)
    for second in range(20, 200, 20):
        world.at(second).visit()
    assert len(world.asked) >= 5 and world.status["canary"]["weight"] == "1"
    assert world.condition("Ready") == ("False", "RolloutPaused") and world.status["phase"] == "Paused"
    world.measurements = [answers(Traffic(4000, median_seconds=3.6), STABLE)]
    world.at(220).visit()
    assert world.condition("RolledBack") == ("True", "GateAborted")


def test_replica_ratio_mode_states_the_real_share_and_selects_every_revision() -> None:
    spec = with_rollout(SPEC, trafficRouting={"replicas": {}})
    world = start_canary(serving_stable(spec), with_rollout(NVFP4, trafficRouting={"replicas": {}}))
    world.at(1).visit()
    assert world.status["canary"]["weight"] == "20.00"  # 1 canary beside 4 stable replicas
    assert "about 20.00%" in next(c for c in world.status["conditions"] if c["type"] == "Ready")["message"]
    assert world.services["llama-stable"]["spec"]["selector"] == {"qfleet.io/model": "llama"}
    assert world.route == ROUTE, "no router: the HTTPRoute is not touched"


def test_a_spec_change_supersedes_the_running_canary() -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()
    third = {**copy.deepcopy(NVFP4), "quantization": {"weights": "bf16", "kvCache": "int8"}}
    world.spec = third
    world.at(2).visit()
    old_canary = revision(NVFP4)
    assert world.replicas(old_canary) == 0
    assert (world.status["history"][-1]["revision"], world.status["history"][-1]["outcome"]) == \
        (old_canary, "Superseded")
    assert world.status["revision"]["canary"] == revision(third)


@pytest.mark.parametrize("seconds", [1, 11, 25, 45])
def test_a_restarted_operator_decides_exactly_as_before(seconds: int) -> None:
    """Everything the rollout needs lives in status: a visit with the same inputs changes nothing."""
    world = start_canary(serving_stable())
    for second in range(1, seconds + 1, 5):
        world.at(second).visit()
    again = decide(world.observed())
    assert again.release.measure is None or again.release.measure.queries  # due or not, nothing is lost
    if again.release.measure is None:
        assert again.status == world.status and again.events == []
        assert again.release.deployments == [] and again.release.scale == {} and again.release.route_rules is None


@pytest.mark.parametrize("route, says", [
    (None, "does not exist"),
    ({**ROUTE, "spec": {"rules": [{"backendRefs": [{"name": "other", "port": 8000}]}]}}, "no backendRef"),
])
def test_a_canary_waits_with_a_clear_message_when_the_route_cannot_carry_it(route, says) -> None:
    world = serving_stable()
    world.route = route
    start_canary(world)
    world.at(1).visit()
    canary = next(c for c in world.status["conditions"] if c["type"] == "CanaryHealthy")
    assert canary["status"] == "Unknown" and says in canary["message"] and "llama-stable" in canary["message"]
    assert world.status["canary"]["weight"] == "0" and world.asked == []


def test_a_warm_up_leaves_the_steps_first_seconds_out_of_its_evidence_but_not_out_of_the_abort() -> None:
    spec = with_rollout(NVFP4, analysis={**SPEC["rollout"]["analysis"], "warmup": "4s"})
    world = start_canary(serving_stable(), spec)
    world.at(1).visit()  # step 1 starts
    world.at(11).visit()
    asked = world.asked[0]
    assert "[6s]" in asked["step/requests/canary"] and "[10s]" in asked["interval/qualityDrop/scored"]
    assert world.status["canary"]["lastAnalysis"]["since"] == "2026-11-23T12:00:05Z"


def test_the_gateway_latency_source_reads_traefiks_histogram_of_each_role_service() -> None:
    world = serving_stable()
    world.latency_source = "gateway"
    start_canary(world)
    world.at(1).visit()
    world.at(11).visit()
    asked, histograms = world.asked[-1], world.asked_histograms[-1]
    canary = 'service=~"ns-llama-canary-http-[0-9]+@kubernetesgateway"'
    assert asked["step/requests/canary"] == (
        f"sum(increase(traefik_service_request_duration_seconds_count{{{canary}}}[10s]))")
    assert histograms["step/p99LatencyRatio/canary"] == (
        f"sum by (le) (increase(traefik_service_request_duration_seconds_bucket{{{canary}}}[10s]))")
    assert 'service=~"ns-llama-stable-http-[0-9]+@kubernetesgateway"' in histograms["step/p99LatencyRatio/stable"]
    assert f'qfleet_io_revision="{revision(NVFP4)}"' in asked["step/fallbackRate/entries"], "other gates: the runtime"
    assert world.status["canary"]["lastAnalysis"]["verdict"] == "Pass"
    assert "latency source" not in next(c for c in world.status["conditions"] if c["type"] == "CanaryHealthy")[
        "message"]


def test_the_gateway_latency_source_falls_back_to_the_runtime_for_replica_routing_and_says_so() -> None:
    replicas = {"replicas": {}}
    world = serving_stable(with_rollout(SPEC, trafficRouting=replicas))
    world.latency_source = "gateway"
    start_canary(world, with_rollout(NVFP4, trafficRouting=replicas))
    world.at(1).visit()
    world.at(11).visit()
    assert "traefik" not in str(world.asked) + str(world.asked_histograms)
    assert f'qfleet_io_revision="{revision(NVFP4)}"' in world.asked_histograms[-1]["step/p99LatencyRatio/canary"]
    assert world.status["canary"]["lastAnalysis"]["verdict"] == "Pass", "the fallback still judges"
    ready = next(c for c in world.status["conditions"] if c["type"] == "Ready")["message"]
    assert "analysis.latencySource: gateway" in ready and "spec.rollout.trafficRouting.replicas" in ready
    world.measurements = [NO_DATA]  # e.g. a runtime that exports none of qfleet's series (TensorRT-LLM)
    world.at(21).visit()
    unsure = next(c for c in world.status["conditions"] if c["type"] == "CanaryHealthy")
    assert unsure["status"] == "Unknown" and "analysis.latencySource: gateway" in unsure["message"]


def test_an_unknown_latency_source_stops_the_operator_at_start() -> None:
    from qfleet.controller import LoopSettings

    assert LoopSettings().latency_source == "runtime"
    with pytest.raises(ValueError, match="QFLEET_LATENCY_SOURCE"):
        LoopSettings(latency_source="traefik")
