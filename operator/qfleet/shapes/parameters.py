"""Parameter counts from a Hugging Face `config.json`, summed layer by layer.

Counted: embeddings, an untied LM head, the final norm and, per layer, its norms, its token mixer
(grouped-query attention, multi-head latent attention or a Gated DeltaNet) and its feed-forward
(a gated MLP or a mixture of experts with its router and shared experts). Not counted: layers a
checkpoint carries only for speculative decoding (`num_nextn_predict_layers`, `mtp_num_hidden_layers`),
which engines load only when asked to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from qfleet.shapes.config_keys import Config, count, flag, head_dim, int_list, key_value_heads, positive_int
from qfleet.shapes.model import CacheKind, ShapeError


@dataclass(frozen=True)
class WeightRecipe:
    """What one architecture's layers hold beyond what its config.json says outright."""

    attention_biases: Literal["config", "qkv"] = "config"
    """"config": `attention_bias` puts biases on q, k, v and o (Llama, gpt-oss); "qkv": always on q, k, v (Qwen2)."""
    qk_norm: bool = False
    gated_query: bool = False
    """q_proj also yields an output gate, doubling it (Qwen3-Next)."""
    attention_sinks: bool = False
    """One learned sink logit per head (gpt-oss)."""
    norms_per_layer: int = 2
    tied_by_default: bool = False
    experts_key: str | None = None
    """The config key with the number of routed experts; None for a dense model."""
    expert_biases: bool = False
    router_bias: bool = False


def count_parameters(config: Config, recipe: WeightRecipe, kinds: Sequence[CacheKind]) -> int:
    """Parameters of a decoder whose layer `i` is of kind `kinds[i]`."""
    hidden = positive_int(config, "hidden_size")
    embeddings = positive_int(config, "vocab_size") * hidden
    lm_head = 0 if flag(config, "tie_word_embeddings", recipe.tied_by_default) else embeddings
    layers = sum(
        recipe.norms_per_layer * hidden + _mixer(config, recipe, kind) + _feed_forward(config, recipe, index)
        for index, kind in enumerate(kinds)
    )
    return embeddings + layers + hidden + lm_head


def _mixer(config: Config, recipe: WeightRecipe, kind: CacheKind) -> int:
    if kind is CacheKind.LATENT:
        return _latent_attention(config)
    if kind is CacheKind.STATE:
        return _gated_delta_net(config)
    return _grouped_query_attention(config, recipe)


def _grouped_query_attention(config: Config, recipe: WeightRecipe) -> int:
    hidden, heads = positive_int(config, "hidden_size"), positive_int(config, "num_attention_heads")
    kv_heads, dim = key_value_heads(config), head_dim(config)
    query = heads * dim * (2 if recipe.gated_query else 1)
    total = hidden * query + 2 * hidden * kv_heads * dim + heads * dim * hidden
    if recipe.attention_biases == "qkv":
        total += query + 2 * kv_heads * dim
    elif flag(config, "attention_bias"):
        total += query + 2 * kv_heads * dim + hidden
    if recipe.qk_norm:
        total += 2 * dim
    if recipe.attention_sinks:
        total += heads
    return total


def _latent_attention(config: Config) -> int:
    """DeepSeek's MLA: low-rank queries (or a plain q_proj without `q_lora_rank`), a shared KV latent."""
    hidden, heads = positive_int(config, "hidden_size"), positive_int(config, "num_attention_heads")
    latent, rope = positive_int(config, "kv_lora_rank"), positive_int(config, "qk_rope_head_dim")
    nope, value = positive_int(config, "qk_nope_head_dim"), positive_int(config, "v_head_dim")
    query_rank = config.get("q_lora_rank")
    if query_rank is None:
        query = hidden * heads * (nope + rope)
    else:
        query_rank = positive_int(config, "q_lora_rank")
        query = hidden * query_rank + query_rank + query_rank * heads * (nope + rope)
    key_value = hidden * (latent + rope) + latent + latent * heads * (nope + value)
    return query + key_value + heads * value * hidden


def _gated_delta_net(config: Config) -> int:
    """Qwen3-Next's linear attention: fused q/k/v/z and beta/alpha projections, a causal conv, a gated norm."""
    hidden = positive_int(config, "hidden_size")
    key_heads = positive_int(config, "linear_num_key_heads")
    value_heads = positive_int(config, "linear_num_value_heads")
    key_dim = key_heads * positive_int(config, "linear_key_head_dim")
    value_head_dim = positive_int(config, "linear_value_head_dim")
    value_dim = value_heads * value_head_dim
    conv = (2 * key_dim + value_dim) * positive_int(config, "linear_conv_kernel_dim")
    projections = hidden * (2 * key_dim + 2 * value_dim) + hidden * 2 * value_heads + value_dim * hidden
    return projections + conv + 2 * value_heads + value_head_dim


def _feed_forward(config: Config, recipe: WeightRecipe, index: int) -> int:
    hidden = positive_int(config, "hidden_size")
    if recipe.experts_key is None or not _is_mixture_of_experts(config, index):
        intermediate = positive_int(config, "intermediate_size")
        bias = 2 * intermediate + hidden if flag(config, "mlp_bias") else 0
        return 3 * hidden * intermediate + bias
    experts = positive_int(config, recipe.experts_key)
    size = positive_int(config, "moe_intermediate_size", default=positive_int(config, "intermediate_size"))
    total = experts * 3 * hidden * size + experts * hidden
    if recipe.expert_biases:
        total += experts * (2 * size + hidden)
    if recipe.router_bias or config.get("topk_method") == "noaux_tc":
        total += experts
    total += count(config, "n_shared_experts") * 3 * hidden * size
    shared = count(config, "shared_expert_intermediate_size")
    if shared:
        total += 3 * hidden * shared + hidden
    return total


def _is_mixture_of_experts(config: Config, index: int) -> bool:
    """DeepSeek: the first `first_k_dense_replace` layers are dense, then every `moe_layer_freq`-th;
    Qwen: every `decoder_sparse_step`-th layer outside `mlp_only_layers`. Absent keys mean every layer."""
    return (
        index >= count(config, "first_k_dense_replace")
        and index % positive_int(config, "moe_layer_freq", default=1) == 0
        and (index + 1) % positive_int(config, "decoder_sparse_step", default=1) == 0
        and index not in int_list(config, "mlp_only_layers")
    )


def siglip_vision_parameters(vision: Config, text_hidden: int) -> int:
    """A SigLIP vision tower without its pooling head, plus Gemma 3's projector into the text model."""
    if flag(vision, "vision_use_head", default=True):
        raise ShapeError("cannot count a SigLIP tower with its pooling head (vision_config.vision_use_head is true)")
    hidden, intermediate = positive_int(vision, "hidden_size"), positive_int(vision, "intermediate_size")
    patch, channels = positive_int(vision, "patch_size"), positive_int(vision, "num_channels", default=3)
    positions = (positive_int(vision, "image_size") // patch) ** 2
    attention = 4 * (hidden * hidden + hidden)
    mlp = hidden * intermediate + intermediate + intermediate * hidden + hidden
    layer = attention + mlp + 2 * 2 * hidden
    embeddings = channels * patch * patch * hidden + hidden + positions * hidden
    tower = embeddings + positive_int(vision, "num_hidden_layers") * layer + 2 * hidden
    projector = hidden * text_hidden + hidden
    return tower + projector
