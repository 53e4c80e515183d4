"""The watch-fed cache: which model an event wakes, what a visit reads, and node views whose cost does not grow with
the number of nodes."""
from __future__ import annotations

from qfleet.cache import DELETED, FleetCache
from qfleet.gpus import GPUS, gfd_labels
from qfleet.kube import TokenBucket
from qfleet.pipeline.records import JobState

MODEL = {"apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel",
         "metadata": {"name": "llama", "namespace": "ml", "uid": "u1", "generation": 2, "resourceVersion": "7",
                      "managedFields": [{"manager": "kubectl"}]},
         "spec": {"rollout": {"trafficRouting": {"gatewayAPI": {"httpRoute": "llama-route"}}}},
         "status": {"phase": "Serving"}}


def node(name: str, gpu: str = "B200", gpus: int = 8, ready: bool = True) -> dict:
    labels = {"kubernetes.io/hostname": name, **gfd_labels(GPUS[gpu], gpus)}
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def owned(kind_fields: dict, name: str, model: str = "llama") -> dict:
    return {"metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": "1",
                         "labels": {"qfleet.io/model": model, "app.kubernetes.io/managed-by": "qfleet"}},
            **kind_fields}


def test_children_wake_only_their_model_and_a_visit_reads_them_from_the_cache() -> None:
    cache = FleetCache()
    assert cache.apply_model(None, MODEL) == ("ml", "llama")
    job = owned({"status": {"active": 1}}, "llama-abc-fp8-calibrate")
    assert cache.apply_job(None, job) == ("ml", "llama")
    pod = owned({"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": "{\"a\": 1}"}}}],
                            "podIP": "10.244.0.9"}}, "pod-1")
    pod["metadata"]["labels"]["job-name"] = "llama-abc-fp8-calibrate"
    assert cache.apply_pod(None, pod) == ("ml", "llama")
    deployment = owned({"spec": {"replicas": 2}, "status": {"readyReplicas": 1}}, "llama-abc")
    deployment["metadata"]["labels"]["qfleet.io/revision"] = "abc"
    assert cache.apply_deployment(None, deployment) == ("ml", "llama")
    service = owned({"spec": {"selector": {"qfleet.io/revision": "abc"}}}, "llama-stable")
    assert cache.apply_service(None, service) == ("ml", "llama")
    route = {"metadata": {"name": "llama-route", "namespace": "ml", "resourceVersion": "9"}, "spec": {"rules": []}}
    assert cache.apply_route(None, route) == [("ml", "llama")]
    other = {"metadata": {"name": "other-route", "namespace": "ml", "resourceVersion": "1"}, "spec": {}}
    assert cache.apply_route(None, other) == []

    snapshot = cache.snapshot(("ml", "llama"))
    assert "managedFields" not in snapshot.body["metadata"] and snapshot.body["metadata"]["resourceVersion"] == "7"
    assert set(snapshot.jobs) == {"llama-abc-fp8-calibrate"}
    assert snapshot.deployments["llama-abc"].ready_replicas == 1
    assert snapshot.services["llama-stable"]["spec"]["selector"] == {"qfleet.io/revision": "abc"}
    assert snapshot.route["metadata"]["resourceVersion"] == "9"

    cache.apply_job(DELETED, job)
    cache.apply_model(DELETED, MODEL)
    assert cache.snapshot(("ml", "llama")) is None


