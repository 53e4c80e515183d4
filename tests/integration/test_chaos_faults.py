"""Chaos: faults mid-canary. A failing canary (simulated pods: Inconclusive, held for evidence) is holding at its first
step when the fleet's kube-apiserver is stopped for 30 s, when etcd is restarted, or when the Node under the canary's
pod is deleted. After each fault the operator, untouched, must be alive and visiting again on its own; no duplicate
child; the stable revision never below spec nor re-weighted past the first step (sampled all along). Prometheus
stopped mid-canary is test_canary.py's `test_prometheus_out_of_reach_is_inconclusive_never_a_pass`.

`make test` runs the node loss; the apiserver and etcd faults stop the shared fleet's control plane (its
controller-manager then takes up to a minute to serve again) and run under `make chaos` (QFLEET_CHAOS=full)."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from chaos import FULL, Row, StableWatch, duplicates
from kubernetes import client as k8s
from test_canary import canary_model, route, serve_fp8_then_canary_nvfp4  # noqa: F401  (route: a fixture)
from test_pipeline import objects, read  # noqa: F401  (objects: a fixture)

from localfleet import kube, nodes
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until

pytestmark = pytest.mark.usefixtures("artifacts_claim", "session_operator_paused")

OUTAGE_S = 30


def _visits(operator: OperatorProcess) -> float:
    return sum(operator.metric("qfleet_operator_reconciles_total", outcome=o) for o in ("unchanged", "updated"))


def _canary_holding(objects, namespace: str, fleet, operator: OperatorProcess) -> tuple[str, str]:
    """An FP8 stable and an NVFP4 canary held at its first step (0.1%) for want of evidence (KWOK pods export no
    metrics): (stable, canary)."""
    revisions = serve_fp8_then_canary_nvfp4(objects, namespace, fleet, operator, analysis={
        "interval": "2s", "prometheus": {"address": fleet.prometheus_url()}, "minRequests": 1,
        "failureLimit": 1, "maxHold": "10m"})
    wait_until("the canary to hold at its first step", lambda: (read(objects, namespace, "llama")["status"]
                                                                .get("canary") or {}).get("weight") == "0.1",
               90, interval=0.5)
    return revisions


def _record(row: Row, log: Path, tracebacks: str, dup: list[str], watch: StableWatch) -> None:
    """The scenario's row, with the operator log's tracebacks counted; no duplicate and no disruption, or it fails."""
    row.notes.append(f"{tracebacks}: {log.read_text(errors='replace').count('Traceback')}")
    row.record(not (dup or watch.disruptions))
    assert not dup and not watch.disruptions, (dup, watch.disruptions)


def _controller_manager_caught_up(api, part: str) -> float:
    """Seconds until the fleet's controller-manager (not the operator) serves a new namespace again (its default
    ServiceAccount made), awaited so that the tests after this one get a whole fleet: its informers relist after a
    back-off of up to about a minute once the apiserver is back."""
    core = k8s.CoreV1Api(api)
    probe = f"chaos-probe-{part}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=probe)))
    try:
        kube.wait_for(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", 180,
                      f"ServiceAccount default in {probe}", namespace=probe)
        return time.monotonic() - started
    finally:
        core.delete_namespace(probe)


@pytest.mark.skipif(not FULL, reason="make chaos only (QFLEET_CHAOS=full): stops the shared fleet's control plane, "
                                    "about 3 minutes with its recovery")
@pytest.mark.parametrize("part", ["kube-apiserver", "etcd"])
def test_the_operator_recovers_alone_from_a_control_plane_outage_mid_canary(api, objects, namespace, fleet, route,
                                                                            tmp_path, part):
    row = Row(f"{part} {'stopped 30 s' if part == 'kube-apiserver' else 'restarted'} mid-canary")
    operator = OperatorProcess(fleet.kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        _, canary = _canary_holding(objects, namespace, fleet, operator)
        first_step = Decimal("0.1")
        with StableWatch(api, namespace, "llama", "llama-route", first_step) as watch:
            fault_started = time.monotonic()
            fleet.stop_part(part)
            row.faults += 1
            if part == "kube-apiserver":
                time.sleep(OUTAGE_S)  # the outage itself: nothing to await while the part is down
            fleet.start_part(part)
            back = time.monotonic()
            before = _visits(operator)
            wait_until("the operator to visit again on its own", lambda: _visits(operator) > before + 2, 120,
                       interval=0.5)
            recovered = time.monotonic()
            assert operator.process.poll() is None, operator.log_tail()
            status = read(objects, namespace, "llama")["status"]
            assert status["revision"].get("canary") == canary and status["canary"]["weight"] == "0.1", status
        caught_up = _controller_manager_caught_up(api, part)
        dup = duplicates(api, namespace, "llama")
        row.duplicates, row.disruptions = len(dup), len(watch.disruptions)
        row.notes.append(f"down {back - fault_started:.0f} s; operator visiting again {recovered - back:.1f} s after "
                         f"the part was back; canary still holding at 0.1%; stable sampled {watch.samples} times; "
                         f"the fleet's controller-manager serving new namespaces again {caught_up:.0f} s after")
    finally:
        operator.stop()
    _record(row, tmp_path / "operator.log", "tracebacks logged while the part was down", dup, watch)


def _node_manifest(fleet, name: str) -> dict:
    """The Node as the fleet made it (from its fleet file), to bring a lost one back."""
    made = nodes.node_manifests(nodes.load_pools(fleet.fleet_file)) + nodes.load_executor(fleet.fleet_file) \
        .node_manifests()
    return next(m for m in made if m["metadata"]["name"] == name)


def test_the_canary_losing_its_node_holds_the_rollout_and_leaves_the_stable_alone(api, objects, namespace, fleet,
                                                                                  route, tmp_path):
    """The Node under the canary's pod is deleted (the machine is gone): the pod goes with it (the controller-manager's
    pod GC), the canary's Deployment is short of a ready replica until the pod is made again elsewhere, and the
    operator holds the canary at its step (or rolls it back): never a promotion, never a change to the stable."""
    row = Row("canary's node lost mid-canary")
    core = k8s.CoreV1Api(api)
    operator = OperatorProcess(fleet.kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        stable, canary = _canary_holding(objects, namespace, fleet, operator)

        def canary_pods() -> list:
            return core.list_namespaced_pod(namespace, label_selector=f"qfleet.io/revision={canary}").items

        wait_until("the canary's pod bound to a node", lambda: any(p.spec.node_name for p in canary_pods()), 60,
                   interval=0.5)
        lost_pod = next(p for p in canary_pods() if p.spec.node_name)
        node = lost_pod.spec.node_name
        manifest = _node_manifest(fleet, node)
        with StableWatch(api, namespace, "llama", "llama-route", Decimal("0.1")) as watch:
            lost_at = time.monotonic()
            core.delete_node(node)
            row.faults += 1
            try:
                wait_until(f"the canary's pod on {node} to go (pod GC of a deleted node's pods)",
                           lambda: lost_pod.metadata.name not in {p.metadata.name for p in canary_pods()}, 180,
                           interval=1)
                gone = time.monotonic()
                before = _visits(operator)
                wait_until("the operator to visit the model after the loss", lambda: _visits(operator) > before, 60,
                           interval=0.5)
                status = read(objects, namespace, "llama")["status"]
                history = {(h["revision"], h["outcome"]) for h in status.get("history", [])}
                assert (canary, "Promoted") not in history, status
                assert status["revision"]["stable"] == stable, status
                holding = status["revision"].get("canary") == canary and status["canary"]["weight"] == "0.1"
                assert holding or (canary, "RolledBack") in history, status
            finally:
                core.create_node(manifest)
            try:
                wait_until("a replacement canary pod Running", lambda: any(
                    p.status.phase == "Running" and p.metadata.name != lost_pod.metadata.name for p in canary_pods()),
                           120, interval=1)
            except Exception:
                print([(p.metadata.name, p.spec.node_name, p.status.phase) for p in canary_pods()])
                raise
            replaced = time.monotonic()
            on = next(p.spec.node_name for p in canary_pods() if p.metadata.name != lost_pod.metadata.name)
            assert operator.process.poll() is None, operator.log_tail()
        dup = duplicates(api, namespace, "llama")
        row.duplicates, row.disruptions = len(dup), len(watch.disruptions)
        outcome = "holding at its first step" if holding else "rolled back"
        row.notes.append(f"node {node} deleted; its canary pod gone after {gone - lost_at:.0f} s, replaced "
                         f"{replaced - gone:.0f} s later on {on}; canary {outcome}; stable sampled {watch.samples} times")
    finally:
        operator.stop()
    _record(row, tmp_path / "operator.log", "tracebacks in the operator's log", dup, watch)
