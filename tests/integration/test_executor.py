"""Local fleet part 2: pods that really run (the process executor), a real Gateway API data plane, the load generator."""
from __future__ import annotations

import ipaddress
import json
import urllib.parse
import urllib.request

import pytest
from kubernetes import client as k8s

from localfleet import kube, loadgen, network, nodes
from localfleet.processes import wait_until

ON_EXECUTOR = {"node_selector": {nodes.EXECUTOR_LABEL: "true", "nvidia.com/gpu.family": "blackwell"},
               "tolerations": [k8s.V1Toleration(**{"key": nodes.EXECUTOR_LABEL, "operator": "Equal",
                                                   "value": "true", "effect": "NoSchedule"})]}
POD_NAME = k8s.V1EnvVar(name="POD_NAME", value_from=k8s.V1EnvVarSource(
    field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")))


def shell_job(name: str, script: str) -> k8s.V1Job:
    return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1JobSpec(
        backoff_limit=0, template=k8s.V1PodTemplateSpec(spec=k8s.V1PodSpec(
            restart_policy="Never", **ON_EXECUTOR, containers=[k8s.V1Container(
                name="step", image="localfleet/shell", command=["sh", "-c", script],
                env=[POD_NAME])]))))


def finished(batch, namespace: str, name: str) -> k8s.V1Job:
    return kube.wait_for(batch.list_namespaced_job, lambda j: j.metadata.name == name and any(
        c.type in ("Complete", "Failed") and c.status == "True" for c in (j.status.conditions or [])), 60,
        f"Job {name} to finish", namespace=namespace)


def terminated(core, namespace: str, job: str):
    pod = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items[0]
    return pod, pod.status.container_statuses[0].state.terminated


@pytest.mark.parametrize("code, outcome", [(0, "Complete"), (3, "Failed")])
def test_a_job_on_an_executor_node_runs_a_real_command(batch, core, namespace, code, outcome):
    script = f'echo "step ran in $POD_NAME" > /dev/termination-log; exit {code}'
    batch.create_namespaced_job(namespace, shell_job(f"exit-{code}", script))
    job = finished(batch, namespace, f"exit-{code}")
    assert {c.type for c in job.status.conditions if c.status == "True"} >= {outcome}
    pod, state = terminated(core, namespace, f"exit-{code}")
    assert state.exit_code == code
    assert state.message.strip() == f"step ran in {pod.metadata.name}"
    assert ipaddress.ip_address(pod.status.pod_ip) in network.EXECUTOR_POD_RANGE


def server_deployment(name: str, replicas: int, labels: dict) -> k8s.V1Deployment:
    container = k8s.V1Container(
        name="server", image="localfleet/python", command=["python", "-m", "localfleet.testserver", "8000"],
        env=[POD_NAME], ports=[k8s.V1ContainerPort(name="http", container_port=8000)],
        readiness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/ready", port="http"), period_seconds=1,
                                    failure_threshold=1))
    return k8s.V1Deployment(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1DeploymentSpec(
        replicas=replicas, selector=k8s.V1LabelSelector(match_labels=labels),
        template=k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels=labels, annotations={"prometheus.io/scrape": "true",
                                                                  "prometheus.io/port": "8000"}),
            spec=k8s.V1PodSpec(**ON_EXECUTOR, termination_grace_period_seconds=5, containers=[container]))))


def service(name: str, labels: dict) -> k8s.V1Service:
    return k8s.V1Service(metadata=k8s.V1ObjectMeta(name=name), spec=k8s.V1ServiceSpec(
        selector=labels, ports=[k8s.V1ServicePort(name="http", port=8000, target_port="http")]))


def ready_addresses(discovery, namespace: str, service_name: str) -> set[str]:
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service_name}").items
    return {address for s in slices for e in (s.endpoints or []) if e.conditions and e.conditions.ready
            for address in e.addresses}


def get(url: str, data: bytes | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as response:  # noqa: S310
        return response.read().decode().strip()


def test_deployment_pods_serve_on_their_ips_and_readiness_moves_the_endpoint_slice(api, core, namespace):
    apps, discovery = k8s.AppsV1Api(api), k8s.DiscoveryV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, server_deployment("web", 2, labels))
    core.create_namespaced_service(namespace, service("web", labels))

    wait_until("two ready endpoints", lambda: len(ready_addresses(discovery, namespace, "web")) == 2, 60,
               interval=0.5)
    pods = {p.status.pod_ip: p.metadata.name for p in core.list_namespaced_pod(namespace).items}
    assert ready_addresses(discovery, namespace, "web") == set(pods)
    for ip, name in pods.items():
        assert get(f"http://{ip}:8000/") == name

    unready_ip = sorted(pods)[0]
    get(f"http://{unready_ip}:8000/unready", data=b"")
    wait_until("the unready pod to leave the slice",
               lambda: ready_addresses(discovery, namespace, "web") == set(pods) - {unready_ip}, 30, interval=0.5)


def http_route(namespace: str, weights: dict[str, int]) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "split", "namespace": namespace},
            "spec": {"parentRefs": [{"name": "fleet", "namespace": "localfleet"}],
                     "hostnames": [f"{namespace}.test"],
                     "rules": [{"backendRefs": [{"name": name, "port": 8000, "weight": weight}
                                                for name, weight in weights.items()]}]}}