def test_a_job_the_operator_created_is_seen_before_its_watch_event_and_never_over_the_watchs_copy() -> None:
    cache = FleetCache()
    cache.apply_model(None, MODEL)
    cache.job_created(owned({"status": {}}, "llama-abc-fp8-evaluate"))
    assert set(cache.snapshot(("ml", "llama")).jobs) == {"llama-abc-fp8-evaluate"}

    finished = owned({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
                     "llama-abc-fp8-build")
    cache.apply_job(None, finished)
    cache.job_created(owned({"status": {}}, "llama-abc-fp8-build"))  # the create's answer, after the watch's event
    jobs = cache.snapshot(("ml", "llama")).jobs
    assert jobs["llama-abc-fp8-build"].state is JobState.SUCCEEDED
    assert jobs["llama-abc-fp8-evaluate"].state is JobState.RUNNING


def test_nodes_alike_but_for_their_name_are_one_view_with_a_count() -> None:
    cache = FleetCache()
    changed = [cache.apply_node(None, node(f"b200-{i}")) for i in range(1000)]
    changed += [cache.apply_node(None, node(f"h100-{i}", gpu="H100")) for i in range(3)]
    assert all(changed)
    views = cache.snapshot_nodes()
    assert sorted((v.labels["nvidia.com/gpu.product"], v.count) for v in views) == \
        [(GPUS["B200"].product, 1000), (GPUS["H100"].product, 3)]
    assert not cache.apply_node(None, node("b200-7"))  # a heartbeat: nothing admission reads changed
    assert cache.apply_node(None, node("b200-7", ready=False))
    assert cache.apply_node(DELETED, node("h100-0"))
    counts = sorted((v.schedulable, v.count) for v in cache.snapshot_nodes())
    assert counts == [(False, 1), (True, 2), (True, 999)]


def test_only_models_no_node_could_admit_are_woken_by_a_node_change() -> None:
    cache = FleetCache()
    waiting = {**MODEL, "metadata": {**MODEL["metadata"], "name": "waiting"},
               "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NoCompatibleNodePool"}]}}
    cache.apply_model(None, MODEL)
    cache.apply_model(None, waiting)
    assert cache.waiting_for_nodes() == [("ml", "waiting")]


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(qps=10, burst=3, clock=lambda: now[0], sleep=sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0] and abs(waits[3] - 0.1) < 1e-9 and abs(waits[4] - 0.1) < 1e-9
    assert TokenBucket(qps=0, burst=1).acquire() == 0.0


