"""The local fleet's Traefik exports the gateway latency source's histogram: its flags, its buckets, its scrape job."""
from __future__ import annotations

from pathlib import Path

from localfleet import fleet, gateway
from localfleet import prometheus as prom_config
from qfleet_runtime import serving_metrics  # installed with the operator's package (pyproject: runtime_image)


def test_traefik_exports_prometheus_metrics_on_its_own_entry_point_with_the_runtimes_buckets() -> None:
    argv = gateway.traefik_argv(8080, 8081, Path("/tmp/traefik.log"), metrics_port=9100)
    assert {"--entryPoints.metrics.address=127.0.0.1:9100", "--metrics.prometheus=true",
            "--metrics.prometheus.entryPoint=metrics", "--metrics.prometheus.addServicesLabels=true"} <= set(argv)
    buckets = next(a for a in argv if a.startswith("--metrics.prometheus.buckets="))
    assert tuple(float(le) for le in buckets.split("=", 1)[1].split(",")) == serving_metrics.LATENCY_BUCKETS
    assert not any("metrics" in a for a in gateway.traefik_argv(8080, 8081, Path("/tmp/traefik.log"))), \
        "without a metrics port, Traefik runs as before"


def test_the_fleet_gives_traefiks_metrics_a_port_and_prometheus_a_job_for_them(tmp_path: Path) -> None:
    assert "traefik_metrics" in fleet.PORT_NAMES
    jobs = prom_config.config("https://127.0.0.1:6443", tmp_path, "127.0.0.1:9090",
                              extra_scrape_configs=[gateway.scrape_config(9100)])["scrape_configs"]
    assert {"job_name": "traefik", "static_configs": [{"targets": ["127.0.0.1:9100"]}]} in jobs
