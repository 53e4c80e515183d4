"""The operator's pipeline with the real runtime: ModelOpt calibration, the build check and the quality evaluation of
SmolLM2-135M run as Jobs on an executor node, and their real numbers come back into the QuantizedModel's status."""
from __future__ import annotations

from decimal import Decimal

import pytest
from kubernetes import client as k8s

from localfleet import nodes
from qfleet.api import GROUP, PLURAL, VERSION

from test_pipeline import condition, create, read, wait_for_condition

pytestmark = pytest.mark.usefixtures("operator_process")

SMOLLM = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "QuantizedModel",
    "metadata": {"name": "smollm"},
    "spec": {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "quantization": {"weights": "bf16", "kvCache": "fp8",
                         "calibration": {"dataset": "builtin", "samples": 4, "maxSeqLen": 128},
                         "layerFallback": {"maxLayerKL": "0.0001"}},
        "nodePool": {"nodeSelector": {nodes.EXECUTOR_LABEL: "true", "nvidia.com/gpu.family": "hopper"},
                     "tolerations": [nodes.EXECUTOR_TOLERATION], "gpusPerReplica": 1},
        "serving": {"image": "qfleet/runtime:dev"},
        "rollout": {"trafficRouting": {"replicas": {}}},
        "artifacts": {"uri": "pvc://qfleet-artifacts/smollm"},
    },
}


@pytest.mark.timeout(1200)  # real ModelOpt calibration and a 7k-token evaluation on 2 CPU cores: minutes
def test_real_calibration_build_and_evaluation_report_into_status(api, core, namespace, artifacts_claim,
                                                                  operator_process):
    objects = k8s.CustomObjectsApi(api)
    create(objects, namespace, SMOLLM)
    done = wait_for_condition(objects, namespace, "smollm", "Evaluated", "True", operator_process, timeout=900)
    status = done["status"]

    calibration = status["calibration"]
    assert calibration["report"]["kvFormat"] == "fp8"
    assert Decimal(calibration["report"]["worstLayerKL"]) > 0
    assert calibration["report"]["fallbackLayers"], "a threshold below the worst layer's KL lists fallback layers"
    assert calibration["modelOptVersion"].startswith("0.47")
    assert calibration["device"].startswith("cpu")
    assert calibration["samples"] == 4

    assert status["engine"]["kvCacheDtype"] == "fp8"
    assert status["engine"]["computeCapability"] == "9.0"
    evaluation = status["evaluation"]
    assert Decimal(evaluation["baselineScore"]) > 0 and Decimal(evaluation["score"]) > 0
    assert evaluation["passed"] is True
    assert Decimal(evaluation["qualityDrop"]) <= Decimal("0.01")
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 values, K and V; fp8 one byte a value, the fallback layers bf16 two.
    fallback = len(calibration["report"]["fallbackLayers"])
    assert status["capacity"]["kvBytesPerToken"] == 2 * 3 * 64 * ((30 - fallback) * 1 + fallback * 2)

    revision = status["revision"]["current"]
    manifest = artifacts_claim / "smollm" / revision / "fp8" / "engine" / "manifest.json"
    assert manifest.is_file()
    for job in ("calibrate", "build", "evaluate"):
        pod = core.list_namespaced_pod(namespace, label_selector=f"qfleet.io/step={job}").items[0]
        assert pod.spec.node_name == "exec-h100"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert condition(read(objects, namespace, "smollm"), "Calibrated")["reason"] == "CalibrationSucceeded"
