"""The Argo CD health check of QuantizedModel, run through a real Lua interpreter (lupa) the way Argo CD runs it:
the object as a Lua table named `obj`, the script's return value as the health."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.unit.support import openapi_schema, to_json_schema

lupa = pytest.importorskip("lupa", reason="lupa is in the dev extra: pip install -e '.[dev]'")

HERE = Path(__file__).resolve().parents[2] / "docs" / "argocd" / "resource_customizations" / "qfleet.io" / "QuantizedModel"
SCRIPT = (HERE / "health.lua").read_text()
CASES = yaml.safe_load((HERE / "health_test.yaml").read_text())["tests"]


def lua_table(runtime, value):
    """Go's JSON-to-Lua conversion in Argo CD: maps and lists become tables (lists 1-indexed), scalars stay."""
    if isinstance(value, dict):
        return runtime.table_from({k: lua_table(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([lua_table(runtime, v) for v in value])
    return value


def health(document: dict) -> dict:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = lua_table(runtime, document)
    result = runtime.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_health(case):
    document = yaml.safe_load((HERE / case["inputPath"]).read_text())
    assert health(document) == case["healthStatus"]


def test_every_testdata_file_is_a_case_and_every_status_is_covered():
    assert sorted(HERE.glob("testdata/*.yaml")) == sorted(HERE / c["inputPath"] for c in CASES)
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    for case in CASES:
        assert Path(case["inputPath"]).stem.split("_")[0] == case["healthStatus"]["status"].lower()


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c["inputPath"]).stem)
def test_testdata_is_a_valid_quantized_model(case):
    """The cases are objects the API server would accept (spec and status against the CRD's schema)."""
    document = yaml.safe_load((HERE / case["inputPath"]).read_text())
    schema = to_json_schema(openapi_schema())
    jsonschema.validate({k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")},
                        {**schema, "required": []} if "required" in schema else schema)


@pytest.mark.parametrize("reason", ["CalibrationFailed", "EngineBuildFailed", "EvaluationFailed", "QualityGateFailed",
                                    "NoCompatibleNodePool"])
def test_every_failure_reason_of_the_operator_is_degraded(reason):
    from qfleet.conditions import FAILURE_REASONS
    assert reason in {str(r) for r in FAILURE_REASONS}
    assert f'{reason} = true' in SCRIPT
