"""The leader-election decision: who creates, renews, takes or waits for the Lease."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from qfleet.leader import Action, LeaseRecord, LeaseTimings, decide, lease_spec, record_of

NOW = datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)
HELD = LeaseRecord(holder="b", lease_seconds=15, transitions=3, acquired_at=NOW)


@pytest.mark.parametrize(("record", "unchanged_for", "action"), [
    (None, 0, Action.CREATE),
    (LeaseRecord(holder="a", lease_seconds=15), 100, Action.RENEW),
    (HELD, 0, Action.WAIT),
    (HELD, 14.9, Action.WAIT),
    (HELD, 15, Action.TAKE),
    (LeaseRecord(holder=None, lease_seconds=15), 0, Action.TAKE),
    (LeaseRecord(holder="", lease_seconds=15), 0, Action.TAKE),
], ids=["no-lease", "ours", "held-fresh", "held-just-fresh", "held-expired", "released", "emptied"])
def test_decide(record, unchanged_for, action):
    assert decide(record, "a", unchanged_for) is action


@pytest.mark.parametrize(("action", "transitions", "acquired"), [
    (Action.CREATE, 0, NOW), (Action.TAKE, 4, NOW), (Action.RENEW, 3, datetime(2026, 1, 1, tzinfo=timezone.utc))])
def test_lease_spec_counts_transitions_and_keeps_the_acquire_time_on_renewal(action, transitions, acquired):
    old = None if action is Action.CREATE else LeaseRecord("a" if action is Action.RENEW else "b", 15, 3,
                                                           datetime(2026, 1, 1, tzinfo=timezone.utc))
    spec = lease_spec("a", LeaseTimings(), NOW, old, action)
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == transitions
    assert record_of(spec).acquired_at == acquired and spec["renewTime"] == "2026-11-30T16:00:00.000000Z"


@pytest.mark.parametrize("timings", [(15, 15, 2), (15, 10, 10), (15, 10, 0)])
def test_timings_must_leave_a_fencing_margin(timings):
    lease, deadline, retry = timings
    with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
        LeaseTimings(lease_seconds=lease, renew_deadline_seconds=deadline, retry_seconds=retry)


def test_takeover_bound():
    assert LeaseTimings().takeover_bound_seconds == 17
