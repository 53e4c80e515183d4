"""Simulated GPU nodes from the fleet file: Node manifests that KWOK then keeps Ready."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from qfleet.gpus import GPUS, gfd_labels

DEFAULT_FLEET_FILE = Path(__file__).with_name("fleet.yaml")
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
POOL_LABEL = "localfleet.qfleet.io/pool"
EXECUTOR_LABEL = "localfleet.qfleet.io/executor"
EXECUTOR_TAINT = {"key": EXECUTOR_LABEL, "value": "true", "effect": "NoSchedule"}
EXECUTOR_TOLERATION = {"key": EXECUTOR_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Pool:
    name: str
    gpu: str
    nodes: int
    gpus_per_node: int
    cpu: str
    memory: str


class FleetFileError(ValueError):
    pass


def load_pools(path: Path = DEFAULT_FLEET_FILE) -> list[Pool]:
    document = yaml.safe_load(path.read_text()) or {}
    pools = []
    for index, raw in enumerate(document.get("pools") or []):
        where = f"{path}: pools[{index}]"
        try:
            pool = Pool(name=str(raw["name"]), gpu=str(raw["gpu"]), nodes=int(raw["nodes"]),
                        gpus_per_node=int(raw["gpusPerNode"]), cpu=str(raw.get("cpu", "64")),
                        memory=str(raw.get("memory", "512Gi")))
        except KeyError as missing:
            raise FleetFileError(f"{where}: missing field {missing}") from None
        if pool.gpu not in GPUS:
            raise FleetFileError(f"{where}.gpu: unknown GPU {pool.gpu!r}; write one of {', '.join(GPUS)}")
        pools.append(pool)
    if len({p.name for p in pools}) != len(pools):
        raise FleetFileError(f"{path}: pool names must be unique")
    return pools


@dataclass(frozen=True)
class ExecutorConfig:
    nodes: tuple[Pool, ...]
    images: dict

    def node_manifests(self) -> list[dict]:
        manifests = []
        for node in self.nodes:
            labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
                      "kubernetes.io/arch": "amd64", POOL_LABEL: node.name, EXECUTOR_LABEL: "true",
                      **gfd_labels(GPUS[node.gpu], node.gpus_per_node)}
            resources = {"cpu": node.cpu, "memory": node.memory, "pods": "110",
                         "nvidia.com/gpu": str(node.gpus_per_node)}
            manifests.append({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": node.name, "labels": labels},
                              "spec": {"taints": [EXECUTOR_TAINT]},
                              "status": {"capacity": resources, "allocatable": dict(resources)}})
        return manifests


def load_executor(path: Path = DEFAULT_FLEET_FILE) -> ExecutorConfig:
    section = (yaml.safe_load(path.read_text()) or {}).get("executor") or {}
    nodes = []
    for index, raw in enumerate(section.get("nodes") or []):
        where = f"{path}: executor.nodes[{index}]"
        try:
            node = Pool(name=str(raw["name"]), gpu=str(raw["gpu"]), nodes=1, gpus_per_node=int(raw["gpusPerNode"]),
                        cpu=str(raw.get("cpu", "16")), memory=str(raw.get("memory", "64Gi")))
        except KeyError as missing:
            raise FleetFileError(f"{where}: missing field {missing}") from None
        if node.gpu not in GPUS:
            raise FleetFileError(f"{where}.gpu: unknown GPU {node.gpu!r}; write one of {', '.join(GPUS)}")
        nodes.append(node)
    return ExecutorConfig(tuple(nodes), dict(section.get("images") or {}))


def node_manifests(pools: list[Pool]) -> list[dict]:
    manifests = []
    for pool in pools:
        gpu = GPUS[pool.gpu]
        for i in range(pool.nodes):
            name = f"{pool.name}-{i}"
            resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110",
                         "nvidia.com/gpu": str(pool.gpus_per_node)}
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                      "type": "kwok", POOL_LABEL: pool.name, **gfd_labels(gpu, pool.gpus_per_node)}
            manifests.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                             KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]}},
                "status": {"capacity": resources, "allocatable": dict(resources)},
            })
    return manifests
