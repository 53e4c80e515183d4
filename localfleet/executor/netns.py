"""Pod networking the way a CNI bridge plugin does it: one bridge per fleet, one network namespace and veth per pod.

Each executor owns a /24 of the executor pod range (10.244.0.0/18), so fleets running side by side never share a
bridge or an address; the fleet's blackhole route over 10.244.0.0/16 keeps anything else on this machine.
"""
from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from localfleet.network import EXECUTOR_POD_RANGE


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class Subnet:
    index: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return list(EXECUTOR_POD_RANGE.subnets(new_prefix=24))[self.index]

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def bridge(self) -> str:
        return f"qfbr{self.index}"

    def pod_addresses(self):
        return [a for a in self.network.hosts() if a != self.gateway]


def used_subnets() -> set[int]:
    out = _ip("-o", "-4", "addr", "show").stdout
    used = set()
    for index, net in enumerate(EXECUTOR_POD_RANGE.subnets(new_prefix=24)):
        if f" {net.network_address + 1}/24 " in out:
            used.add(index)
    return used


def claim_subnet() -> Subnet:
    free = [i for i in range(1, 64) if i not in used_subnets()]
    if not free:
        raise NetworkError("every /24 of the executor pod range 10.244.0.0/18 is in use by another fleet")
    return Subnet(free[0])


def ensure_bridge(subnet: Subnet) -> None:
    if _ip("link", "show", subnet.bridge, check=False).returncode != 0:
        _ip("link", "add", subnet.bridge, "type", "bridge")
    _ip("addr", "replace", f"{subnet.gateway}/24", "dev", subnet.bridge)
    _ip("link", "set", subnet.bridge, "up")


def remove_bridge(subnet: Subnet) -> None:
    _ip("link", "del", subnet.bridge, check=False)


def namespace_name(pod_uid: str) -> str:
    return f"qfpod-{pod_uid[:13]}"


def _veth(pod_uid: str) -> str:
    return f"qfv{pod_uid.replace('-', '')[:12]}"  # interface names are at most 15 characters


def create_pod_network(pod_uid: str, address: ipaddress.IPv4Address, subnet: Subnet) -> str:
    """A namespace with lo and eth0 (address/24, default route via the bridge); returns the namespace's name."""
    ns, host_side = namespace_name(pod_uid), _veth(pod_uid)
    remove_pod_network(pod_uid)
    _ip("netns", "add", ns)
    _ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", host_side, "master", subnet.bridge)
    _ip("link", "set", host_side, "up")
    _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "route", "add", "default", "via", str(subnet.gateway))
    return ns


def remove_pod_network(pod_uid: str) -> None:
    _ip("link", "del", _veth(pod_uid), check=False)
    _ip("netns", "del", namespace_name(pod_uid), check=False)


def leftover_namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.startswith("qfpod-")]
