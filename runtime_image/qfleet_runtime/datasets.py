"""Calibration and evaluation text shipped in the package (no hub access at run time).

- `builtin` calibration set (data/calibration.jsonl): 211 passages of 200-1800 characters cut from the Python
  language reference as shipped with CPython (`pydoc_data.topics`, PSF licence), shuffled with a fixed seed.
- held-out evaluation text (data/heldout.txt, about 7k tokens): five other topics of the same reference
  (execmodel, naming, import, exceptions, objects), never used for calibration.
- a small task (data/task.jsonl): 32 one-word multiple-choice completions, scored by the model's log-likelihood.

`--dataset` accepts `builtin`, a local file (.jsonl with a "text" field per line, or plain text, one sample per
blank-line-separated paragraph), or one of ModelOpt's hub dataset names (cnn_dailymail, pile, ...): those cannot be
downloaded here, so the builtin set stands in and the summary says so (`datasetUsed`, `datasetNote`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .common import StepError

BUILTIN = "builtin"
HUB_DATASETS = (
    "cnn_dailymail", "pile", "pg19", "wikipedia", "c4", "wikitext", "magpie", "open_code_reasoning",
    "open_math_reasoning", "llama-nemotron-post-training-dataset", "nemotron-post-training-dataset-v1",
    "nemotron-post-training-dataset-v2", "cnn_nemotron_v2_mix",
)
"""ModelOpt 0.47's SUPPORTED_DATASET_CONFIG names (and hf_ptq's default mix): accepted, served by `builtin` here."""


@dataclass(frozen=True)
class CalibrationSet:
    requested: str
    used: str
    texts: tuple[str, ...]
    note: str | None

    def first(self, count: int) -> CalibrationSet:
        """The same set cut to its first `count` texts (the rest of a calibration came from elsewhere)."""
        return CalibrationSet(self.requested, self.used, self.texts[: max(0, count)], self.note)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()[:16]


def _data(name: str) -> str:
    return resources.files("qfleet_runtime").joinpath("data", name).read_text(encoding="utf-8")


def builtin_texts() -> tuple[str, ...]:
    return tuple(json.loads(line)["text"] for line in _data("calibration.jsonl").splitlines() if line.strip())


def heldout_text() -> str:
    return _data("heldout.txt")


def task_items() -> list[dict]:
    return [json.loads(line) for line in _data("task.jsonl").splitlines() if line.strip()]


def calibration_set(name: str, samples: int) -> CalibrationSet:
    """The first `samples` texts of the named set (fewer when the set is smaller; the summary reports how many)."""
    note = None
    if name == BUILTIN:
        texts, used = builtin_texts(), BUILTIN
    elif name in HUB_DATASETS:
        texts, used = builtin_texts(), BUILTIN
        note = f"{name} is a hub dataset and this runtime downloads nothing: calibrated on the builtin set instead"
    elif Path(name).is_file():
        texts, used = _file_texts(Path(name)), name
    else:
        raise StepError(f"unknown calibration dataset {name!r}: use {BUILTIN!r}, a local .jsonl/.txt file, or one "
                        f"of {', '.join(HUB_DATASETS)}")
    if not texts:
        raise StepError(f"calibration dataset {name!r} has no samples")
    return CalibrationSet(requested=name, used=used, texts=texts[:samples], note=note)


def _file_texts(path: Path) -> tuple[str, ...]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            return tuple(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
        except (ValueError, KeyError, TypeError):
            raise StepError(f"calibration dataset {path}: every line must be a JSON object with a 'text'") from None
    return tuple(p.strip() for p in raw.split("\n\n") if p.strip())
