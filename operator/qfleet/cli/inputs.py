"""What `qfleet plan` plans for: a QuantizedModel YAML, a Hugging Face config.json, or a checkpoint
directory holding config.json and (optionally) model.safetensors.index.json."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import json

import yaml

from qfleet.api import KIND, QuantizedModel, parse_document
from qfleet.capacity import DEFAULT_KV_MEMORY_FRACTION
from qfleet.formats import WEIGHT_FORMATS, WeightFormat, weight_format
from qfleet.shapes import KNOWN_SHAPES, ModelShape, ShapeError, checkpoint_weight_format, shape_from_hf_config

DEFAULT_SEQUENCE_LENGTH = 8192


class PlanInputError(Exception):
    """A model file that cannot be planned for; the message says what to change."""


@dataclass(frozen=True)
class PlanInput:
    source: str
    """Where the shape came from: the model URI, or the config file's path."""
    shape: ModelShape
    weights: WeightFormat
    gpus_per_replica: int
    tensor_parallel: int | None
    kv_memory_fraction: Fraction
    sequence_length: int
    requested_kv_formats: tuple[str, ...]
    """KV formats the spec asks for (the ladder, best first, for `auto`); empty for a config.json."""


CHECKPOINT_INDEX = "model.safetensors.index.json"


def load_plan_input(path: Path, *, parameter_count: int | None = None) -> PlanInput:
    """Read `path`: a QuantizedModel document, a Hugging Face config.json, or a directory with both
    config.json and the checkpoint's index (whose `metadata.total_size` gives the exact weight bytes)."""
    if path.is_dir():
        return _from_checkpoint_directory(path, parameter_count)
    document = _load_single_document(path)
    if document.get("kind") == KIND:
        return _from_quantized_model(parse_document(document))
    if "num_hidden_layers" in document or "model_type" in document:
        return _from_hf_config(path, document, parameter_count, checkpoint_bytes=None)
    raise PlanInputError(
        f"{path} is neither a QuantizedModel (kind: {KIND}) nor a Hugging Face config.json (model_type)"
    )


def _load_single_document(path: Path) -> dict[str, Any]:
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except OSError as exc:
        raise PlanInputError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PlanInputError(f"{path} is not YAML or JSON: {exc}") from None
    if len(documents) != 1:
        raise PlanInputError(f"{path} must hold exactly one document; it holds {len(documents)}")
    if not isinstance(documents[0], dict):
        raise PlanInputError(f"{path} must hold a mapping (a QuantizedModel or a config.json), not a list or a value")
    return documents[0]


def _from_quantized_model(model: QuantizedModel) -> PlanInput:
    spec = model.spec
    shape = spec.model.resolved_shape()
    if shape is None:
        raise PlanInputError(
            f"the shape of {spec.model.uri} is unknown: add spec.model.shape "
            "(numLayers, numKeyValueHeads, headDim, parameterCount); built-in shapes: " + ", ".join(KNOWN_SHAPES)
        )
    return PlanInput(
        source=spec.model.uri,
        shape=shape,
        weights=weight_format(spec.quantization.weights),
        gpus_per_replica=spec.node_pool.gpus_per_replica,
        tensor_parallel=spec.tensor_parallel,
        kv_memory_fraction=Fraction(spec.engine.kv_cache_free_gpu_memory_fraction),
        sequence_length=spec.engine.max_seq_len,
        requested_kv_formats=spec.quantization.candidate_kv_formats,
    )


def _from_checkpoint_directory(directory: Path, parameter_count: int | None) -> PlanInput:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise PlanInputError(f"{directory} is a directory without a config.json")
    config = _load_single_document(config_path)
    index_path = directory / CHECKPOINT_INDEX
    checkpoint_bytes = _total_size(index_path) if index_path.is_file() else None
    return _from_hf_config(directory, config, parameter_count, checkpoint_bytes)


def _total_size(index_path: Path) -> int:
    try:
        total = json.loads(index_path.read_text())["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PlanInputError(f"{index_path} has no metadata.total_size") from None
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise PlanInputError(f"{index_path}: metadata.total_size must be a positive number of bytes, got {total!r}")
    return total


def _from_hf_config(
    path: Path, config: dict[str, Any], parameter_count: int | None, checkpoint_bytes: int | None
) -> PlanInput:
    try:
        shape = shape_from_hf_config(config, parameter_count, checkpoint_bytes)
    except ShapeError as exc:
        raise PlanInputError(f"{path}: {exc}") from None
    stored = checkpoint_weight_format(config)
    return PlanInput(
        source=str(path),
        shape=shape,
        weights=weight_format(stored if stored in WEIGHT_FORMATS else "bf16"),
        gpus_per_replica=1,
        tensor_parallel=None,
        kv_memory_fraction=DEFAULT_KV_MEMORY_FRACTION,
        sequence_length=DEFAULT_SEQUENCE_LENGTH,
        requested_kv_formats=(),
    )
