"""The local fleet is a real cluster: real scheduler, Job controller and Prometheus, with KWOK-simulated GPU nodes."""
from __future__ import annotations

import ipaddress
import json
import urllib.parse
import urllib.request

import pytest
from kubernetes import client as k8s

from localfleet import kube, network, nodes
from localfleet.processes import wait_until
from qfleet.gpus import GPUS, gfd_labels

BLACKWELL = {"nvidia.com/gpu.family": "blackwell"}


def gpu_pod(name: str, gpus: int, node_selector: dict[str, str], annotations: dict | None = None,
            ports: list[k8s.V1ContainerPort] | None = None) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=annotations),
        spec=k8s.V1PodSpec(
            node_selector=node_selector,
            containers=[k8s.V1Container(
                name="server", image="qfleet/runtime:test", ports=ports,
                resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}))]))


def job(name: str, annotations: dict | None = None) -> k8s.V1Job:
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1JobSpec(
            backoff_limit=0,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(annotations=annotations),
                spec=k8s.V1PodSpec(
                    restart_policy="Never", node_selector={nodes.POOL_LABEL: "h100"},
                    containers=[k8s.V1Container(name="step", image="qfleet/runtime:test",
                                                resources=k8s.V1ResourceRequirements(
                                                    limits={"nvidia.com/gpu": "1"}))]))))


def job_condition(job_obj: k8s.V1Job, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in (job_obj.status.conditions or []))


def test_apiserver_reports_its_real_version(api):
    version = k8s.VersionApi(api).get_code()
    assert version.git_version == "v1.34.10"


def test_every_pool_is_ready_with_gfd_labels_and_gpus(core):
    by_name = {n.metadata.name: n for n in core.list_node().items}
    for pool in nodes.load_pools():
        expected_labels = gfd_labels(GPUS[pool.gpu], pool.gpus_per_node)
        for i in range(pool.nodes):
            node = by_name[f"{pool.name}-{i}"]
            assert kube.node_ready(node), f"{node.metadata.name} is not Ready"
            assert expected_labels.items() <= node.metadata.labels.items()
            assert node.status.allocatable["nvidia.com/gpu"] == str(pool.gpus_per_node)


def test_scheduler_binds_eight_gpus_on_blackwell_and_refuses_nine(core, namespace):
    core.create_namespaced_pod(namespace, gpu_pod("fits", 8, BLACKWELL))
    core.create_namespaced_pod(namespace, gpu_pod("too-big", 9, BLACKWELL))

    bound = kube.wait_for(core.list_namespaced_pod, lambda p: p.metadata.name == "fits" and p.spec.node_name, 30,
                          "pod fits to be bound", namespace=namespace)
    node = core.read_node(bound.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] in (GPUS["B200"].product, GPUS["GB200"].product)

    event = kube.wait_for(core.list_namespaced_event,
                          lambda e: e.involved_object.name == "too-big" and e.reason == "FailedScheduling"
                          and "nvidia.com/gpu" in e.message, 30,
                          "FailedScheduling for too-big", namespace=namespace)
    assert "Insufficient nvidia.com/gpu" in event.message
    assert core.read_namespaced_pod("too-big", namespace).status.phase == "Pending"


def test_simulated_job_completes(batch, namespace):
    batch.create_namespaced_job(namespace, job("calibrate"))
    done = kube.wait_for(batch.list_namespaced_job,
                         lambda j: j.metadata.name == "calibrate" and (job_condition(j, "Complete")
                                                                       or job_condition(j, "Failed")),
                         60, "Job calibrate to finish", namespace=namespace)
    assert job_condition(done, "Complete")


def test_simulated_job_made_to_fail_ends_failed_with_its_exit_code(batch, core, namespace):
    batch.create_namespaced_job(namespace, job("broken", annotations={
        "localfleet.qfleet.io/exit-code": "3", "localfleet.qfleet.io/message": "calibration diverged"}))
    done = kube.wait_for(batch.list_namespaced_job,
                         lambda j: j.metadata.name == "broken" and (job_condition(j, "Complete")
                                                                    or job_condition(j, "Failed")),
                         60, "Job broken to finish", namespace=namespace)
    assert job_condition(done, "Failed")
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=broken").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (3, "calibration diverged")


def _prometheus_get(fleet, path: str, **params) -> dict:
    url = f"{fleet.prometheus_url()}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        return json.load(response)["data"]


