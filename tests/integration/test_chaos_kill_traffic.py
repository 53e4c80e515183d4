"""Chaos: kill -9 the operator under real traffic through the gateway, at named points of real rollouts.

SmolLM2-135M with BF16 KV (test_canary_triton.py's model, gates and steps 20/50/100) serves from real Triton servers
on the executor node; once its first revision serves, steady traffic goes through the Traefik gateway to the end. The
test's own operator (the session's is paused) is killed with SIGKILL and started again at each point, each detected
from the model's status by a watch:
- cycle A, a healthy revision (a runtime env change: a new artifact, built and evaluated again): its build running,
  its evaluation running, the first analysis visit of its 20% step (killed when status says that analysis is due),
  its 50% step, and its promotion as soon as it is recorded. The 100% step is never a canary state (passing the 50%
  step promotes), so the promotion is the last point. It must end Promoted, the old stable scaled down after its delay.
- cycle B, a revision with 8 s of injected latency (as test_canary_triton.py injects it): the first analysis visit of
  its 20% step, and its rollback as soon as it is recorded. It must end RolledBack, the stable untouched.
After every kill, once the restarted operator has visited the model: no duplicate Job, Deployment or Service, nothing
status recorded goes back, a running canary step keeps its start time. All along, the stable revision is never below
spec nor, by the failing canary, re-weighted past 20% (StableWatch). At the end: every request through the gateway
answered (a timeout while the slow canary takes traffic is counted apart, as the fault's own), the token Secret's
value nowhere, no traceback in the operator's log. BF16 KV has no calibration: kills during calibration are
test_chaos_kill.py's (KWOK).
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import urllib3
from chaos import FULL, Row, StableWatch, duplicates, leaks, regressions
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from test_canary import weights
from test_canary_triton import _time, gateway_traffic, serving_smollm, smollm  # noqa: F401  (serving_smollm: a fixture)
from test_chaos_faults import _visits
from test_chaos_kill import _phase
from test_pipeline import condition, objects, read  # noqa: F401  (objects: a fixture)

from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION

pytestmark = [
    pytest.mark.usefixtures("artifacts_claim"),
    pytest.mark.skipif(not FULL, reason="make chaos only (QFLEET_CHAOS=full): three real pipelines and Triton "
                                        "canaries, about 20 minutes; `make test` runs the short kill -9 variant on "
                                        "KWOK pods (test_chaos_kill.py)"),
]

MODEL, ROUTE = "smollm", "smollm-route"
INTERVAL = timedelta(seconds=int(smollm("")["spec"]["rollout"]["analysis"]["interval"].rstrip("s")))
FIRST_STEP = Decimal(smollm("")["spec"]["rollout"]["steps"][0]["weight"])
PIPELINE_S, CANARY_S, ROLLBACK_S, RESTART_S = 900, 900, 300, 120
"""Bounds: a new revision's build and evaluation beside the traffic, then its canary (healthy: 40 requests a side
per step at about one a second; failing: aborted within an interval or two), a restarted operator's first visit."""
BUDGET_S = 660 + (PIPELINE_S + CANARY_S) + (PIPELINE_S + ROLLBACK_S) + 300
"""The first revision serving (serving_smollm: 600 s + 60 s), the two cycles, the checks after each and teardown."""


@pytest.fixture
def operator_process(operator_process, fleet, tmp_path):
    """Overrides the session's operator in this module (serving_smollm then serves through this one): a process of
    the test's own, killed and restarted by it; the session's is paused meanwhile."""
    operator_process.stop()
    own = OperatorProcess(fleet.kubeconfig, tmp_path / "operator.log")
    own.start()
    yield own
    own.stop()
    operator_process.start()


def _outcome(status: dict, revision: str | None) -> str | None:
    return next((h["outcome"] for h in reversed(status.get("history", [])) if h["revision"] == revision), None)


def _running(step: str):
    """The revision's `step` Job is running (status names its Job, no outcome yet)."""
    def reached(status: dict, target: str) -> bool:
        record = status.get(step) or {}
        return record.get("revision") == target and bool(record.get("job")) and not record.get("outcome")
    return reached


def _at_step(step: int):
    """The revision is the canary at `step`, with traffic (a step start time: not waiting for readiness)."""
    def reached(status: dict, target: str) -> bool:
        canary = status.get("canary") or {}
        return (status.get("revision") or {}).get("canary") == target and canary.get("step") == step and \
            bool(canary.get("stepStartedAt")) and Decimal(canary.get("weight") or 0) > 0
    return reached


def _ended(outcome: str):
    return lambda status, target: _outcome(status, target) == outcome


