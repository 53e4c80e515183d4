"""What one write of each kind that qfleet's phase 1 makes costs the fleet: kube-apiserver's and etcd's CPU per
write, read from /proc (the processes themselves), on a fresh fleet of 100 KWOK nodes with the benchmark's audit
policy. `python -m benchmarks.fleet.write_cost [--writes 1000]`.

The kinds: a ConfigMap create (the cheapest write, for scale), a QuantizedModel create, the status PUT of a serving
model (its status as a visit writes it, from `visit_profile`'s simulated cluster), an Event create and a Service
create. Job and Deployment creates are left out: their cost goes on in other controllers (pods, scheduling).
Each kind's writes are sent one after another, as fast as the apiserver answers; the status PUTs each follow a GET
(the resourceVersion precondition), whose cost is measured on its own and taken off.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client as k8s

from benchmarks.fleet import audit, procstat, visit_profile, workload as wl
from benchmarks.fleet.legs import CRD, QFLEET_ACCOUNT, QFLEET_NAMESPACE, _apply_crd, _namespace
from benchmarks.fleet.race import commit, fleet_file, machine
from localfleet import kube
from localfleet.fleet import Fleet
from qfleet.api import GROUP, PLURAL, VERSION

NAMESPACE = "write-cost"
SETTLE_SECONDS = 3
"""Before and after each kind: the watch fan-out and etcd's compaction of the writes before are the writes' cost too,
and nothing signals their end, so the window is held a few seconds past the last answer."""


def serving_status() -> dict:
    return copy.deepcopy(visit_profile.reach("serving", models=1, nodes=1).body["status"])


def measure(pids: dict[str, int], writes: int, send: Callable[[], None]) -> dict[str, float]:
    """Milliseconds of CPU per write, by process."""
    time.sleep(SETTLE_SECONDS)
    before = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    send()
    time.sleep(SETTLE_SECONDS)
    return {name: 1000 * (procstat.cpu_seconds(pid) - before[name]) / writes for name, pid in pids.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet.write_cost", description=__doc__)
    parser.add_argument("--writes", type=int, default=1000)
    args = parser.parse_args(argv)
    status = serving_status()
    work_dir = Path(tempfile.mkdtemp(prefix="qfleet-write-cost-"))
    fleet = Fleet(work_dir / "fleet", fleet_file=fleet_file(work_dir / "fleet.yaml", 100), name="qfleet-write-cost",
                  audit_policy=audit.write_policy(work_dir / "audit-policy.yaml", [
                      audit.service_account_user(QFLEET_NAMESPACE, QFLEET_ACCOUNT)]))
    fleet.up(log=lambda *_: None)
    try:
        pids = {name: pid for name, pid in fleet.state().pids.items() if name in ("kube-apiserver", "etcd")}
        api = kube.client(fleet.kubeconfig)
        core, objects = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        _apply_crd(api, yaml.safe_load(CRD.read_text()))
        _namespace(core, NAMESPACE)
        work = wl.Workload(models=args.writes, namespaces=1)
        names = [f"m{i:04d}" for i in range(args.writes)]

        def put_statuses() -> None:
            for name in names:
                body = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
                body["status"] = copy.deepcopy(status)
                body["status"]["conditions"][0]["message"] = f"written at {time.time()}"
                objects.replace_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, name, body)

        kinds: list[tuple[str, Callable[[], None]]] = [
            ("ConfigMap create", lambda: [core.create_namespaced_config_map(NAMESPACE, {
                "metadata": {"name": n}, "data": {"a": "b"}}) for n in names]),
            ("QuantizedModel create", lambda: [objects.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, wl.quantized_model(n, work, "http://127.0.0.1:9")) for n in names]),
            ("QuantizedModel GET (taken off the PUTs)", lambda: [objects.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, n) for n in names]),
            ("QuantizedModel status PUT", put_statuses),
            ("Event create", lambda: [core.create_namespaced_event(NAMESPACE, {
                "metadata": {"name": f"{n}.calibrated"}, "type": "Normal", "reason": "CalibrationSucceeded",
                "message": "KV fp8 calibrated: worst layer 3 with KL 0.02; 0 fallback layer(s)",
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "QuantizedModel", "name": n,
                                   "namespace": NAMESPACE}}) for n in names]),
            ("Service create", lambda: [core.create_namespaced_service(NAMESPACE, {
                "metadata": {"name": f"{n}-stable"},
                "spec": {"selector": {"qfleet.io/model": n}, "ports": [{"port": 8000}]}}) for n in names]),
        ]
        costs = {kind: measure(pids, args.writes, send) for kind, send in kinds}
        get = costs["QuantizedModel GET (taken off the PUTs)"]
        put = costs["QuantizedModel status PUT"]
        costs["QuantizedModel status PUT"] = {process: cost - get[process] for process, cost in put.items()}
    finally:
        fleet.down(log=lambda *_: None)
    print(f"write cost: commit {commit()}, {machine()}, {args.writes} writes of each kind, 100 KWOK nodes")
    print("| write | kube-apiserver (ms CPU) | etcd (ms CPU) | together |\n|---|---:|---:|---:|")
    for kind, cost in costs.items():
        print(f"| {kind} | {cost['kube-apiserver']:.2f} | {cost['etcd']:.2f} | {sum(cost.values()):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
