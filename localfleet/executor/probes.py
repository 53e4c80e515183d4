"""Readiness and liveness probes (httpGet, tcpSocket, exec), run by the executor on the probes' own schedule."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class _Track:
    next_at: float = 0.0
    failures: int = 0
    successes: int = 0
    passing: bool = False


@dataclass(frozen=True)
class Verdict:
    ready: bool
    restart: bool


@dataclass
class ProbeBook:
    tracks: dict[tuple[str, str, str], _Track] = field(default_factory=dict)

    def reset(self, uid: str, container: str) -> None:
        for kind in ("readiness", "liveness"):
            self.tracks.pop((uid, container, kind), None)

    def check(self, run, pod: dict, container: dict, state) -> Verdict:
        ready = self._probe(run, container, state, "readiness", default=True)
        alive = self._probe(run, container, state, "liveness", default=True)
        return Verdict(ready=ready and alive, restart=not alive)

    def _probe(self, run, container: dict, state, kind: str, default: bool) -> bool:
        probe = container.get(f"{kind}Probe")
        if not probe:
            return default
        key = (run.uid, container["name"], kind)
        track = self.tracks.setdefault(key, _Track(next_at=time.monotonic() + probe.get("initialDelaySeconds", 0),
                                                   passing=kind == "liveness"))
        if time.monotonic() < track.next_at:
            return track.passing
        track.next_at = time.monotonic() + probe.get("periodSeconds", 10)
        if run_probe(probe, run.ip, run.netns, container):
            track.failures, track.successes = 0, track.successes + 1
            if track.successes >= probe.get("successThreshold", 1):
                track.passing = True
        else:
            track.successes, track.failures = 0, track.failures + 1
            if track.failures >= probe.get("failureThreshold", 3):
                track.passing = False
                if kind == "liveness":
                    track.failures = 0
        return track.passing


def _port(value, container: dict) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"no container port named {value!r}")


def run_probe(probe: dict, pod_ip: str, netns: str, container: dict) -> bool:
    timeout = probe.get("timeoutSeconds", 1)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{pod_ip}:{_port(get['port'], container)}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fleet pod)
                return 200 <= response.status < 400
        if "tcpSocket" in probe:
            with socket.create_connection((pod_ip, _port(probe["tcpSocket"]["port"], container)), timeout=timeout):
                return True
        if "exec" in probe:
            result = subprocess.run(["ip", "netns", "exec", netns, *probe["exec"]["command"]],
                                    capture_output=True, timeout=timeout, check=False)
            return result.returncode == 0
    except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, ValueError):
        return False
    return False