HEALTHY = [("build running", _running("engine"), False), ("evaluation running", _running("evaluation"), False),
           ("analysis visit at the 20% step", _at_step(0), True), ("the 50% step", _at_step(1), False),
           ("promotion recorded", _ended("Promoted"), False)]
FAILING = [("analysis visit at the 20% step", _at_step(0), True), ("rollback recorded", _ended("RolledBack"), False)]
"""(point, when status shows it, whether the kill waits for the analysis that status says is due next)."""


class Chaos:
    def __init__(self, operator: OperatorProcess, api, objects, namespace: str, traffic, row: Row) -> None:
        self.operator, self.api, self.objects, self.namespace, self.traffic, self.row = \
            operator, api, objects, namespace, traffic, row
        self.started = time.monotonic()
        self.previous = self.status()
        self.points: list[str] = []

    def status(self) -> dict:
        return read(self.objects, self.namespace, MODEL).get("status") or {}

    def wait(self, what: str, reached, deadline: float, target: str | None = None) -> dict:
        """The model's status once `reached(status)` holds, from a watch of the model (its first event is the model as
        it is now), bounded by the deadline; fails at once if revision `target` is promoted or rolled back first."""
        last, error = {}, None
        while (left := deadline - time.monotonic()) > 0:
            stream = k8s_watch.Watch()
            try:
                for event in stream.stream(self.objects.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                           PLURAL, field_selector=f"metadata.name={MODEL}",
                                           timeout_seconds=max(1, int(left)), _request_timeout=left + 5):
                    last = event["object"].get("status") or {}
                    if reached(last):
                        return last
                    if target and _outcome(last, target) in ("Promoted", "RolledBack"):
                        raise AssertionError(f"{target} was {_outcome(last, target)} before {what}: {last}")
                    if time.monotonic() >= deadline:
                        break
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as failure:  # a dropped watch: watch again
                error = failure
                time.sleep(1)  # a pause before watching again, not a wait for a condition
            finally:
                stream.stop()
        raise AssertionError(f"{what}: not reached in time; last status {last}; last watch error {error!r}\n"
                             f"{self.operator.log_tail()}")

    def cycle(self, env: list[dict], points: list, stable: str, budget_s: float) -> tuple[str, list[int]]:
        """A spec edit into a new revision, killed at each point; its revision and, per point, how many traffic
        batches had ended when status showed it."""
        deadline = time.monotonic() + budget_s
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, MODEL,
                                                    {"spec": {"runtime": {"env": env}}})
        target = self.wait("the edit's revision in status", lambda s: (s.get("revision") or {}).get("current")
                           not in (None, stable), deadline)["revision"]["current"]
        marks = []
        for point, reached, in_analysis in points:
            status = self.wait(point, lambda s: reached(s, target), deadline, target)
            marks.append(len(self.traffic.reports))
            if in_analysis:
                canary = status["canary"]
                due = _time((canary.get("lastAnalysis") or {}).get("at") or canary["stepStartedAt"]) + INTERVAL
                # The operator wakes for that analysis at `due` (qfleet.pipeline.wake): nothing to await before it.
                time.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds() + 0.3))
            self.kill(point)
        return target, marks

    def kill(self, point: str) -> None:
        """SIGKILL, then a fresh operator; once it has visited the model, nothing lost and nothing made twice."""
        os.kill(self.operator.process.pid, signal.SIGKILL)
        self.operator.process.wait(timeout=10)
        killed = time.monotonic()
        self.row.faults += 1
        at_kill = self.status()  # only the operator writes status: this is the status the kill left
        self.operator.start()
        wait_until(f"the restarted operator's first visit after the kill at {point}", lambda: _visits(self.operator)
                   > 0, RESTART_S, interval=0.5, process=self.operator.process, log=self.operator.log_path)
        after = self.status()
        lost = regressions(self.previous, at_kill) + regressions(at_kill, after)
        was, now = at_kill.get("canary") or {}, after.get("canary") or {}
        if was.get("stepStartedAt") and ((at_kill.get("revision") or {}).get("canary"), was.get("step")) == \
                ((after.get("revision") or {}).get("canary"), now.get("step")) and \
                now.get("stepStartedAt") != was["stepStartedAt"]:
            lost.append(f"step {was['step']} restarted: {was['stepStartedAt']} -> {now.get('stepStartedAt')}")
        dup = duplicates(self.api, self.namespace, MODEL)
        self.row.duplicates += len(dup)
        analysis = was.get("lastAnalysis") or {}
        print(f"  kill {self.row.faults} at {killed - self.started:6.1f} s, {point}: status said {_phase(at_kill)}"
              + (f" (last analysis {analysis['at']}: {analysis['verdict']})" if analysis else "")
              + f"; first visit {time.monotonic() - killed:.1f} s later; duplicates {dup or 0}; "
              f"status kept {'yes' if not lost else lost}")
        assert not lost and not dup, (point, lost, dup)
        self.points.append(point)
        self.previous = after


