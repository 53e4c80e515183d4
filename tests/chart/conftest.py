"""Chart tests that need no cluster: `helm lint` and `helm template` with the cached helm binary of the local fleet.

The tests that install the chart on the local fleet live in tests/integration/test_chart_install.py, so that one pytest
session starts one fleet."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from localfleet import binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qfleet"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


@pytest.fixture(scope="session")
def helm() -> str:
    path = binaries.path_of("helm")
    if not Path(path).exists():
        pytest.fail("helm is not cached: run `make binaries`", pytrace=False)
    return str(path)


def render(helm: str, *args: str, namespace: str = "qfleet-system", release: str = "qfleet") -> list[dict]:
    """`helm template` of the chart: the rendered documents, empty ones dropped."""
    result = subprocess.run([helm, "template", release, str(CHART), "-n", namespace, *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]
