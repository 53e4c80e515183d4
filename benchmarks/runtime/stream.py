"""A seeded prompt stream with reuse, as a chat service sees it: shared system prompts and multi-turn conversations.

Pure standard library, no tokenizer: lengths are in words of the source text (the benchmark reports the tokens it
measured). The stream is a function of `StreamParams` and the source text only, so every KV format gets the same one.

- `system_prompts` distinct system prompts, each a header naming it plus a contiguous run of `system_words` words
  of the source text (uniform in the range).
- `conversations` conversations; each picks its system prompt by popularity (Zipf: prompt i, counted from 0, has
  weight 1 / (i + 1) ** `zipf_s`, so a few prompts carry most of the traffic) and has `turns` turns (uniform).
- Turn t's prompt is turn t-1's prompt, the assistant's reply to it (`reply_words`, text of the source standing in for
  the model's answer, so the stream does not depend on the model) and a new user message (`user_words`):
  every turn extends the previous one, so its whole history is a reusable prefix.
- `concurrent` conversations are open at once; each request comes from one of them, chosen uniformly; a finished
  conversation is replaced by the next one. Interleaving is what makes a small cache evict a prefix before its reuse.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StreamParams:
    seed: int = 22
    system_prompts: int = 6
    system_words: tuple[int, int] = (150, 350)
    zipf_s: float = 1.1
    conversations: int = 12
    turns: tuple[int, int] = (1, 4)
    user_words: tuple[int, int] = (15, 40)
    reply_words: tuple[int, int] = (25, 60)
    concurrent: int = 4

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    index: int
    conversation: int
    turn: int
    """0 for a conversation's first request."""
    system: int
    """Which system prompt (0 is the most popular)."""
    prompt: str


def popularity(params: StreamParams) -> list[float]:
    """Each system prompt's share of the conversations (Zipf with exponent zipf_s), most popular first."""
    weights = [1.0 / (i + 1) ** params.zipf_s for i in range(params.system_prompts)]
    total = sum(weights)
    return [w / total for w in weights]


def _excerpt(words: list[str], rng: random.Random, bounds: tuple[int, int]) -> str:
    count = rng.randint(*bounds)
    if count >= len(words):
        raise ValueError(f"the source text has {len(words)} words, fewer than the {count} asked for")
    start = rng.randrange(0, len(words) - count)
    return " ".join(words[start: start + count])


def generate(params: StreamParams, source: str) -> list[Request]:
    """The stream of requests, in arrival order."""
    if params.system_prompts < 1 or params.conversations < 1 or params.concurrent < 1:
        raise ValueError("system_prompts, conversations and concurrent must be at least 1")
    words = source.split()
    rng = random.Random(params.seed)
    systems = [f"System prompt {i}: answer questions about this part of the Python reference.\n\n"
               f"{_excerpt(words, rng, params.system_words)}" for i in range(params.system_prompts)]
    weights = popularity(params)
    plans = []
    for c in range(params.conversations):
        system = rng.choices(range(params.system_prompts), weights=weights)[0]
        turns = rng.randint(*params.turns)
        users = [_excerpt(words, rng, params.user_words) for _ in range(turns)]
        replies = [_excerpt(words, rng, params.reply_words) for _ in range(turns - 1)]
        plans.append((c, system, users, replies))

    requests: list[Request] = []
    waiting = list(reversed(plans))
    open_: list[list] = []  # [plan, next turn, prompt so far]
    while waiting or open_:
        while waiting and len(open_) < params.concurrent:
            open_.append([waiting.pop(), 0, ""])
        slot = rng.randrange(len(open_))
        (c, system, users, replies), turn, history = open_[slot]
        if turn == 0:
            prompt = f"{systems[system]}\n\nUser: {users[0]}\n\nAssistant:"
        else:
            prompt = f"{history} {replies[turn - 1]}\n\nUser: {users[turn]}\n\nAssistant:"
        requests.append(Request(len(requests), c, turn, system, prompt))
        if turn + 1 == len(users):
            open_.pop(slot)
        else:
            open_[slot][1:] = [turn + 1, prompt]
    return requests
