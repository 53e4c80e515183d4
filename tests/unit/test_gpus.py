from dataclasses import dataclass

import pytest

from qfleet.gpus import GPUS, compute_capability_from_labels, gfd_labels, gpu_by_name


def test_catalog_has_the_six_fleet_gpus() -> None:
    assert set(GPUS) == {"B200", "GB200", "H200", "H100", "L40S", "A100"}


@pytest.mark.parametrize(
    "name, family, capability, memory_gib_about",
    [
        ("B200", "blackwell", (10, 0), 179),
        ("GB200", "blackwell", (10, 0), 185),
        ("H200", "hopper", (9, 0), 140),
        ("H100", "hopper", (9, 0), 80),
        ("L40S", "ada-lovelace", (8, 9), 45),
        ("A100", "ampere", (8, 0), 80),
    ],
)
def test_gpu_entry(name: str, family: str, capability: tuple[int, int], memory_gib_about: int) -> None:
    gpu = GPUS[name]

    assert gpu.name == name
    assert gpu.family == family
    assert gpu.compute_capability == capability
    assert round(gpu.memory_mib / 1024) == memory_gib_about
    assert gpu.product.startswith("NVIDIA-")


def test_gfd_labels_of_a_b200_node() -> None:
    assert gfd_labels(GPUS["B200"], 8) == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-B200",
        "nvidia.com/gpu.family": "blackwell",
        "nvidia.com/gpu.compute.major": "10",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/gpu.memory": "183359",
        "nvidia.com/gpu.count": "8",
    }


@pytest.mark.parametrize("gpu", GPUS.values(), ids=lambda gpu: gpu.name)
def test_compute_capability_round_trips_through_labels(gpu) -> None:
    assert compute_capability_from_labels(gfd_labels(gpu, 1)) == gpu.compute_capability


@dataclass(frozen=True)
class LabelCase:
    reason: str
    labels: dict[str, str]
    want: tuple[int, int] | None


LABEL_CASES = [
    LabelCase("a node without GFD labels", {"kubernetes.io/os": "linux"}, None),
    LabelCase("major without minor", {"nvidia.com/gpu.compute.major": "9"}, None),
    LabelCase("not a number", {"nvidia.com/gpu.compute.major": "nine", "nvidia.com/gpu.compute.minor": "0"}, None),
    LabelCase("Ada", {"nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9"}, (8, 9)),
]


@pytest.mark.parametrize("case", LABEL_CASES, ids=lambda case: case.reason)
def test_compute_capability_from_labels(case: LabelCase) -> None:
    assert compute_capability_from_labels(case.labels) == case.want


def test_gpu_by_name_ignores_case() -> None:
    assert gpu_by_name("h100") is GPUS["H100"]
    assert gpu_by_name("V100") is None
