"""`shape_from_hf_config`: a model's cache layout and parameter count from its Hugging Face `config.json`.

Each `model_type` qfleet understands has a `Family`: how its layers divide into attention kinds
when the config has no `layer_types` list, and what its layers weigh. Any other `model_type` is
refused with the keys that would have shaped its cache, never planned as if it were Llama.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qfleet.shapes.config_keys import Config, flag, head_dim, key_value_heads, positive_int
from qfleet.shapes.model import CacheGroup, CacheKind, Checkpoint, ModelShape, ShapeError
from qfleet.shapes.parameters import WeightRecipe, count_parameters, siglip_vision_parameters

LayerRule = Callable[[Config, int], list[CacheKind]]

_LAYER_TYPES = {
    "full_attention": CacheKind.FULL,
    "sliding_attention": CacheKind.SLIDING,
    "linear_attention": CacheKind.STATE,
}

_CACHE_SHAPING_KEYS = (
    "layer_types",
    "sliding_window",
    "sliding_window_pattern",
    "use_sliding_window",
    "full_attention_interval",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "attention_chunk_size",
    "no_rope_layers",
    "num_kv_shared_layers",
    "attn_layer_period",
    "attn_layer_offset",
    "hybrid_override_pattern",
    "linear_num_value_heads",
    "mamba_d_state",
    "ssm_state_size",
    "mamba_num_heads",
    "block_types",
    "text_config",
)
"""Keys that change what a model caches; an unknown architecture's refusal names those it has."""


def _full(config: Config, layers: int) -> list[CacheKind]:
    return [CacheKind.FULL] * layers


def _window_on_every_layer(config: Config, layers: int) -> list[CacheKind]:
    """Mistral, Mixtral, Phi-3: a non-null `sliding_window` applies to every layer."""
    return [CacheKind.SLIDING if config.get("sliding_window") is not None else CacheKind.FULL] * layers


def _window_above_max_window_layers(config: Config, layers: int) -> list[CacheKind]:
    """Qwen2/Qwen3: with `use_sliding_window`, layers from `max_window_layers` on slide."""
    if not flag(config, "use_sliding_window"):
        return _full(config, layers)
    first = positive_int(config, "max_window_layers", default=layers)
    return [CacheKind.SLIDING if index >= first else CacheKind.FULL for index in range(layers)]


def _every_nth_full(key: str | None, period: int, others: CacheKind) -> LayerRule:
    """Layer i is full attention when (i + 1) is a multiple of the period (`config[key]`, else `period`)."""

    def rule(config: Config, layers: int) -> list[CacheKind]:
        every = positive_int(config, key, default=period) if key else period
        return [CacheKind.FULL if (index + 1) % every == 0 else others for index in range(layers)]

    return rule


def _latent(config: Config, layers: int) -> list[CacheKind]:
    return [CacheKind.LATENT] * layers


@dataclass(frozen=True)
class Family:
    layers: LayerRule = _full
    """Per-layer kinds when the config has no `layer_types`."""
    weights: WeightRecipe = field(default_factory=WeightRecipe)
    text_defaults: Mapping[str, Any] = field(default_factory=dict)
    """transformers' defaults for keys that published configs of the family leave out."""


_GEMMA3_TEXT_DEFAULTS = {"vocab_size": 262_208, "tie_word_embeddings": True, "sliding_window_pattern": 6}
_GEMMA3_TEXT = Family(
    layers=_every_nth_full("sliding_window_pattern", 6, CacheKind.SLIDING),
    weights=WeightRecipe(qk_norm=True, norms_per_layer=4, tied_by_default=True),
    text_defaults=_GEMMA3_TEXT_DEFAULTS,
)
_DEEPSEEK = Family(layers=_latent, weights=WeightRecipe(experts_key="n_routed_experts"))

FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(layers=_window_on_every_layer),
    "mixtral": Family(layers=_window_on_every_layer, weights=WeightRecipe(experts_key="num_local_experts")),
    "phi3": Family(layers=_window_on_every_layer),
    "qwen2": Family(layers=_window_above_max_window_layers, weights=WeightRecipe(attention_biases="qkv")),
    "qwen3": Family(layers=_window_above_max_window_layers, weights=WeightRecipe(qk_norm=True)),
    "qwen3_moe": Family(
        layers=_window_above_max_window_layers, weights=WeightRecipe(qk_norm=True, experts_key="num_experts")
    ),
    "qwen3_next": Family(
        layers=_every_nth_full("full_attention_interval", 4, CacheKind.STATE),
        weights=WeightRecipe(qk_norm=True, gated_query=True, experts_key="num_experts"),
    ),
    "deepseek_v2": _DEEPSEEK,
    "deepseek_v3": _DEEPSEEK,
    "kimi_k2": _DEEPSEEK,
    "gemma2": Family(
        layers=_every_nth_full(None, 2, CacheKind.SLIDING),
        weights=WeightRecipe(norms_per_layer=4, tied_by_default=True),
    ),
    "gemma3_text": _GEMMA3_TEXT,
    "gemma3": _GEMMA3_TEXT,
    "gpt_oss": Family(
        layers=_every_nth_full(None, 2, CacheKind.SLIDING),
        weights=WeightRecipe(
            attention_sinks=True, experts_key="num_local_experts", expert_biases=True, router_bias=True
        ),
    ),
}
"""The `model_type`s qfleet plans for. gemma3 is the multimodal wrapper: its `text_config` is gemma3_text."""


