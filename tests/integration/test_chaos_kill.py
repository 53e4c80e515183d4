"""Chaos: kill -9 the operator at seeded random points across the whole pipeline and restart it each time.

One model on the fleet's simulated Blackwell pool (KWOK) goes through cycle after cycle: calibration, build,
evaluation and a stable revision; then a new revision per cycle (engine.maxBatchSize bumped; every third cycle the
calibration's samples instead, so it calibrates again), whose canary either fails (simulated pods export no metrics:
Inconclusive until maxHold, then rolled back) or is promoted by a person (`kubectl qfleet promote`). The operator is
killed after a delay drawn from the seeded generator (2-8 s after its last start), whatever it is doing; the phase each
kill hit is printed, and counted. After every kill: no duplicate child, nothing status
recorded goes back, and (sampled all along) the stable revision is never below spec nor re-weighted past the first
step by a failing canary. The token Secret's value must appear in no log, status, Event or Job.

`make chaos` kills 24 times (QFLEET_CHAOS=full); `make test` 4 times. Simulated pods serve no requests, so no request
goes through the gateway here (test_chaos_faults.py and the Triton tests carry traffic).
"""
from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from decimal import Decimal

import pytest
from chaos import FULL, SEED, Row, StableWatch, duplicates, leaks, regressions
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from test_canary import canary_model, route  # noqa: F401  (route: a fixture)
from test_pipeline import objects, read  # noqa: F401  (objects: a fixture)

from localfleet.operator_process import OperatorProcess
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.cli import plugin

pytestmark = pytest.mark.usefixtures("artifacts_claim", "session_operator_paused")

KILLS = int(os.environ.get("QFLEET_CHAOS_KILLS") or (24 if FULL else 4))
CYCLES = 4 if FULL else 2
"""Cycles started (the first is the stable revision): 2 means the first failing canary ran to its rollback."""
BUDGET_S = 60 * (25 if FULL else 6)


def _phase(status: dict) -> str:
    """Where the pipeline is, in words, for the kill's record."""
    revision = status.get("revision") or {}
    if status.get("canary") and revision.get("canary"):
        return f"canary step {status['canary']['step']} weight {status['canary']['weight']}"
    for step in ("calibration", "engine", "evaluation"):
        record = status.get(step) or {}
        if record.get("job") and not record.get("outcome") and record.get("revision") == revision.get("current"):
            return f"{step} running"
    conditions = {c["type"]: c.get("reason") for c in status.get("conditions", [])}
    return f"{status.get('phase')} ({conditions.get('Ready')})"


class Driver:
    """Moves the model from goal to goal: first a stable revision, then per cycle a canary that fails or that a person
    promotes. `advance()` is called between kills and never blocks."""

    def __init__(self, objects, namespace: str, kubeconfig: str, watch: StableWatch) -> None:
        self.objects, self.namespace, self.kubeconfig, self.watch = objects, namespace, kubeconfig, watch
        self.cycle, self.promoted_asked, self.outcomes = 0, False, []
        self.previous: str | None = None  # the revision before this cycle's edit: the edit is seen once it changes

    def status(self) -> dict:
        return read(self.objects, self.namespace, "llama").get("status") or {}

    def drive_until(self, deadline: float, done=lambda: False) -> None:
        """Advances on every change of the model (a watch: its first event is the model as it is now) until the
        deadline or `done()`; the wait for the next change is bounded by the time left."""
        while time.monotonic() < deadline and not done():
            left = deadline - time.monotonic()
            stream = k8s_watch.Watch()
            try:
                for event in stream.stream(self.objects.list_namespaced_custom_object, GROUP, VERSION,
                                           self.namespace, PLURAL, field_selector="metadata.name=llama",
                                           timeout_seconds=max(1, int(left)), _request_timeout=left + 5):
                    self.advance(event["object"].get("status") or {})
                    if time.monotonic() >= deadline or done():
                        break
            except Exception as error:  # noqa: BLE001  the read timeout that ends a sub-second wait
                if time.monotonic() < deadline - 0.5:
                    raise AssertionError(f"the model's watch failed: {error!r}") from error
            finally:
                stream.stop()

    def advance(self, status: dict) -> None:
        revision = status.get("revision") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        if self.cycle == 0:
            if conditions.get("Ready", {}).get("reason") == "RevisionServing":
                self._next_cycle()
            return
        history = {(h["revision"], h["outcome"]) for h in status.get("history", [])}
        target = revision.get("current")
        if target == self.previous:
            return
        if (target, "RolledBack") in history or (target, "Promoted") in history:
            self.outcomes.append(f"cycle {self.cycle}: {target} " + ("promoted" if (target, "Promoted") in history
                                                                     else "rolled back"))
            self._next_cycle()
        elif self.cycle % 2 == 0 and revision.get("canary") == target and status.get("canary") \
                and not self.promoted_asked:
            self.promoted_asked = plugin.main(["promote", "llama", "-n", self.namespace, "--kubeconfig",
                                               self.kubeconfig]) == 0

    def _next_cycle(self) -> None:
        self.previous = (self.status().get("revision") or {}).get("current")
        self.cycle += 1
        self.promoted_asked = False
        self.watch.failing = self.cycle % 2 == 1
        # Every third cycle re-calibrates (more samples), so kills land in calibration too, not only in the build.
        edit = {"quantization": {"calibration": {"samples": 64 + self.cycle}}} if self.cycle % 3 == 0 else \
            {"engine": {"maxBatchSize": 64 + self.cycle}}
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, "llama", {"spec": edit})


