"""The capacity planner: how many tokens of KV cache fit in one replica, for every KV format.

Memory model (docs/formats.md): a replica has `gpus_per_replica x memory` bytes; the weights take
`parameters x bytes_per_parameter` (or the checkpoint's exact size when it is in the planned format);
the KV cache gets `kv_memory_fraction` of what is left (the meaning of TensorRT-LLM's
`kv_cache_free_gpu_mem_fraction`); the rest is for activations and the runtime. What one sequence
keeps is summed over the shape's layer groups (`qfleet.shapes.CacheGroup`): full-attention and latent
layers hold every token, sliding-window layers at most their window, state layers one state.
Tensor parallelism splits heads (a tp wider than the heads replicates them) but never a latent.
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
from qfleet.shapes import STATE_BYTES_PER_VALUE, CacheGroup, CacheKind, ModelShape

DEFAULT_KV_MEMORY_FRACTION = Fraction(9, 10)


def head_bytes(group: CacheGroup, kv_format: KvFormat) -> Fraction:
    """Bytes one head of `group` keeps per token (per sequence for a state): each vector quantized
    with its own block scales, a state in bfloat16."""
    if not group.quantized:
        return Fraction(group.values_per_head * STATE_BYTES_PER_VALUE)
    return sum((kv_format.vector_bytes(values) for values in group.vectors), Fraction(0))


def kv_bytes_per_sequence(
    shape: ModelShape, kv_format: KvFormat, sequence_length: int, tensor_parallel: int = 1
) -> Fraction:
    """Bytes one sequence of `sequence_length` tokens keeps in a replica's cache, every GPU's copies included."""
    return sum(
        (
            group.layers
            * group.stored_heads(tensor_parallel)
            * head_bytes(group, kv_format)
            * group.tokens_held(sequence_length)
            for group in shape.cache
        ),
        Fraction(0),
    )


def kv_bytes_per_token(shape: ModelShape, kv_format: KvFormat, sequence_length: int | None = None) -> Fraction:
    """The model's KV bytes per token, over all layers.

    With `sequence_length`: averaged over a sequence that long (window layers hold at most their
    window, states count once per sequence). Without: what one token adds to every attention layer,
    as in a sequence shorter than every window (states left out). The two agree for full attention.
    """
    if sequence_length is not None:
        return kv_bytes_per_sequence(shape, kv_format, sequence_length) / sequence_length
    return sum(
        (group.layers * group.heads * head_bytes(group, kv_format) for group in shape.cache if not group.per_sequence),
        Fraction(0),
    )


def mixed_kv_bytes_per_token(shape: ModelShape, kv_format: KvFormat, higher: KvFormat, higher_layers: int) -> Fraction:
    """KV bytes per token of a mixed plan: every attention layer in `kv_format` except `higher_layers` of them kept in
    `higher` (the calibration's fallback layers, `layerFallback.maxLayerKL`). Exact for models whose attention
    layers all hold the same KV per token (one cache group); others are refused rather than guessed."""
    groups = [group for group in shape.cache if not group.per_sequence]
    if len(groups) != 1:
        raise ValueError("a mixed plan's bytes per token need one uniform group of attention layers")
    (group,) = groups
    if not 0 <= higher_layers <= group.layers:
        raise ValueError(f"{higher_layers} fallback layers of {group.layers}")
    per_layer = {fmt.name: group.heads * head_bytes(group, fmt) for fmt in (kv_format, higher)}
    return (group.layers - higher_layers) * per_layer[kv_format.name] + higher_layers * per_layer[higher.name]


def weight_bytes(shape: ModelShape, weights: WeightFormat) -> int:
    """Bytes of the weights: the checkpoint's exact size when it is stored in `weights`, else every
    parameter in `weights` (rounded up)."""
    if shape.checkpoint is not None and shape.checkpoint.weight_format == weights.name:
        return shape.checkpoint.total_bytes
    return math.ceil(shape.parameter_count * weights.bytes_per_parameter)


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
    """The model's bytes per token, averaged over a sequence of the plan's length (no TP copies)."""
    kv_bytes_per_token_per_gpu: Fraction
    """What each GPU of the replica stores per token: TP copies included, layers spread over the GPUs."""
    saving_vs_baseline: Fraction
    """Share of the bf16 bytes per token this format saves (0.71875 for nvfp4 on an attention-only model)."""
    tokens_per_replica: int
    sequences_per_replica: int
    runs_on_gpu: bool


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
    rows = tuple(
        _format_capacity(shape, kv_format, memory, sequence_length, tensor_parallel, gpus_per_replica, gpu)
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
        warnings=tuple(_warnings(shape, gpu, weights, gpus_per_replica, tensor_parallel, memory)),
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
    shape: ModelShape,
    kv_format: KvFormat,
    memory: ReplicaMemory,
    sequence_length: int,
    tensor_parallel: int,
    gpus: int,
    gpu: GPU,
) -> FormatCapacity:
    stored_per_sequence = kv_bytes_per_sequence(shape, kv_format, sequence_length, tensor_parallel)
    per_token = kv_bytes_per_token(shape, kv_format, sequence_length)
    baseline = kv_bytes_per_token(shape, KV_FORMATS[BASELINE_KV_FORMAT], sequence_length)
    tokens = math.floor(memory.kv_cache_bytes * sequence_length / stored_per_sequence)
    return FormatCapacity(
        kv_format=kv_format,
        kv_bytes_per_token=per_token,
        kv_bytes_per_token_per_gpu=stored_per_sequence / sequence_length / gpus,
        saving_vs_baseline=1 - per_token / baseline,
        tokens_per_replica=tokens,
        sequences_per_replica=tokens // sequence_length,
        runs_on_gpu=kv_format.runs_on(gpu.compute_capability),
    )


def _warnings(
    shape: ModelShape, gpu: GPU, weights: WeightFormat, gpus: int, tensor_parallel: int, memory: ReplicaMemory
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
    found += [note for group in shape.cache if (note := _copies(group, tensor_parallel))]
    return found


def _copies(group: CacheGroup, tensor_parallel: int) -> str | None:
    """Why a replica stores more than one copy of some of `group`'s cache, if it does."""
    stored = group.stored_heads(tensor_parallel)
    if stored == group.heads:
        return None
    if group.kind is CacheKind.LATENT:
        return (
            f"tensor parallelism does not split the MLA latent: each of the {tensor_parallel} GPUs of a layer "
            f"keeps all of it, so a replica stores it {tensor_parallel} times (data-parallel attention would not)"
        )
    heads = "state heads" if group.per_sequence else "KV heads"
    if tensor_parallel > group.heads:
        return (
            f"tensor parallel {tensor_parallel} is wider than the {group.heads} {heads}: each GPU keeps a copy, "
            f"so a replica stores {stored} heads per layer"
        )
    return (
        f"tensor parallel {tensor_parallel} does not divide the {group.heads} {heads}: some GPUs keep copies, "
        f"so a replica stores {stored} heads per layer"
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
