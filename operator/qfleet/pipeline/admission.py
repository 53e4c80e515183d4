"""Admission against the real node pools: can any selected node run this KV format with the GPUs asked for?

Pure: nodes come in as plain `NodeView`s (labels from GPU Feature Discovery, allocatable nvidia.com/gpu).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from qfleet.api.spec import QuantizedModelSpec
from qfleet.formats import ComputeCapability, format_compute_capability, kv_format, weight_format
from qfleet.gpus import LABEL_PRODUCT, compute_capability_from_labels


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    allocatable_gpus: int
    schedulable: bool = True
    count: int = 1
    """How many nodes this view stands for (nodes alike but for their name are one view)."""

    @property
    def compute_capability(self) -> ComputeCapability | None:
        return compute_capability_from_labels(self.labels)


@dataclass(frozen=True)
class Admission:
    """The format chosen and the nodes it pins to, or (kv_format None) why nothing fits."""

    kv_format: str | None
    compute_capability: ComputeCapability | None = None
    gpu_product: str | None = None
    nodes: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = field(default=())
    """(format, why) for each ladder format passed over."""
    message: str = ""

    @property
    def admitted(self) -> bool:
        return self.kv_format is not None


def _selected(spec: QuantizedModelSpec, nodes: Iterable[NodeView]) -> list[NodeView]:
    selector = spec.node_pool.node_selector or {}
    return [n for n in nodes if n.schedulable and all(n.labels.get(k) == v for k, v in selector.items())]


def _count(nodes: Sequence[NodeView]) -> int:
    return sum(n.count for n in nodes)


def _describe(nodes: Sequence[NodeView]) -> str:
    kinds: Counter[tuple[str, str]] = Counter()
    for n in nodes:
        kinds[(n.labels.get(LABEL_PRODUCT, "unlabelled"),
               format_compute_capability(n.compute_capability) if n.compute_capability else "unknown")] += n.count
    return ", ".join(f"{count} x {product} (compute capability {cc})" for (product, cc), count in sorted(kinds.items()))


def admit(spec: QuantizedModelSpec, nodes: Sequence[NodeView], excluded: Iterable[str] = ()) -> Admission:
    """The first candidate KV format (kvCache, or the ladder for auto, less `excluded`) that some selected node with
    enough GPUs can run, together with the weights. The engine is built for, and later served on, the highest
    compute capability among those nodes."""
    selector = spec.node_pool.node_selector or {}
    selected = _selected(spec, nodes)
    if not selected:
        return Admission(None, message=f"no schedulable node matches nodePool.nodeSelector {dict(selector)}: "
                                       "fix the selector or add nodes")
    gpus = spec.node_pool.gpus_per_replica
    roomy = [n for n in selected if n.allocatable_gpus >= gpus]
    if not roomy:
        most = max(n.allocatable_gpus for n in selected)
        return Admission(None, message=f"nodePool.gpusPerReplica asks for {gpus} GPUs, but the {_count(selected)} "
                                       f"selected nodes have at most {most} allocatable nvidia.com/gpu")
    weights = weight_format(spec.quantization.weights)
    skipped: list[tuple[str, str]] = []
    excluded = set(excluded)
    for name in spec.quantization.candidate_kv_formats:
        if name in excluded:
            continue
        fmt = kv_format(name)
        fits = [n for n in roomy if n.compute_capability is not None and fmt.runs_on(n.compute_capability)
                and weights.runs_on(n.compute_capability)]
        if not fits:
            need = max(fmt.min_compute_capability, weights.min_compute_capability)
            skipped.append((name, f"needs compute capability {format_compute_capability(need)} or newer "
                                  f"(KV {name}, weights {weights.name}); the selected nodes have {_describe(roomy)}"))
            continue
        best = max(n.compute_capability for n in fits if n.compute_capability is not None)
        pinned = [n for n in fits if n.compute_capability == best]
        products: Counter[str] = Counter()
        for n in pinned:
            products[n.labels.get(LABEL_PRODUCT, "unlabelled")] += n.count
        product = products.most_common(1)[0][0]
        return Admission(name, compute_capability=best, gpu_product=product,
                         nodes=tuple(sorted(n.name for n in pinned)), skipped=tuple(skipped),
                         message=f"{_count(pinned)} node(s) of {product} (compute capability "
                                 f"{format_compute_capability(best)}) can run KV {name}")
    reasons = "; ".join(f"{name} {why}" for name, why in skipped) or "every ladder format was ruled out"
    return Admission(None, skipped=tuple(skipped), message=f"no selected node can run the KV format: {reasons}")
