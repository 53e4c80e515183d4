"""How a capacity plan is shown: an aligned table for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from qfleet.capacity import CapacityPlan, FormatCapacity
from qfleet.formats import format_compute_capability
from qfleet.shapes import CacheGroup, CacheKind, ModelShape

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: int | Fraction) -> str:
    """Binary units with at most two decimals: 327680 -> '320 KiB', 39686459904 -> '36.96 GiB'."""
    value, unit = Fraction(size), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{_trim(f'{float(value):.2f}')} {_UNITS[unit]}"


def exact_decimal(value: Fraction) -> str:
    """A fraction with a terminating decimal expansion, written exactly: 9/16 -> '0.5625'."""
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    return _trim(format(decimal, "f"))


def parameter_count(count: int) -> str:
    """70553706496 -> '70.55B', 134515008 -> '134.52M'."""
    for size, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= size:
            return f"{_trim(f'{count / size:.2f}')}{suffix}"
    return str(count)


def percent(value: Fraction) -> str:
    return f"{_trim(f'{float(value * 100):.2f}')}%"


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _number(value: Fraction) -> int | str:
    return int(value) if value.denominator == 1 else _exact(value)


def _exact(value: Fraction) -> str:
    """The exact decimal, or 'numerator/denominator' where the decimal would repeat."""
    denominator = value.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    return exact_decimal(value) if denominator == 1 else str(value)


def describe_cache(shape: ModelShape) -> str:
    """'80 layers, 8 KV heads, head dim 128' for a full-attention model, else one phrase per layer group."""
    if len(shape.cache) == 1 and shape.cache[0].kind is CacheKind.FULL:
        group = shape.cache[0]
        return f"{group.layers} layers, {group.heads} KV heads, head dim {group.vectors[0]}"
    return " + ".join(_describe_group(group) for group in shape.cache)


def _describe_group(group: CacheGroup) -> str:
    if group.kind is CacheKind.LATENT:
        latent, rope = group.vectors
        return f"{group.layers} MLA layers (latent {latent} + rope key {rope} per token, not split by TP)"
    if group.kind is CacheKind.STATE:
        state = f"{group.heads} state heads, {group.values_per_head:,} values each"
        return f"{group.layers} linear-attention layers ({state})"
    heads = f"{group.heads} KV heads, head dim {group.vectors[0]}"
    if group.kind is CacheKind.SLIDING:
        return f"{group.layers} sliding-window layers (window {group.window:,}, {heads})"
    return f"{group.layers} full-attention layers ({heads})"


def render_table(plan: CapacityPlan, source: str, requested: Sequence[str] = ()) -> str:
    """The plan as text: a header of inputs, one aligned row per KV format, then notes and warnings."""
    shape, gpu = plan.shape, plan.gpu
    header = [
        (
            "Model",
            f"{source}: {describe_cache(shape)}, {parameter_count(shape.parameter_count)} parameters",
        ),
        (
            "Replica",
            f"{plan.gpus_per_replica} x {gpu.name} ({format_bytes(gpu.memory_bytes)} each, compute "
            f"capability {format_compute_capability(gpu.compute_capability)}), tensor parallel "
            f"{plan.tensor_parallel}",
        ),
        ("Memory", _memory_line(plan)),
        ("Sequence", f"{plan.sequence_length:,} tokens (SEQUENCES: how many fit in the KV cache at once)"),
    ]
    width = max(len(label) for label, _ in header)
    lines = [f"{label:<{width}}  {text}" for label, text in header]
    lines += ["", *_aligned(_rows(plan, requested)), *_notes(plan)]
    return "\n".join(lines) + "\n"


def _memory_line(plan: CapacityPlan) -> str:
    memory = plan.memory
    line = f"{format_bytes(memory.total_bytes)} in all; {plan.weights.name} weights {format_bytes(memory.weight_bytes)}"
    if not memory.weights_fit:
        return f"{line}: the weights alone do not fit"
    fraction = exact_decimal(plan.kv_memory_fraction)
    return f"{line}; KV cache {fraction} of the rest = {format_bytes(memory.kv_cache_bytes)}"


def _rows(plan: CapacityPlan, requested: Sequence[str]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            "KV FORMAT",
            "BYTES/VALUE",
            "KV/TOKEN",
            "PER GPU",
            "VS BF16",
            "TOKENS/REPLICA",
            "SEQUENCES",
            f"ON {plan.gpu.name}",
            "NOTE",
        )
    ]
    for row in plan.formats:
        rows.append(
            (
                row.kv_format.name,
                exact_decimal(row.kv_format.bytes_per_element),
                format_bytes(row.kv_bytes_per_token),
                format_bytes(row.kv_bytes_per_token_per_gpu),
                "-" if row.saving_vs_baseline == 0 else f"-{percent(row.saving_vs_baseline)}",
                f"{row.tokens_per_replica:,}",
                f"{row.sequences_per_replica:,}",
                "yes"
                if row.runs_on_gpu
                else f"no, needs {format_compute_capability(row.kv_format.min_compute_capability)}",
                _note(row, requested),
            )
        )
    return rows


def _note(row: FormatCapacity, requested: Sequence[str]) -> str:
    name = row.kv_format.name
    if not row.kv_format.selectable:
        return "comparison only"
    if name in requested:
        return "requested" if len(requested) == 1 else f"ladder #{list(requested).index(name) + 1}"
    return ""


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    numeric = {1, 5, 6}
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[column]) if column in numeric else cell.ljust(widths[column])
            for column, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _notes(plan: CapacityPlan) -> list[str]:
    notes = []
    names = {row.kv_format.name: row for row in plan.formats}
    notes += _cache_notes(plan)
    if "nvfp4" in names and "fp8" in names:
        saving = 1 - names["nvfp4"].kv_bytes_per_token / names["fp8"].kv_bytes_per_token
        states = any(group.per_sequence for group in plan.shape.cache)
        notes.append(
            f"nvfp4 stores {percent(saving)} less than fp8 per token, not 50%: every 16 values share a one-byte scale"
            + (", and the states stay in bf16." if states else ".")
        )
    notes += [f"Warning: {warning}." for warning in plan.warnings]
    return ["", *notes] if notes else []


def _cache_notes(plan: CapacityPlan) -> list[str]:
    kinds = {group.kind for group in plan.shape.cache}
    notes = []
    held = []
    if CacheKind.SLIDING in kinds:
        held.append("sliding-window layers keep at most their window")
    if CacheKind.STATE in kinds:
        held.append("linear-attention layers one bf16 state per sequence, whatever the KV format")
    if held:
        notes.append(f"KV/TOKEN averages one {plan.sequence_length:,}-token sequence: {'; '.join(held)}.")
    if CacheKind.LATENT in kinds:
        notes.append(
            "MLA: the latent and the rope key are both stored in the KV format, each scaled in blocks of its own."
        )
    return notes


def plan_as_json(plan: CapacityPlan, source: str, requested: Sequence[str] = ()) -> dict[str, Any]:
    """The plan as plain JSON data; byte counts are exact integers, ratios exact decimal strings."""
    shape, gpu, memory = plan.shape, plan.gpu, plan.memory
    return {
        "model": {
            "source": source,
            "numLayers": shape.num_layers,
            "cache": [_group_as_json(group) for group in shape.cache],
            "parameterCount": shape.parameter_count,
        },
        "gpu": {
            "name": gpu.name,
            "product": gpu.product,
            "memoryMiB": gpu.memory_mib,
            "computeCapability": format_compute_capability(gpu.compute_capability),
        },
        "gpusPerReplica": plan.gpus_per_replica,
        "tensorParallel": plan.tensor_parallel,
        "weights": plan.weights.name,
        "kvMemoryFraction": exact_decimal(plan.kv_memory_fraction),
        "sequenceLength": plan.sequence_length,
        "memory": {
            "totalBytes": memory.total_bytes,
            "weightBytes": memory.weight_bytes,
            "freeBytes": memory.free_bytes,
            "kvCacheBytes": memory.kv_cache_bytes,
            "weightsFit": memory.weights_fit,
        },
        "formats": [
            {
                "name": row.kv_format.name,
                "bytesPerValue": exact_decimal(row.kv_format.bytes_per_element),
                "kvBytesPerToken": _number(row.kv_bytes_per_token),
                "kvBytesPerTokenPerGpu": _number(row.kv_bytes_per_token_per_gpu),
                "tokensPerReplica": row.tokens_per_replica,
                "sequencesPerReplica": row.sequences_per_replica,
                "savingVsBf16": _exact(row.saving_vs_baseline),
                "runsOnGpu": row.runs_on_gpu,
                "selectable": row.kv_format.selectable,
                "requested": row.kv_format.name in requested,
            }
            for row in plan.formats
        ],
        "warnings": list(plan.warnings),
    }


def _group_as_json(group: CacheGroup) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": group.kind.name.lower(),
        "layers": group.layers,
        "heads": group.heads,
        "vectors": list(group.vectors),
        "perSequence": group.per_sequence,
        "splitByTensorParallel": group.split_by_tensor_parallel,
    }
    if group.window is not None:
        entry["window"] = group.window
    return entry
