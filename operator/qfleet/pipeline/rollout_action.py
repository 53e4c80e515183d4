"""A person's rollout action (`kubectl qfleet promote|abort`): the one that applies to the running canary, and a
Warning Event for any other, which is dropped."""

from __future__ import annotations

from qfleet import rollout
from qfleet.api.conditions import Reason
from qfleet.api.status import RevisionStatus
from qfleet.pipeline.release_types import ReleaseChanges, ReleaseInput

ACTION_ANNOTATION = "qfleet.io/rollout-action"
"""`promote:REVISION` or `abort:REVISION` (what `kubectl qfleet promote|abort` writes): acted on only while that
revision is the running canary; any other value is dropped with a Warning Event. The operator removes it either way."""


class RolloutActions:
    """The release visit's reading of a person's action (a mixin of qfleet.pipeline.release._Release)."""

    given: ReleaseInput
    changes: ReleaseChanges
    revisions: RevisionStatus

    def _manual(self) -> rollout.Manual | None:
        """The action when it names this canary's revision."""
        verb, _, revision = (self.given.action or "").partition(":")
        if revision != self.given.revision or verb not in {m.value for m in rollout.Manual}:
            return None
        return rollout.Manual(verb)

    def _drop_stale_action(self) -> None:
        """An action not acted upon is dropped, unless it waits for its own canary (starting, or between analyses)."""
        action = self.given.action
        if action is None or self.changes.action_done:
            return
        verb, _, revision = action.partition(":")
        canary = self.revisions.canary
        if verb in {m.value for m in rollout.Manual} and revision and revision == canary:
            return
        if verb not in {m.value for m in rollout.Manual}:
            why = "it is not an action: write promote:REVISION or abort:REVISION"
        elif canary is None:
            why = (f"no canary is running (revision {self.revisions.stable} is stable)" if self.revisions.stable
                   else "no canary is running")
        elif not revision:
            why = f"it names no revision: write {verb}:{canary} (kubectl qfleet {verb} does)"
        else:
            why = f"it names revision {revision}, but the canary is revision {canary}"
        self.changes.action_done = True
        self.changes.events.append(("Warning", Reason.ROLLOUT_ACTION_IGNORED,
                                    f"{ACTION_ANNOTATION}={action} dropped, nothing was promoted or aborted: {why}"))
