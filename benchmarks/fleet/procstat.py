"""A controller's CPU seconds and peak RSS, and the whole machine's busy CPU time, read from /proc: from outside the
process under test."""
from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    return _name_and_cpu(Path(f"/proc/{pid}/stat").read_text())[1]


def _name_and_cpu(stat: str) -> tuple[str, float]:
    """/proc/PID/stat: the executable's name (in parentheses, which it may itself contain) and utime + stime."""
    head, tail = stat.rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float:
    """The kernel's high-water mark of the resident set (VmHWM): a peak never missed between samples."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle, I/O wait and steal since boot (core-seconds): what the apiserver,
    etcd, KWOK, the fleet's controllers, the benchmark and the controller under test took together."""
    return busy_ticks(Path("/proc/stat").read_text().split("\n", 1)[0]) / CLOCK_TICKS


def busy_ticks(cpu_line: str) -> int:
    """/proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal, ... (clock ticks)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(n) for n in cpu_line.split()[1:8])
    return user + nice + system + irq + softirq


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every live process's name (its executable's, as /proc/PID/stat gives it) and CPU seconds so far."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = _name_and_cpu((entry / "stat").read_text())
        except OSError:  # it ended meanwhile
            continue
    return found


def cores() -> int:
    return os.cpu_count() or 1