def test_prometheus_discovers_simulated_pods_and_answers_promql(fleet, core, namespace):
    port = k8s.V1ContainerPort(name="metrics", container_port=8002)
    core.create_namespaced_pod(namespace, gpu_pod("scraped", 1, {nodes.POOL_LABEL: "l40s"}, ports=[port]))
    kube.wait_for(core.list_namespaced_pod, lambda p: p.metadata.name == "scraped" and p.status.pod_ip, 30,
                  "pod scraped to get an address", namespace=namespace)

    def target_listed() -> bool:
        targets = _prometheus_get(fleet, "/api/v1/targets", state="active")["activeTargets"]
        return any(t["labels"].get("pod") == "scraped" and t["labels"].get("namespace") == namespace
                   for t in targets)

    wait_until("Prometheus to discover pod scraped", target_listed, 60, interval=0.5)
    # The simulated pod serves nothing and its address is blackholed: discovery is real, the scrape fails locally.
    query = f'up{{namespace="{namespace}",pod="scraped"}}'
    wait_until("a scrape of pod scraped", lambda: _prometheus_get(fleet, "/api/v1/query", query=query)["result"], 30,
               interval=0.5)
    result = _prometheus_get(fleet, "/api/v1/query", query=query)["result"]
    assert [sample["value"][1] for sample in result] == ["0"]
    build = _prometheus_get(fleet, "/api/v1/query", query="prometheus_build_info")["result"]
    assert build and build[0]["metric"]["version"].startswith("3.16")


def test_simulated_pod_addresses_stay_in_the_guarded_range(core, namespace):
    for i in range(3):
        core.create_namespaced_pod(namespace, gpu_pod(f"p{i}", 1, {nodes.POOL_LABEL: "a100"}))
    pods = [kube.wait_for(core.list_namespaced_pod, lambda p, n=f"p{i}": p.metadata.name == n and p.status.pod_ip,
                          30, f"pod p{i} address", namespace=namespace) for i in range(3)]
    assert network.blackhole_installed()
    for pod in pods:
        assert ipaddress.ip_address(pod.status.pod_ip) in network.SIMULATED_POD_RANGE
    node_ips = {a.address for n in core.list_node().items for a in n.status.addresses if a.type == "InternalIP"}
    assert node_ips == {"127.0.0.1"}


@pytest.fixture
def small_fleet_file(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("pools:\n  - {name: b200, gpu: B200, nodes: 1, gpusPerNode: 8}\n"
                    "executor:\n  nodes: [{name: exec-small, gpu: B200, gpusPerNode: 8}]\n"
                    "  images: {localfleet/shell: {}}\n")
    return path


def test_a_second_fleet_runs_beside_and_down_leaves_nothing_behind(fleet, tmp_path, small_fleet_file):
    from localfleet.executor import netns
    from localfleet.fleet import Fleet
    from localfleet.processes import is_ours

    second = Fleet(tmp_path / "second", fleet_file=small_fleet_file, name="second")
    second.up(log=lambda *_: None)
    try:
        assert second.is_up() and fleet.is_up()
        assert set(second.state().ports.values()).isdisjoint(fleet.state().ports.values())
        core = k8s.CoreV1Api(kube.client(second.kubeconfig))
        kube.wait_for(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", 30,
                      "the default ServiceAccount", namespace="default")
        core.create_namespaced_pod("default", k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="sleeper"),
            spec=k8s.V1PodSpec(node_selector={nodes.EXECUTOR_LABEL: "true"}, tolerations=[k8s.V1Toleration(
                key=nodes.EXECUTOR_LABEL, operator="Exists", effect="NoSchedule")],
                containers=[k8s.V1Container(name="sleep", image="localfleet/shell", command=["sleep", "600"])])))
        pod = kube.wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", 60, "sleeper to run",
                            namespace="default")
        pod_namespace = netns.namespace_name(pod.metadata.uid)
        assert pod_namespace in netns.leftover_namespaces()
        pids = second.state().pids
    finally:
        stopped = second.down(log=lambda *_: None)
    assert sorted(stopped) == sorted(pids)
    assert not any(is_ours(pid, str(second.run_dir)) for pid in pids.values())
    assert pod_namespace not in netns.leftover_namespaces()
    assert not any(is_ours(pid, pod.metadata.uid) for pid in map(int, _all_pids()))
    assert fleet.is_up()


def _all_pids() -> list[str]:
    import os
    return [entry for entry in os.listdir("/proc") if entry.isdigit()]
