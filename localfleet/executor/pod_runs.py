"""What the executor remembers of each pod it runs and each of its containers (kept in its state file)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    name: str
    shim_pid: int = 0
    restarts: int = 0
    started_at: str = ""
    exit: dict | None = None
    last_exit: dict | None = None
    ready: bool = False
    restart_after: float = 0.0


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    netns: str
    ip: str
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    failed: dict | None = None       # {reason, message}: the pod could not be set up
    stopping_since: float = 0.0
    released: bool = False           # its containers are done for good and its network is gone
