"""What `qfleet plan` plans for: read from a QuantizedModel YAML or a Hugging Face config.json."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from qfleet.api import KIND, QuantizedModel, parse_document
from qfleet.capacity import DEFAULT_KV_MEMORY_FRACTION
from qfleet.formats import WeightFormat, weight_format
from qfleet.shapes import KNOWN_SHAPES, ModelShape, ShapeError, shape_from_hf_config

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


def load_plan_input(path: Path, *, parameter_count: int | None = None) -> PlanInput:
    """Read `path`: a QuantizedModel document, or a Hugging Face config.json."""
    document = _load_single_document(path)
    if document.get("kind") == KIND:
        return _from_quantized_model(parse_document(document))
    if "num_hidden_layers" in document:
        return _from_hf_config(path, document, parameter_count)
    raise PlanInputError(
        f"{path} is neither a QuantizedModel (kind: {KIND}) nor a Hugging Face config.json (num_hidden_layers)"
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


def _from_hf_config(path: Path, config: dict[str, Any], parameter_count: int | None) -> PlanInput:
    try:
        shape = shape_from_hf_config(config, parameter_count)
    except ShapeError as exc:
        raise PlanInputError(f"{path}: {exc}") from None
    return PlanInput(
        source=str(path),
        shape=shape,
        weights=weight_format("bf16"),
        gpus_per_replica=1,
        tensor_parallel=None,
        kv_memory_fraction=DEFAULT_KV_MEMORY_FRACTION,
        sequence_length=DEFAULT_SEQUENCE_LENGTH,
        requested_kv_formats=(),
    )
