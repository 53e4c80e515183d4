from __future__ import annotations

import copy
import re
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.revision import artifact_fields, artifact_spec, calibration_key, revision_of

BASE: dict[str, Any] = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct", "tokenSecretRef": {"name": "hf-token"}},
    "quantization": {"weights": "bf16", "kvCache": "nvfp4"},
    "engine": {"maxSeqLen": 65536, "kvCacheFreeGpuMemoryFraction": "0.9"},
    "nodePool": {"gpusPerReplica": 8, "nodeSelector": {"nvidia.com/gpu.family": "blackwell"}},
    "serving": {"image": "ghcr.io/qfleet/qfleet-runtime:0.1.0", "replicas": 4},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
}
BASE_REVISION = revision_of(parse_spec(BASE))


@dataclass(frozen=True)
class EditCase:
    reason: str
    edit: Callable[[dict[str, Any]], None]
    changes_revision: bool
    row: str = ""
    """The row of docs/api.md's revision table the case checks (its first field); "" for spellings and defaults."""
    generation: int = 0
    """The calibration generation (status.refresh.generation) the edited spec is hashed with."""


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            spec = spec.setdefault(key, {})
        spec[leaf] = value

    return edit


EDIT_CASES = [
    EditCase("KV format", _set("quantization.kvCache", "fp8"), True, row="quantization.weights"),
    EditCase("model revision", _set("model.revision", "0123abc"), True, row="model.uri"),
    EditCase("model location", _set("model.uri", "hf://meta-llama/Llama-3.1-70B-Instruct"), True, row="model.uri"),
    EditCase("calibration samples", _set("quantization.calibration.samples", 1024), True, row="quantization.calibration"),
    EditCase("engine sequence length", _set("engine.maxSeqLen", 32768), True, row="engine.*"),
    EditCase("KV memory fraction", _set("engine.kvCacheFreeGpuMemoryFraction", "0.85"), True, row="engine.*"),
    EditCase("GPUs per replica: the engine's world size", _set("nodePool.gpusPerReplica", 4), True, row="nodePool.gpusPerReplica"),
    EditCase("tensor parallel below the GPU count", _set("engine.tensorParallel", 4), True, row="engine.*"),
    EditCase("runtime environment (a fault switch)", _set("runtime.env", [{"name": "QFLEET_FAULT_STEP", "value": "evaluate"}]), True, row="runtime.env"),
    EditCase("serving image (an engine is bound to its engine version)",
             _set("serving.image", "ghcr.io/qfleet/qfleet-runtime:0.2.0"), True, row="serving.image"),
    EditCase("runtime image (calibration, build and evaluation run in it)",
             _set("runtime.image", "ghcr.io/qfleet/qfleet-runtime:0.2.0"), True, row="runtime.image"),
    EditCase("the operator's default runtime image written out", _set("runtime.image", DEFAULT_RUNTIME_IMAGE), False),
    EditCase("calibration dataset", _set("quantization.calibration.dataset", "wikitext"), True, row="quantization.calibration"),
    EditCase("layer fallback", _set("quantization.layerFallback", {"maxLayerKL": "0.05"}), True, row="quantization.layerFallback"),
    EditCase("KV ladder order under auto", lambda spec: spec["quantization"].update(
        kvCache="auto", kvCacheLadder=["nvfp4", "fp8"]), True, row="quantization.weights"),
    EditCase("engine backend", _set("engine.backend", "qfleet-python"), True, row="engine.*"),
    EditCase("engine batch size", _set("engine.maxBatchSize", 128), True, row="engine.*"),
    EditCase("engine token budget", _set("engine.maxNumTokens", 16384), True, row="engine.*"),
    EditCase("serving image left out: the runtime image it defaults to", lambda spec: spec["serving"].pop("image"),
             False),
    EditCase("serving resources", _set("serving.resources", {"limits": {"memory": "64Gi"}}), False, row="serving.resources"),
    EditCase("quality sample share", _set("serving.qualitySampleShare", "0.5"), False, row="serving.resources"),
    EditCase("tolerations", _set("nodePool.tolerations", [{"key": "gpu", "operator": "Exists"}]), False, row="nodePool.nodeSelector"),
    EditCase("analysis interval", _set("rollout.analysis.interval", "1m"), False, row="rollout.*"),
    EditCase("traffic routing", _set("rollout.trafficRouting", {"replicas": {}}), False, row="rollout.*"),
    EditCase("canary steps", _set("rollout.steps", [{"weight": 5}, {"weight": 100}]), False, row="rollout.*"),
    EditCase("gates", _set("rollout.analysis.gates.fallbackRate", {"max": "0.01"}), False, row="rollout.*"),
    EditCase("manual pause", _set("rollout.paused", True), False, row="rollout.*"),
    EditCase("serving replicas", _set("serving.replicas", 12), False, row="serving.replicas"),
    EditCase("node selector", _set("nodePool.nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-B200"}), False, row="nodePool.nodeSelector"),
    EditCase("token Secret", _set("model.tokenSecretRef", {"name": "other-token"}), False, row="model.tokenSecretRef"),
    EditCase(
        "shape hint",
        _set("model.shape", {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parameterCount": "70.6e9"}),
        False, row="model.tokenSecretRef"),
    EditCase("artifact location", _set("artifacts.uri", "pvc://other-claim/llama"), False, row="artifacts.uri"),
    EditCase("calibration refresh policy", _set("quantization.calibration.refresh", {"schedule": "168h"}), False,
             row="quantization.calibration.refresh"),
    EditCase("traffic sample opt-in", _set("quantization.calibration.refresh",
                                           {"triggers": {"fallbackRate": {"max": "0.01"}},
                                            "sampleTraffic": {"enabled": True}}), False,
             row="quantization.calibration.refresh"),
    EditCase("calibration generation: a refresh", lambda spec: None, True, row="status.refresh.generation",
             generation=1),
    EditCase("a default written out", _set("model.revision", "main"), False),
    EditCase("a decimal spelt differently", _set("engine.kvCacheFreeGpuMemoryFraction", "0.90"), False),
    EditCase("tensor parallel equal to the GPU count", _set("engine.tensorParallel", 8), False),
]


@pytest.mark.parametrize("case", EDIT_CASES, ids=lambda case: case.reason)
def test_only_artifact_edits_change_the_revision(case: EditCase) -> None:
    spec = copy.deepcopy(BASE)
    case.edit(spec)

    assert (revision_of(parse_spec(spec), generation=case.generation) != BASE_REVISION) is case.changes_revision


def test_each_calibration_generation_is_its_own_revision_and_calibration() -> None:
    spec = parse_spec(BASE)

    assert len({revision_of(spec, generation=g) for g in range(4)}) == 4
    assert revision_of(spec, generation=0) == BASE_REVISION
    assert len({calibration_key(spec, "nvfp4", g) for g in range(4)}) == 4
    assert calibration_key(spec, "nvfp4") == calibration_key(spec, "nvfp4", 0)


def test_refresh_policy_is_neither_artifact_nor_calibration_input() -> None:
    edited = copy.deepcopy(BASE)
    edited["quantization"]["calibration"] = {"refresh": {"schedule": "0 3 * * 0"}}

    assert calibration_key(parse_spec(edited), "nvfp4") == calibration_key(parse_spec(BASE), "nvfp4")
    assert "refresh" not in artifact_spec(parse_spec(edited))


def test_key_order_does_not_matter() -> None:
    reordered = {key: BASE[key] for key in reversed(list(BASE))}
    reordered["quantization"] = {"kvCache": "nvfp4", "weights": "bf16"}

    assert revision_of(parse_spec(reordered)) == BASE_REVISION


def test_revision_is_ten_hex_digits_and_stable() -> None:
    assert re.fullmatch(r"[0-9a-f]{10}", BASE_REVISION)
    assert revision_of(parse_spec(copy.deepcopy(BASE))) == BASE_REVISION


def test_artifact_fields_name_exactly_what_is_hashed() -> None:
    fields = artifact_fields(parse_spec(BASE))

    assert set(fields) == {"model", "quantization", "engine", "gpusPerReplica", "runtimeEnv", "runtimeImage",
                           "servingImage"}
    assert fields["model"] == {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct", "revision": "main"}
    assert fields["engine"]["tensorParallel"] == 8


def _revision_table() -> dict[str, bool]:
    """docs/api.md's revision table: the first field of each row -> whether it starts a new revision."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    table = text.split("<!-- revision-table -->", 1)[1].split("<!-- /revision-table -->", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[re.findall(r"`([^`]+)`", cells[0])[0]] = {"yes": True, "no": False}[cells[1]]
    return rows


@pytest.mark.parametrize("row, starts_a_revision", sorted(_revision_table().items()))
def test_every_row_of_the_documented_revision_table_is_a_case(row: str, starts_a_revision: bool) -> None:
    cases = [case for case in EDIT_CASES if case.row == row]
    assert cases, f"no EditCase for the docs/api.md revision-table row {row}"
    assert {case.changes_revision for case in cases} == {starts_a_revision}


def test_every_case_belongs_to_a_documented_row_or_is_a_spelling() -> None:
    rows = _revision_table()
    assert all(case.row in rows for case in EDIT_CASES if case.row)
