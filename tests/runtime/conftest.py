"""The runtime's tests: they run with the runtime venv's python (runtime_image/setup_env.py), never the operator's.

    PY=$(python3 runtime_image/setup_env.py --python) && $PY -m pytest tests/runtime

Under the operator's venv (no torch) every module here is skipped at import (pytest.importorskip), so a plain
`pytest` over tests/ stays green; the Makefile passes --ignore=tests/runtime there to keep the output clean.
The runtime venv holds dependencies only: this conftest puts the checkout's operator/ and runtime_image/ on sys.path,
and `run_cli` passes the same PYTHONPATH to the `python -m qfleet_runtime` subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = [str(REPO / "operator"), str(REPO / "runtime_image")]
for root in reversed(SOURCE_ROOTS):
    if root not in sys.path:
        sys.path.insert(0, root)

SMOLLM = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
LAYERS = 30


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    """Runs `python -m qfleet_runtime ARGS` (args must contain --summary-file); returns (exit code, summary, stderr)."""
    child_env = dict(os.environ) | (env or {})
    child_env["PYTHONPATH"] = os.pathsep.join([*SOURCE_ROOTS, child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "qfleet_runtime", *args], env=child_env, capture_output=True,
                          text=True, timeout=timeout)
    summary_file = Path(args[args.index("--summary-file") + 1])
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return done.returncode, summary, done.stderr


def common(step: str, kv_format: str, artifacts: Path, summary: Path) -> list[str]:
    return [step, "--revision", "r-test", "--kv-format", kv_format, "--artifacts", str(artifacts),
            "--summary-file", str(summary)]


def calibrate_args(kv_format: str, artifacts: Path, summary: Path, *extra: str) -> list[str]:
    """A small calibration: 4 samples of at most 64 tokens, per-layer KL on 1 of them."""
    return [*common("calibrate", kv_format, artifacts, summary), "--model-uri", SMOLLM, "--model-revision", "main",
            "--weights", "bf16", "--dataset", "builtin", "--samples", "4", "--max-seq-len", "64",
            "--analysis-samples", "1", *extra]


def evaluate_args(kv_format: str, artifacts: Path, summary: Path, *extra: str) -> list[str]:
    """A short evaluation: the first 384 held-out tokens in windows of 128."""
    return [*common("evaluate", kv_format, artifacts, summary), "--model-uri", SMOLLM, "--model-revision", "main",
            "--baseline-kv-format", "bf16", "--eval-tokens", "384", "--eval-seq-len", "128", *extra]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    pytest.importorskip("torch")
    from qfleet_runtime import model_recipe

    return model_recipe.prepare()


@pytest.fixture(scope="session")
def fp8_calibration(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    artifacts = tmp_path_factory.mktemp("fp8") / "r-test" / "fp8"
    summary = artifacts.parent / "calibrate-summary.json"
    code, result, stderr = run_cli(calibrate_args("fp8", artifacts, summary))
    assert code == 0, stderr[-3000:]
    return artifacts, result
