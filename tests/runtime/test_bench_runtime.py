"""The pieces of `make bench-runtime`, quickly: the seeded stream, the hit-rate accounting on a tiny budget, and the
planner against what the store really holds. The benchmark itself is not a test (benchmarks/runtime/bench.py)."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.runtime import stream  # noqa: E402

torch = pytest.importorskip("torch")

from benchmarks.runtime import bench  # noqa: E402
from qfleet.capacity import kv_bytes_per_token  # noqa: E402
from qfleet.formats import kv_format  # noqa: E402
from qfleet.shapes import known_shape  # noqa: E402
from qfleet_runtime import engine as eng  # noqa: E402
from qfleet_runtime.datasets import heldout_text  # noqa: E402
from qfleet_runtime.prefix_cache import PrefixCache, block_keys, reusable_blocks  # noqa: E402

SMALL = stream.StreamParams(seed=7, system_prompts=2, system_words=(60, 80), conversations=4, turns=(2, 3),
                            user_words=(8, 12), reply_words=(10, 15), concurrent=1)


# -- the stream -------------------------------------------------------------------------------------------------------

def test_the_stream_is_a_function_of_its_seed() -> None:
    text = heldout_text()
    assert stream.generate(stream.StreamParams(), text) == stream.generate(stream.StreamParams(), text)
    assert stream.generate(stream.StreamParams(), text) != stream.generate(stream.StreamParams(seed=23), text)


def test_every_turn_extends_the_previous_one_and_conversations_interleave() -> None:
    params = stream.StreamParams()
    requests = stream.generate(params, heldout_text())
    by_conversation: dict[int, list[stream.Request]] = {}
    for r in requests:
        by_conversation.setdefault(r.conversation, []).append(r)
    assert sorted(by_conversation) == list(range(params.conversations))
    for turns in by_conversation.values():
        assert [r.turn for r in turns] == list(range(len(turns)))
        assert params.turns[0] <= len(turns) <= params.turns[1]
        assert len({r.system for r in turns}) == 1
        assert turns[0].prompt.startswith(f"System prompt {turns[0].system}:")
        for before, after in zip(turns, turns[1:]):
            assert after.prompt.startswith(before.prompt) and len(after.prompt) > len(before.prompt)
    switches = sum(a.conversation != b.conversation for a, b in zip(requests, requests[1:]))
    assert switches > params.conversations, "conversations should interleave, not run one after the other"
    system = requests[0].prompt.split("\n\n")[1].split()
    assert params.system_words[0] <= len(system) <= params.system_words[1]


def test_system_prompt_popularity_is_skewed_as_zipf() -> None:
    shares = stream.popularity(stream.StreamParams())
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-12
    assert shares[0] / shares[1] == pytest.approx(2 ** 1.1)
    many = stream.generate(replace(stream.StreamParams(), conversations=400, turns=(1, 1)), heldout_text())
    counts = Counter(r.system for r in many)
    assert counts[0] > counts[1] > counts[5]
    assert counts[0] / 400 == pytest.approx(shares[0], abs=0.06)


# -- the accounting, on the real engine ------------------------------------------------------------------------------

def test_the_hit_rate_on_a_tiny_budget_is_what_the_prefix_cache_accounting_gives(model_dir: Path) -> None:
    prompts = [r.prompt for r in stream.generate(SMALL, heldout_text())]
    block_bytes = eng.DEFAULT_BLOCK_TOKENS * int(kv_bytes_per_token(known_shape(bench.SMOLLM), kv_format("bf16")))
    budget = 16 * block_bytes  # about one conversation's prompt: the next turn hits, the other system prompt misses
    engine = eng.Engine(eng.EngineConfig(kv_format="bf16", model_path=model_dir, amax=None, prefix_cache_bytes=budget,
                                         quality_share=0.0))
    try:
        row = bench.run_stream(engine, prompts)
        ids = [engine.tokenize(p) for p in prompts]
    finally:
        engine.close()
    replay, hits = PrefixCache(budget), 0
    for tokens in ids:
        keys = block_keys(tokens, eng.DEFAULT_BLOCK_TOKENS, limit=reusable_blocks(len(tokens), eng.DEFAULT_BLOCK_TOKENS))
        found = replay.lookup(keys)
        hits += found.hits
        for key in keys[found.hits:]:
            replay.insert(key, None, block_bytes)
    assert row["promptTokens"] == sum(map(len, ids))
    assert row["cachedTokens"] == hits * eng.DEFAULT_BLOCK_TOKENS
    assert row["hitRate"] == row["cachedTokens"] / row["promptTokens"]
    assert 0 < row["hitRate"] <= bench.ideal_hit_rate(ids, eng.DEFAULT_BLOCK_TOKENS)
    assert row["storeBlocks"] == 16 and row["evictions"] > 0
    assert row["bytesPerCachedToken"] == block_bytes / eng.DEFAULT_BLOCK_TOKENS


def test_the_planners_tokens_per_replica_are_what_the_store_holds_at_that_budget(model_dir: Path) -> None:
    budget, planned = bench.planner_budget(16)
    assert 16 * 2**20 <= budget < 17 * 2**20
    layers = known_shape(bench.SMOLLM).num_layers
    engine = eng.Engine(eng.EngineConfig(kv_format="nvfp4", model_path=model_dir, amax=((1e4, 1e4),) * layers,
                                         prefix_cache_bytes=budget, quality_share=0.0))
    words = heldout_text().split()
    prompts = [f"Part {i}. " + " ".join(words[i * 450:(i + 1) * 450]) for i in range(6)]  # ~3,500 distinct tokens
    try:
        row = bench.run_stream(engine, prompts)
    finally:
        engine.close()
    assert row["evictions"] > 0 and row["fallbackTokens"] == 0
    assert abs(row["storeTokens"] / planned["nvfp4"] - 1) < 0.01
    assert row["bytesPerCachedToken"] == pytest.approx(float(kv_bytes_per_token(known_shape(bench.SMOLLM),
                                                                                kv_format("nvfp4"))))
