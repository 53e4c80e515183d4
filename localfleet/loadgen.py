"""A bounded load generator for tests and the demo: N requests, at most T seconds, only to loopback or fleet pods.

    python -m localfleet.loadgen URL [--count 1000] [--concurrency 4] [--max-seconds 120] [-H 'Host: x']

It reports per-backend counts (the `X-Served-By` response header, else the first line of the body) and latency
percentiles.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from localfleet.network import FLEET_RANGE

MAX_REQUESTS = 100_000


class TargetRefused(ValueError):
    pass


def check_target(url: str) -> None:
    """Only this machine's loopback and the fleet's own pod range may receive traffic."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as error:
        raise TargetRefused(f"cannot resolve {host!r}: {error}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip in FLEET_RANGE):
            raise TargetRefused(f"{url}: {address} is neither loopback nor a fleet address ({FLEET_RANGE})")


@dataclass
class Report:
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    backends: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    def as_dict(self) -> dict:
        return {"sent": self.sent, "ok": self.ok, "errors": dict(self.errors), "backends": dict(self.backends),
                "seconds": round(self.seconds, 3),
                "latency": {f"p{int(q * 100)}": self.percentile(q) for q in (0.5, 0.9, 0.99)}}


def run(url: str, count: int, concurrency: int = 4, max_seconds: float = 120.0, timeout: float = 30.0,
        headers: dict[str, str] | None = None, data: bytes | None = None) -> Report:
    check_target(url)
    if not 0 < count <= MAX_REQUESTS:
        raise ValueError(f"count must be between 1 and {MAX_REQUESTS}")
    report, lock = Report(), threading.Lock()
    started = time.monotonic()
    deadline = started + max_seconds
    remaining = iter(range(count))

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if next(remaining, None) is None:
                    return
                report.sent += 1
            request = urllib.request.Request(url, data=data, headers=headers or {})
            began = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (checked)
                    body = response.read()
                    backend = response.headers.get("X-Served-By") or body.decode(errors="replace").split("\n")[0]
                    outcome = None
            except urllib.error.HTTPError as error:
                outcome, backend = f"HTTP {error.code}", None
            except (urllib.error.URLError, OSError) as error:
                outcome, backend = type(getattr(error, "reason", error)).__name__, None
            elapsed = time.monotonic() - began
            with lock:
                if outcome is None:
                    report.ok += 1
                    report.backends[backend[:80]] += 1
                    report.latencies.append(elapsed)
                else:
                    report.errors[outcome] += 1

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for _ in range(max(1, concurrency)):
            pool.submit(worker)
    report.seconds = time.monotonic() - started
    return report


class SteadyTraffic:
    """Requests in batches of `batch`, one at a time, until stopped: the traffic a canary is judged under in the tests
    and the demo. One at a time because each CPU server answers one request at a time: concurrent requests would
    queue, and the p99 would measure the queue rather than the revision."""

    def __init__(self, url: str, headers: dict[str, str], data: bytes | Callable[[int], bytes], batch: int = 6,
                 timeout: float = 30.0):
        """`data` is every request's body, or a function of the request's index giving it (then one request per
        batch, so that each gets its own body)."""
        self.url, self.headers, self.data, self.timeout = url, headers, data, timeout
        self.batch = 1 if callable(data) else batch
        self.stop_event = threading.Event()
        self.reports: list[Report] = []
        self.thread = threading.Thread(target=self._run, name="steady-traffic", daemon=True)

    def _run(self) -> None:
        index = 0
        while not self.stop_event.is_set():
            body = self.data(index) if callable(self.data) else self.data
            index += 1
            self.reports.append(run(self.url, self.batch, concurrency=1, max_seconds=self.timeout,
                                    timeout=self.timeout, headers=self.headers, data=body))

    def start(self) -> SteadyTraffic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=2 * self.timeout)

    def __enter__(self) -> SteadyTraffic:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    def sent(self) -> int:
        return sum(r.sent for r in self.reports)

    def failures(self) -> int:
        return sum(sum(r.errors.values()) for r in self.reports)

    def failed_reports(self) -> list[dict]:
        return [r.as_dict() for r in self.reports if r.errors]

    def latencies(self) -> Report:
        """Every successful request's latency so far, in one Report (for its percentiles)."""
        return Report(latencies=[x for r in self.reports for x in r.latencies])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    report = run(args.url, args.count, args.concurrency, args.max_seconds,
                 headers={k.strip(): v.strip() for k, v in headers.items()})
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
