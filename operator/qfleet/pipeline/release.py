"""Serving and the canary, decided: which revision is stable, how big each revision's Deployment is, where the
traffic goes, and what one analysis interval did to the canary.

Pure, like the pipeline: the Deployments that exist, the user's HTTPRoute, this visit's measurements and a person's
action come in as plain data; the children to create, the scales, the Service selectors, the route's rules and the
status come out. The stable revision is only ever scaled (never re-rendered from a spec that now describes another
revision), and never scaled up while a canary runs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from qfleet import rollout
from qfleet.api.conditions import ConditionStatus, ConditionType, Outcome, Reason
from qfleet.api.status import (
    MAX_HISTORY,
    AnalysisRun,
    CanaryStatus,
    HistoryEntry,
    QuantizedModelStatus,
)
from qfleet.gates import IntervalVerdict, effective_gates, effective_interval
from qfleet.manifests.jobs import Owner
from qfleet.manifests.serving import deployment_name
from qfleet.pipeline.analysis import (
    Revisions,
    analysis_run,
    deciding_gate_text,
    evidence_since,
    judge,
    latency_choice,
    measure_request,
)
from qfleet.pipeline.release_types import SCALE_DOWN_DELAY, ReleaseChanges, ReleaseInput, SetCondition
from qfleet.pipeline.rollout_action import RolloutActions
from qfleet.pipeline.serving_children import ServingChildren
from qfleet.revision import artifact_spec


def release(given: ReleaseInput, status: QuantizedModelStatus, set_condition: SetCondition) -> ReleaseChanges:
    changes = ReleaseChanges()
    run = _Release(given, status, set_condition, changes)
    run.visit()
    return changes


class _Release(ServingChildren, RolloutActions):
    def __init__(self, given: ReleaseInput, status: QuantizedModelStatus, set_condition: SetCondition,
                 changes: ReleaseChanges):
        self.given, self.status, self.set, self.changes = given, status, set_condition, changes
        self.owner = Owner(given.name, given.namespace, given.uid)
        self.revisions = status.revision
        self.spec = given.spec
        self.gateway = self.spec.rollout.traffic_routing.gateway_api
        self.judged_since: datetime | None = None
        """Start of the step window this visit's analysis was judged over."""

    # -- the visit ------------------------------------------------------------------------------------------------
    def visit(self) -> None:
        given, revisions = self.given, self.revisions
        if revisions.canary and revisions.canary != given.revision:
            self._end_canary(Outcome.SUPERSEDED, "Superseded",
                             f"revision {given.revision} replaced it in the spec", immediately=True)
        if revisions.stable is None:
            self._first_revision()
        elif given.revision == revisions.stable or given.servable is None:
            self._steady()
        elif self._rolled_back(given.revision):
            self._steady()
        else:
            self._canary()
        self._scale_down_the_rest()
        self._drop_stale_action()

    def _first_revision(self) -> None:
        """No stable revision yet: the first one that passes evaluation serves at full size, without a canary."""
        given = self.given
        if given.servable is None:
            return
        name = self._ensure_deployment(given.revision, self.spec.serving.replicas)
        self._services(stable=given.revision, canary=given.revision)
        self._route(Decimal(0))
        view = given.deployments.get(name)
        ready = view.ready_replicas if view else 0
        if ready < self.spec.serving.replicas:
            self.set(ConditionType.READY, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
                     f"Revision {given.revision} (KV {given.servable.kv_format}) is the first to serve: "
                     f"{ready}/{self.spec.serving.replicas} replicas ready")
            return
        self.revisions.stable = given.revision
        self._history(given.revision, given.servable.kv_format, Outcome.PROMOTED, Reason.PROMOTED,
                      "the first revision to pass evaluation serves without a canary")
        self.set(ConditionType.CANARY_HEALTHY, ConditionStatus.TRUE, Reason.PROMOTED,
                 "The first revision serves without a canary")
        self.set(ConditionType.ROLLED_BACK, ConditionStatus.FALSE, Reason.NOT_ROLLED_BACK, "Nothing was rolled back")
        self._serving(f"Revision {given.revision} serves all traffic")

    def _steady(self) -> None:
        """The stable revision serves everything; the current one is the stable one, still in its pipeline, or was
        rolled back."""
        given, stable = self.given, self.revisions.stable
        self._scale_stable()
        self._services(stable=stable, canary=stable)
        self._route(Decimal(0))
        if given.revision == stable:
            self._serving(f"Revision {stable} serves all traffic")
            # The spec names the stable revision again (reverted after a rollback): nothing current is rolled back;
            # the rollback stays in status.history.
            if any(c.type == ConditionType.ROLLED_BACK and c.status == ConditionStatus.TRUE
                   for c in self.status.conditions):
                self.set(ConditionType.ROLLED_BACK, ConditionStatus.FALSE, Reason.NOT_ROLLED_BACK,
                         f"The spec names the stable revision {stable} again")
        elif given.servable is not None:
            self._serving_after_rollback()

    def _serving_after_rollback(self) -> None:
        revision = self.given.revision
        last = self._history_entry(revision)
        why = f" ({last.message})" if last and last.message else ""
        self._serving(f"Revision {self.revisions.stable} serves all traffic; revision {revision} was rolled "
                      f"back{why} and is not retried: change the spec to try another")

    def _canary(self) -> None:
        given, spec = self.given, self.spec
        assert given.servable is not None
        steps = spec.rollout.steps
        state = self._state()
        sizing_weight = steps[state.step].weight if state else steps[0].weight
        stable_replicas = self._scale_stable()
        desired = rollout.canary_replicas(sizing_weight, stable_replicas, spec.rollout.canary_replicas)
        name = self._ensure_deployment(given.revision, desired)
        self._services(stable=self.revisions.stable, canary=given.revision)
        self.revisions.canary = given.revision
        view = given.deployments.get(name)
        ready = view.ready_replicas if view else 0
        problem = self._route_problem()
        if problem is not None:
            self.status.canary = CanaryStatus(step=0, weight="0")
            self.set(ConditionType.CANARY_HEALTHY, ConditionStatus.UNKNOWN, Reason.WAITING_FOR_ANALYSIS, problem)
            self.set(ConditionType.READY, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
                     f"Canary {given.revision} waits for its route: {problem}")
            return
        if state is None and ready < desired:
            # Traefik answers a not-ready backend's share with 5xx instead of moving it: no weight before readiness.
            self.status.canary = CanaryStatus(step=0, weight="0")
            self._route(Decimal(0))
            self.set(ConditionType.CANARY_HEALTHY, ConditionStatus.UNKNOWN, Reason.WAITING_FOR_ANALYSIS,
                     f"Canary {given.revision}: {ready}/{desired} replicas ready; it gets traffic once all are")
            self.set(ConditionType.READY, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
                     f"Canary {given.revision} is starting ({ready}/{desired} replicas ready)")
            self.set(ConditionType.ROLLED_BACK, ConditionStatus.FALSE, Reason.NOT_ROLLED_BACK,
                     f"Canary {given.revision} is starting")
            return
        if state is None:
            state = rollout.start(given.now)
        verdict = self._analysis(state)
        manual = self._manual()
        decision = rollout.decide(spec.rollout, state, given.now, verdict, manual)
        if manual is not None:
            self.changes.action_done = True
        if decision.action is rollout.Action.PROMOTE:
            self._promote(decision, verdict)
        elif decision.action is rollout.Action.ROLLBACK:
            self._rollback(decision, verdict)
        else:
            self._hold_or_advance(decision, verdict, stable_replicas)

    # -- canary outcomes ------------------------------------------------------------------------------------------
    def _hold_or_advance(self, decision: rollout.RolloutDecision, verdict: IntervalVerdict | None,
                         stable_replicas: int) -> None:
        given, spec = self.given, self.spec
        replicas = rollout.canary_replicas(decision.weight, stable_replicas, spec.rollout.canary_replicas)
        self._resize(given.revision, replicas)
        weight = decision.weight
        granularity = ""
        if self.gateway is None:
            weight = rollout.replica_ratio_weight(replicas, stable_replicas)
            granularity = (f"; no router: {replicas} canary and {stable_replicas} stable replicas give the canary "
                           f"about {weight}% of the traffic (step asks {decision.weight}%)")
            note = latency_choice(given.latency_source, self.gateway, given.name).note
            granularity += f"; {note}" if note else ""
        self._route(decision.weight)
        previous = self.status.canary
        last = self._analysis_run(verdict) if verdict else (previous.last_analysis if previous else None)
        state = decision.state
        self.status.canary = CanaryStatus(step=state.step, weight=str(weight), step_started_at=state.step_started_at,
                                          consecutive_failures=state.consecutive_failures,
                                          consecutive_inconclusive=state.consecutive_inconclusive,
                                          last_analysis=last)
        healthy = {Reason.ANALYSIS_PASSED: ConditionStatus.TRUE, Reason.ANALYSIS_FAILED: ConditionStatus.FALSE,
                   Reason.GATE_ABORTED: ConditionStatus.FALSE, Reason.FAILURE_LIMIT_REACHED: ConditionStatus.FALSE,
                   }.get(decision.reason, ConditionStatus.UNKNOWN)
        if decision.reason == Reason.ROLLOUT_PAUSED:
            self.set(ConditionType.READY, ConditionStatus.FALSE, Reason.ROLLOUT_PAUSED, decision.message)
        else:
            if verdict is not None or last is None or decision.action is rollout.Action.ADVANCE:
                # Between analyses the last verdict stands: a visit with nothing measured rewrites nothing.
                self.set(ConditionType.CANARY_HEALTHY, healthy, decision.reason, decision.message)
            self.set(ConditionType.READY, ConditionStatus.FALSE, Reason.ROLLOUT_IN_PROGRESS,
                     f"Canary {given.revision} at step {state.step + 1}/{len(spec.rollout.steps)}, "
                     f"{decision.weight}%{granularity}")
        self.set(ConditionType.ROLLED_BACK, ConditionStatus.FALSE, Reason.NOT_ROLLED_BACK,
                 f"Canary {given.revision} is running")

    def _promote(self, decision: rollout.RolloutDecision, verdict: IntervalVerdict | None) -> None:
        given = self.given
        old = self.revisions.stable
        assert old is not None and given.servable is not None
        self._history(old, None, Outcome.SUPERSEDED, Reason.PROMOTED, f"revision {given.revision} was promoted")
        # The canary status goes away with the promotion: the deciding interval stays in the history.
        self._history(given.revision, given.servable.kv_format, Outcome.PROMOTED, Reason.PROMOTED, decision.message,
                      verdict)
        self.revisions.stable, self.revisions.canary, self.status.canary = given.revision, None, None
        self._resize(given.revision, self.spec.serving.replicas)
        self._services(stable=given.revision, canary=given.revision)
        self._route(Decimal(0))
        self.changes.promoted = True
        self.set(ConditionType.CANARY_HEALTHY, ConditionStatus.TRUE, Reason.PROMOTED,
                 f"{decision.message}; revision {old} scales down in {int(SCALE_DOWN_DELAY.total_seconds())}s")
        self.set(ConditionType.ROLLED_BACK, ConditionStatus.FALSE, Reason.NOT_ROLLED_BACK,
                 f"Revision {given.revision} was promoted")
        self._serving(f"Revision {given.revision} serves all traffic")

    def _rollback(self, decision: rollout.RolloutDecision, verdict: IntervalVerdict | None) -> None:
        given = self.given
        gate = verdict.deciding_gate if verdict else None
        if decision.reason == Reason.ROLLOUT_ABORTED:
            cause = "manual"
        else:
            cause = gate.name if gate is not None else str(decision.reason)
        message = decision.message
        if gate is not None and gate.value is not None:
            message = f"{deciding_gate_text(gate)} ({decision.message})"
        self._end_canary(Outcome.ROLLED_BACK, decision.reason, message, immediately=True, verdict=verdict)
        self.status.canary = None
        self.changes.rollback_cause = cause
        if verdict is not None:
            self._record_verdict(verdict)
        self.set(ConditionType.CANARY_HEALTHY, ConditionStatus.FALSE, decision.reason, message)
        self.set(ConditionType.ROLLED_BACK, ConditionStatus.TRUE, decision.reason,
                 f"Canary {given.revision} rolled back: {message}. Stable revision {self.revisions.stable} "
                 "is untouched and serves all traffic")
        self._serving_after_rollback()

    def _end_canary(self, outcome: Outcome, reason: str, message: str, immediately: bool,
                    verdict: IntervalVerdict | None = None) -> None:
        canary = self.revisions.canary or self.given.revision
        fmt = self.given.servable.kv_format if self.given.servable and canary == self.given.revision else None
        self._history(canary, fmt, outcome, reason, message, verdict)
        self.revisions.canary, self.status.canary = None, None
        if immediately:
            self.changes.scale[deployment_name(self.given.name, canary)] = 0
        self._route(Decimal(0))

    # -- analysis -------------------------------------------------------------------------------------------------
    def _state(self) -> rollout.RolloutState | None:
        canary = self.status.canary
        if canary is None or canary.step_started_at is None:
            return None
        last = canary.last_analysis.at if canary.last_analysis else None
        return rollout.RolloutState(step=min(canary.step, len(self.spec.rollout.steps) - 1),
                                    step_started_at=canary.step_started_at,
                                    consecutive_failures=canary.consecutive_failures,
                                    consecutive_inconclusive=canary.consecutive_inconclusive,
                                    last_analysis_at=last)

    def _analysis(self, state: rollout.RolloutState) -> IntervalVerdict | None:
        """The interval's verdict when analysis is due and this visit carries measurements; else a request for them
        (the handler measures and decides again) and None."""
        given, analysis = self.given, self.spec.rollout.analysis
        if not rollout.analysis_due(self.spec.rollout, state, given.now):
            return None
        step = rollout.current_step(self.spec.rollout, state)
        bounds = effective_gates(analysis, step)
        latency = latency_choice(given.latency_source, self.gateway, given.name)
        if given.measured is None:
            revisions = Revisions(given.namespace, given.name, given.revision, self.revisions.stable or "")
            self.changes.measure = measure_request(analysis, bounds, revisions, state.step_started_at,
                                                   effective_interval(analysis, step), given.now, latency.latency)
            return None
        self.judged_since = evidence_since(analysis, state.step_started_at)
        verdict = judge(analysis, bounds, given.measured, latency.note)
        self._record_verdict(verdict)
        return verdict

    def _analysis_run(self, verdict: IntervalVerdict) -> AnalysisRun:
        return analysis_run(verdict, self.given.now, self.judged_since, self.spec.rollout.analysis.confidence)

    def _record_verdict(self, verdict: IntervalVerdict) -> None:
        if not any(name == "interval" for name, _ in self.changes.verdicts):
            self.changes.verdicts.extend((g.name, g.verdict.value) for g in verdict.gates)
            self.changes.verdicts.append(("interval", verdict.verdict.value))

    # -- revisions no longer served -------------------------------------------------------------------------------
    def _scale_down_the_rest(self) -> None:
        """Revisions neither stable nor canary go to zero: at once after a rollback, after SCALE_DOWN_DELAY after a
        promotion superseded them."""
        keep = {self.revisions.stable, self.revisions.canary}
        if self.revisions.stable is None and self.given.servable is not None:
            keep.add(self.given.revision)
        for view in self.given.deployments.values():
            if view.revision in keep or view.replicas == 0 or view.name in self.changes.scale:
                continue
            entry = self._history_entry(view.revision)
            if entry is not None and entry.outcome == Outcome.SUPERSEDED and \
                    self.given.now - entry.at < SCALE_DOWN_DELAY:
                continue
            self.changes.scale[view.name] = 0

    # -- status ---------------------------------------------------------------------------------------------------
    def _serving(self, message: str) -> None:
        self.set(ConditionType.READY, ConditionStatus.TRUE, Reason.REVISION_SERVING, message)

    def _rolled_back(self, revision: str) -> bool:
        entry = self._history_entry(revision)
        return entry is not None and entry.outcome == Outcome.ROLLED_BACK

    def _history_entry(self, revision: str) -> HistoryEntry | None:
        return next((h for h in reversed(self.status.history) if h.revision == revision), None)

    def _history(self, revision: str, kv_format: str | None, outcome: Outcome, reason: str, message: str,
                 verdict: IntervalVerdict | None = None) -> None:
        earlier = self._history_entry(revision)
        if kv_format is None:
            kv_format = earlier.kv_cache if earlier else None
        # The spec in hand is the current revision's; an older one's fields come from its own earlier entry.
        artifact = artifact_spec(self.spec) if revision == self.given.revision else (
            earlier.artifact if earlier else None)
        results = self.given.results(revision)
        entry = HistoryEntry(revision=revision, kv_cache=kv_format, outcome=outcome, at=self.given.now,
                             reason=reason, message=message[:1024], artifact=artifact,
                             analysis=self._analysis_run(verdict) if verdict is not None else None,
                             calibration=results.calibration, engine=results.engine, evaluation=results.evaluation)
        self.status.history = [*self.status.history, entry][-MAX_HISTORY:]
