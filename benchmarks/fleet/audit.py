"""API requests attributed to one controller, from the apiserver's audit log: each controller runs under a
ServiceAccount of its own, so the benchmark's own calls and the fleet's controllers are not counted.

The policy records metadata only, only for the controllers' users, and no RequestReceived stage: a request is one
ResponseComplete event, a watch one ResponseStarted event (its ResponseComplete comes when it ends, and is skipped).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import yaml

READ_VERBS = frozenset({"get", "list", "watch"})


def policy(users: Iterable[str]) -> dict:
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": sorted(users)}, {"level": "None"}]}


def write_policy(path: Path, users: Iterable[str]) -> Path:
    path.write_text(yaml.safe_dump(policy(users)))
    return path


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def requests(lines: Iterable[str], user: str, since: float, until: float) -> Counter:
    """(verb, resource[/subresource]) -> requests by `user` received in [since, until) (epoch seconds)."""
    counts: Counter = Counter()
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        verb, stage = event.get("verb"), event.get("stage")
        if (verb == "watch") != (stage == "ResponseStarted") or stage not in ("ResponseStarted", "ResponseComplete"):
            continue
        if not since <= _when(event["requestReceivedTimestamp"]) < until:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        counts[(verb, resource)] += 1
    return counts


def read(path: Path, user: str, since: float, until: float) -> Counter:
    """The counts from the log and the files the apiserver rotated it into (`audit-<time>.log` beside it)."""
    counts: Counter = Counter()
    for file in log_files(path):
        with file.open() as log:
            counts += requests(log, user, since, until)
    return counts


def log_files(path: Path) -> list[Path]:
    rotated = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    return [*rotated, path] if path.exists() else rotated


LEASES = "leases"
"""Leader election's heartbeat: counted apart from the work, since its rate is set by the Lease, not by the models."""


def totals(counts: Counter) -> dict[str, int]:
    work = Counter({key: n for key, n in counts.items() if key[1] != LEASES})
    reads = sum(n for (verb, _), n in work.items() if verb in READ_VERBS)
    everything = sum(work.values())
    return {"requests": everything, "reads": reads, "writes": everything - reads,
            "gets": sum(n for (verb, _), n in work.items() if verb == "get"),
            "lease_requests": sum(counts.values()) - everything}
