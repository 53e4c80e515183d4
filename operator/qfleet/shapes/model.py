"""What a model keeps in its cache, layer group by layer group, and what its weights weigh.

Four kinds of layer cover the models qfleet plans for (docs/formats.md, "Attention kinds"):

- full attention: K and V of every token, one pair of vectors per KV head; tensor parallelism
  splits the heads;
- sliding window: the same, but at most `window` tokens;
- latent (MLA, DeepSeek-V2/V3 and kin): one compressed vector per token (the latent and the
  decoupled rope key), shared by all heads, so tensor parallelism cannot split it: every GPU of
  the group keeps all of it;
- state (linear attention, state-space layers): a fixed state per sequence, whatever its length,
  split by heads; kept in bfloat16, the KV format does not apply to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

STATE_BYTES_PER_VALUE = 2
"""Recurrent and convolution states stay in the model's bfloat16 (vLLM's and TensorRT-LLM's default)."""


class ShapeError(ValueError):
    """A model shape that cannot be known or derived."""


class CacheKind(Enum):
    FULL = "full attention"
    SLIDING = "sliding window"
    LATENT = "latent (MLA)"
    STATE = "recurrent state"


@dataclass(frozen=True)
class CacheGroup:
    """Layers that keep the same thing in the cache."""

    kind: CacheKind
    layers: int
    heads: int
    """Heads whose cache tensor parallelism splits (KV heads, state heads); 1 for a latent."""
    vectors: tuple[int, ...]
    """The vectors one head keeps, as value counts: per token for attention ((head_dim, head_dim) for K
    and V; (kv_lora_rank, qk_rope_head_dim) for a latent), per sequence for a state. A block scale
    never spans two vectors."""
    window: int | None = None
    """Tokens a sliding-window layer keeps at most."""

    def __post_init__(self) -> None:
        if self.layers < 1 or self.heads < 1 or not self.vectors or min(self.vectors) < 1:
            raise ShapeError(f"a {self.kind.value} group needs layers, heads and vector sizes of at least 1: {self}")
        if (self.window is not None) != (self.kind is CacheKind.SLIDING):
            raise ShapeError(f"a window belongs to sliding-window layers only, got {self}")
        if self.window is not None and self.window < 1:
            raise ShapeError(f"a sliding window must be at least 1 token, got {self.window}")

    @property
    def values_per_head(self) -> int:
        return sum(self.vectors)

    @property
    def per_sequence(self) -> bool:
        """True for a state: its size does not grow with the sequence."""
        return self.kind is CacheKind.STATE

    @property
    def quantized(self) -> bool:
        """Whether the KV format stores it (states stay in bfloat16)."""
        return self.kind is not CacheKind.STATE

    @property
    def split_by_tensor_parallel(self) -> bool:
        return self.kind is not CacheKind.LATENT

    def tokens_held(self, sequence_length: int) -> int:
        """Entries one sequence of `sequence_length` tokens keeps per head: tokens, or 1 state."""
        if self.kind is CacheKind.STATE:
            return 1
        if self.kind is CacheKind.SLIDING:
            assert self.window is not None
            return min(sequence_length, self.window)
        return sequence_length

    def stored_heads(self, tensor_parallel: int) -> int:
        """Heads a replica stores: split, each GPU holds ceil(heads / tp) (so a tp wider than the heads
        replicates them); not split, each GPU holds all of them."""
        if self.split_by_tensor_parallel:
            return tensor_parallel * math.ceil(self.heads / tensor_parallel)
        return tensor_parallel * self.heads


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's exact size, from `metadata.total_size` of its `model.safetensors.index.json`."""

    weight_format: str | None
    """The weight format its tensors are stored in (a row of `WEIGHT_FORMATS`), None when none matches."""
    total_bytes: int


@dataclass(frozen=True)
class ModelShape:
    cache: tuple[CacheGroup, ...]
    parameter_count: int
    checkpoint: Checkpoint | None = None

    def __post_init__(self) -> None:
        if not self.cache:
            raise ShapeError("a model shape needs at least one layer group")
        if self.parameter_count < 1:
            raise ShapeError(f"parameter_count must be at least 1, got {self.parameter_count}")

    @property
    def num_layers(self) -> int:
        return sum(group.layers for group in self.cache)


def dense_shape(num_layers: int, num_key_value_heads: int, head_dim: int, parameter_count: int) -> ModelShape:
    """A decoder whose every layer is full attention (Llama, Mistral, Qwen3, ...)."""
    named = {"num_layers": num_layers, "num_key_value_heads": num_key_value_heads, "head_dim": head_dim}
    for name, value in named.items():
        if value < 1:
            raise ShapeError(f"{name} must be at least 1, got {value}")
    return ModelShape(
        cache=(CacheGroup(CacheKind.FULL, num_layers, num_key_value_heads, (head_dim, head_dim)),),
        parameter_count=parameter_count,
    )
