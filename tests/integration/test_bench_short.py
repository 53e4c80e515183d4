"""`make bench`'s short variant (N = 20, NODES = 20, the qfleet leg only) on a fleet of its own with the apiserver's
audit log: not times, but the invariants a fleet operator owes at any size. Every model reaches serving and then its
canary is promoted through three steps on real PromQL answers; no child is created twice; and in the quiet minute the
operator writes nothing but its leader-election Lease and reads only through its watches (requests counted at the
apiserver)."""
from __future__ import annotations

from collections import Counter

import pytest
from kubernetes import client as k8s

from benchmarks.fleet.race import run_leg
from localfleet import binaries, kube

pytestmark = pytest.mark.integration
MODELS = NODES = 20


def test_twenty_models_are_served_and_promoted_with_no_duplicate_child_and_a_silent_quiet_minute():
    if binaries.missing():
        pytest.fail("the local fleet's binaries are not built: run `make binaries`", pytrace=False)
    children: dict[str, Counter] = {}

    def inspect(fleet) -> None:
        api = kube.client(fleet.kubeconfig)
        jobs = k8s.BatchV1Api(api).list_job_for_all_namespaces(label_selector="qfleet.io/model").items
        deployments = k8s.AppsV1Api(api).list_deployment_for_all_namespaces(label_selector="qfleet.io/model").items
        children["jobs"] = Counter((j.metadata.namespace, j.metadata.labels["qfleet.io/model"],
                                    j.metadata.labels["qfleet.io/revision"], j.metadata.labels["qfleet.io/step"])
                                   for j in jobs)
        children["deployments"] = Counter((d.metadata.namespace, d.metadata.labels["qfleet.io/model"],
                                           d.metadata.labels["qfleet.io/revision"]) for d in deployments)

    phases, by_verb, extras = run_leg("qfleet", MODELS, NODES, namespaces=2, interval=5, timeout=600,
                                      inspect=inspect)
    serving, promoted, quiet = phases
    assert [p["name"] for p in phases] == ["1 apply -> serving", "2 update -> promoted", "quiet minute"]
    assert extras["rollbacks"] == 0, "a healthy canary was rolled back"
    # Two revisions per model: each has its own Deployment, created once; calibrate+build+evaluate for the first,
    # build+evaluate for the second (the serving image changed, the calibration is reused).
    assert len(children["deployments"]) == 2 * MODELS and set(children["deployments"].values()) == {1}
    assert sorted(Counter(step for *_, step in children["jobs"]).items()) == [
        ("build", 2 * MODELS), ("calibrate", MODELS), ("evaluate", 2 * MODELS)]
    assert set(children["jobs"].values()) == {1}
    creates = {key: n for key, n in {**by_verb[serving["name"]]}.items() if key.startswith("create ")}
    assert creates.get("create deployments") == MODELS and creates.get("create jobs") == 3 * MODELS
    # the only requests of a quiet minute: the leader's Lease renewals (the chart runs leader election) and watches
    work = {key: n for key, n in by_verb[quiet["name"]].items() if not key.endswith(" leases")}
    assert quiet["writes"] == 0, work
    assert all(key.startswith("watch ") for key in work), work
    assert promoted["visits"] > 0 and serving["requests"] > 0
