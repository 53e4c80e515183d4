"""The operator's CPU per visit (issue 17), without a cluster: `python -m benchmarks.fleet.visit_profile`.

The real `Controller.visit` runs against a stand-in apiserver behind the real kubernetes client (the client's REST
layer answers each write as the apiserver would, so the client's own work is paid as in production) and a stand-in
Prometheus behind the real `qfleet.prom.measure` (the combined query answered from the synthetic serving profile).
The cache holds what a fleet's does: `--models` models (the `make bench` workload) with their children, and
`--nodes` nodes of 8 GPUs, so costs that grow with the cache show. One model is driven through its life by a small
simulated cluster (Jobs run and finish, Deployments become ready) to each state measured; the others are its copies.

States: `serving` (a steady serving model, nothing due), `pipeline` (a new revision waiting on its build Job),
`step-done` (that Job just finished: the result recorded, the evaluation Job created) and `canary` (an analysis:
measurements, a second decision, a status write). Each prints the best and the median CPU milliseconds of `--visits`
visits (the stand-ins' own CPU left out), what a visit wrote, and a digest of its requests and Events: equal digests
before and after a change mean the same writes. `--profile STATE` runs that state under cProfile.

Not in these figures: the HTTP transport under the clients (urllib3, TLS, the sockets), Kopf's handling of the watch
events each write brings back, and the Events Kopf posts.
"""

from __future__ import annotations

import argparse
import cProfile
import copy
import datetime
import hashlib
import itertools
import json
import pstats
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes.client import rest

from benchmarks.fleet import synthetic
from benchmarks.fleet.workload import SERVING_IMAGES, Workload, namespace_name, quantized_model
from qfleet import controller as controller_module
from qfleet import prom
from qfleet.api import metrics as m
from qfleet.cache import DELETED, FleetCache
from qfleet.controller import Controller, LoopSettings
from qfleet.gpus import GPUS, gfd_labels
from qfleet.promql import BATCH_LABEL

PROMETHEUS = "http://prometheus.bench:9090"
T0 = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
PROFILED = "m0000"
STATES = ("serving", "pipeline", "step-done", "canary")


class ApiServer:
    """The apiserver behind the kubernetes client's REST layer: a write is answered with the object as written (a
    new resourceVersion, a uid for a new object); what was created is kept for the simulated cluster."""

    def __init__(self) -> None:
        self.versions = itertools.count(1000)
        self.created: dict[tuple[str, str], dict] = {}
        """(kind, name) -> the object as created."""
        self.model: dict = {}
        """The model as last written: a status write answers with all of it."""
        self.writes: list[tuple[str, str, Any]] = []
        self.own_cpu = 0.0
        """CPU seconds spent standing in for the apiserver, left out of a visit's."""

    def request(self, method: str, url: str, headers: dict | None = None, body: Any = None, post_params: Any = None,
                _request_timeout: Any = None) -> rest.RESTResponse:
        json.dumps(body)  # what the real REST layer sends
        began = time.process_time()
        try:
            return self._answer(method, url, body)
        finally:
            self.own_cpu += time.process_time() - began

    def _answer(self, method: str, url: str, body: Any) -> rest.RESTResponse:
        path = url.split("://", 1)[-1].partition("/")[2]
        self.writes.append((method, path, body))
        version = str(next(self.versions))
        if method == "POST":
            answer = copy.deepcopy(body)
            answer["metadata"].update(uid=f"uid-{answer['metadata']['name']}", resourceVersion=version)
            answer.setdefault("status", {})
            self.created[(answer["kind"], answer["metadata"]["name"])] = answer
        elif method == "PUT":
            answer = self.model = {**self.model, "metadata": {**self.model["metadata"], "resourceVersion": version},
                                   "status": body["status"]}
        elif "/services/" in path or "/deployments/" in path:
            service = "/services/" in path
            kind, name = ("Service", path.split("/")[-1]) if service else ("Deployment", path.split("/")[-2])
            changed = self.created[(kind, name)]
            changed["spec"]["selector" if kind == "Service" else "replicas"] = body[-1]["value"]
            changed["metadata"]["resourceVersion"] = version
            answer = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": body[-1]["value"]},
                      "metadata": {"name": name, "resourceVersion": version}} if kind == "Deployment" else changed
        else:
            answer = {"metadata": {"resourceVersion": version}}
        return rest.RESTResponse(_Response(json.dumps(answer).encode()))


