"""The qfleet operator (`kopf run -m qfleet.main`) as a local process against a fleet: what the integration tests and
the demo run instead of the chart's in-cluster Deployment, with the same arguments and, when given a ServiceAccount
kubeconfig, the same credentials."""
from __future__ import annotations

import os
import socket
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

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.extra_env = env or {}
        self.args = args or ["--standalone", "--all-namespaces"]
        self.process: subprocess.Popen | None = None
        self.metrics_port = free_port()

    def start(self, detached: bool = False) -> int:
        """Starts kopf and returns its pid; `detached` puts it in a session of its own, so it outlives the caller."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), QFLEET_RECONCILE_INTERVAL="1",
                   QFLEET_METRICS_PORT=str(self.metrics_port), **self.extra_env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "kopf", "run", *self.args, "--verbose",
                                             "-m", "qfleet.main"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=detached)
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
