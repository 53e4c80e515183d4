"""Serving and the canary, decided: a table of visits through decide(), with a tiny in-memory world that applies
each decision the way the handler does (Deployments sized, Services pointed, the route's weights set)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.jobs import Step
from qfleet.manifests.jobs import job_name
from qfleet.pipeline import JobState, JobView, NodeView, Observed, decide
from qfleet.pipeline.release import SCALE_DOWN_DELAY, DeploymentView, Measured
from qfleet.gpus import GPUS, gfd_labels
from qfleet.promql import REQUESTS_KEY
from qfleet.revision import revision_of

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
PASSING = {"p99LatencyRatio": Decimal("1.05"), "fallbackRate": Decimal("0.001"), "qualityDrop": Decimal("0.002"),
           REQUESTS_KEY: Decimal(120)}


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
    measurements: list[dict] = field(default_factory=list)
    """Answers for the next analyses, in order; the last one repeats."""
    action: str | None = None
    asked: list[dict[str, str]] = field(default_factory=list)

    def observed(self, measured: Measured | None = None) -> Observed:
        pool = [NodeView("b200-0", {"pool": "gpu", **gfd_labels(GPUS["B200"], 8)}, 8)]
        return Observed(name="llama", namespace="ns", uid="uid-1", generation=1, spec=self.spec,
                        status=self.status, jobs={**self.jobs, **evaluated_jobs(self.spec)}, nodes=pool, now=self.now,
                        deployments=dict(self.deployments), route=self.route, measured=measured, action=self.action)

    def visit(self):
        decision = decide(self.observed())
        if decision.release.measure is not None:
            self.asked.append(decision.release.measure.queries)
            answer = self.measurements[0] if len(self.measurements) == 1 else self.measurements.pop(0)
            decision = decide(self.observed(Measured(answer)))
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


def start_canary(world: World, spec: dict = NVFP4, measurements: list[dict] | None = None) -> World:
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
    assert deciding["verdict"] == "Pass" and {"name": "p99LatencyRatio", "value": "1.05", "max": "1.2",
                                              "verdict": "Pass"} in deciding["gates"]
    assert world.services["llama-stable"]["spec"]["selector"]["qfleet.io/revision"] == canary
    assert world.weights() == {"llama-stable": 100, "llama-canary": 0}
    assert world.replicas(canary) == 4
    promoted_at = (world.now - T0).total_seconds()
    world.at(promoted_at + 1).visit()
    assert world.replicas(stable) == 4, "the old stable keeps its replicas for the scale-down delay"
    world.at(promoted_at + SCALE_DOWN_DELAY.total_seconds() + 1).visit()
    assert world.replicas(stable) == 0


def test_every_analysis_compares_the_canary_with_the_stable_over_the_interval() -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()  # the canary's replicas are ready: step 1 starts
    world.at(11).visit()
    queries = world.asked[0]
    assert set(queries) == {"p99LatencyRatio", "fallbackRate", "qualityDrop", REQUESTS_KEY}
    assert f'qfleet_io_revision="{revision(NVFP4)}"' in queries["p99LatencyRatio"]
    assert f'qfleet_io_revision="{revision(SPEC)}"' in queries["p99LatencyRatio"]
    assert "[10s]" in queries["fallbackRate"]
    assert world.status["canary"]["lastAnalysis"]["verdict"] == "Pass"


@dataclass
class RollbackCase:
    reason: str
    measurements: list[dict]
    condition_reason: str
    cause: str
    message_has: tuple[str, ...] = ()
    visits: int = 3


ROLLBACK_CASES = [
    RollbackCase("p99 above the abort bound", [{**PASSING, "p99LatencyRatio": Decimal("1.8")}], "GateAborted",
                 "p99LatencyRatio", ("p99LatencyRatio", "1.8", "1.5")),
    RollbackCase("fallback rate fails twice", [{**PASSING, "fallbackRate": Decimal("0.05")}],
                 "FailureLimitReached", "fallbackRate", ("fallbackRate", "0.05", "0.005")),
    RollbackCase("quality drop above its abort bound", [{**PASSING, "qualityDrop": Decimal("0.2")}], "GateAborted",
                 "qualityDrop", ("qualityDrop",)),
    RollbackCase("no data is inconclusive, twice rolls back", [{REQUESTS_KEY: None}], "InconclusiveLimitReached",
                 "p99LatencyRatio", ("inconclusive",)),
    RollbackCase("too few requests is inconclusive", [{**PASSING, REQUESTS_KEY: Decimal(3)}],
                 "InconclusiveLimitReached", "InconclusiveLimitReached", ("minRequests",)),
]


@pytest.mark.parametrize("case", ROLLBACK_CASES, ids=lambda c: c.reason)
def test_a_failing_gate_rolls_back_at_once_and_leaves_the_stable_alone(case: RollbackCase) -> None:
    world = start_canary(serving_stable(), measurements=case.measurements)
    stable, canary = revision(SPEC), revision(NVFP4)
    decision = None
    for visit in range(1, 10):
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
    world = start_canary(serving_stable(), with_rollout(NVFP4, autoRollback=False), measurements=[{REQUESTS_KEY: None}])
    for second in range(0, 300, 11):
        world.at(second).visit()
        assert world.status["revision"]["stable"] == revision(SPEC)
    assert world.status["canary"]["weight"] == "1"
    assert world.condition("CanaryHealthy")[1] == "InconclusiveLimitReached"


def test_a_rolled_back_revision_is_not_retried() -> None:
    world = start_canary(serving_stable(), measurements=[{**PASSING, "p99LatencyRatio": Decimal("3")}])
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
    world = start_canary(serving_stable(), measurements=[{**PASSING, "p99LatencyRatio": Decimal("3")}])
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
    world.measurements = [{**PASSING, "p99LatencyRatio": Decimal("9")}]
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