def test_gateway_splits_traffic_by_httproute_weights(api, core, fleet, namespace):
    apps, discovery, objects = k8s.AppsV1Api(api), k8s.DiscoveryV1Api(api), k8s.CustomObjectsApi(api)
    for name in ("stable", "canary"):
        apps.create_namespaced_deployment(namespace, server_deployment(name, 1, {"app": name}))
        core.create_namespaced_service(namespace, service(name, {"app": name}))
    for name in ("stable", "canary"):
        wait_until(f"{name} ready", lambda n=name: len(ready_addresses(discovery, namespace, n)) == 1, 60,
                   interval=0.5)
    backend = {p.metadata.labels["app"]: p.metadata.name for p in core.list_namespaced_pod(namespace).items}
    objects.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes",
                                            http_route(namespace, {"stable": 90, "canary": 10}))
    headers = {"Host": f"{namespace}.test"}
    url = fleet.gateway_url() + "/"

    def share_of_canary(count: int = 100) -> float:
        report = loadgen.run(url, count, concurrency=4, max_seconds=60, headers=headers)
        return report.backends[backend["canary"]] / max(1, report.ok)

    wait_until("the route to carry traffic to both backends", lambda: 0 < share_of_canary() < 0.5, 30, interval=0.2)
    report = loadgen.run(url, 1000, concurrency=4, max_seconds=120, headers=headers)
    assert report.ok == 1000, report.as_dict()
    assert abs(report.backends[backend["canary"]] - 100) <= 30, report.as_dict()

    objects.patch_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", "split", {
        "spec": {"rules": [{"backendRefs": [{"name": "stable", "port": 8000, "weight": 50},
                                            {"name": "canary", "port": 8000, "weight": 50}]}]}})
    wait_until("the new weights to apply", lambda: share_of_canary() > 0.35, 30, interval=0.2)
    report = loadgen.run(url, 1000, concurrency=4, max_seconds=120, headers=headers)
    assert report.ok == 1000, report.as_dict()
    assert abs(report.backends[backend["canary"]] - 500) <= 60, report.as_dict()
    assert report.percentile(0.99) is not None


def test_prometheus_scrapes_an_executor_pod(api, core, fleet, namespace):
    k8s.AppsV1Api(api).create_namespaced_deployment(namespace, server_deployment("metrics", 1, {"app": "metrics"}))
    pod = kube.wait_for(core.list_namespaced_pod, lambda p: any(
        c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])), 60,
        "the metrics pod to be ready", namespace=namespace)
    for _ in range(3):
        get(f"http://{pod.status.pod_ip}:8000/")
    query = f'localfleet_requests_total{{namespace="{namespace}",pod="{pod.metadata.name}"}}'
    url = f"{fleet.prometheus_url()}/api/v1/query?{urllib.parse.urlencode({'query': query})}"

    def scraped_three() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            result = json.load(response)["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= 3

    wait_until("Prometheus to scrape the pod's counter", scraped_three, 60, interval=0.5)


def test_the_loadgen_refuses_targets_off_the_machine():
    with pytest.raises(loadgen.TargetRefused):
        loadgen.check_target("http://192.0.2.10/")


def test_a_restarted_executor_adopts_its_pods_and_deletion_honours_the_grace_period(api, core, fleet, namespace):
    from localfleet.executor import netns
    from localfleet.processes import is_ours

    k8s.AppsV1Api(api).create_namespaced_deployment(namespace, server_deployment("kept", 1, {"app": "kept"}))
    ready = kube.wait_for(core.list_namespaced_pod, lambda p: any(
        c.type == "Ready" and c.status == "True" for c in (p.status.conditions or [])), 60,
        "the pod to be ready", namespace=namespace)
    get(f"http://{ready.status.pod_ip}:8000/")

    fleet.restart_executor()
    wait_until("the restarted executor to renew its node's lease", lambda: _lease_renewed_after(api, ready), 30,
               interval=0.5)
    after = core.read_namespaced_pod(ready.metadata.name, namespace)
    assert after.status.pod_ip == ready.status.pod_ip
    assert after.status.container_statuses[0].restart_count == 0
    assert get(f"http://{ready.status.pod_ip}:8000/") == ready.metadata.name

    stubborn = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="stubborn"), spec=k8s.V1PodSpec(
        **ON_EXECUTOR, termination_grace_period_seconds=2, containers=[k8s.V1Container(
            name="ignore-term", image="localfleet/shell", command=["sh", "-c", "trap '' TERM; sleep 600 & wait"])]))
    core.create_namespaced_pod(namespace, stubborn)
    pod = kube.wait_for(core.list_namespaced_pod, lambda p: p.metadata.name == "stubborn"
                        and p.status.phase == "Running", 60, "stubborn to run", namespace=namespace)
    core.delete_namespaced_pod("stubborn", namespace)

    def gone() -> bool:
        return not [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == "stubborn"]

    wait_until("stubborn to be killed after its grace period and removed", gone, 30, interval=0.5)
    assert netns.namespace_name(pod.metadata.uid) not in netns.leftover_namespaces()
    assert not any(is_ours(int(pid), pod.metadata.uid) for pid in _pids())


def _lease_renewed_after(api, pod) -> bool:
    lease = k8s.CoordinationV1Api(api).read_namespaced_lease(pod.spec.node_name, "kube-node-lease")
    return lease.spec.renew_time > pod.status.start_time


def _pids() -> list[str]:
    import os
    return [entry for entry in os.listdir("/proc") if entry.isdigit()]
