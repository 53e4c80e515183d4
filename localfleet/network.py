"""The fleet's address plan and the route that keeps its traffic on this machine.

Everything the fleet addresses lies in 10.244.0.0/16, and a low-priority blackhole route over that range makes any
packet to an address nothing local owns fail here instead of following the default route off the machine.
"""
from __future__ import annotations

import ipaddress
import subprocess

FLEET_RANGE = ipaddress.ip_network("10.244.0.0/16")
EXECUTOR_POD_RANGE = ipaddress.ip_network("10.244.0.0/18")    # pods that really run (local fleet part 2)
SERVICE_RANGE = ipaddress.ip_network("10.244.64.0/18")         # ClusterIPs: virtual, nothing sends to them
SIMULATED_POD_RANGE = ipaddress.ip_network("10.244.128.0/17")  # KWOK's pod addresses
KUBERNETES_SERVICE_IP = next(SERVICE_RANGE.hosts())            # first address: the `kubernetes` Service
BLACKHOLE_METRIC = 4000

for _sub in (EXECUTOR_POD_RANGE, SERVICE_RANGE, SIMULATED_POD_RANGE):
    assert _sub.subnet_of(FLEET_RANGE)


class NetworkGuardError(RuntimeError):
    pass


def blackhole_installed() -> bool:
    out = subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True, check=False)
    return any(line.split()[:2] == ["blackhole", str(FLEET_RANGE)] for line in out.stdout.splitlines())


def ensure_blackhole() -> None:
    """Installs the guard route once; it stays after `down` (harmless, and another fleet may rely on it)."""
    if blackhole_installed():
        return
    result = subprocess.run(["ip", "route", "add", "blackhole", str(FLEET_RANGE), "metric", str(BLACKHOLE_METRIC)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 and not blackhole_installed():
        raise NetworkGuardError(
            f"cannot install the blackhole route for {FLEET_RANGE} ({result.stderr.strip()}); the fleet refuses to "
            "start without it, because traffic to its pod addresses could otherwise leave this machine "
            "(run as root, or add it yourself: ip route add blackhole 10.244.0.0/16 metric 4000)")


def in_fleet_range(address: str) -> bool:
    return ipaddress.ip_address(address) in FLEET_RANGE