@pytest.mark.timeout(BUDGET_S + 180)
def test_kill_9_at_seeded_points_loses_nothing(api, objects, core, namespace, fleet, route, tmp_path):
    rng = random.Random(SEED)
    phases: Counter = Counter()
    row = Row("kill -9 the operator (KWOK)")
    token = f"hf_{uuid.uuid4().hex}"
    core.create_namespaced_secret(namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="hf-token"),
                                                          string_data={"token": token}))
    document = canary_model(fleet.prometheus_url(), analysis={
        "interval": "2s", "prometheus": {"address": fleet.prometheus_url()}, "minRequests": 1, "failureLimit": 1,
        "maxHold": "6s"})
    document["spec"]["model"]["tokenSecretRef"] = {"name": "hf-token"}
    log = tmp_path / "operator.log"
    operator = OperatorProcess(fleet.kubeconfig, log)
    operator.start()
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)
    first_step = Decimal(document["spec"]["rollout"]["steps"][0]["weight"])
    print(f"\nchaos kill -9: seed {SEED}, {KILLS} kills")
    started = time.monotonic()
    with StableWatch(api, namespace, "llama", "llama-route", first_step) as watch:
        driver = Driver(objects, namespace, str(fleet.kubeconfig), watch)
        before = driver.status()
        try:
            while row.faults < KILLS and time.monotonic() - started < BUDGET_S:
                driver.drive_until(time.monotonic() + rng.uniform(2, 8))
                status = driver.status()
                lost = regressions(before, status)
                phase = _phase(status)
                phases[phase.split(" weight")[0].split(" (")[0]] += 1
                os.kill(operator.process.pid, signal.SIGKILL)
                operator.process.wait(timeout=10)
                row.faults += 1
                dup = duplicates(api, namespace, "llama")
                row.duplicates += len(dup)
                print(f"  kill {row.faults:2d} at {time.monotonic() - started:6.1f} s: {phase}; "
                      f"duplicates {dup or 0}; status kept {'yes' if not lost else lost}")
                assert not lost, lost
                before = status
                operator.start()
            driver.drive_until(started + BUDGET_S, done=lambda: driver.cycle >= CYCLES)
            deadline_hit = row.faults < KILLS or driver.cycle < CYCLES
        finally:
            operator.stop()
    row.disruptions = len(watch.disruptions)
    row.notes += driver.outcomes + [f"kills by phase: {dict(phases)}", f"stable sampled {watch.samples} times"] \
        + watch.disruptions[:5]
    text = log.read_text(errors="replace")
    leaked = leaks(token, api, namespace, "llama", {"operator log": text})
    row.notes.append(f"token leaks: {leaked or 0}")
    tracebacks = text.count("Traceback")
    row.record(not (row.duplicates or row.disruptions or leaked or tracebacks or deadline_hit))
    assert not deadline_hit, f"only {row.faults} kills and {driver.cycle} cycles in {BUDGET_S} s: {driver.outcomes}"
    assert row.duplicates == 0 and row.disruptions == 0, row
    assert not leaked, leaked
    assert tracebacks == 0, text[text.index("Traceback") - 1500:][:5000]
