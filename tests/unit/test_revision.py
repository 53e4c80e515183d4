from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE
from qfleet.revision import artifact_fields, revision_of

BASE: dict[str, Any] = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct", "tokenSecretRef": {"name": "hf-token"}},
    "quantization": {"weights": "nvfp4", "kvCache": "nvfp4"},
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


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            spec = spec.setdefault(key, {})
        spec[leaf] = value

    return edit


EDIT_CASES = [
    EditCase("KV format", _set("quantization.kvCache", "fp8"), True),
    EditCase("weight format", _set("quantization.weights", "fp8"), True),
    EditCase("model revision", _set("model.revision", "0123abc"), True),
    EditCase("model location", _set("model.uri", "hf://meta-llama/Llama-3.1-70B-Instruct"), True),
    EditCase("calibration samples", _set("quantization.calibration.samples", 1024), True),
    EditCase("engine sequence length", _set("engine.maxSeqLen", 32768), True),
    EditCase("KV memory fraction", _set("engine.kvCacheFreeGpuMemoryFraction", "0.85"), True),
    EditCase("GPUs per replica: the engine's world size", _set("nodePool.gpusPerReplica", 4), True),
    EditCase("tensor parallel below the GPU count", _set("engine.tensorParallel", 4), True),
    EditCase("runtime environment (a fault switch)", _set("runtime.env", [{"name": "QFLEET_FAULT_STEP", "value": "evaluate"}]), True),
    EditCase("serving image (an engine is bound to its engine version)",
             _set("serving.image", "ghcr.io/qfleet/qfleet-runtime:0.2.0"), True),
    EditCase("runtime image (calibration, build and evaluation run in it)",
             _set("runtime.image", "ghcr.io/qfleet/qfleet-runtime:0.2.0"), True),
    EditCase("the operator's default runtime image written out", _set("runtime.image", DEFAULT_RUNTIME_IMAGE), False),
    EditCase("calibration dataset", _set("quantization.calibration.dataset", "wikitext"), True),
    EditCase("layer fallback", _set("quantization.layerFallback", {"maxLayerKL": "0.05"}), True),
    EditCase("KV ladder order under auto", lambda spec: spec["quantization"].update(
        kvCache="auto", kvCacheLadder=["nvfp4", "fp8"]), True),
    EditCase("engine backend", _set("engine.backend", "qfleet-python"), True),
    EditCase("engine batch size", _set("engine.maxBatchSize", 128), True),
    EditCase("engine token budget", _set("engine.maxNumTokens", 16384), True),
    EditCase("serving image left out: the runtime image it defaults to", lambda spec: spec["serving"].pop("image"),
             False),
    EditCase("serving resources", _set("serving.resources", {"limits": {"memory": "64Gi"}}), False),
    EditCase("quality sample share", _set("serving.qualitySampleShare", "0.5"), False),
    EditCase("tolerations", _set("nodePool.tolerations", [{"key": "gpu", "operator": "Exists"}]), False),
    EditCase("analysis interval", _set("rollout.analysis.interval", "1m"), False),
    EditCase("traffic routing", _set("rollout.trafficRouting", {"replicas": {}}), False),
    EditCase("canary steps", _set("rollout.steps", [{"weight": 5}, {"weight": 100}]), False),
    EditCase("gates", _set("rollout.analysis.gates.fallbackRate", {"max": "0.01"}), False),
    EditCase("manual pause", _set("rollout.paused", True), False),
    EditCase("serving replicas", _set("serving.replicas", 12), False),
    EditCase("node selector", _set("nodePool.nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-B200"}), False),
    EditCase("token Secret", _set("model.tokenSecretRef", {"name": "other-token"}), False),
    EditCase(
        "shape hint",
        _set("model.shape", {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parameterCount": "70.6e9"}),
        False,
    ),
    EditCase("a default written out", _set("model.revision", "main"), False),
    EditCase("a decimal spelt differently", _set("engine.kvCacheFreeGpuMemoryFraction", "0.90"), False),
    EditCase("tensor parallel equal to the GPU count", _set("engine.tensorParallel", 8), False),
]


@pytest.mark.parametrize("case", EDIT_CASES, ids=lambda case: case.reason)
def test_only_artifact_edits_change_the_revision(case: EditCase) -> None:
    spec = copy.deepcopy(BASE)
    case.edit(spec)

    assert (revision_of(parse_spec(spec)) != BASE_REVISION) is case.changes_revision


def test_key_order_does_not_matter() -> None:
    reordered = {key: BASE[key] for key in reversed(list(BASE))}
    reordered["quantization"] = {"kvCache": "nvfp4", "weights": "nvfp4"}

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
