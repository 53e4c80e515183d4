"""What every step shares: errors, the fault switch, the summary and report files, model and device resolution."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from qfleet.api.jobs import SUMMARY_LIMIT_BYTES

from . import model_recipe

FAULT_STEP = "QFLEET_FAULT_STEP"
FAULT_EXIT_CODE = "QFLEET_FAULT_EXIT_CODE"
FAULT_QUALITY_DROP = "QFLEET_FAULT_QUALITY_DROP"
PVC_ROOT = "QFLEET_PVC_ROOT"
"""Where `pvc://<claim>/<path>` model URIs are found: <root>/<claim>/<path> (default /var/lib/qfleet/pvc)."""
DEFAULT_PVC_ROOT = "/var/lib/qfleet/pvc"

EXIT_FAILED = 1
EXIT_NOT_IMPLEMENTED = 4
EXIT_OUT_OF_MEMORY = 5
DEFAULT_FAULT_EXIT_CODE = 3


class StepError(Exception):
    """A failure with a one-line reason for the summary; `exit_code` is the process's."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def injected_fault(step: str) -> StepError | None:
    """QFLEET_FAULT_STEP=<step> makes that step fail with QFLEET_FAULT_EXIT_CODE (default 3)."""
    if os.environ.get(FAULT_STEP, "").strip() != step:
        return None
    raw = os.environ.get(FAULT_EXIT_CODE, str(DEFAULT_FAULT_EXIT_CODE))
    try:
        code = int(raw)
    except ValueError:
        code = DEFAULT_FAULT_EXIT_CODE
    code = code if 1 <= code <= 255 else DEFAULT_FAULT_EXIT_CODE
    return StepError(f"fault injected by {FAULT_STEP}={step} (exit code {code})", exit_code=code)


def fault_quality_noise() -> float:
    """QFLEET_FAULT_QUALITY_DROP as a float (0 when unset); see KvQuantizer.noise for what it does."""
    raw = os.environ.get(FAULT_QUALITY_DROP, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise StepError(f"{FAULT_QUALITY_DROP}={raw!r} is not a number") from None
    if value < 0:
        raise StepError(f"{FAULT_QUALITY_DROP}={raw!r} must not be negative")
    return value


def one_line(text: str, limit: int = 600) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def compact(summary: dict[str, Any]) -> str:
    """The summary as JSON of at most SUMMARY_LIMIT_BYTES: long lists and strings are cut, never the keys the
    operator reads first."""
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) <= SUMMARY_LIMIT_BYTES:
        return text
    trimmed = dict(summary)
    for key, value in list(trimmed.items()):
        if isinstance(value, list) and len(value) > 16:
            trimmed[key] = value[:16]
            trimmed["truncated"] = True
        elif isinstance(value, str) and len(value) > 300:
            trimmed[key] = value[:297] + "..."
    text = json.dumps(trimmed, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > SUMMARY_LIMIT_BYTES:
        keep = ("error", "kvFormat", "worstLayer", "worstLayerKL", "qualityDrop", "score", "baselineScore", "path")
        text = json.dumps({k: trimmed[k] for k in keep if k in trimmed} | {"truncated": True},
                          separators=(",", ":"), sort_keys=True)
    return text


def write_summary(path: str | None, summary: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    if str(target).startswith("/dev/"):
        target.write_text(compact(summary))  # the termination log: written in place
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, compact(summary))


def write_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def write_report(artifacts: Path, name: str, report: dict[str, Any]) -> Path:
    target = artifacts / name
    write_atomic(target, json.dumps(report, indent=1, sort_keys=True) + "\n")
    return target


def resolve_model(uri: str, revision: str) -> Path:
    """A local directory holding an HF checkpoint for `uri`, or a StepError saying why there is none.

    pvc://claim/path -> $QFLEET_PVC_ROOT/claim/path; file:///dir and /dir -> that directory;
    hf://HuggingFaceTB/SmolLM2-135M-Instruct -> the cached test model (qfleet_runtime.model_recipe);
    other hf:// ids -> the local Hugging Face cache only (this runtime downloads nothing).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        path = Path(uri)
    elif scheme == "file":
        path = Path(rest)
    elif scheme == "pvc":
        claim, _, sub = rest.partition("/")
        path = Path(os.environ.get(PVC_ROOT, DEFAULT_PVC_ROOT)) / claim / sub
    elif scheme == "hf":
        if rest.strip("/").lower() == model_recipe.HF_ID.lower():
            path = model_recipe.model_dir()
            if not (path / "config.json").exists():
                raise StepError(f"model {uri}: the cached copy {path} is missing; prepare it with "
                                "`python -m qfleet_runtime.model_recipe` (runtime_image/setup_env.py does)")
        else:
            path = _hf_cache(uri, rest.strip("/"), revision)
    else:
        raise StepError(f"model {uri}: scheme {scheme}:// is not supported by this runtime version "
                        "(use pvc://, hf:// with a locally cached model, or a local path)")
    if not (path / "config.json").is_file():
        raise StepError(f"model {uri}: no HF checkpoint at {path} (config.json missing)")
    return path


def _hf_cache(uri: str, repo_id: str, revision: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any miss is the same answer
        raise StepError(f"model {uri}@{revision}: not in the local Hugging Face cache and this runtime does not "
                        f"download from the hub ({type(error).__name__})") from None


def device() -> tuple[str, str]:
    """(torch device, description for the summary): CUDA when available, else CPU."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return "cuda", f"cuda:{torch.cuda.get_device_name()} (sm{major}{minor})"
    return "cpu", "cpu"


class Timer:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 2)
