"""The fleet's Gateway API data plane: the standard v1.4.0 CRDs, a GatewayClass and a Gateway, served by Traefik.

HTTPRoutes in any namespace attach to the Gateway `localfleet/fleet` (listener `web`); Traefik routes to the
EndpointSlice addresses of the backend Services, i.e. to executor pods by pod IP, honouring backendRef weights.
Traefik exports Prometheus metrics on its own entry point `metrics`, the fleet's Prometheus scrapes them (job
`traefik`), and its latency histograms have the runtime's fine buckets, so the p99 gate can read the gateway's
per-backend histogram (the operator's latency source `gateway`, docs/metrics.md).
"""
from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from localfleet import binaries

NAMESPACE = "localfleet"
GATEWAY_CLASS = "localfleet"
GATEWAY = "fleet"
LISTENER = "web"
CONTROLLER = "traefik.io/gateway-controller"
METRICS_ENTRY_POINT = "metrics"
LATENCY_BUCKETS = tuple(float(f"{0.01 * 1.05 ** i:.4g}") for i in range(190))
"""Traefik's latency buckets: the runtime's (qfleet_runtime.serving_metrics.LATENCY_BUCKETS, 10 ms to about 101 s,
each 5% above the one below), so a p99 ratio of 1.2 spans three to four buckets whichever histogram the gate reads.
Traefik's default (0.1, 0.3, 1.2, 5) would leave the rank interval of a 1.2x ratio straddling any bound."""
UPSTREAM_TIMEOUTS = ("--serversTransport.forwardingTimeouts.dialTimeout=5s",
                     "--serversTransport.forwardingTimeouts.responseHeaderTimeout=120s",
                     "--serversTransport.forwardingTimeouts.idleConnTimeout=90s")


def install(api: k8s.ApiClient, port: int) -> None:
    extensions = k8s.ApiextensionsV1Api(api)
    crd_dir = binaries.component_dir(binaries.GATEWAY_API)
    for path in sorted(crd_dir.glob("*.yaml")):
        for manifest in yaml.safe_load_all(path.read_text()):
            if manifest and manifest.get("kind") == "CustomResourceDefinition":
                _create(lambda m=manifest: extensions.create_custom_resource_definition(m))
    core = k8s.CoreV1Api(api)
    _create(lambda: core.create_namespace({"metadata": {"name": NAMESPACE}}))


def create_gateway(api: k8s.ApiClient, port: int) -> None:
    objects = k8s.CustomObjectsApi(api)
    group, version = "gateway.networking.k8s.io", "v1"
    _create(lambda: objects.create_cluster_custom_object(group, version, "gatewayclasses", {
        "apiVersion": f"{group}/{version}", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER}}))
    spec = {"gatewayClassName": GATEWAY_CLASS, "listeners": [{
        "name": LISTENER, "protocol": "HTTP", "port": port, "allowedRoutes": {"namespaces": {"from": "All"}}}]}
    try:
        objects.create_namespaced_custom_object(group, version, NAMESPACE, "gateways", {
            "apiVersion": f"{group}/{version}", "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE}, "spec": spec})
    except ApiException as error:
        if error.status != 409:
            raise
        # A fleet restarted on its old etcd data: the Gateway is there, with the port of the last `up`.
        objects.patch_namespaced_custom_object(group, version, NAMESPACE, "gateways", GATEWAY, {"spec": spec})


def gateway_programmed(api: k8s.ApiClient) -> bool:
    gateway = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", NAMESPACE, "gateways", GATEWAY)
    generation = gateway["metadata"].get("generation")
    return any(c["type"] == "Programmed" and c["status"] == "True" and c.get("observedGeneration") == generation
               for c in gateway.get("status", {}).get("conditions", []))


def metrics_argv(metrics_port: int) -> list[str]:
    """Prometheus metrics (Traefik v3's `metrics.prometheus` options) on the entry point `metrics`, with the
    per-service histogram `traefik_service_request_duration_seconds` (label `service`, e.g.
    `<ns>-<svc>-http-<port>@kubernetesgateway` for an HTTPRoute backendRef) in LATENCY_BUCKETS."""
    return [f"--entryPoints.{METRICS_ENTRY_POINT}.address=127.0.0.1:{metrics_port}",
            "--metrics.prometheus=true", f"--metrics.prometheus.entryPoint={METRICS_ENTRY_POINT}",
            "--metrics.prometheus.addServicesLabels=true", "--metrics.prometheus.addEntryPointsLabels=true",
            "--metrics.prometheus.buckets=" + ",".join(f"{le:g}" for le in LATENCY_BUCKETS)]


def scrape_config(metrics_port: int) -> dict:
    """The fleet Prometheus' job for Traefik's metrics (its default path /metrics)."""
    return {"job_name": "traefik", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}


def traefik_argv(web_port: int, api_port: int, log_file: Path, metrics_port: int | None = None) -> list[str]:
    return [str(binaries.path_of("traefik")), "--providers.kubernetesgateway=true",
            f"--entryPoints.{LISTENER}.address=127.0.0.1:{web_port}",
            f"--entryPoints.traefik.address=127.0.0.1:{api_port}",
            *(metrics_argv(metrics_port) if metrics_port else ()),
            "--api=true", "--api.insecure=true", "--api.dashboard=false", "--ping=true",
            "--providers.providersThrottleDuration=100ms", "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false", "--log.level=WARN", f"--log.filePath={log_file}",
            *UPSTREAM_TIMEOUTS]


def _create(call) -> None:
    try:
        call()
    except ApiException as error:
        if error.status != 409:
            raise