def test_only_a_change_that_a_decision_reads_marks_its_model_once() -> None:
    """The event handlers wake a model only when `take_changed` says so: a pod's IP, a Job's active count, a
    Deployment's observedGeneration and the echo of the operator's own write change nothing a visit reads."""
    cache = FleetCache()
    key = ("ml", "llama")
    cache.apply_model(None, MODEL)
    assert cache.take_changed(key) and not cache.take_changed(key)  # once per change

    job = owned({"status": {}}, "llama-abc-fp8-calibrate")
    cache.job_created(job)  # the create's answer: the writer knows
    assert not cache.take_changed(key)
    cache.apply_job(None, job)  # its ADDED event: the same Job
    assert not cache.take_changed(key)
    cache.apply_job(None, owned({"status": {"active": 1, "ready": 1, "startTime": "t"}}, "llama-abc-fp8-calibrate"))
    assert not cache.take_changed(key)

    pod = owned({"status": {"phase": "Pending"}}, "pod-1")
    pod["metadata"]["labels"]["job-name"] = "llama-abc-fp8-calibrate"
    cache.apply_pod(None, pod)
    assert not cache.take_changed(key)  # a pod appeared: the running Job reads the same
    for status in ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
                   {"phase": "Running", "podIP": "10.244.0.9",
                    "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
                   {"phase": "Running", "containerStatuses": [{"state": {"running": {"startedAt": "t"}}}]}):
        cache.apply_pod(None, {**pod, "status": status})
        assert not cache.take_changed(key), status
    cache.apply_pod(None, {**pod, "status": {"containerStatuses": [{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "no such image"}}}]}})
    assert cache.take_changed(key)
    assert cache.snapshot(key).jobs["llama-abc-fp8-calibrate"].waiting == "ImagePullBackOff: no such image"
    cache.apply_pod(None, {**pod, "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}]}})
    assert cache.take_changed(key)  # no longer waiting
    cache.apply_pod(None, {**pod, "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0,
                                                                                             "message": "{}"}}}]}})
    assert not cache.take_changed(key)  # its pod ended, its Job has not: the visit would read the same
    cache.apply_job(None, owned({"status": {"succeeded": 1, "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "t1"}]}}, "llama-abc-fp8-calibrate"))
    assert cache.take_changed(key) and not cache.take_changed(key)
    cache.apply_job(None, owned({"status": {"succeeded": 1, "completionTime": "t2", "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "t1"},
        {"type": "Complete", "status": "True", "lastTransitionTime": "t2"}]}}, "llama-abc-fp8-calibrate"))
    assert not cache.take_changed(key)  # Complete after SuccessCriteriaMet: only when it finished differs
    assert cache.snapshot(key).jobs["llama-abc-fp8-calibrate"].state is JobState.SUCCEEDED

    deployment = owned({"spec": {"replicas": 1}, "status": {}}, "llama-abc")
    cache.apply_deployment(None, deployment, written=True)
    assert not cache.take_changed(key)
    cache.apply_deployment(None, {**deployment, "metadata": {**deployment["metadata"], "resourceVersion": "2"},
                                  "status": {"observedGeneration": 1}})
    assert not cache.take_changed(key)
    cache.apply_deployment(None, {**deployment, "metadata": {**deployment["metadata"], "resourceVersion": "3"},
                                  "status": {"readyReplicas": 1}})
    assert cache.take_changed(key)

    service = owned({"spec": {"selector": {"qfleet.io/revision": "abc"}}}, "llama-stable")
    cache.apply_service(None, service)
    assert cache.take_changed(key)
    cache.apply_service(None, {**service, "metadata": {**service["metadata"], "resourceVersion": "5"}})
    assert not cache.take_changed(key)

    written = {**MODEL, "metadata": {**MODEL["metadata"], "resourceVersion": "8"}, "status": {"phase": "Degraded"}}
    cache.apply_model(None, written, written=True)  # read your own write
    cache.apply_model(None, written)  # the watch's echo of it
    cache.apply_model(None, MODEL)  # and an older event, late
    assert not cache.take_changed(key)
    assert cache.snapshot(key).body["status"] == {"phase": "Degraded"}
    edited = {**written, "metadata": {**written["metadata"], "resourceVersion": "9", "generation": 3}}
    cache.apply_model(None, edited)
    assert cache.take_changed(key)

    route = {"metadata": {"name": "llama-route", "namespace": "ml", "resourceVersion": "9"}, "spec": {"rules": []}}
    cache.apply_route(None, route, written=True)
    assert not cache.take_changed(key)
    cache.apply_route(None, {**route, "metadata": {**route["metadata"], "resourceVersion": "10"}})
    assert not cache.take_changed(key)  # its status changed (a new resourceVersion), not its rules
    cache.apply_route(None, {"metadata": {**route["metadata"], "resourceVersion": "11"},
                             "spec": {"rules": [{"backendRefs": [{"name": "other"}]}]}})  # a person's edit
    assert cache.take_changed(key)


def test_a_jobs_verdict_before_its_pods_final_state_wakes_the_model_at_the_pods_event() -> None:
    """Two watches, either order: the visit needs both (the summary is in the pod's termination message)."""
    cache = FleetCache()
    key = ("ml", "llama")
    cache.apply_model(None, MODEL)
    cache.take_changed(key)
    name = "llama-abc-fp8-build"
    cache.apply_job(None, owned({"status": {"active": 1}}, name))
    assert cache.take_changed(key)  # a Job this operator did not create (or whose create's answer was lost)
    pod = owned({"status": {"containerStatuses": [{"state": {"running": {"startedAt": "t"}}}]}}, "pod-2")
    pod["metadata"]["labels"]["job-name"] = name
    cache.apply_pod(None, pod)
    cache.apply_job(None, owned({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}, name))
    assert not cache.take_changed(key)  # the verdict without the pod's final state reads as running
    cache.apply_pod(None, {**pod, "status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 0, "message": '{"artifact": "/a/engine"}'}}}]}})
    assert cache.take_changed(key)
    assert cache.snapshot(key).jobs[name].summary == {"artifact": "/a/engine"}
