"""The capacity planner: how many tokens of KV cache fit in one replica, for every KV format.

Memory model (docs/formats.md): a replica has `gpus_per_replica x memory` bytes; the weights take
`parameters x bytes_per_parameter`; the KV cache gets `kv_memory_fraction` of what is left (the
meaning of TensorRT-LLM's `kv_cache_free_gpu_mem_fraction`); the rest is for activations and the
runtime. KV bytes per token are `2 x layers x kv_heads x head_dim x bytes_per_element`; with tensor
parallelism wider than the KV heads every GPU keeps at least one head, so heads are replicated.
Pure: no I/O, no clock, exact fractions until the final floor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from qfleet.formats import (
    BASELINE_KV_FORMAT,
    KV_FORMATS,
    KvFormat,
    WeightFormat,
    format_compute_capability,
)
from qfleet.gpus import GPU
from qfleet.shapes import ModelShape

DEFAULT_KV_MEMORY_FRACTION = Fraction(9, 10)


def kv_bytes_per_token(shape: ModelShape, kv_format: KvFormat) -> Fraction:
    """Bytes one token's keys and values take in the cache, over all layers."""
    return 2 * shape.num_layers * shape.num_key_value_heads * shape.head_dim * kv_format.bytes_per_element


def weight_bytes(shape: ModelShape, weights: WeightFormat) -> int:
    """Bytes of the weights when every parameter is stored in `weights` (rounded up)."""
    return math.ceil(shape.parameter_count * weights.bytes_per_parameter)


def stored_kv_heads(num_key_value_heads: int, tensor_parallel: int) -> int:
    """KV heads a replica stores: each of `tensor_parallel` GPUs holds ceil(heads / tp) of them."""
    return tensor_parallel * math.ceil(num_key_value_heads / tensor_parallel)


@dataclass(frozen=True)
class ReplicaMemory:
    """How one replica's GPU memory divides between weights, KV cache and the rest."""

    total_bytes: int
    weight_bytes: int
    free_bytes: int
    """Memory left after the weights; negative when they do not fit."""
    kv_cache_bytes: int

    @property
    def weights_fit(self) -> bool:
        return self.free_bytes > 0


@dataclass(frozen=True)
class FormatCapacity:
    """The planner's answer for one KV format."""

    kv_format: KvFormat
    kv_bytes_per_token: Fraction
    tokens_per_replica: int
    sequences_per_replica: int
    runs_on_gpu: bool

    @property
    def saving_vs_baseline(self) -> Fraction:
        """Fraction of the bf16 per-token bytes this format saves (0.71875 for nvfp4)."""
        return 1 - self.kv_format.bytes_per_element / KV_FORMATS[BASELINE_KV_FORMAT].bytes_per_element


@dataclass(frozen=True)
class CapacityPlan:
    shape: ModelShape
    gpu: GPU
    gpus_per_replica: int
    tensor_parallel: int
    weights: WeightFormat
    kv_memory_fraction: Fraction
    sequence_length: int
    memory: ReplicaMemory
    formats: tuple[FormatCapacity, ...]
    warnings: tuple[str, ...]
    """Plain sentences about what does not fit or does not run; empty when all is well."""

    @property
    def weights_fit(self) -> bool:
        return self.memory.weights_fit

    def for_format(self, name: str) -> FormatCapacity:
        for row in self.formats:
            if row.kv_format.name == name:
                return row
        raise KeyError(name)