def _scaled_to_zero(apps: k8s.AppsV1Api, namespace: str, revision: str) -> bool:
    return apps.read_namespaced_deployment(f"{MODEL}-{revision}", namespace).spec.replicas == 0


@pytest.mark.timeout(BUDGET_S)
def test_kill_9_at_each_point_of_real_rollouts_under_gateway_traffic(api, core, objects, namespace, fleet,
                                                                    serving_smollm, operator_process):
    stable, url = serving_smollm
    apps = k8s.AppsV1Api(api)
    row = Row("kill -9 the operator (Triton, gateway traffic)")
    token = f"hf_{uuid.uuid4().hex}"
    core.create_namespaced_secret(namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="hf-token"),
                                                          string_data={"token": token}))
    # Not an artifact field: the same revision serves on; the new revisions' Jobs get the token.
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, MODEL,
                                           {"spec": {"model": {"tokenSecretRef": {"name": "hf-token"}}}})
    print(f"\nchaos kill -9 under gateway traffic: stable {stable}")
    with gateway_traffic(url, f"{namespace}.test") as traffic, \
            StableWatch(api, namespace, MODEL, ROUTE, FIRST_STEP, limit_s=BUDGET_S) as watch:
        chaos = Chaos(operator_process, api, objects, namespace, traffic, row)
        watch.failing = False  # a healthy canary is meant to take the stable's traffic
        healthy, _ = chaos.cycle([{"name": "QFLEET_NOTE", "value": "chaos: healthy"}], HEALTHY, stable,
                                 PIPELINE_S + CANARY_S)
        done = chaos.status()
        assert [(h["revision"], h["outcome"]) for h in done["history"]][-2:] == [(stable, "Superseded"),
                                                                                 (healthy, "Promoted")], done
        wait_until(f"the superseded {stable} scaled down after its delay", lambda: _scaled_to_zero(
            apps, namespace, stable), 120, interval=1)
        assert weights(api, namespace, ROUTE) == {"smollm-stable": 100, "smollm-canary": 0}

        watch.failing = True
        slow, marks = chaos.cycle([{"name": "QFLEET_FAULT_LATENCY_SECONDS", "value": "8"}], FAILING, healthy,
                                  PIPELINE_S + ROLLBACK_S)
        wait_until(f"the rolled-back {slow} at 0 replicas", lambda: _scaled_to_zero(apps, namespace, slow), 60,
                   interval=1)
        rolled = read(objects, namespace, MODEL)
        entry = rolled["status"]["history"][-1]
        assert (entry["revision"], entry["outcome"]) == (slow, "RolledBack") and "p99LatencyRatio" in entry["message"]
        assert condition(rolled, "RolledBack")["status"] == "True" and rolled["status"]["revision"]["stable"] == healthy
        assert weights(api, namespace, ROUTE) == {"smollm-stable": 100, "smollm-canary": 0}
        assert apps.read_namespaced_deployment(f"{MODEL}-{healthy}", namespace).status.ready_replicas == 1
    # The batches from the slow canary's first weight to the one in flight at its rollback: its timeouts are the
    # fault's own; any other failure is the kills'.
    faulted = traffic.reports[marks[0]:marks[-1] + 1]
    fault_timeouts = sum(n for r in faulted for outcome, n in r.errors.items() if "Timeout" in outcome)
    row.requests, row.failed = traffic.sent(), traffic.failures()
    dup = duplicates(api, namespace, MODEL)
    row.duplicates += len(dup)
    row.disruptions = len(watch.disruptions)
    text = operator_process.log_path.read_text(errors="replace")
    leaked = leaks(token, api, namespace, MODEL, {"operator log": text})
    tracebacks = text.count("Traceback")
    row.notes += [f"kills at: {', '.join(chaos.points)}",
                  f"{healthy} promoted, {slow} rolled back ({entry['message']})",
                  f"{row.failed} of {row.requests} requests failed, {fault_timeouts} of them timeouts while the slow "
                  f"canary took traffic (the injected fault's own)", f"stable sampled {watch.samples} times",
                  f"token leaks: {leaked or 0}", f"tracebacks in the operator's log: {tracebacks}",
                  *watch.disruptions[:5]]
    row.record(not (row.duplicates or row.disruptions or leaked or tracebacks or row.failed - fault_timeouts))
    assert row.duplicates == 0 and row.disruptions == 0, (dup, watch.disruptions)
    assert row.failed == fault_timeouts, traffic.failed_reports()
    assert not leaked, leaked
    assert tracebacks == 0, text[text.index("Traceback") - 1500:][:5000]
