"""Prometheus configuration for the fleet: Kubernetes service discovery of pods against the local apiserver."""
from __future__ import annotations

from pathlib import Path

import yaml

SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
METRICS_PORT_NAME = "metrics"


def config(apiserver_url: str, pki_dir: Path, self_address: str, scrape_interval: str = "2s",
           extra_scrape_configs: list[dict] | None = None) -> dict:
    """A pod is scraped when it has the annotation prometheus.io/scrape=true (port from prometheus.io/port) or a
    container port named `metrics`. Pod labels become target labels with dots and slashes as underscores
    (`qfleet.io/revision` -> `qfleet_io_revision`), plus `namespace`, `pod` and `node`."""
    tls = {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / "admin.crt"),
           "key_file": str(pki_dir / "admin.key")}
    meta = "__meta_kubernetes_pod_"
    pods_job = {
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": [{"role": "pod", "api_server": apiserver_url, "tls_config": tls}],
        "relabel_configs": [
            {"source_labels": [f"{meta}phase"], "regex": "Pending|Running", "action": "keep"},
            {"source_labels": [f"{meta}annotation_prometheus_io_scrape", f"{meta}container_port_name"],
             "regex": f"true;.*|.*;{METRICS_PORT_NAME}", "action": "keep"},
            {"source_labels": ["__address__", f"{meta}annotation_prometheus_io_port"],
             "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2", "target_label": "__address__"},
            {"action": "labelmap", "regex": f"{meta}label_(.+)"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": [f"{meta}name"], "target_label": "pod"},
            {"source_labels": [f"{meta}node_name"], "target_label": "node"},
        ],
    }
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [self_address]}]},
            pods_job,
            *(extra_scrape_configs or []),
        ],
    }


def write_config(path: Path, **kwargs) -> None:
    path.write_text(yaml.safe_dump(config(**kwargs), sort_keys=False))
