"""GPU catalog and the GPU Feature Discovery (GFD) labels that describe a node's GPUs.

`memory_mib` is the total memory NVML reports (what `nvidia-smi` prints and GFD writes into
`nvidia.com/gpu.memory`), not the marketing figure: a B200 is sold as 192 GB (180 GB in the
DGX B200) and reports 183,359 MiB, about 179 GiB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LABEL_PRESENT = "nvidia.com/gpu.present"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_FAMILY = "nvidia.com/gpu.family"
LABEL_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
LABEL_COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
RESOURCE_GPU = "nvidia.com/gpu"
"""The extended resource the NVIDIA device plugin advertises in node capacity."""


@dataclass(frozen=True)
class GPU:
    name: str
    product: str
    family: str
    compute_major: int
    compute_minor: int
    memory_mib: int

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.compute_major, self.compute_minor)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20


GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        GPU("B200", "NVIDIA-B200", "blackwell", 10, 0, 183_359),
        GPU("GB200", "NVIDIA-GB200", "blackwell", 10, 0, 189_471),
        GPU("H200", "NVIDIA-H200", "hopper", 9, 0, 143_771),
        GPU("H100", "NVIDIA-H100-80GB-HBM3", "hopper", 9, 0, 81_559),
        GPU("L40S", "NVIDIA-L40S", "ada-lovelace", 8, 9, 46_068),
        GPU("A100", "NVIDIA-A100-SXM4-80GB", "ampere", 8, 0, 81_920),
    )
}


def gfd_labels(gpu: GPU, count: int) -> dict[str, str]:
    """The labels GPU Feature Discovery puts on a node with `count` GPUs of this kind."""
    return {
        LABEL_PRESENT: "true",
        LABEL_PRODUCT: gpu.product,
        LABEL_FAMILY: gpu.family,
        LABEL_COMPUTE_MAJOR: str(gpu.compute_major),
        LABEL_COMPUTE_MINOR: str(gpu.compute_minor),
        LABEL_MEMORY: str(gpu.memory_mib),
        LABEL_COUNT: str(count),
    }


def compute_capability_from_labels(labels: Mapping[str, str]) -> tuple[int, int] | None:
    """The node's compute capability from its GFD labels, or None when they are absent or not numbers."""
    try:
        return (int(labels[LABEL_COMPUTE_MAJOR]), int(labels[LABEL_COMPUTE_MINOR]))
    except (KeyError, ValueError):
        return None


def gpu_by_name(name: str) -> GPU | None:
    """The catalog entry for `name`, ignoring case (`b200` finds B200)."""
    for key, gpu in GPUS.items():
        if key.lower() == name.lower():
            return gpu
    return None
