"""A calibration refresh end to end through `decide`: drift on the stable revision goes CalibrationStale, a new
calibration generation is calibrated on the recent traffic sample, canaried and promoted (or rolled back and backed
off) while the stable revision keeps serving. The cluster is the in-memory World of test_release."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from qfleet.api import parse_spec
from qfleet.api.jobs import Step
from qfleet.manifests.jobs import job_name
from qfleet.pipeline import JobState, JobView, Observed
from qfleet.pipeline.analysis import Measured
from qfleet.revision import revision_of

from .answers import Traffic, answers
from .test_release import PASSING, SPEC, World, revision

REFRESH = {"triggers": {"fallbackRate": {"max": "0.01", "for": "1m"}},
           "sampleTraffic": {"enabled": True, "maxPrompts": 128, "retention": "24h"}, "recentShare": "0.25"}
REFRESHING = copy.deepcopy(SPEC)
REFRESHING["quantization"]["calibration"] = {"refresh": REFRESH}
FIRST = revision_of(parse_spec(REFRESHING).with_images("ghcr.io/qfleet/qfleet-runtime:0.1.0"), generation=1)


def drifted(rate: str) -> Measured:
    return Measured({"drift/fallbackRate/fallback": Decimal(rate) * 100000,
                     "drift/fallbackRate/entries": Decimal(100000), "drift/fallbackRate/tokens": Decimal(5000)})


@dataclass
class RefreshWorld(World):
    drift: Measured | None = None
    """The stable revision's drift answers (given on every visit: the table tests cover the asking pass)."""
    created: list[dict[str, Any]] = field(default_factory=list)

    def observed(self, measured: Measured | None = None) -> Observed:
        return replace(super().observed(measured), drift_measured=self.drift)

    def visit(self):
        decision = super().visit()
        self.created.extend(decision.create)
        return decision

    def finish_jobs(self, revision_: str, quality_drop: str = "0.002") -> None:
        summaries = {Step.CALIBRATE: {"kvFormat": "fp8", "datasetMix": {"configured": 384, "recent": 128}},
                     Step.BUILD: {"kvCacheDtype": "fp8"}, Step.EVALUATE: {"qualityDrop": quality_drop}}
        for step, summary in summaries.items():
            name = job_name("llama", revision_, "fp8", step)
            self.jobs[name] = JobView(name, JobState.SUCCEEDED, summary, finished_at="2026-11-23T13:00:00Z")

    def run(self, seconds: float, until: Any, step: float = 10) -> None:
        start = (self.now - self.now.replace(hour=12, minute=0, second=0)).total_seconds()
        for tick in range(int(seconds / step)):
            self.at(start + (tick + 1) * step).visit()
            if until(self):
                return
        raise AssertionError(f"not reached in {seconds}s: {self.status.get('conditions')}")


def stale_world() -> RefreshWorld:
    world = RefreshWorld(REFRESHING)
    world.visit()
    world.visit()
    assert world.status["revision"]["stable"] == revision(SPEC), "refresh is policy: the same revision"
    world.drift = drifted("0.05")
    world.at(100).visit()
    assert world.condition("CalibrationStale") == ("False", "CalibrationCurrent")
    assert world.status["refresh"]["drift"][0]["aboveSince"]
    world.at(170).visit()
    return world


def test_drift_makes_a_new_generation_calibrated_on_recent_traffic_while_the_stable_serves() -> None:
    world = stale_world()
    stable = revision(SPEC)

    assert world.condition("CalibrationStale") == ("True", "DriftDetected")
    message = next(c["message"] for c in world.status["conditions"] if c["type"] == "CalibrationStale")
    assert "fallbackRate 0.05 (max 0.01)" in message and FIRST in message
    assert world.status["revision"] == {"current": FIRST, "stable": stable}
    assert world.status["refresh"]["generation"] == 1 and world.status["refresh"]["reason"] == "fallbackRate"
    (calibrate,) = [job for job in world.created if job["metadata"]["labels"]["qfleet.io/step"] == "calibrate"]
    args = calibrate["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--recent-sample") + 1] == "/var/lib/qfleet/artifacts/llama/llama/traffic-sample"
    assert args[args.index("--recent-share") + 1] == "0.25"
    assert args[args.index("--recent-retention") + 1] == "86400"
    assert world.replicas(stable) == 4


