"""Synthetic serving metrics: the qfleet runtime's series for every serving pod the benchmark sees, because KWOK pods
export none. Every pod serves the same healthy profile (the same latency distribution, 0.1% of KV entries held at
higher precision, a quality drop of 0.002 against BF16 KV), so a canary is as good as its stable revision and both controllers' gates pass on real PromQL
answers. Counters grow from the moment a pod is first seen Running, at a fixed rate, as a real server's would.

Pods are found by a watch (the benchmark's own credentials, never counted as a controller's requests): a pod labelled
qfleet.io/model (qfleet's serving pods and the benchmark's Rollouts' pods) that is not a qfleet Job's pod; its revision
is qfleet.io/revision, or Argo Rollouts' rollouts-pod-template-hash.
"""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qfleet.api import metrics as m

REQUESTS_PER_SECOND = 50.0
KV_TOKENS_PER_REQUEST = 100
FALLBACK_SHARE = 0.001
SCORED_SHARE = 0.2
TOP1_MEAN = 0.995
# cumulative share of requests at or below each bound: the p99 falls in (0.50, 0.52] on every revision
LATENCY_BUCKETS = ((0.1, 0.2), (0.25, 0.7), (0.5, 0.985), (0.52, 0.999), (1.0, 1.0), (2.5, 1.0))
LATENCY_MEAN = 0.22
TOP1_BUCKETS = ((0.5, 0.0), (0.9, 0.0), (0.99, 0.0), (1.0, 1.0))
KV_ENTRIES_PER_TOKEN = 2 * 30 * 3  # K and V, 30 layers, 3 KV heads (SmolLM2-135M)
SCORED_POSITIONS_PER_REQUEST = 64
LOST_SHARE, GAINED_SHARE = 0.003, 0.001  # a quality drop of 0.002 against BF16 KV, on every revision
SCRAPE_JOB = "synthetic-serving"


def series(namespace: str, model: str, revision: str, age_s: float) -> list[str]:
    """The text-format samples of one pod after `age_s` seconds of serving."""
    labels = f'namespace="{namespace}",{m.POD_LABELS["model"]}="{model}",{m.POD_LABELS["revision"]}="{revision}",' \
             f'model="{model}",kv_format="fp8"'
    requests = REQUESTS_PER_SECOND * age_s
    scored = requests * SCORED_SHARE
    kv_tokens = requests * KV_TOKENS_PER_REQUEST
    lines = [f'{m.REQUESTS}{{{labels},outcome="success"}} {requests:.3f}',
             f'{m.KV_TOKENS}{{{labels}}} {kv_tokens:.3f}',
             f'{m.KV_FALLBACK_TOKENS}{{{labels}}} {kv_tokens * FALLBACK_SHARE:.3f}']
    counters = {"KV_ENTRIES": kv_tokens * KV_ENTRIES_PER_TOKEN,
                "KV_FALLBACK_ENTRIES": kv_tokens * KV_ENTRIES_PER_TOKEN * FALLBACK_SHARE,
                "QUALITY_SCORED_TOKENS": scored * SCORED_POSITIONS_PER_REQUEST,
                "QUALITY_LOST_TOKENS": scored * SCORED_POSITIONS_PER_REQUEST * LOST_SHARE,
                "QUALITY_GAINED_TOKENS": scored * SCORED_POSITIONS_PER_REQUEST * GAINED_SHARE}
    lines += [f'{getattr(m, name)}{{{labels}}} {value:.3f}' for name, value in counters.items()]
    for name, buckets, count, mean in ((m.REQUEST_DURATION, LATENCY_BUCKETS, requests, LATENCY_MEAN),
                                       (m.QUALITY_TOP1, TOP1_BUCKETS, scored, TOP1_MEAN)):
        lines += [f'{name}_bucket{{{labels},le="{le}"}} {count * share:.3f}' for le, share in buckets]
        lines += [f'{name}_bucket{{{labels},le="+Inf"}} {count:.3f}', f'{name}_count{{{labels}}} {count:.3f}',
                  f'{name}_sum{{{labels}}} {count * mean:.3f}']
    return lines


def pod_key(pod) -> tuple[str, str, str] | None:
    """(namespace, model, revision) of a serving pod, None for anything else."""
    labels = pod.metadata.labels or {}
    revision = labels.get("qfleet.io/revision") or labels.get("rollouts-pod-template-hash")
    if "qfleet.io/model" not in labels or "qfleet.io/step" in labels or not revision:
        return None
    return pod.metadata.namespace, labels["qfleet.io/model"], revision


class SyntheticServing:
    """The exporter (an HTTP server on loopback) and the pod watch that feeds it."""

    def __init__(self, port: int):
        self.api, self.port = None, port
        self.started: dict[tuple[str, str, str], float] = {}
        self.pods: dict[str, tuple[str, str, str]] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self._watch, daemon=True)]

    def scrape_config(self, interval: str = "5s") -> dict:
        return {"job_name": SCRAPE_JOB, "honor_labels": True, "scrape_interval": interval, "scrape_timeout": interval,
                "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]}

    def start(self, api) -> None:
        self.api = api
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()

    def render(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        with self.lock:
            live = {key: self.started[key] for key in set(self.pods.values())}
        lines = []
        for (namespace, model, revision), since in sorted(live.items()):
            lines += series(namespace, model, revision, now - since)
        return "\n".join(lines) + "\n"

    def _handler(self):
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # Prometheus gave up on a slow scrape
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def _observe(self, kind: str, pod) -> None:
        key, uid = pod_key(pod), pod.metadata.uid
        with self.lock:
            if kind == "DELETED" or key is None or pod.status.phase != "Running":
                self.pods.pop(uid, None)
                return
            self.pods[uid] = key
            self.started.setdefault(key, time.monotonic())

    def _watch(self) -> None:
        from kubernetes import client as k8s
        from kubernetes import watch

        core = k8s.CoreV1Api(self.api)
        while not self.stopping.is_set():
            try:
                listing = core.list_pod_for_all_namespaces(label_selector="qfleet.io/model")
                with self.lock:
                    self.pods.clear()
                for pod in listing.items:
                    self._observe("ADDED", pod)
                for event in watch.Watch().stream(core.list_pod_for_all_namespaces, label_selector="qfleet.io/model",
                                                  resource_version=listing.metadata.resource_version,
                                                  timeout_seconds=60):
                    self._observe(event["type"], event["object"])
                    if self.stopping.is_set():
                        return
            except Exception:  # noqa: BLE001 (a broken watch is listed again; the run's deadline bounds it)
                if self.stopping.wait(1):
                    return
