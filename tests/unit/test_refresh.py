"""Calibration refresh as tables: drift verdicts, the schedule's next time, the back-off, the figures read from
Prometheus's answers, and one refresh step from a given status (qfleet.pipeline.refresh)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.refresh_spec import Trigger
from qfleet.api.status import QuantizedModelStatus
from qfleet.pipeline.refresh import (
    DriftReading,
    RefreshInput,
    backoff,
    drift_verdict,
    next_refresh_due,
    readings,
    refresh_step,
)
from qfleet.promql import Window, drift_queries
from qfleet.revision import revision_of

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TRIGGER = Trigger.model_validate({"max": "0.01", "for": "1h"})


@dataclass(frozen=True)
class VerdictCase:
    reason: str
    value: str | None
    samples: int | None
    above_since: datetime | None
    stale: bool
    since_after: datetime | None


VERDICT_CASES = [
    VerdictCase("within the bound clears the run", "0.005", 5000, NOW - 2 * HOUR, False, None),
    VerdictCase("at the bound is within", "0.01", 5000, NOW - 2 * HOUR, False, None),
    VerdictCase("first check above starts the run", "0.02", 5000, None, False, NOW),
    VerdictCase("above for less than for: pending", "0.02", 5000, NOW - HOUR / 2, False, NOW - HOUR / 2),
    VerdictCase("above for exactly for: stale", "0.02", 5000, NOW - HOUR, True, NOW - HOUR),
    VerdictCase("above for longer: stale", "0.5", 5000, NOW - 3 * HOUR, True, NOW - 3 * HOUR),
    VerdictCase("no data keeps the run, does not fire", None, None, NOW - 3 * HOUR, False, NOW - 3 * HOUR),
    VerdictCase("too few samples is no data", "0.5", 10, NOW - 3 * HOUR, False, NOW - 3 * HOUR),
    VerdictCase("too few samples does not start a run", "0.5", 10, None, False, None),
]


@pytest.mark.parametrize("case", VERDICT_CASES, ids=lambda case: case.reason)
def test_drift_verdict(case: VerdictCase) -> None:
    reading = DriftReading(None if case.value is None else Decimal(case.value), case.samples)

    verdict = drift_verdict("fallbackRate", TRIGGER, reading, case.above_since, NOW)

    assert (verdict.stale, verdict.above_since) == (case.stale, case.since_after)
    assert verdict.bound == Decimal("0.01")


def _status(**fields: Any) -> QuantizedModelStatus:
    return QuantizedModelStatus.model_validate(fields)


DUE_CASES = [
    # reason, schedule, status, due
    ("interval from the calibration", "168h", _status(calibration={"completedAt": NOW}), NOW + 168 * HOUR),
    ("interval from a later refresh request", "168h",
     _status(calibration={"completedAt": NOW - 200 * HOUR}, refresh={"requestedAt": NOW}), NOW + 168 * HOUR),
    ("cron after the calibration", "0 3 * * 0", _status(calibration={"completedAt": NOW}),
     datetime(2026, 12, 6, 3, 0, tzinfo=UTC)),
    ("cron every minute: not within the hour after the calibration", "* * * * *",
     _status(calibration={"completedAt": NOW}), NOW + HOUR),
    ("cron every minute: not within the hour after a refresh request", "* * * * *",
     _status(calibration={"completedAt": NOW - 5 * HOUR}, refresh={"requestedAt": NOW + timedelta(seconds=30)}),
     NOW + HOUR + timedelta(minutes=1)),
    ("cron hourly: a calibration at 10:20 is next due at 12:00, not 11:00", "0 * * * *",
     _status(calibration={"completedAt": datetime(2026, 11, 30, 10, 20, tzinfo=UTC)}),
     datetime(2026, 11, 30, 12, 0, tzinfo=UTC)),
    ("no calibration: never", "168h", _status(), None),
    ("no schedule: never", None, _status(calibration={"completedAt": NOW}), None),
]


@pytest.mark.parametrize("reason, schedule, status, due", DUE_CASES, ids=[case[0] for case in DUE_CASES])
def test_next_refresh_due(reason: str, schedule: str | None, status: QuantizedModelStatus,
                          due: datetime | None) -> None:
    refresh = {"schedule": schedule} if schedule else {"triggers": {"fallbackRate": {"max": "0.01"}}}
    spec = parse_spec({**BASE, "quantization": {"kvCache": "fp8", "calibration": {"refresh": refresh}}})

    assert next_refresh_due(spec.quantization.calibration.refresh, status) == due


@pytest.mark.parametrize("failures, wait", [(0, HOUR), (1, HOUR), (2, 2 * HOUR), (3, 4 * HOUR), (5, 16 * HOUR),
                                             (6, 24 * HOUR), (30, 24 * HOUR)])
def test_backoff_doubles_up_to_a_day(failures: int, wait: timedelta) -> None:
    assert backoff(failures) == wait


READING_CASES = [
    ("fallbackRate", {"fallback": "18", "entries": "9000", "tokens": "50"}, DriftReading(Decimal("0.002"), 50)),
    ("fallbackRate", {"fallback": "0", "entries": "0", "tokens": "0"}, DriftReading(None, 0)),
    ("qualityDrop", {"scored": "1000", "lost": "60", "gained": "40"}, DriftReading(Decimal("0.02"), 1000)),
    ("qualityDrop", {"scored": "1000", "lost": None, "gained": "40"}, DriftReading(None, 1000)),
    ("outOfRange", {"outOfRange": "5", "values": "10000", "tokens": "700"}, DriftReading(Decimal("0.0005"), 700)),
    ("outOfRange", {}, DriftReading(None, None)),
]


@pytest.mark.parametrize("name, parts, expected", READING_CASES)
def test_readings_from_answers(name: str, parts: dict[str, str | None], expected: DriftReading) -> None:
    values = {f"drift/{name}/{part}": None if value is None else Decimal(value) for part, value in parts.items()}

    assert readings(values)[name] == expected


def test_drift_queries_read_the_stable_revision_over_the_window() -> None:
    queries = drift_queries(Window("ns", "llama", "s1", "s1", 300), ["fallbackRate", "outOfRange"])

    assert set(queries) == {"drift/fallbackRate/fallback", "drift/fallbackRate/entries", "drift/fallbackRate/tokens",
                            "drift/outOfRange/outOfRange", "drift/outOfRange/values", "drift/outOfRange/tokens"}
    assert queries["drift/outOfRange/outOfRange"] == (
        'sum(increase(qfleet_kv_out_of_range_values_total{namespace="ns",qfleet_io_model="llama",'
        'qfleet_io_revision="s1"}[300s]))')


# -- one refresh step ------------------------------------------------------------------------------------------------
BASE: dict[str, Any] = {
    "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "serving": {"image": "qfleet/runtime:test"},
    "artifacts": {"uri": "pvc://qfleet-artifacts/smol"},
    "rollout": {"analysis": {"interval": "5m"}},
}
TRIGGERS = {"triggers": {"fallbackRate": {"max": "0.01", "for": "1h"}}}


def spec(refresh: dict | None = None) -> dict:
    quantization: dict[str, Any] = {"kvCache": "fp8"}
    if refresh is not None:
        quantization["calibration"] = {"refresh": refresh}
    return {**copy.deepcopy(BASE), "quantization": quantization}


def rev(refresh: dict | None = None, generation: int = 0) -> str:
    return revision_of(parse_spec(spec(refresh)), "qfleet/runtime:test", generation)


STABLE = rev()
"""Refresh is policy: the stable revision is the same with or without it."""
CALIBRATED = {"outcome": "Succeeded", "completedAt": (NOW - 2 * HOUR).isoformat(), "revision": STABLE}


def steady(**refresh: Any) -> dict:
    status: dict[str, Any] = {"revision": {"current": STABLE, "stable": STABLE}, "calibration": CALIBRATED}
    if refresh:
        status["refresh"] = refresh
    return status


def answers(fallback: str, tokens: str = "5000") -> dict[str, Decimal | None]:
    return {"drift/fallbackRate/fallback": Decimal(fallback) * 10000, "drift/fallbackRate/entries": Decimal(10000),
            "drift/fallbackRate/tokens": Decimal(tokens)}


@dataclass(frozen=True)
class StepCase:
    reason: str
    refresh: dict | None
    status: dict
    measured: dict[str, Decimal | None] | None = None
    generation: int = 0
    condition: tuple[str, str] | None = ("False", "CalibrationCurrent")
    asks: bool = False
    outcome: str | None = None
    wake: datetime | None = None
    message_has: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


FIRST = rev(TRIGGERS, 1)
STEP_CASES = [
    StepCase("no refresh: no condition, nothing due", None, steady(), condition=None),
    StepCase("no refresh keeps a generation already made", None,
             {**steady(), "revision": {"current": rev(None, 2), "stable": rev(None, 2)},
              "refresh": {"generation": 2, "outcome": "Promoted"}},
             generation=2, condition=None, outcome="Promoted", extra={"status_generation": 2}),
    StepCase("a trigger's first check asks Prometheus", TRIGGERS, steady(), asks=True),
    StepCase("within the bound: current, next check in an interval", TRIGGERS, steady(), answers("0.001"),
             wake=NOW + timedelta(minutes=5), message_has=("fallbackRate 0.001 (max 0.01)",)),
    StepCase("above, not yet for long enough: pending", TRIGGERS,
             steady(drift=[{"name": "fallbackRate", "max": "0.01", "aboveSince": NOW - HOUR / 2}],
                    lastCheckedAt=NOW - timedelta(minutes=5)), answers("0.05"), wake=NOW + timedelta(minutes=5)),
    StepCase("held for its for: stale, generation 1 starts", TRIGGERS,
             steady(drift=[{"name": "fallbackRate", "max": "0.01", "aboveSince": NOW - HOUR}],
                    lastCheckedAt=NOW - timedelta(minutes=5)), answers("0.05"),
             generation=1, condition=("True", "DriftDetected"), outcome="InProgress",
             message_has=("fallbackRate 0.05 (max 0.01)", f"runs as revision {FIRST}", STABLE)),
    StepCase("a check not due yet asks nothing", TRIGGERS, steady(lastCheckedAt=NOW - timedelta(minutes=2)),
             wake=NOW + timedelta(minutes=3)),
    StepCase("the schedule came due", {"schedule": "1h"}, steady(), generation=1,
             condition=("True", "RefreshScheduled"), outcome="InProgress", message_has=("schedule 1h",)),
    StepCase("the schedule not yet due", {"schedule": "168h"}, steady(), wake=NOW - 2 * HOUR + 168 * HOUR),
    StepCase("a refresh running: no check, still stale", TRIGGERS,
             {"revision": {"current": FIRST, "stable": STABLE}, "calibration": CALIBRATED,
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "InProgress"}},
             generation=1, condition=("True", "DriftDetected"), outcome="InProgress"),
    StepCase("the refresh was promoted: current again", TRIGGERS,
             {"revision": {"current": FIRST, "stable": FIRST}, "calibration": {**CALIBRATED, "revision": FIRST},
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "InProgress", "lastCheckedAt": NOW}},
             generation=1, outcome="Promoted", wake=NOW + timedelta(minutes=5)),
    StepCase("the refresh was rolled back: back-off", TRIGGERS,
             {"revision": {"current": FIRST, "stable": STABLE}, "calibration": CALIBRATED,
              "history": [{"revision": FIRST, "outcome": "RolledBack", "at": NOW}],
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "InProgress", "consecutiveFailures": 1}},
             generation=1, condition=("True", "RefreshBackingOff"), outcome="RolledBack", wake=NOW + 2 * HOUR,
             message_has=("rolled back", "2 in a row")),
    StepCase("a step of the refresh failed: back-off", TRIGGERS,
             {"revision": {"current": FIRST, "stable": STABLE}, "calibration": CALIBRATED,
              "conditions": [{"type": "Ready", "status": "False", "reason": "QualityGateFailed",
                              "lastTransitionTime": NOW}],
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "InProgress"}},
             generation=1, condition=("True", "RefreshBackingOff"), outcome="Failed", wake=NOW + HOUR),
    StepCase("after the back-off: checks again from scratch", TRIGGERS,
             {"revision": {"current": FIRST, "stable": STABLE}, "calibration": CALIBRATED,
              "history": [{"revision": FIRST, "outcome": "RolledBack", "at": NOW - 3 * HOUR}],
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "RolledBack", "consecutiveFailures": 1, "notBefore": NOW - HOUR,
                          "lastCheckedAt": NOW - HOUR, "drift": [{"name": "fallbackRate", "max": "0.01"}]}},
             answers("0.05"), generation=1, outcome="RolledBack", wake=NOW + timedelta(minutes=5)),
    StepCase("a refresh whose calibration failed is over once backed off", TRIGGERS,
             {"revision": {"current": FIRST, "stable": STABLE},
              "calibration": {"outcome": "Failed", "revision": FIRST, "message": "exit code 3"},
              "refresh": {"generation": 1, "reason": "fallbackRate", "revision": FIRST, "basedOn": STABLE,
                          "outcome": "Failed", "consecutiveFailures": 1, "notBefore": NOW - HOUR,
                          "lastCheckedAt": NOW - HOUR}},
             answers("0.001"), generation=1, outcome="Failed", wake=NOW + timedelta(minutes=5)),
    StepCase("a person's edit rolls out: no check", TRIGGERS,
             {"revision": {"current": "someoneelse", "stable": STABLE}, "calibration": CALIBRATED}),
    StepCase("a bf16 stable has nothing to refresh", TRIGGERS,
             {"revision": {"current": STABLE, "stable": STABLE}}, message_has=("no calibration",)),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda case: case.reason)
def test_refresh_step(case: StepCase) -> None:
    status = QuantizedModelStatus.model_validate(case.status)
    given = RefreshInput(parse_spec(spec(case.refresh)).with_images("qfleet/runtime:test"), status, NOW, "ns",
                         "smol", "qfleet/runtime:test", case.measured)

    step = refresh_step(given)

    assert step.generation == case.generation
    assert (step.condition[:2] if step.condition else None) == case.condition
    assert (step.measure is not None) is case.asks
    assert (step.status.outcome if step.status else None) == case.outcome
    if case.wake is not None or not case.asks:
        assert step.wake == case.wake
    for text in case.message_has:
        assert step.condition is not None and text in step.condition[2]
    if "status_generation" in case.extra:
        assert step.status is not None and step.status.generation == case.extra["status_generation"]


INVOCATION_CASES = [
    # reason, refresh, generation, recent flags expected
    ("generation 0 calibrates on the dataset", {**TRIGGERS, "sampleTraffic": {"enabled": True}}, 0, False),
    ("a refresh without the opt-in: dataset only", TRIGGERS, 1, False),
    ("a refresh with the opt-in reads the sample", {**TRIGGERS, "sampleTraffic": {"enabled": True}}, 1, True),
]


@pytest.mark.parametrize("reason, refresh, generation, recent", INVOCATION_CASES,
                         ids=[case[0] for case in INVOCATION_CASES])
def test_the_calibrate_job_reads_the_recent_sample_only_for_a_refresh(reason: str, refresh: dict, generation: int,
                                                                      recent: bool) -> None:
    from qfleet.api.jobs import Step, step_invocation

    invocation = step_invocation(Step.CALIBRATE, parse_spec(spec(refresh)), "r1", "fp8", (9, 0), None, "smol",
                                 generation)

    assert ("--recent-sample" in invocation.args) is recent
    if recent:
        args = invocation.args
        assert args[args.index("--recent-sample") + 1] == "/var/lib/qfleet/artifacts/smol/smol/traffic-sample"
        assert args[args.index("--recent-share") + 1] == "0.5"


@pytest.mark.parametrize("summary, mix", [
    ({"datasetMix": {"configured": 3, "recent": 1}}, {"configured": 3, "recent": 1}),
    ({"datasetMix": {"configured": 4}}, {"configured": 4}),
    ({"datasetMix": {"configured": "4", "recent": True}}, None),
    ({"datasetMix": "4/1"}, None),
    ({}, None),
])
def test_the_dataset_mix_is_recorded_as_counts_only(summary: dict, mix: dict | None) -> None:
    from qfleet.pipeline.records import _mix

    assert _mix(summary.get("datasetMix")) == mix


def test_rollback_to_a_refreshed_revision_is_refused_with_the_reason() -> None:
    from qfleet.cli.rollback import RollbackRefused, rollback_patch

    document = {"metadata": {"name": "smol"}, "spec": spec(TRIGGERS),
                "status": {"history": [{"revision": FIRST, "outcome": "Promoted", "artifact": "{}",
                                        "calibration": {"generation": 1}}]}}

    with pytest.raises(RollbackRefused, match="refresh generation 1"):
        rollback_patch(document, FIRST)


def test_rollback_to_keeps_the_specs_own_refresh() -> None:
    from qfleet.cli.rollback import apply_merge_patch, rollback_patch
    from qfleet.revision import artifact_spec

    earlier = {**spec(), "quantization": {"kvCache": "int8"}}
    target = revision_of(parse_spec(earlier))
    document = {"metadata": {"name": "smol"}, "spec": spec(TRIGGERS),
                "status": {"history": [{"revision": target, "outcome": "Superseded",
                                        "artifact": artifact_spec(parse_spec(earlier))}]}}

    restored = apply_merge_patch(document["spec"], rollback_patch(document, target)["spec"])

    assert restored["quantization"]["kvCache"] == "int8"
    assert restored["quantization"]["calibration"]["refresh"] == TRIGGERS
