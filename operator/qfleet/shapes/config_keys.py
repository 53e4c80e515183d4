"""Reading a Hugging Face `config.json`: typed values, each error naming the key it could not use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qfleet.shapes.model import ShapeError

Config = Mapping[str, Any]


def positive_int(config: Config, key: str, default: int | None = None) -> int:
    """`config[key]` as a positive integer; `default` when the key is absent or null."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"config.json needs {key} as a positive integer, got {value!r}")
    return value


def count(config: Config, key: str, default: int = 0) -> int:
    """`config[key]` as a whole number that may be 0 (`first_k_dense_replace`, `n_shared_experts`)."""
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(f"config.json needs {key} as a whole number, got {value!r}")
    return value


def flag(config: Config, key: str, default: bool = False) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ShapeError(f"config.json needs {key} as true or false, got {value!r}")
    return value


def int_list(config: Config, key: str) -> list[int]:
    value = config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise ShapeError(f"config.json needs {key} as a list of layer numbers, got {value!r}")
    return value


def head_dim(config: Config) -> int:
    """`head_dim`, or `hidden_size / num_attention_heads` where the config leaves it out."""
    if config.get("head_dim") is not None:
        return positive_int(config, "head_dim")
    return positive_int(config, "hidden_size") // positive_int(config, "num_attention_heads")


def key_value_heads(config: Config) -> int:
    """`num_key_value_heads`; a config without it has one KV head per attention head."""
    return positive_int(config, "num_key_value_heads", default=positive_int(config, "num_attention_heads"))