class _Response:
    """What urllib3 hands the client's REST layer."""

    def __init__(self, data: bytes) -> None:
        self.status, self.reason, self.data, self.headers = 200, "OK", data, {"content-type": "application/json"}


def api_client(server: ApiServer) -> k8s.ApiClient:
    api = k8s.ApiClient(k8s.Configuration(host="https://apiserver.bench"))
    api.rest_client = server
    return api


# -- Prometheus --------------------------------------------------------------------------------------------------
_PART = re.compile(r'label_replace\((.*?)\n, "' + BATCH_LABEL + r'", "(\d+)", "", ""\)', re.S)
_SERIES = re.compile(r'(qfleet_\w+?)(_bucket)?\{.*?\}\[(\d+)s\]')
_PER_SECOND = {
    m.REQUESTS: synthetic.REQUESTS_PER_SECOND,
    m.KV_TOKENS: synthetic.REQUESTS_PER_SECOND * synthetic.KV_TOKENS_PER_REQUEST,
    m.KV_ENTRIES: synthetic.REQUESTS_PER_SECOND * synthetic.KV_TOKENS_PER_REQUEST * synthetic.KV_ENTRIES_PER_TOKEN,
    m.KV_FALLBACK_ENTRIES: synthetic.REQUESTS_PER_SECOND * synthetic.KV_TOKENS_PER_REQUEST
    * synthetic.KV_ENTRIES_PER_TOKEN * synthetic.FALLBACK_SHARE,
    m.QUALITY_SCORED_TOKENS: synthetic.REQUESTS_PER_SECOND * synthetic.SCORED_SHARE
    * synthetic.SCORED_POSITIONS_PER_REQUEST,
    m.QUALITY_LOST_TOKENS: synthetic.REQUESTS_PER_SECOND * synthetic.SCORED_SHARE
    * synthetic.SCORED_POSITIONS_PER_REQUEST * synthetic.LOST_SHARE,
    m.QUALITY_GAINED_TOKENS: synthetic.REQUESTS_PER_SECOND * synthetic.SCORED_SHARE
    * synthetic.SCORED_POSITIONS_PER_REQUEST * synthetic.GAINED_SHARE,
}
_ANSWERS: dict[str, str] = {}


def ask_prometheus(address: str, expression: str, timeout: float) -> Any:
    """Stands in for `qfleet.prom._ask`: every part answered from the synthetic serving profile (computed once per
    expression), and the answer parsed from JSON as the real one's is."""
    if expression not in _ANSWERS:
        result = []
        for query, index in _PART.findall(expression):
            series = _SERIES.search(query)
            metric, buckets, seconds = series.group(1), series.group(2), int(series.group(3))
            labels = {BATCH_LABEL: index}
            if buckets:
                count = synthetic.REQUESTS_PER_SECOND * seconds
                result += [{"metric": {**labels, "le": str(le)}, "value": [0, f"{count * share:.3f}"]}
                           for le, share in (*synthetic.LATENCY_BUCKETS, ("+Inf", 1.0))]
            else:
                result.append({"metric": labels, "value": [0, f"{_PER_SECOND.get(metric, 0.0) * seconds:.3f}"]})
        _ANSWERS[expression] = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
    return json.loads(_ANSWERS[expression])["data"]["result"]


# -- the fleet ---------------------------------------------------------------------------------------------------
def node(index: int) -> dict:
    name = f"gpu-{index:04d}"
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **gfd_labels(GPUS["B200"], 8)}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}}


