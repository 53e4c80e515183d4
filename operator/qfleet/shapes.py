"""Model shapes: the few numbers the capacity planner needs, from a catalog or a Hugging Face config.

KV bytes per token depend on layers, KV heads and head dimension; weight bytes on the parameter
count. `shape_from_hf_config` derives all four from a `config.json` of a dense Llama-style
decoder (Llama, Mistral); other architectures need the parameter count given explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ShapeError(ValueError):
    """A model shape that cannot be known or derived."""


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    parameter_count: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_key_value_heads", "head_dim", "parameter_count"):
            if getattr(self, name) < 1:
                raise ShapeError(f"{name} must be at least 1, got {getattr(self, name)}")


_LLAMA_70B = ModelShape(num_layers=80, num_key_value_heads=8, head_dim=128, parameter_count=70_553_706_496)
_LLAMA_8B = ModelShape(num_layers=32, num_key_value_heads=8, head_dim=128, parameter_count=8_030_261_248)
_SMOLLM2_135M = ModelShape(num_layers=30, num_key_value_heads=3, head_dim=64, parameter_count=134_515_008)

KNOWN_SHAPES: dict[str, ModelShape] = {
    "hf://meta-llama/Llama-3.3-70B-Instruct": _LLAMA_70B,
    "hf://meta-llama/Llama-3.1-70B-Instruct": _LLAMA_70B,
    "hf://meta-llama/Llama-3.1-8B": _LLAMA_8B,
    "hf://meta-llama/Llama-3.1-8B-Instruct": _LLAMA_8B,
    "hf://HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
}
"""Shapes of models we plan for often, keyed by `spec.model.uri` (parameter counts are exact)."""


def known_shape(uri: str) -> ModelShape | None:
    """The catalog shape for a model URI, ignoring case and a trailing slash."""
    wanted = uri.rstrip("/").lower()
    for key, shape in KNOWN_SHAPES.items():
        if key.lower() == wanted:
            return shape
    return None


_DENSE_DECODER_TYPES = frozenset({"llama", "mistral"})
_MIXTURE_OF_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def shape_from_hf_config(config: Mapping[str, Any], parameter_count: int | None = None) -> ModelShape:
    """The shape described by a Hugging Face `config.json`.

    The parameter count is computed for dense Llama-style decoders (embeddings, attention,
    gated MLP, RMS norms, and an untied LM head unless `tie_word_embeddings`); pass
    `parameter_count` for any other architecture.
    """
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    hidden = _positive_int(config, "hidden_size")
    kv_heads = _positive_int(config, "num_key_value_heads") if "num_key_value_heads" in config else heads
    head_dim = _positive_int(config, "head_dim") if config.get("head_dim") else hidden // heads
    if parameter_count is None:
        parameter_count = _dense_decoder_parameters(config, layers, heads, kv_heads, head_dim, hidden)
    return ModelShape(
        num_layers=layers, num_key_value_heads=kv_heads, head_dim=head_dim, parameter_count=parameter_count
    )


def _dense_decoder_parameters(
    config: Mapping[str, Any], layers: int, heads: int, kv_heads: int, head_dim: int, hidden: int
) -> int:
    model_type = config.get("model_type")
    moe_key = next((key for key in _MIXTURE_OF_EXPERTS_KEYS if key in config), None)
    if model_type not in _DENSE_DECODER_TYPES or moe_key is not None:
        what = f"mixture-of-experts ({moe_key})" if moe_key else f"model_type {model_type!r}"
        raise ShapeError(
            f"cannot count the parameters of a {what} model from its config: give the count "
            "(spec.model.shape.parameterCount, or --parameters for qfleet plan)"
        )
    vocab = _positive_int(config, "vocab_size")
    intermediate = _positive_int(config, "intermediate_size")
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if config.get("attention_bias"):
        attention += heads * head_dim + kv_heads * head_dim * 2 + hidden
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if config.get("mlp_bias") else 0)
    norms = 2 * hidden
    embeddings = vocab * hidden
    lm_head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return embeddings + layers * (attention + mlp + norms) + hidden + lm_head


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"config.json needs {key} as a positive integer, got {value!r}")
    return value
