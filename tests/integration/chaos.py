"""What the chaos scenarios share: the invariants, checked against the apiserver, and the final table.

Invariants (issue 19):
- no duplicate child: at most one Job per (revision, step), one Deployment per revision, one Service per name role;
- the rollout continues from where status says: no recorded step result, history entry or canary step goes back;
- the stable revision is never scaled below spec, nor re-weighted beyond the first canary step by a failing canary
  (a background sampler reads the stable Deployment and the HTTPRoute every quarter second; one reading can race a
  promotion's status write, so a disruption is two readings in a row);
- the model's token Secret value appears in no log, status, Event or Job argument.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from kubernetes import client as k8s

from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.api.status import MAX_HISTORY

SEED = int(os.environ.get("QFLEET_CHAOS_SEED") or int.from_bytes(os.urandom(4), "big"))
FULL = os.environ.get("QFLEET_CHAOS", "") == "full"
"""`make chaos` sets QFLEET_CHAOS=full: the full counts (20+ kill points, 1,000 fuzzed specs); `make test` runs the
short variant of each scenario."""
TABLE: list[dict] = []
GATEWAY = ("gateway.networking.k8s.io", "v1")


@dataclass
class Row:
    scenario: str
    faults: int = 0
    requests: int = 0
    failed: int = 0
    duplicates: int = 0
    disruptions: int = 0
    notes: list[str] = field(default_factory=list)

    def record(self, ok: bool) -> None:
        TABLE.append({**self.__dict__, "verdict": "PASS" if ok else "FAIL"})


def print_table(write) -> None:
    if not TABLE:
        return
    write(f"\nchaos: seed {SEED} ({'full' if FULL else 'short'} variant)\n")
    header = ("scenario", "faults", "requests", "failed", "duplicates", "stable disruptions", "verdict")
    rows = [(r["scenario"], r["faults"], r["requests"], r["failed"], r["duplicates"], r["disruptions"], r["verdict"])
            for r in TABLE]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        write(" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + "\n")
    for r in TABLE:
        for note in r["notes"]:
            write(f"  {r['scenario']}: {note}\n")


def duplicates(api, namespace: str, model: str) -> list[str]:
    """Children that exist twice for one purpose."""
    selector = f"qfleet.io/model={model}"
    found: Counter = Counter()
    for job in k8s.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector).items:
        labels = job.metadata.labels
        found[("Job", labels.get("qfleet.io/revision"), labels.get("qfleet.io/step"),
               labels.get("qfleet.io/kv-format"))] += 1
    for deployment in k8s.AppsV1Api(api).list_namespaced_deployment(namespace, label_selector=selector).items:
        found[("Deployment", deployment.metadata.labels.get("qfleet.io/revision"))] += 1
    for service in k8s.CoreV1Api(api).list_namespaced_service(namespace, label_selector=selector).items:
        found[("Service", service.metadata.labels.get("qfleet.io/role"), service.metadata.name)] += 1
    return [f"{key}: {count}" for key, count in found.items() if count > 1]


def regressions(before: dict, after: dict) -> list[str]:
    """What status lost between two readings: a recorded step result, a history entry, a canary step."""
    lost = []
    for step in ("calibration", "engine", "evaluation"):
        old, new = before.get(step) or {}, after.get(step) or {}
        if old.get("revision") == new.get("revision") and old.get("outcome") and not new.get("outcome"):
            lost.append(f"{step} outcome of {old.get('revision')}")
    old_history = [(h["revision"], h["outcome"]) for h in before.get("history", [])]
    new_history = [(h["revision"], h["outcome"]) for h in after.get("history", [])]
    dropped = [entry for entry in old_history if entry not in new_history]
    # status keeps the last MAX_HISTORY entries: the oldest leaving a full history is retention, not a loss
    if dropped and not (len(new_history) == MAX_HISTORY and old_history[:len(dropped)] == dropped):
        lost.append(f"history {old_history} -> {new_history}")
    old_canary, new_canary = before.get("canary") or {}, after.get("canary") or {}
    same = (before.get("revision") or {}).get("canary") == (after.get("revision") or {}).get("canary")
    if same and old_canary.get("step") is not None and (new_canary.get("step") or 0) < old_canary["step"]:
        lost.append(f"canary step {old_canary['step']} -> {new_canary.get('step')}")
    return lost


class StableWatch:
    """Samples the stable revision's Deployment and its HTTPRoute weight until stopped (bounded by `limit_s`)."""

    def __init__(self, api, namespace: str, model: str, route: str | None, max_canary_weight: Decimal,
                 limit_s: float = 1800) -> None:
        self.api, self.namespace, self.model, self.route = api, namespace, model, route
        self.max_canary_weight, self.limit_s = max_canary_weight, limit_s
        self.failing = True  # the current canary is expected to fail (scenario-driven)
        self.disruptions: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StableWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _reading(self) -> str | None:
        item = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                          self.model)
        status, spec = item.get("status") or {}, item["spec"]
        stable = (status.get("revision") or {}).get("stable")
        if not stable:
            return None
        want = spec.get("serving", {}).get("replicas", 1)
        deployment = k8s.AppsV1Api(self.api).read_namespaced_deployment(f"{self.model}-{stable}", self.namespace)
        if (deployment.spec.replicas or 0) < want:
            return f"stable {stable} scaled to {deployment.spec.replicas} < {want}"
        if self.route and self.failing:
            route = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(*GATEWAY, self.namespace,
                                                                                "httproutes", self.route)
            weights = {r["name"]: Decimal(r.get("weight", 1)) for r in route["spec"]["rules"][0]["backendRefs"]}
            total = sum(weights.values()) or Decimal(1)
            share = weights.get(f"{self.model}-stable", Decimal(0)) * 100 / total
            if share < 100 - self.max_canary_weight:
                return f"stable weight {share:.2f}% with a failing canary (first step {self.max_canary_weight}%)"
        return None

    def _run(self) -> None:
        previous, started = None, time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.limit_s:
            try:
                reading = self._reading()
            except Exception as error:  # noqa: BLE001  (the apiserver may be the fault being injected)
                reading, previous = None, None
                del error
            self.samples += 1
            if reading and previous:
                self.disruptions.append(reading)
            previous = reading
            self._stop.wait(0.25)


def leaks(secret_value: str, api, namespace: str, model: str, texts: dict[str, str]) -> list[str]:
    """Where the token's value shows up: the given texts (logs), the model's status, the namespace's Events, the
    Jobs' and Deployments' specs."""
    found = [name for name, text in texts.items() if secret_value in text]
    item = k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model)
    if secret_value in json.dumps(item.get("status") or {}):
        found.append("status")
    if any(secret_value in (e.message or "") for e in k8s.CoreV1Api(api).list_namespaced_event(namespace).items):
        found.append("Events")
    for job in k8s.BatchV1Api(api).list_namespaced_job(namespace).items:
        if secret_value in json.dumps(api.sanitize_for_serialization(job.spec)):
            found.append(f"Job {job.metadata.name}")
    for deployment in k8s.AppsV1Api(api).list_namespaced_deployment(namespace).items:
        if secret_value in json.dumps(api.sanitize_for_serialization(deployment.spec)):
            found.append(f"Deployment {deployment.metadata.name}")
    return found
