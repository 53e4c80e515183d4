"""Leader election for `replicas: 2` and more: the loop around qfleet.leader's decision, on a coordination.k8s.io
Lease written through qfleet.kube. Enabled by QFLEET_LEADER_ELECTION=true (the chart sets it with the Lease's
namespace); off, the operator acts at once, as a single replica always did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone

from kubernetes import client as k8s

from qfleet import kube
from qfleet.leader import Action, LeaseTimings, decide, lease_spec, record_of

log = logging.getLogger(__name__)


class Elector:
    def __init__(self, api: k8s.ApiClient, namespace: str, name: str, identity: str | None = None,
                 timings: LeaseTimings = LeaseTimings(), clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        """The Lease's holderIdentity: `<pod or host>-<pid>`, as in the operator's user agent."""
        self.timings, self._clock, self._exit = timings, clock, exit
        self._seen: tuple[str | None, float] = (None, clock())
        self._renewed_at: float | None = None

    def attempt(self) -> bool:
        """One read-decide-write round; True when we hold the Lease after it."""
        spec, version = kube.read_lease(self.api, self.namespace, self.name)
        now = self._clock()
        if version != self._seen[0]:
            self._seen = (version, now)
        record = record_of(spec)
        action = decide(record, self.identity, now - self._seen[1])
        if action is Action.WAIT:
            return False
        written = kube.write_lease(self.api, self.namespace, self.name,
                                   lease_spec(self.identity, self.timings, datetime.now(timezone.utc), record, action),
                                   version)
        if written:
            self._renewed_at = now
            if action is not Action.RENEW:
                log.warning("Leader: %s holds Lease %s/%s (%s)", self.identity, self.namespace, self.name,
                            action.value)
        return written

    async def acquire(self) -> float:
        """Waits until this replica holds the Lease (a candidate waits as long as another holder renews; each round is
        bounded by the API's request timeout and `retry_seconds` apart). Returns the seconds it waited."""
        started = self._clock()
        log.warning("Leader: %s is a candidate for Lease %s/%s", self.identity, self.namespace, self.name)
        while not await self._round():
            await asyncio.sleep(self.timings.retry_seconds)
        return self._clock() - started

    async def keep(self) -> None:
        """Renews every `retry_seconds`; when no renewal succeeded for `renew_deadline_seconds`, this replica stops
        acting at once: the process exits (its pod restarts as a candidate) before the Lease can expire for others."""
        while True:
            await asyncio.sleep(self.timings.retry_seconds)
            await self._round()
            if self._renewed_at is None or self._clock() - self._renewed_at > self.timings.renew_deadline_seconds:
                log.critical("Leader: %s lost Lease %s/%s (no renewal for %.0f s): exiting so that one replica acts",
                             self.identity, self.namespace, self.name, self.timings.renew_deadline_seconds)
                logging.shutdown()
                self._exit(1)
                return

    async def _round(self) -> bool:
        try:
            return await asyncio.to_thread(self.attempt)
        except Exception as error:  # noqa: BLE001  (an unreachable apiserver: the deadline decides)
            log.warning("Leader: Lease %s/%s not reachable: %s", self.namespace, self.name, str(error)[:200])
            return False

    def release(self) -> None:
        """On a clean stop: hand the Lease over at once (holder emptied) instead of letting it expire."""
        spec, version = kube.read_lease(self.api, self.namespace, self.name)
        if spec is not None and spec.get("holderIdentity") == self.identity:
            kube.write_lease(self.api, self.namespace, self.name, {**spec, "holderIdentity": ""}, version)


def from_environment(api: k8s.ApiClient) -> Elector | None:
    """The elector the chart configures (QFLEET_LEADER_ELECTION, QFLEET_LEASE_NAMESPACE, QFLEET_LEASE_NAME,
    QFLEET_POD_NAME, QFLEET_LEASE_SECONDS), or None when leader election is off."""
    if os.environ.get("QFLEET_LEADER_ELECTION", "") != "true":
        return None
    namespace = os.environ.get("QFLEET_LEASE_NAMESPACE")
    if not namespace:
        raise SystemExit("QFLEET_LEADER_ELECTION=true needs QFLEET_LEASE_NAMESPACE, the namespace of the Lease "
                         "(the chart sets it to the release namespace)")
    lease_seconds = int(os.environ.get("QFLEET_LEASE_SECONDS", "15"))
    timings = LeaseTimings(lease_seconds=lease_seconds, renew_deadline_seconds=lease_seconds * 2 / 3,
                           retry_seconds=max(lease_seconds / 7.5, 0.5))
    return Elector(api, namespace, os.environ.get("QFLEET_LEASE_NAME", "qfleet-operator"),
                   kube.user_agent().split("/", 1)[1], timings)
