"""The qfleet operator (`kopf run -m qfleet.main`) as a local process against a fleet: what the integration tests and
the demo run instead of the chart's in-cluster Deployment, with the same arguments and, when given a ServiceAccount
kubeconfig, the same credentials."""
from __future__ import annotations

import os
import socket
from collections.abc import Iterable
import subprocess
import sys
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OperatorProcess:
    """Isolated from the caller's process, restartable, its log in a file and its own metrics port."""

    def __init__(self, kubeconfig: Path, log_path: Path, command: list[str] | None = None,
                 env: dict[str, str] | None = None, verbose: bool = True):
        """`command` is what the chart's container runs (`kopf run ... -m qfleet.main`), run here with this Python;
        `env` the container's environment, on top of which the metrics port is set. `verbose` adds Kopf's
        `--verbose` (DEBUG: every request and event, which the tests read); a benchmark runs without it, as the
        chart does."""
        self.kubeconfig, self.log_path, self.verbose = kubeconfig, log_path, verbose
        self.command = command or ["kopf", "run", "--standalone", "--all-namespaces", "-m", "qfleet.main"]
        self.env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.metrics_port = free_port()

    def start(self, detached: bool = False) -> int:
        """Starts kopf and returns its pid; `detached` puts it in a session of its own, so it outlives the caller."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env,
               "QFLEET_METRICS_PORT": str(self.metrics_port)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", *self.command,
                                             *(["--verbose"] if self.verbose else [])], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=detached)
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the operator's /metrics (0 when it has none yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def from_chart(manifest: Iterable[dict | None], kubeconfig: Path, log_path: Path, verbose: bool = True) \
        -> tuple[OperatorProcess, str]:
    """The chart's operator container (from `helm get manifest`) as a local process: its command, arguments and
    environment, run with `kubeconfig` (a ServiceAccount's token); the liveness endpoint moves to a free loopback
    port, whose /healthz URL comes back beside the process."""
    deployment = next(d for d in manifest if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    liveness = free_port()
    args = [a.replace("--liveness=http://0.0.0.0:", "--liveness=http://127.0.0.1:") for a in container["args"]]
    args = [f"--liveness=http://127.0.0.1:{liveness}/healthz" if a.startswith("--liveness=") else a for a in args]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}  # valueFrom: the pod's own fields
    operator = OperatorProcess(kubeconfig, log_path, command=[*container["command"], *args], env=env, verbose=verbose)
    return operator, f"http://127.0.0.1:{liveness}/healthz"
