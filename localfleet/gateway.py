"""The fleet's Gateway API data plane: the standard v1.4.0 CRDs, a GatewayClass and a Gateway, served by Traefik.

HTTPRoutes in any namespace attach to the Gateway `localfleet/fleet` (listener `web`); Traefik routes to the
EndpointSlice addresses of the backend Services, i.e. to executor pods by pod IP, honouring backendRef weights.
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


def traefik_argv(web_port: int, api_port: int, log_file: Path) -> list[str]:
    return [str(binaries.path_of("traefik")), "--providers.kubernetesgateway=true",
            f"--entryPoints.{LISTENER}.address=127.0.0.1:{web_port}",
            f"--entryPoints.traefik.address=127.0.0.1:{api_port}",
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