def test_a_refresh_that_passes_its_canary_is_promoted_and_the_calibration_is_current_again() -> None:
    world = stale_world()
    world.finish_jobs(FIRST)
    world.measurements = [PASSING]
    world.drift = drifted("0.001")

    world.run(600, lambda w: w.status["revision"]["stable"] == FIRST)
    world.at((world.now - world.now.replace(hour=12, minute=0, second=0)).total_seconds() + 10).visit()

    assert world.status["refresh"]["outcome"] == "Promoted"
    assert world.condition("CalibrationStale") == ("False", "CalibrationCurrent")
    calibration = world.status["calibration"]
    assert (calibration["generation"], calibration["refreshReason"]) == (1, "fallbackRate")
    assert calibration["datasetMix"] == {"configured": 384, "recent": 128}
    assert world.status["history"][-1]["calibration"]["datasetMix"] == {"configured": 384, "recent": 128}


def test_a_refresh_that_fails_its_canary_is_rolled_back_and_backs_off_instead_of_looping() -> None:
    world = stale_world()
    world.finish_jobs(FIRST)
    world.measurements = [answers(Traffic(4000, median_seconds=2.0), Traffic(40000))]

    world.run(600, lambda w: any(h["revision"] == FIRST and h["outcome"] == "RolledBack"
                                 for h in w.status["history"]))
    world.at((world.now - world.now.replace(hour=12, minute=0, second=0)).total_seconds() + 10).visit()

    assert world.status["revision"]["stable"] == revision(SPEC)
    assert world.status["refresh"]["outcome"] == "RolledBack"
    assert world.condition("CalibrationStale") == ("True", "RefreshBackingOff")
    not_before = world.status["refresh"]["notBefore"]
    world.now += timedelta(minutes=30)  # drift still above the bound, within the hour's back-off: nothing new
    world.visit()
    assert (world.status["refresh"]["generation"], world.status["refresh"]["notBefore"]) == (1, not_before)
    world.now += timedelta(minutes=31)  # back-off over: the trigger must hold for its `for` again
    world.visit()
    assert world.status["refresh"]["generation"] == 1
    assert world.condition("CalibrationStale") == ("False", "CalibrationCurrent")
    world.now += timedelta(seconds=61)
    world.visit()
    assert world.status["refresh"]["generation"] == 2
    assert world.condition("CalibrationStale") == ("True", "DriftDetected")


def test_the_visit_that_changes_the_stable_wakes_the_model_at_once_to_watch_drift_on_it() -> None:
    """The refresh step judges the status a visit started from, so the visit that promotes still says "rolling out";
    a serving model has nothing else due, and its own status write wakes nobody: without this wake-up drift would go
    unwatched until the resync."""
    world = RefreshWorld(REFRESHING)
    world.drift = drifted("0.001")
    wakes = []
    while not world.status.get("revision", {}).get("stable"):
        assert len(wakes) < 5, world.status.get("conditions")
        wakes.append(world.visit().wake)
    assert wakes[-1] == world.now
    assert world.condition("CalibrationStale") == ("False", "CalibrationCurrent")
    assert "refresh" not in world.status or world.status["refresh"].get("lastCheckedAt") is None

    following = world.visit()
    assert world.status["refresh"]["lastCheckedAt"] is not None, "the next visit checked drift on the new stable"
    assert "drift within bounds" in next(c["message"] for c in world.status["conditions"]
                                         if c["type"] == "CalibrationStale")
    assert following.wake is not None and following.wake > world.now, "then every analysis interval, not at once"


def test_a_visit_that_leaves_the_stable_as_it_was_is_not_woken_at_once() -> None:
    world = RefreshWorld(REFRESHING)
    world.drift = drifted("0.001")
    world.visit()
    world.visit()
    assert world.status["revision"]["stable"], "serving"
    decision = world.at(100).visit()
    assert decision.wake is not None and decision.wake > world.now


def test_the_visit_that_rolls_a_refresh_back_wakes_the_model_at_once_to_start_the_back_off() -> None:
    world = stale_world()
    world.finish_jobs(FIRST)
    world.measurements = [answers(Traffic(4000, median_seconds=2.0), Traffic(40000))]

    def rolled_back() -> bool:
        return any(h["revision"] == FIRST and h["outcome"] == "RolledBack" for h in world.status.get("history", []))

    start = (world.now - world.now.replace(hour=12, minute=0, second=0)).total_seconds()
    for tick in range(60):
        decision = world.at(start + 10 * (tick + 1)).visit()
        if rolled_back():
            break
    assert rolled_back() and world.status["refresh"]["outcome"] == "InProgress", "judged before the rollback"
    assert decision.wake == world.now

    settling = world.visit()
    assert world.status["refresh"]["outcome"] == "RolledBack"
    assert world.condition("CalibrationStale") == ("True", "RefreshBackingOff")
    assert settling.wake is not None and settling.wake > world.now