def plan_capacity(
    shape: ModelShape,
    gpu: GPU,
    weights: WeightFormat,
    *,
    gpus_per_replica: int = 1,
    tensor_parallel: int | None = None,
    kv_memory_fraction: Fraction = DEFAULT_KV_MEMORY_FRACTION,
    sequence_length: int = 8192,
    kv_formats: Iterable[KvFormat] | None = None,
) -> CapacityPlan:
    """Plan one replica of `shape` on `gpus_per_replica` GPUs of kind `gpu`, for every KV format.

    `tensor_parallel` defaults to `gpus_per_replica` and must divide it (the quotient is the
    pipeline-parallel degree). Raises ValueError only for impossible inputs; a model that does not
    fit is an answer (`weights_fit` False, zero tokens, a warning), not an error.
    """
    tensor_parallel = gpus_per_replica if tensor_parallel is None else tensor_parallel
    _check_inputs(gpus_per_replica, tensor_parallel, kv_memory_fraction, sequence_length)
    memory = _replica_memory(shape, gpu, weights, gpus_per_replica, kv_memory_fraction)
    heads = stored_kv_heads(shape.num_key_value_heads, tensor_parallel)
    rows = tuple(
        _format_capacity(shape, kv_format, heads, memory, sequence_length, gpu)
        for kv_format in (KV_FORMATS.values() if kv_formats is None else kv_formats)
    )
    return CapacityPlan(
        shape=shape,
        gpu=gpu,
        gpus_per_replica=gpus_per_replica,
        tensor_parallel=tensor_parallel,
        weights=weights,
        kv_memory_fraction=kv_memory_fraction,
        sequence_length=sequence_length,
        memory=memory,
        formats=rows,
        warnings=tuple(_warnings(shape, gpu, weights, gpus_per_replica, tensor_parallel, heads, memory)),
    )


def _check_inputs(gpus: int, tensor_parallel: int, fraction: Fraction, sequence_length: int) -> None:
    if gpus < 1:
        raise ValueError(f"gpus per replica must be at least 1, got {gpus}")
    if tensor_parallel < 1 or gpus % tensor_parallel:
        raise ValueError(f"tensor parallel {tensor_parallel} must divide the {gpus} GPUs per replica")
    if not 0 < fraction <= 1:
        raise ValueError(f"KV memory fraction must be above 0 and at most 1, got {float(fraction)}")
    if sequence_length < 1:
        raise ValueError(f"sequence length must be at least 1, got {sequence_length}")


def _replica_memory(shape: ModelShape, gpu: GPU, weights: WeightFormat, gpus: int, fraction: Fraction) -> ReplicaMemory:
    total = gpus * gpu.memory_bytes
    weights_size = weight_bytes(shape, weights)
    free = total - weights_size
    kv_cache = math.floor(free * fraction) if free > 0 else 0
    return ReplicaMemory(total_bytes=total, weight_bytes=weights_size, free_bytes=free, kv_cache_bytes=kv_cache)


def _format_capacity(
    shape: ModelShape, kv_format: KvFormat, heads: int, memory: ReplicaMemory, sequence_length: int, gpu: GPU
) -> FormatCapacity:
    per_token = kv_bytes_per_token(shape, kv_format)
    stored_per_token = per_token * heads / shape.num_key_value_heads
    tokens = math.floor(memory.kv_cache_bytes / stored_per_token)
    return FormatCapacity(
        kv_format=kv_format,
        kv_bytes_per_token=per_token,
        tokens_per_replica=tokens,
        sequences_per_replica=tokens // sequence_length,
        runs_on_gpu=kv_format.runs_on(gpu.compute_capability),
    )


def _warnings(
    shape: ModelShape,
    gpu: GPU,
    weights: WeightFormat,
    gpus: int,
    tensor_parallel: int,
    heads: int,
    memory: ReplicaMemory,
) -> list[str]:
    found = []
    if not memory.weights_fit:
        found.append(
            f"the {weights.name} weights alone ({_gib(memory.weight_bytes)}) do not fit in {gpus} x {gpu.name} "
            f"({_gib(memory.total_bytes)}): use more GPUs per replica or smaller weights"
        )
    if not weights.runs_on(gpu.compute_capability):
        found.append(
            f"{weights.name} weights need compute capability "
            f"{format_compute_capability(weights.min_compute_capability)}; {gpu.name} has "
            f"{format_compute_capability(gpu.compute_capability)}"
        )
    if heads != shape.num_key_value_heads:
        found.append(
            f"tensor parallel {tensor_parallel} is wider than the {shape.num_key_value_heads} KV heads: "
            f"each GPU keeps a copy, so a replica stores {heads} heads per layer"
        )
    return found


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
