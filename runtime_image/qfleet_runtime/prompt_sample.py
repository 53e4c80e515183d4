"""The served-prompt sample on disk: what `serve --prompt-sample-dir` keeps and `calibrate --recent-sample` reads.

Layout: one file per serving pod, `<dir>/<hostname>.jsonl` (the pods of a model share the directory and never write
each other's files), rewritten whole through a temporary file and a rename, so a reader sees an old or a new file and
never half of one. One JSON object per line, oldest first:

    {"t": 1767225600.25, "tok": "5d0c4c1e2a3b4f60", "ids": [504, 2063, 314, ...]}

`t` when the prompt was served (Unix seconds), `tok` the fingerprint of the tokenizer that made the ids
(`tokenizer_fingerprint`), `ids` the prompt's token ids, truncated to the engine's max_seq_len. Token ids rather
than text: calibration needs exactly the ids the served model saw (no re-tokenization, no chat-template question), and
the fingerprint lets a calibration of another tokenizer skip them instead of feeding it wrong ids. Ids decode to the
prompt's text: the directory holds user prompts and is opt-in for that reason; nothing here logs them.

Everything below is pure but `read_dir` (reads files) and `tokenizer_fingerprint` (asks the tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".jsonl"
DEFAULT_MAX_ENTRIES = 512
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
DEFAULT_RECENT_SHARE = 0.5


@dataclass(frozen=True)
class Entry:
    time: float
    ids: tuple[int, ...]
    tokenizer: str


def encode(entry: Entry) -> str:
    return json.dumps({"t": round(entry.time, 3), "tok": entry.tokenizer, "ids": list(entry.ids)},
                      separators=(",", ":"))


def decode(line: str) -> Entry | None:
    """The entry on one line; None for a blank or malformed line (a reader skips it rather than failing)."""
    try:
        raw = json.loads(line)
        ids = tuple(int(i) for i in raw["ids"])
        when = float(raw["t"])
        tok = str(raw.get("tok", ""))
    except (ValueError, KeyError, TypeError):
        return None
    if not math.isfinite(when) or any(i < 0 for i in ids):
        return None
    return Entry(when, ids, tok)


def fresh(entries: Iterable[Entry], now: float, retention_seconds: float) -> list[Entry]:
    """The entries served within the retention (an entry exactly `retention_seconds` old is kept)."""
    oldest = now - retention_seconds
    return [e for e in entries if e.time >= oldest]


def pod_file(directory: Path, host: str) -> Path:
    """`<dir>/<host>.jsonl`, the host name reduced to characters safe in a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".") or "pod"
    return directory / f"{safe}{SUFFIX}"


def sample_files(directory: Path) -> list[Path]:
    """The pods' files (temporary files of a write in progress start with a dot and are not among them)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")
                  and p.is_file())


def read_file(path: Path) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [e for e in (decode(line) for line in text.splitlines() if line.strip()) if e is not None]


def read_dir(directory: Path, now: float, retention_seconds: float) -> list[Entry]:
    """Every pod's fresh entries, most recent first; [] when the directory is missing or empty."""
    entries = [e for path in sample_files(directory) for e in read_file(path)]
    return sorted(fresh(entries, now, retention_seconds), key=lambda e: e.time, reverse=True)


@dataclass(frozen=True)
class Selection:
    ids: tuple[tuple[int, ...], ...]
    """The chosen samples, most recent first, each truncated to max_seq_len."""
    usable: int
    """Distinct samples of this tokenizer of at least 2 tokens (after truncation), chosen or not."""
    other_tokenizer: int
    """Entries skipped because another tokenizer made them."""


def select(entries: Sequence[Entry], want: int, max_seq_len: int, fingerprint: str) -> Selection:
    """Up to `want` samples from `entries` (most recent first): truncated to `max_seq_len`, deduplicated after the
    truncation (two prompts that agree on their first max_seq_len tokens are one calibration sample), of this
    tokenizer, at least 2 tokens long (calibration's own minimum)."""
    seen: set[tuple[int, ...]] = set()
    chosen: list[tuple[int, ...]] = []
    other = 0
    for entry in entries:
        if entry.tokenizer != fingerprint:
            other += 1
            continue
        ids = entry.ids[:max_seq_len]
        if len(ids) < 2 or ids in seen:
            continue
        seen.add(ids)
        if len(chosen) < want:
            chosen.append(ids)
    return Selection(tuple(chosen), len(seen), other)


def recent_wanted(samples: int, share: float) -> int:
    """round(samples * share), halves rounded up (Python's round would take 2.5 to 2)."""
    return max(0, min(samples, math.floor(samples * share + 0.5)))


def digest(samples: Sequence[Sequence[int]]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps([list(s) for s in samples]).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:  # type: ignore[no-untyped-def]
    """A hash of the tokenizer's vocabulary (tokens and ids, added tokens included): the same for the model a revision
    serves and the model it is calibrated from, different when a new model brings another vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
