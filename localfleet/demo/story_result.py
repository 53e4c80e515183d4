"""What a story did: whether it passed, its summary and facts, its traffic and its verdict on each KV format."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StoryResult:
    key: str
    title: str
    started: float
    finished: float | None = None
    passed: bool = False
    summary: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    traffic: dict | None = None
    formats: dict[str, str] = field(default_factory=dict)
    """KV format -> what the default gates made of it and why, with the numbers (the report's format table)."""