def shape_from_hf_config(
    config: Config, parameter_count: int | None = None, checkpoint_bytes: int | None = None
) -> ModelShape:
    """The shape described by a Hugging Face `config.json`.

    `parameter_count` overrides the count computed from the config; `checkpoint_bytes` is
    `metadata.total_size` of the checkpoint's `model.safetensors.index.json`, the exact weight bytes
    in the checkpoint's own format (`checkpoint_weight_format`).
    """
    family = _family(config)
    text = _text_config(config, family)
    kinds = layer_kinds(text, family)
    if parameter_count is None:
        parameter_count = count_parameters(text, family.weights, kinds)
        if "vision_config" in config:
            parameter_count += siglip_vision_parameters(config["vision_config"], positive_int(text, "hidden_size"))
    checkpoint = None if checkpoint_bytes is None else Checkpoint(checkpoint_weight_format(config), checkpoint_bytes)
    return ModelShape(cache=_cache_groups(text, kinds), parameter_count=parameter_count, checkpoint=checkpoint)


def layer_kinds(config: Config, family: Family) -> list[CacheKind]:
    """What each layer caches: from `layer_types` where the config lists them, else the family's rule."""
    layers = positive_int(config, "num_hidden_layers")
    if "layer_types" not in config:
        return family.layers(config, layers)
    names = config["layer_types"]
    if not isinstance(names, list) or len(names) != layers:
        raise ShapeError(f"config.json's layer_types must list the {layers} layers (num_hidden_layers), got {names!r}")
    unknown = sorted({name for name in names if name not in _LAYER_TYPES})
    if unknown:
        raise ShapeError(
            f"config.json's layer_types has kinds qfleet cannot plan for: {', '.join(map(repr, unknown))} "
            f"(it knows {', '.join(_LAYER_TYPES)})"
        )
    return [_LAYER_TYPES[name] for name in names]


def checkpoint_weight_format(config: Config) -> str | None:
    """The weight format a checkpoint stores (`quantization_config`, else `torch_dtype`), if qfleet has it."""
    quantization = config.get("quantization_config")
    if isinstance(quantization, Mapping):
        method = str(quantization.get("quant_method", "")).lower()
        if method == "modelopt":
            method = str(quantization.get("quant_algo", "")).lower()
        return method if method in ("fp8", "nvfp4") else None
    dtype = config.get("torch_dtype", config.get("dtype"))
    return "bf16" if dtype == "bfloat16" else None


def _family(config: Config) -> Family:
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is not None:
        return family
    keys = [key for key in _CACHE_SHAPING_KEYS if key in config]
    architectures = config.get("architectures") or []
    raise ShapeError(
        f"qfleet does not know how model_type {model_type!r} "
        f"({', '.join(map(str, architectures)) or 'no architectures'}) lays out its cache; "
        f"keys it could not interpret: {', '.join(['model_type', *keys])}. "
        f"It plans for model types {', '.join(sorted(FAMILIES))}"
    )


def _text_config(config: Config, family: Family) -> Config:
    text = config.get("text_config", config)
    if not isinstance(text, Mapping):
        raise ShapeError(f"config.json's text_config must be a mapping, got {text!r}")
    return {**family.text_defaults, **text}


def _cache_groups(config: Config, kinds: list[CacheKind]) -> tuple[CacheGroup, ...]:
    """One group per kind of layer, in `CacheKind` order."""
    layers = Counter(kinds)
    return tuple(_group(config, kind, layers[kind]) for kind in CacheKind if layers[kind])


def _group(config: Config, kind: CacheKind, layers: int) -> CacheGroup:
    if kind is CacheKind.LATENT:
        latent = (positive_int(config, "kv_lora_rank"), positive_int(config, "qk_rope_head_dim"))
        return CacheGroup(kind, layers, heads=1, vectors=latent)
    if kind is CacheKind.STATE:
        return _gated_delta_net_state(config, layers)
    dim = head_dim(config)
    window = positive_int(config, "sliding_window") if kind is CacheKind.SLIDING else None
    return CacheGroup(kind, layers, heads=key_value_heads(config), vectors=(dim, dim), window=window)


def _gated_delta_net_state(config: Config, layers: int) -> CacheGroup:
    """Per value head: the recurrent state (key dim x value dim) and its share of the causal conv's
    last `kernel - 1` inputs (queries, keys and values)."""
    value_heads = positive_int(config, "linear_num_value_heads")
    key_dim = positive_int(config, "linear_key_head_dim")
    value_dim = positive_int(config, "linear_value_head_dim")
    conv_channels = 2 * positive_int(config, "linear_num_key_heads") * key_dim + value_heads * value_dim
    conv_values = (positive_int(config, "linear_conv_kernel_dim") - 1) * conv_channels
    if conv_values % value_heads:
        raise ShapeError(
            f"the conv state ({conv_values} values) does not divide among linear_num_value_heads={value_heads}"
        )
    vectors = (key_dim * value_dim, conv_values // value_heads)
    return CacheGroup(CacheKind.STATE, layers, heads=value_heads, vectors=vectors)
