"""One phase's figures for the controller under test, all read from outside it: wall time, API requests from the
audit log, CPU seconds and peak RSS from /proc, and (qfleet only) visits from its own /metrics."""
from __future__ import annotations

import os
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fleet import audit, procstat


@dataclass
class Phase:
    name: str
    wall_s: float
    requests: Counter
    cpu_s: float
    peak_rss_mib: float
    operator: dict = field(default_factory=dict)
    """qfleet's own figures over the phase: visits, visits per second, visit duration p50/p99, wake-up lag p99 (all,
    scheduled, event)."""
    machine_cpu_s: float = 0.0
    """Busy CPU time of the whole machine over the phase (core-seconds): the fleet, the benchmark and the controller."""
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    """Of that, each process's CPU seconds, by name (`MachineClock.by_process`)."""

    def row(self) -> dict:
        capacity = self.wall_s * procstat.cores()
        return {"wall_s": round(self.wall_s, 1), **audit.totals(self.requests), "cpu_s": round(self.cpu_s, 1),
                "cpu_share": round(self.cpu_s / self.wall_s, 3) if self.wall_s else 0.0,
                "peak_rss_mib": round(self.peak_rss_mib, 1), "machine_cpu_s": round(self.machine_cpu_s, 1),
                "machine_busy_share": round(self.machine_cpu_s / capacity, 3) if capacity else 0.0, **self.operator,
                "cpu_by_process": {name: round(s, 1) for name, s in self.cpu_by_process.items()}}

    def by_verb(self) -> dict[str, int]:
        return {f"{verb} {resource}": n for (verb, resource), n in sorted(self.requests.items())}


class MachineClock:
    """The whole machine's busy CPU time from a start: what a phase cost the fleet, whoever drove it; and how it was
    shared among the processes (the apiserver, etcd, KWOK, the fleet's controllers, the controller under test and this
    benchmark), to tell what a controller costs the fleet beyond its own CPU."""

    def __init__(self, names: dict[int, str] | None = None) -> None:
        self.names = {os.getpid(): "benchmark (this process)", **(names or {})}
        """Names for processes whose executable's name says too little (a Python controller)."""
        self.busy_before = procstat.machine_busy_seconds()
        self.processes_before = procstat.cpu_by_process()

    def busy(self) -> float:
        return procstat.machine_busy_seconds() - self.busy_before

    def by_process(self) -> dict[str, float]:
        """CPU seconds since the start, by process name, largest first; a process that ended meanwhile is not
        counted (the fleet's and the controllers' run throughout)."""
        spent: Counter = Counter()
        for pid, (name, seconds) in procstat.cpu_by_process().items():
            before = self.processes_before.get(pid)
            base = before[1] if before and before[0] == name else 0.0
            if seconds - base > 0:
                spent[self.names.get(pid, name)] += seconds - base
        return dict(spent.most_common())


class PhaseClock:
    """Marks the start of a phase; `end` reads everything over [start, end)."""

    def __init__(self, name: str, pid: int, audit_log: Path, user: str, metrics_url: str | None = None):
        self.name, self.pid, self.audit_log, self.user, self.metrics_url = name, pid, audit_log, user, metrics_url
        self.machine = MachineClock({pid: "the controller under test"})
        self.started_wall, self.started = time.time(), time.monotonic()
        self.cpu_before = procstat.cpu_seconds(pid)
        self.metrics_before = scrape(metrics_url) if metrics_url else None

    def end(self) -> Phase:
        wall = time.monotonic() - self.started
        ended_wall = time.time()
        cpu = procstat.cpu_seconds(self.pid) - self.cpu_before
        rss = procstat.peak_rss_mib(self.pid)
        operator = {}
        if self.metrics_url:
            operator = operator_figures(self.metrics_before, scrape(self.metrics_url), wall)
        return Phase(self.name, wall, audit.read(self.audit_log, self.user, self.started_wall, ended_wall), cpu, rss,
                     operator, self.machine.busy(), self.machine.by_process())


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _sum(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, found), v in samples.items() if n == name and all((k, w) in found for k, w in labels.items()))


def _buckets(samples: dict, name: str, **only) -> list[tuple[float, float]]:
    """The cumulative buckets of histogram `name`, summed over the series whose labels include `only`."""
    found = {}
    for (n, labels), value in samples.items():
        if n == f"{name}_bucket" and all((k, v) in labels for k, v in only.items()):
            le = dict(labels)["le"]
            found[float(le)] = found.get(float(le), 0.0) + value
    return sorted(found.items())


def quantile(before: dict, after: dict, name: str, q: float, **only) -> float | None:
    """The upper bound of the bucket holding the q-quantile of the observations between two scrapes (of the series
    labelled `only`, or all)."""
    earlier = dict(_buckets(before, name, **only))
    deltas = [(le, count - earlier.get(le, 0.0)) for le, count in _buckets(after, name, **only)]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    return next(le for le, cumulative in deltas if cumulative >= q * total)


def operator_figures(before: dict, after: dict, wall_s: float) -> dict:
    visits = _sum(after, "qfleet_operator_reconciles_total") - _sum(before, "qfleet_operator_reconciles_total")
    unchanged = (_sum(after, "qfleet_operator_reconciles_total", outcome="unchanged")
                 - _sum(before, "qfleet_operator_reconciles_total", outcome="unchanged"))
    return {"visits": int(visits), "visits_per_s": round(visits / wall_s, 2) if wall_s else 0.0,
            "visits_unchanged": int(unchanged),
            "visit_p50_s": quantile(before, after, "qfleet_operator_reconcile_duration_seconds", 0.5),
            "visit_p99_s": quantile(before, after, "qfleet_operator_reconcile_duration_seconds", 0.99),
            "wakeup_lag_p99_s": quantile(before, after, "qfleet_operator_wakeup_lag_seconds", 0.99),
            "wakeup_lag_scheduled_p99_s": quantile(before, after, "qfleet_operator_wakeup_lag_seconds", 0.99,
                                                   cause="scheduled"),
            "wakeup_lag_event_p99_s": quantile(before, after, "qfleet_operator_wakeup_lag_seconds", 0.99,
                                               cause="event")}
