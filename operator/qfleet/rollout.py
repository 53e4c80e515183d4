"""The canary rollout as a pure state machine: which step, which weight, and whether to advance, hold, promote or
roll back, from the spec, the rollout's recorded state, the time, this visit's analysis verdict and manual actions.

Time is data: the step's start and the last analysis live in status, so a restarted operator decides exactly as
the one before it. Advancing needs a passing interval after the step's pause has elapsed: no data never promotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from qfleet.api.conditions import Reason, Verdict
from qfleet.api.rollout_spec import FULL_TRAFFIC, Rollout, Step
from qfleet.gates import IntervalVerdict, effective_interval


class Action(StrEnum):
    HOLD = "Hold"
    """Stay at this step's weight (pause not over, waiting for analysis, or paused)."""
    ADVANCE = "Advance"
    PROMOTE = "Promote"
    ROLLBACK = "Rollback"


class Manual(StrEnum):
    """Actions a person asks for (through spec or annotations; the handler maps them here)."""

    PROMOTE = "promote"
    ABORT = "abort"


@dataclass(frozen=True)
class RolloutState:
    step: int
    step_started_at: datetime
    consecutive_failures: int = 0
    consecutive_inconclusive: int = 0
    last_analysis_at: datetime | None = None


@dataclass(frozen=True)
class RolloutDecision:
    action: Action
    state: RolloutState
    weight: Decimal
    reason: str
    message: str


def start(now: datetime) -> RolloutState:
    return RolloutState(step=0, step_started_at=now)


def current_step(rollout: Rollout, state: RolloutState) -> Step:
    return rollout.steps[min(state.step, len(rollout.steps) - 1)]


def analysis_due(rollout: Rollout, state: RolloutState, now: datetime) -> bool:
    interval = effective_interval(rollout.analysis, current_step(rollout, state))
    since = state.last_analysis_at or state.step_started_at
    return now - since >= interval


def decide(rollout: Rollout, state: RolloutState, now: datetime, analysis: IntervalVerdict | None = None,
           manual: Manual | None = None) -> RolloutDecision:
    step = current_step(rollout, state)
    if manual is Manual.ABORT:
        return _rollback(state, Reason.ROLLOUT_ABORTED, "aborted by a person")
    if manual is Manual.PROMOTE:
        return RolloutDecision(Action.PROMOTE, state, FULL_TRAFFIC, Reason.PROMOTED, "promoted by a person")
    if rollout.paused:
        # A pause stops the steps, not the analysis: a canary bad enough to abort is still rolled back.
        if analysis is not None and analysis.verdict is Verdict.ABORT:
            return _give_up(rollout, replace(state, last_analysis_at=now), step, Reason.GATE_ABORTED,
                            analysis.message)
        if analysis is not None:
            state = replace(state, last_analysis_at=now)
        return RolloutDecision(Action.HOLD, state, step.weight, Reason.ROLLOUT_PAUSED,
                               f"paused at step {state.step + 1} ({step.weight}%) by spec.rollout.paused")
    if analysis is None:
        return _hold(state, step, "waiting for the next analysis")
    state = replace(state, last_analysis_at=now)
    limits = rollout.analysis
    if analysis.verdict is Verdict.ABORT:
        return _give_up(rollout, state, step, Reason.GATE_ABORTED, analysis.message)
    if analysis.verdict is Verdict.FAIL:
        state = replace(state, consecutive_failures=state.consecutive_failures + 1, consecutive_inconclusive=0)
        if state.consecutive_failures >= limits.failure_limit:
            return _give_up(rollout, state, step, Reason.FAILURE_LIMIT_REACHED,
                            f"{state.consecutive_failures} failing intervals in a row: {analysis.message}")
        return _hold(state, step, f"interval failed ({state.consecutive_failures}/{limits.failure_limit}): "
                                  f"{analysis.message}", Reason.ANALYSIS_FAILED)
    if analysis.verdict is Verdict.INCONCLUSIVE:
        state = replace(state, consecutive_inconclusive=state.consecutive_inconclusive + 1)
        if limits.inconclusive_policy == "hold":
            return _hold_for_evidence(rollout, state, step, now, analysis.message)
        if state.consecutive_inconclusive >= limits.inconclusive_limit:
            return _give_up(rollout, state, step, Reason.INCONCLUSIVE_LIMIT_REACHED,
                            f"{state.consecutive_inconclusive} inconclusive analyses in a row: {analysis.message}")
        return _hold(state, step, f"analysis inconclusive ({state.consecutive_inconclusive}/"
                                  f"{limits.inconclusive_limit}): {analysis.message}", Reason.ANALYSIS_INCONCLUSIVE)
    state = replace(state, consecutive_failures=0, consecutive_inconclusive=0)
    if step.pause is not None and now - state.step_started_at < step.pause:
        left = step.pause - (now - state.step_started_at)
        return _hold(state, step, f"interval passed; step {state.step + 1} holds for {_human(left)} more",
                     Reason.ANALYSIS_PASSED)
    following = state.step + 1
    if following >= len(rollout.steps) or rollout.steps[following].weight >= FULL_TRAFFIC:
        return RolloutDecision(Action.PROMOTE, state, FULL_TRAFFIC, Reason.PROMOTED,
                               f"every step passed; promoted after step {state.step + 1}")
    advanced = RolloutState(step=following, step_started_at=now, last_analysis_at=now)
    weight = rollout.steps[following].weight
    return RolloutDecision(Action.ADVANCE, advanced, weight, Reason.ANALYSIS_PASSED,
                           f"step {state.step + 1} passed; step {following + 1} sends {weight}% to the canary")


