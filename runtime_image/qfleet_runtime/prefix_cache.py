"""The prefix cache's accounting: blocks of prompt KV keyed by their whole prefix, kept LRU within a byte budget.

Pure Python (no torch): the payload of a block is opaque here, only its size in bytes counts. A block holds
`block_tokens` prompt tokens; its key is a hash chain over every token from the start of the prompt to the end of the
block, so two prompts share a block only when they agree on everything before it (the K/V of a token depend on all the
tokens before it). The same byte budget holds more blocks of a smaller format: that is how the KV format shows up in
the hit rate.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def block_keys(token_ids: Sequence[int], block_tokens: int, limit: int | None = None) -> list[str]:
    """Keys of the complete blocks of `token_ids` (at most `limit` blocks), each covering the whole prefix."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
    count = len(token_ids) // block_tokens
    if limit is not None:
        count = min(count, max(0, limit))
    keys, previous = [], b""
    for b in range(count):
        chunk = token_ids[b * block_tokens:(b + 1) * block_tokens]
        digest = hashlib.blake2b(previous + b"|" + ",".join(str(int(t)) for t in chunk).encode(), digest_size=16)
        previous = digest.digest()
        keys.append(digest.hexdigest())
    return keys


def reusable_blocks(prompt_tokens: int, block_tokens: int) -> int:
    """Complete blocks of a prompt that may come from the cache: at least the last prompt token is always computed
    (its logits give the first generated token)."""
    return max(0, prompt_tokens - 1) // block_tokens


@dataclass
class Lookup:
    hits: int
    """Leading blocks found (a block after a miss cannot be used: its prefix was not found)."""
    misses: int
    payloads: list[Any]


class PrefixCache:
    """LRU over blocks, within `budget_bytes`. A block larger than the whole budget is never kept."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must not be negative, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._blocks: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: str) -> bool:
        return key in self._blocks

    def lookup(self, keys: Sequence[str]) -> Lookup:
        """The longest run of leading keys held; those become most recently used. Counts hits and misses."""
        payloads = []
        for key in keys:
            held = self._blocks.get(key)
            if held is None:
                break
            self._blocks.move_to_end(key)
            payloads.append(held[0])
        hits, misses = len(payloads), len(keys) - len(payloads)
        self.hits += hits
        self.misses += misses
        return Lookup(hits, misses, payloads)

    def insert(self, key: str, payload: Any, nbytes: int) -> bool:
        """Keeps a block (most recently used), evicting the least recently used ones to make room; False when the
        block alone exceeds the budget. Inserting a held key refreshes it."""
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return True
        if nbytes > self.budget_bytes:
            return False
        while self.used_bytes + nbytes > self.budget_bytes and self._blocks:
            _, (_, size) = self._blocks.popitem(last=False)
            self.used_bytes -= size
            self.evictions += 1
        self._blocks[key] = (payload, nbytes)
        self.used_bytes += nbytes
        return True

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