class Fleet:
    """One model driven through its life by a simulated cluster, on a fleet-sized cache."""

    def __init__(self, models: int, nodes: int) -> None:
        self.workload = Workload(models=models, namespaces=10)
        self.now = T0
        controller_module._now = lambda: self.now  # the controller runs on the fleet's clock
        self.server = ApiServer()
        self.cache = FleetCache()
        for index in range(nodes):
            self.cache.apply_node(None, node(index))
        self.events: list[Any] = []
        self.controller = Controller(api_client(self.server), self.cache, LoopSettings(workers=1),
                                     lambda body, event: self.events.append(event))
        self.key = (namespace_name(0), PROFILED)
        self.objects: dict[tuple[str, str], dict] = {}
        """The profiled model's children as the watches deliver them: (kind, name) -> object."""
        self.body = self._apply_spec(SERVING_IMAGES[0], generation=1)

    def _apply_spec(self, image: str, generation: int) -> dict:
        body = quantized_model(PROFILED, self.workload, PROMETHEUS, image)
        body["metadata"].update(namespace=self.key[0], uid=f"uid-{PROFILED}", generation=generation,
                                resourceVersion=str(next(self.server.versions)))
        snapshot = self.cache.snapshot(self.key)
        body["status"] = snapshot.body["status"] if snapshot else {}
        self.cache.apply_model(None, body)
        self.server.model = copy.deepcopy(body)
        return body

    def visit(self) -> None:
        self.controller.visit(self.key)
        self.body = self.cache.snapshot(self.key).body

    def run_cluster(self, finish_jobs: bool = True) -> None:
        """What the cluster does meanwhile, as its watches tell: created Jobs run, then finish (their pod's termination
        message the step's summary); Deployments are ready at their size; Services select what they were set to."""
        for (kind, name), created in list(self.server.created.items()):
            fed = self.objects.get((kind, name))
            if kind == "Job":
                if fed is None or (finish_jobs and not fed["status"].get("succeeded")):
                    self._job(created, finished=finish_jobs)
            elif fed is None or fed["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]:
                current = copy.deepcopy(created)
                if kind == "Deployment":
                    replicas = current["spec"]["replicas"]
                    current["status"] = {"replicas": replicas, "readyReplicas": replicas}
                self._feed(kind, current)

    def _job(self, job: dict, finished: bool) -> None:
        labels = job["metadata"]["labels"]
        step, kv = labels["qfleet.io/step"], labels["qfleet.io/kv-format"]
        summary = {"calibrate": {"kvFormat": kv, "worstLayer": 3, "worstLayerKL": "0.011", "samples": 512,
                                 "dataset": "builtin", "fallbackLayers": []},
                   "build": {"kvCacheDtype": kv, "artifact": f"/artifacts/{labels['qfleet.io/revision']}/engine"},
                   "evaluate": {"qualityDrop": "0.002", "score": "15.3", "baselineScore": "15.33"}}[step]
        stamp = self.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        current = copy.deepcopy(job)
        state: dict[str, Any] = {"running": {"startedAt": stamp}}
        current["status"] = {"active": 1, "startTime": stamp}
        if finished:
            current["status"] = {"succeeded": 1, "startTime": stamp, "completionTime": stamp,
                                 "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": stamp}]}
            state = {"terminated": {"exitCode": 0, "finishedAt": stamp, "message": json.dumps(summary)}}
        pod = {"metadata": {"name": f"{job['metadata']['name']}-pod", "namespace": self.key[0],
                            "uid": f"uid-{job['metadata']['name']}-pod",
                            "labels": {**labels, "job-name": job["metadata"]["name"]}},
               "status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                          "containerStatuses": [{"state": state}]}}
        self._feed("Job", current)
        self._feed("Pod", pod)

    def _feed(self, kind: str, body: dict) -> None:
        self.objects[(kind, body["metadata"]["name"])] = body
        apply = {"Job": self.cache.apply_job, "Pod": self.cache.apply_pod, "Deployment": self.cache.apply_deployment,
                 "Service": self.cache.apply_service}[kind]
        apply(None, body)

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    def until(self, done: Callable[[dict], bool], step_seconds: float = 5, visits: int = 60) -> None:
        for _ in range(visits):
            self.visit()
            self.run_cluster()
            if done(self.body.get("status") or {}):
                return
            self.advance(step_seconds)
        raise RuntimeError(f"state not reached; status: {json.dumps(self.body.get('status'))[:2000]}")

    def fill(self) -> None:
        """Every other model of the workload: a copy of the profiled one and its children, in its state."""
        text = json.dumps({"model": self.body, "children": list(self.objects.items())})
        for namespace, name in self.workload.placement():
            if name == PROFILED:
                continue
            copied = json.loads(text.replace(PROFILED, name).replace(f'"{self.key[0]}"', f'"{namespace}"'))
            self.cache.apply_model(None, copied["model"])
            for (kind, _), body in copied["children"]:
                {"Job": self.cache.apply_job, "Pod": self.cache.apply_pod, "Deployment": self.cache.apply_deployment,
                 "Service": self.cache.apply_service}[kind](None, body)


def reach(state: str, models: int, nodes: int) -> Fleet:
    fleet = Fleet(models, nodes)
    fleet.until(lambda s: s.get("phase") == "Serving" and (s.get("revision") or {}).get("stable"))
    if state in ("pipeline", "step-done"):
        fleet.advance(600)
        fleet.body = fleet._apply_spec(SERVING_IMAGES[1], generation=2)
        fleet.visit()  # creates the build Job
        fleet.run_cluster(finish_jobs=False)
        fleet.visit()  # records the running Job's uid
        fleet.advance(5)
        if state == "step-done":
            fleet.run_cluster()  # the build finished: the visit records it and creates the evaluation Job
    elif state == "canary":
        fleet.advance(600)
        fleet.body = fleet._apply_spec(SERVING_IMAGES[1], generation=2)
        fleet.until(lambda s: (s.get("canary") or {}).get("lastAnalysis") is not None)
        fleet.advance(fleet.workload.interval_s)  # the next analysis is due
    else:
        fleet.advance(60)
    fleet.fill()
    return fleet


def measure_state(state: str, models: int, nodes: int, visits: int, profile: bool) -> dict[str, Any]:
    fleet = reach(state, models, nodes)
    start = copy.deepcopy(fleet.body)
    samples, digests = [], set()
    profiler = cProfile.Profile() if profile else None
    for visit in range(-1, visits):  # the first, unmeasured, computes the stand-in Prometheus's answer
        fleet.cache.apply_model(DELETED, start)
        fleet.cache.apply_model(None, start)
        fleet.server.model = copy.deepcopy(start)
        fleet.server.writes.clear()
        fleet.events.clear()
        if profiler and visit >= 0:
            profiler.enable()
        began, stand_in = time.process_time(), fleet.server.own_cpu
        fleet.controller.visit(fleet.key)
        for method, path, body in fleet.server.writes:  # the next visit creates them again
            if method == "POST" and path.endswith("/jobs"):
                fleet.cache.apply_job(DELETED, body)
        if visit < 0:
            continue
        samples.append(time.process_time() - began - (fleet.server.own_cpu - stand_in))
        if profiler:
            profiler.disable()
        digests.add(hashlib.sha256(json.dumps([fleet.server.writes, [e.__dict__ for e in fleet.events]],
                                              sort_keys=True, default=str).encode()).hexdigest()[:12])
    writes = [f"{method} {path.rsplit('/', 1)[-1]}" for method, path, _ in fleet.server.writes]
    if profiler:
        stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    return {"state": state, "best_ms": 1000 * min(samples), "median_ms": 1000 * statistics.median(samples),
            "writes": writes, "digest": ",".join(sorted(digests))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--visits", type=int, default=30)
    parser.add_argument("--state", choices=STATES, action="append")
    parser.add_argument("--profile", choices=STATES, help="run this state under cProfile and print its top entries")
    args = parser.parse_args(argv)
    prom._ask = ask_prometheus
    states = [args.profile] if args.profile else args.state or list(STATES)
    print(f"{args.models} models, {args.nodes} nodes; CPU ms per visit over {args.visits} visits")
    for state in states:
        result = measure_state(state, args.models, args.nodes, args.visits, profile=args.profile == state)
        print(f"{state:9} best {result['best_ms']:7.2f}  median {result['median_ms']:7.2f}  "
              f"writes {result['writes'] or '-'}  digest {result['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
