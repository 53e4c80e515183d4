"""The control loop: a fixed number of workers take models from the work queue, one visit at a time per model.

A visit reads its model and children from the watch-fed cache (no GET), decides (qfleet.pipeline.decide, with a
second pass when Prometheus was asked), writes what changed with preconditions, and returns when the model is next
due (qfleet.pipeline.wake); that wake-up is scheduled with a little jitter, so a model with nothing due is not
visited until an event of it or of one of its children wakes it, or the slow resync does. A write that lost a race
(a precondition failed) is not retried blindly: the model is visited again once the watches have the newer state.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from qfleet import kube, prom, telemetry
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.cache import FleetCache, ModelKey, Snapshot
from qfleet.pipeline import Decision, Event, Observed, decide, records
from qfleet.pipeline.analysis import Measured, MeasureRequest
from qfleet.pipeline.rollout_action import ACTION_ANNOTATION
from qfleet.promql import LATENCY_SOURCES, RUNTIME_LATENCY
from qfleet.workqueue import WorkQueue

log = logging.getLogger(__name__)
LEGACY_FINALIZER = "qfleet.io/finalizer"
"""Added by qfleet 0.1.0 (its timers made Kopf add it); nothing needs it now: children are owned by the model."""
RETRY_AFTER_LOST_RACE = datetime.timedelta(seconds=1)
MAX_BACKOFF_SECONDS = 300.0
READY_PROBE_SECONDS = 2.0
"""While visits fail for want of the apiserver, how often one probe asks whether it is ready again."""


@dataclass(frozen=True)
class LoopSettings:
    workers: int = 16
    """Visits at the same time (threads); the chart's `workers`. Visits wait on the apiserver and Prometheus, not on
    the CPU, so more threads than cores keep more of them in flight."""
    resync_seconds: float = 600.0
    """Every model is visited at least this often, whatever happens (the level-based safety net)."""
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    latency_source: str = RUNTIME_LATENCY
    """Where the p99 gate reads latency: `runtime` or `gateway` (QFLEET_LATENCY_SOURCE, the chart's
    analysis.latencySource; docs/metrics.md)."""

    def __post_init__(self) -> None:
        if self.latency_source not in LATENCY_SOURCES:
            raise ValueError(f"latency source {self.latency_source!r} (QFLEET_LATENCY_SOURCE) is none of "
                             f"{', '.join(LATENCY_SOURCES)}")


PostEvent = Callable[[dict[str, Any], Event], None]


class Controller:
    def __init__(self, api: Any, cache: FleetCache, settings: LoopSettings, post_event: PostEvent) -> None:
        self.api, self.cache, self.settings, self.post_event = api, cache, settings, post_event
        self.queue = WorkQueue()
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="qfleet-visit")
        self.failures: dict[ModelKey, int] = {}
        self.unavailable: set[ModelKey] = set()
        """Models whose last visit failed for want of the apiserver: visited again as soon as it is ready."""
        self._probe: asyncio.Task | None = None

    # -- the loop ---------------------------------------------------------------------------------------------------
    def wake(self, key: ModelKey) -> None:
        self.queue.add(key)
        telemetry.QUEUE_DEPTH.set(len(self.queue))

    def forget(self, key: ModelKey) -> None:
        self.queue.forget(key)
        self.failures.pop(key, None)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        tasks.append(asyncio.create_task(self._resync()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *([self._probe] if self._probe else [])]:
                task.cancel()
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key, lag, cause = await self.queue.get()
            telemetry.WAKEUP_LAG.labels(cause).observe(lag)
            telemetry.QUEUE_DEPTH.set(len(self.queue))
            due: datetime.datetime | None
            try:
                due = await loop.run_in_executor(self.pool, contextvars.copy_context().run, self.visit, key)
                self.failures.pop(key, None)
            except Exception as error:
                if kube.namespace_terminating(error):
                    log.info("Visit of QuantizedModel %s/%s stopped: its namespace is being deleted", *key)
                    self.failures.pop(key, None)
                    continue
                failures = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** failures)
                if kube.unavailable(error):
                    # Its back-off stays as the fallback; the probe visits it again as soon as the apiserver is back.
                    log.warning("Visit of QuantizedModel %s/%s failed: the apiserver is unavailable (%s); again once "
                                "it is ready, at the latest in %.0fs", *key, error, delay)
                    self.unavailable.add(key)
                    self._start_probe()
                else:
                    log.exception("Visit of QuantizedModel %s/%s failed (%d in a row); again in %.0fs", *key,
                                  failures, delay)
                due = _now() + datetime.timedelta(seconds=delay)
            finally:
                self.queue.done(key)
            if due is not None:
                self.queue.add(key, self._monotonic(due))
            telemetry.SCHEDULED_WAKEUPS.set(self.queue.scheduled)

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wake_when_ready())

    async def _wake_when_ready(self) -> None:
        """One probe of /readyz every READY_PROBE_SECONDS while models wait for the apiserver (not a visit each), then
        those models at once: the watches resume where they were and bring no event for what did not change."""
        while self.unavailable:
            await asyncio.sleep(READY_PROBE_SECONDS)
            if await asyncio.to_thread(kube.ready, self.api):
                waiting, self.unavailable = self.unavailable, set()
                log.info("The apiserver is ready again: visiting the %d model(s) that waited for it", len(waiting))
                for key in waiting:
                    self.wake(key)

    async def _resync(self) -> None:
        """Every model once per resync period, spread over the period rather than all at once."""
        period = self.settings.resync_seconds
        while True:
            await asyncio.sleep(period)
            start = time.monotonic()
            for key in self.cache.keys():
                self.queue.add(key, start + random.uniform(0, period / 2))
            telemetry.SCHEDULED_WAKEUPS.set(self.queue.scheduled)

    @staticmethod
    def _monotonic(due: datetime.datetime) -> float:
        """A wall-clock due time on the queue's clock, with jitter: up to 5% of the wait, at most one second, so
        models due together do not all wake in the same instant."""
        wait = max(0.0, (due - _now()).total_seconds())
        return time.monotonic() + wait + random.uniform(0, min(1.0, wait * 0.05))

    # -- one visit --------------------------------------------------------------------------------------------------
    def visit(self, key: ModelKey) -> datetime.datetime | None:
        with telemetry.reconcile_timer() as result:
            snapshot = self.cache.snapshot(key)
            if snapshot is None:
                return None
            due, result["outcome"] = self._visit(snapshot)
            return due

    def _visit(self, snapshot: Snapshot) -> tuple[datetime.datetime | None, str]:
        body = snapshot.body
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        finalizers = list(meta.get("finalizers") or [])
        if LEGACY_FINALIZER in finalizers:
            with telemetry.api_call("drop_finalizer"):
                kube.drop_finalizer(self.api, namespace, name, finalizers, LEGACY_FINALIZER)
        if meta.get("deletionTimestamp"):
            return None, "unchanged"
        observed = Observed(
            name=name, namespace=namespace, uid=meta["uid"], generation=int(meta.get("generation", 0)),
            spec=body.get("spec") or {}, status=body.get("status") or {}, jobs=snapshot.jobs, nodes=snapshot.nodes,
            now=_now(), deployments=snapshot.deployments, route=snapshot.route,
            action=(meta.get("annotations") or {}).get(ACTION_ANNOTATION), runtime_image=self.settings.runtime_image,
            latency_source=self.settings.latency_source)
        decision = decide(observed)
        asked = {"measured": decision.release.measure, "drift_measured": decision.drift_measure}
        if any(asked.values()):
            answers = {into: self._measure(request, namespace, name) for into, request in asked.items() if request}
            decision = decide(dataclasses.replace(observed, **answers))
        created = self._apply_children(namespace, decision, snapshot)
        if created is None:
            log.info("A child of QuantizedModel %s/%s changed meanwhile; visiting again", namespace, name)
            return observed.now + RETRY_AFTER_LOST_RACE, "conflict"
        status = records.with_created_uids(decision.status, created)
        outcome = "unchanged"
        if status != observed.status:
            with telemetry.api_call("replace_status"):
                written = kube.replace_status(self.api, body, status)
            if written is not None:
                self.cache.apply_model(None, written, written=True)  # read your own write: the watch echoes it later
            if written is None:
                log.info("Status of QuantizedModel %s/%s changed meanwhile; the next visit recomputes it",
                         namespace, name)
                return observed.now + RETRY_AFTER_LOST_RACE, "conflict"
            _count(decision)
            outcome = "updated"
        if decision.release.action_done and observed.action is not None:
            with telemetry.api_call("remove_annotation"):
                kube.remove_annotation(self.api, namespace, name, ACTION_ANNOTATION, observed.action)
        for event in decision.events:
            self.post_event(body, event)
            telemetry.TRANSITIONS.labels(event.reason, event.type).inc()
        return decision.wake, outcome

    @staticmethod
    def _measure(request: MeasureRequest, namespace: str, name: str) -> Measured:
        with telemetry.api_call("prometheus_query"):
            measured = prom.measure(request.address, request.queries, request.histograms)
        for query, error in measured.errors.items():
            telemetry.API_ERRORS.labels("prometheus_query", "none").inc()
            log.warning("Prometheus query %s of %s/%s failed: %s", query, namespace, name, error)
        return Measured(measured.values, measured.histograms, measured.errors)

    def _apply_children(self, namespace: str, decision: Decision, snapshot: Snapshot) -> dict[str, str] | None:
        """Creates what is missing and sets what differs, each write guarded by what the visit saw. Returns the uids
        of the Jobs it created, by name; None when a write lost its race (nothing after it is written: the next
        visit starts from the newer state)."""
        api = self.api
        created_jobs: dict[str, str] = {}
        # Read your own creates, as the status write does: a visit woken before a new child's watch event would
        # otherwise not see it and create it again (a 409, and a request wasted at fleet scale).
        for manifest in decision.create:
            with telemetry.api_call("create_job"):
                created = kube.create_job(api, manifest)
            if created is not None:
                self.cache.job_created(created)
                created_jobs[created["metadata"]["name"]] = created["metadata"]["uid"]
                telemetry.CHILDREN_CREATED.labels("Job").inc()
        changes = decision.release
        for manifest in changes.deployments:
            with telemetry.api_call("create_deployment"):
                created = kube.create_deployment(api, manifest)
            if created is not None:
                self.cache.apply_deployment(None, created, written=True)
                telemetry.CHILDREN_CREATED.labels("Deployment").inc()
        for manifest in changes.services:
            existing = snapshot.services.get(manifest["metadata"]["name"])
            with telemetry.api_call("ensure_service"):
                written = kube.ensure_service(api, manifest, existing)
            if existing is not None and not written and \
                    (existing.get("spec") or {}).get("selector") != manifest["spec"]["selector"]:
                return None
        for deployment, replicas in changes.scale.items():
            view = snapshot.deployments.get(deployment)
            if view is None:
                continue  # just created at its size, or already gone
            with telemetry.api_call("scale_deployment"):
                version = kube.scale_deployment(api, namespace, deployment, replicas, seen=view.replicas)
            if version is None:
                return None
            self.cache.scaled(snapshot.key, deployment, replicas, version)  # read your own write
        if changes.route_rules is not None and snapshot.route is not None:
            with telemetry.api_call("set_route_rules"):
                written = kube.set_route_rules(api, snapshot.route, changes.route_rules[1])
            if written is None:
                return None
            self.cache.apply_route(None, written, written=True)
        return created_jobs


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _count(decision: Decision) -> None:
    changes = decision.release
    for gate, verdict in changes.verdicts:
        telemetry.GATE_VERDICTS.labels(gate, verdict).inc()
    if changes.rollback_cause:
        telemetry.ROLLBACKS.labels(changes.rollback_cause).inc()
    if changes.promoted:
        telemetry.PROMOTIONS.inc()
