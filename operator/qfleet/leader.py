"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does: the pure decision.

With `replicas: 2` both operators run Kopf (watches fill both caches, so a standby is warm), but only the holder of
the Lease runs the controller's workers, and every write the operator makes comes from a visit. A candidate takes
the Lease when it is free or when its record has not changed for `lease_seconds` as this process observed it (the
holder's clock is never compared with ours, so clock skew cannot hand the Lease over early). The holder renews every
`retry_seconds`; one that has not renewed for `renew_deadline_seconds` (< `lease_seconds`) stops acting at once (the
process exits and its pod restarts as a candidate), so it is fenced before anyone else may take over.

Takeover after the holder dies: at most `lease_seconds + retry_seconds` (15 s + 2 s by default), plus the standby's
first visits. docs/operations.md ("High availability") has the figures measured on the local fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class Action(str, Enum):
    CREATE = "create"  # no Lease yet: create it, held by us
    RENEW = "renew"  # ours: write a new renewTime
    TAKE = "take"  # free or expired: write ourselves as the holder (one more transition)
    WAIT = "wait"  # someone else holds it and renews


@dataclass(frozen=True)
class LeaseTimings:
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("leader election needs 0 < retry < renew deadline < lease duration (QFLEET_LEASE_*), "
                             f"got {self.retry_seconds}, {self.renew_deadline_seconds}, {self.lease_seconds}")

    @property
    def takeover_bound_seconds(self) -> float:
        """The longest a standby waits after the holder's last renewal before it holds the Lease."""
        return self.lease_seconds + self.retry_seconds


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    lease_seconds: int
    transitions: int = 0
    acquired_at: datetime | None = None


def decide(record: LeaseRecord | None, me: str, unchanged_for: float) -> Action:
    """What `me` does with the Lease: `unchanged_for` is how long (by our monotonic clock) the record has stayed the
    same resourceVersion since we first saw that version."""
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if not record.holder or unchanged_for >= record.lease_seconds:
        return Action.TAKE
    return Action.WAIT


def lease_spec(me: str, timings: LeaseTimings, now: datetime, old: LeaseRecord | None, action: Action) -> dict:
    """The Lease's spec to write for `action` (not WAIT)."""
    transitions = (old.transitions if old else 0) + (1 if action is Action.TAKE else 0)
    acquired = now if action in (Action.CREATE, Action.TAKE) or old is None or old.acquired_at is None \
        else old.acquired_at
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": timings.lease_seconds,
        "acquireTime": _micro(acquired),
        "renewTime": _micro(now),
        "leaseTransitions": transitions,
    }


def record_of(spec: dict | None) -> LeaseRecord | None:
    """The parts of a Lease's spec (a dict, API field names) that the decision reads."""
    if spec is None:
        return None
    acquired = spec.get("acquireTime")
    if isinstance(acquired, str):
        acquired = datetime.fromisoformat(acquired.replace("Z", "+00:00"))
    return LeaseRecord(holder=spec.get("holderIdentity") or None,
                       lease_seconds=int(spec.get("leaseDurationSeconds") or 15),
                       transitions=int(spec.get("leaseTransitions") or 0),
                       acquired_at=acquired)


def _micro(at: datetime) -> str:
    """MicroTime, as the API writes it."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
