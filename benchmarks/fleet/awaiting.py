"""Waiting for every object of a kind to reach a state: one list, then a watch from its resourceVersion (no polling),
bounded by a deadline, with a progress line now and then."""
from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException


class NotReached(TimeoutError):
    pass


def all_reach(api: k8s.ApiClient, group: str, version: str, plural: str, expected: set[tuple[str, str]],
              done: Callable[[dict], bool], timeout: float, what: str, log=print) -> float:
    """Waits until `done` holds for every (namespace, name) in `expected`; returns the seconds it took."""
    objects = k8s.CustomObjectsApi(api)
    started = time.monotonic()
    deadline, next_report = started + timeout, started + 30
    reached: set[tuple[str, str]] = set()
    last: dict[tuple[str, str], dict] = {}

    def see(obj: dict) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in expected:
            last[key] = obj
            (reached.add if done(obj) else reached.discard)(key)

    while True:
        listing = objects.list_cluster_custom_object(group, version, plural)
        for obj in listing["items"]:
            see(obj)
        resource_version = listing["metadata"]["resourceVersion"]
        try:
            while reached != expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    stuck = sorted(expected - reached)[:3]
                    raise NotReached(f"{what}: {len(reached)}/{len(expected)} after {timeout:.0f} s; e.g. "
                                     + "; ".join(f"{k}: {(last.get(k) or {}).get('status')}"[:600] for k in stuck))
                for event in watch.Watch().stream(objects.list_cluster_custom_object, group, version, plural,
                                                  resource_version=resource_version,
                                                  timeout_seconds=max(1, min(30, int(remaining)))):
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        see(event["object"])
                    if reached == expected or time.monotonic() > deadline:
                        break
                    if time.monotonic() > next_report:
                        log(f"  {what}: {len(reached)}/{len(expected)} after {time.monotonic() - started:.0f} s")
                        next_report = time.monotonic() + 30
            return time.monotonic() - started
        except ApiException as error:
            if error.status != 410:  # the resourceVersion expired: list again
                raise