def _hold_for_evidence(rollout: Rollout, state: RolloutState, step: Step, now: datetime,
                       missing: str) -> RolloutDecision:
    """inconclusivePolicy hold: the weight stays while the step's evidence accumulates. Until the step's pause ends
    that is the plan; after it, the hold is said out loud (its own reason, so an Event) with the time left before
    maxHold rolls back, and nothing promotes without evidence."""
    pause_ends = state.step_started_at + (step.pause or timedelta(0))
    number = f"step {state.step + 1} ({step.weight}%)"
    if now < pause_ends:
        return _hold(state, step, f"gathering evidence, {number} runs {_human(pause_ends - now)} more: {missing}",
                     Reason.ANALYSIS_INCONCLUSIVE)
    held, max_hold = now - pause_ends, rollout.analysis.max_hold
    if held >= max_hold:
        return _give_up(rollout, state, step, Reason.MAX_HOLD_REACHED,
                        f"{number} held {_human(held)} past its pause without the evidence to decide "
                        f"(maxHold {_human(max_hold)}): {missing}")
    return _hold(state, step, f"{number} holds past its pause until the evidence decides; rolls back in "
                              f"{_human(max_hold - held)} (maxHold {_human(max_hold)}) unless it does: {missing}",
                 Reason.HOLDING_FOR_EVIDENCE)


def _hold(state: RolloutState, step: Step, message: str, reason: str = Reason.WAITING_FOR_ANALYSIS) -> RolloutDecision:
    return RolloutDecision(Action.HOLD, state, step.weight, reason, message)


def _rollback(state: RolloutState, reason: str, message: str) -> RolloutDecision:
    return RolloutDecision(Action.ROLLBACK, state, Decimal(0), reason, message)


def _give_up(rollout: Rollout, state: RolloutState, step: Step, reason: str, message: str) -> RolloutDecision:
    """Roll back, or with autoRollback false hold the weight and wait for a person."""
    if rollout.auto_rollback:
        return _rollback(state, reason, message)
    return RolloutDecision(Action.HOLD, state, step.weight, reason,
                           f"{message}; autoRollback is false, so the canary holds until a person aborts or promotes")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return " ".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if v) or "0s"


def route_weights(weight: Decimal) -> tuple[int, int]:
    """(stable, canary) integer HTTPRoute weights for a canary percentage: 10 -> (90, 10), 0.1 -> (999, 1),
    12.5 -> (875, 125). The total is 100 times a power of ten, just enough for the weight's decimals."""
    exponent = max(0, -weight.normalize().as_tuple().exponent)
    total = 100 * 10 ** exponent
    canary = int(weight * 10 ** exponent)
    return total - canary, canary


def canary_replicas(weight: Decimal, stable_replicas: int, fixed: int | None = None) -> int:
    """Replicas for the canary: a fixed count, or its share of the stable size, at least one. The stable revision is
    never scaled up to make room (a 1% canary must not double the fleet)."""
    if fixed is not None:
        return fixed
    return max(1, math.ceil(stable_replicas * weight / FULL_TRAFFIC))


def replica_ratio_weight(canary: int, stable: int) -> Decimal:
    """The traffic share replicas alone give the canary (no router): the honest number for status."""
    total = canary + stable
    return Decimal(0) if total == 0 else (Decimal(canary) * 100 / total).quantize(Decimal("0.01"))
