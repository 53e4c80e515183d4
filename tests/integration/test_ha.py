"""Two operator replicas with leader election (the chart's replicas: 2): exactly one acts, counted at the apiserver
(its audit log, by user agent), and when the active one is killed (-9) the standby takes over within the bound
qfleet.leader states (lease 15 s + retry 2 s) plus its first visit."""
from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime

import pytest
from chaos import Row
from conftest import install_crd
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import kube
from localfleet.fleet import Fleet
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION
from qfleet.leader import LeaseTimings

NAMESPACE = "ha"
LEASE = "qfleet-leader"
TAKEOVER_BOUND = LeaseTimings().takeover_bound_seconds + 8
"""Lease expiry and one retry (17 s), plus the new leader's first visit: the bound docs/operations.md states."""
MODEL = {"apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel",
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"}, "quantization": {"kvCache": "fp8"},
                  "nodePool": {"gpusPerReplica": 8}, "artifacts": {"uri": "pvc://qfleet-artifacts/llama"}}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("ha-fleet"), name="qfleet-ha", control_plane_only=True, audit=True)
    fleet.up(log=lambda *_: None)
    api = kube.client(fleet.kubeconfig)
    install_crd(api)
    k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    yield fleet, api
    fleet.down(log=lambda *_: None)


def _replica(fleet: Fleet, tmp_path, name: str) -> OperatorProcess:
    return OperatorProcess(fleet.kubeconfig, tmp_path / f"{name}.log", env={
        "QFLEET_LEADER_ELECTION": "true", "QFLEET_LEASE_NAMESPACE": NAMESPACE, "QFLEET_LEASE_NAME": LEASE,
        "QFLEET_POD_NAME": name})


def _holder(api) -> str | None:
    try:
        return k8s.CoordinationV1Api(api).read_namespaced_lease(LEASE, NAMESPACE).spec.holder_identity or None
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _create(custom, name: str) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL,
                                           {**MODEL, "metadata": {"name": name}})


def _processed(custom, name: str) -> bool:
    item = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    return (item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]


def _writes(fleet: Fleet) -> list[dict]:
    """The operators' writes the apiserver recorded: (agent, verb, resource, at), Lease renewals apart."""
    found = []
    for line in fleet.audit_log.read_text().splitlines():
        event = json.loads(line)
        agent, ref = event.get("userAgent", ""), event.get("objectRef", {})
        if agent.startswith("qfleet-operator/") and ref.get("resource") != "leases":
            found.append({"agent": agent.split("/", 1)[1], "verb": event["verb"], "at": datetime.fromisoformat(
                event["stageTimestamp"].replace("Z", "+00:00")).timestamp(),
                "what": f"{ref.get('resource')}/{ref.get('subresource', '')}"})
    return found


def test_one_of_two_replicas_acts_and_the_other_takes_over_after_kill_9(audited, tmp_path):
    fleet, api = audited
    custom = k8s.CustomObjectsApi(api)
    replicas = {name: _replica(fleet, tmp_path, name) for name in ("replica-a", "replica-b")}
    identities = {}
    try:
        for name, replica in replicas.items():
            identities[f"{name}-{replica.start()}"] = name
        wait_until("a leader", lambda: _holder(api) in identities, 60, interval=0.5)
        leader_id = _holder(api)
        leader = identities[leader_id]
        standby_id = next(i for i in identities if i != leader_id)
        print(f"\nHA: leader {leader_id}, standby {standby_id}")
        for index in range(5):
            _create(custom, f"before-{index}")
        wait_until("the leader to process 5 models",
                   lambda: all(_processed(custom, f"before-{i}") for i in range(5)), 60, interval=0.5)
        assert _holder(api) == leader_id

        killed_at = time.time()
        os.kill(replicas[leader].process.pid, signal.SIGKILL)
        replicas[leader].process.wait(timeout=10)
        _create(custom, "after-kill")
        wait_until("the standby to hold the Lease", lambda: _holder(api) == standby_id, TAKEOVER_BOUND, interval=0.2)
        holds_at = time.time()
        wait_until("the standby to process a model", lambda: _processed(custom, "after-kill"), TAKEOVER_BOUND,
                   interval=0.2)
        acts_at = time.time()
        assert replicas[identities[standby_id]].process.poll() is None
    finally:
        for replica in replicas.values():
            replica.stop()
        logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in replicas}

    writes = _writes(fleet)
    by_leader = [w for w in writes if w["agent"] == leader_id]
    by_standby = [w for w in writes if w["agent"] == standby_id]
    print(f"HA: leader wrote {len(by_leader)} times before the kill, the standby {len(by_standby)} times after; "
          f"Lease taken {holds_at - killed_at:.1f} s after kill -9, first visit done {acts_at - killed_at:.1f} s "
          f"after it (bound {TAKEOVER_BOUND:.0f} s)")
    overlap = [w for w in by_leader if w["at"] > killed_at] + [w for w in by_standby if w["at"] <= killed_at]
    row = Row("two replicas, kill -9 the leader", faults=1, duplicates=len(overlap))
    row.notes.append(f"writes: leader {len(by_leader)}, standby {len(by_standby)}, overlapping {len(overlap)}; "
                     f"Lease taken after {holds_at - killed_at:.1f} s, first visit after {acts_at - killed_at:.1f} s "
                     f"(bound {TAKEOVER_BOUND:.0f} s)")
    row.record(not overlap and acts_at - killed_at <= TAKEOVER_BOUND and bool(by_leader and by_standby))
    assert by_leader and by_standby, writes
    assert all(w["at"] <= killed_at for w in by_leader), "the killed leader wrote after its death?"
    assert all(w["at"] > killed_at for w in by_standby), \
        f"the standby wrote while the leader was alive: {[w for w in by_standby if w['at'] <= killed_at]}"
    assert acts_at - killed_at <= TAKEOVER_BOUND
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
