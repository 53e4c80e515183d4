"""`kubectl qfleet`: the timeline rendering (pure) on status documents, and the command with a fake reader."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml

from qfleet import kube
from qfleet.cli.plugin import format_status, main
from qfleet.cli.timeline import ordered_conditions, render_status

from .support import REPO


def cond(type_: str, status: str, reason: str, message: str, time: str = "2026-11-23T10:00:00Z") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": time}


EVALUATED = {
    "apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel",
    "metadata": {"name": "llama", "namespace": "ml", "generation": 2},
    "spec": {"model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
             "quantization": {"weights": "bf16", "kvCache": "auto"}},
    "status": {
        "observedGeneration": 2, "phase": "Canary",
        "revision": {"current": "3f2a9c01", "stable": "0123456789"},
        "capacity": {"gpu": "H100-80GB", "computeCapability": "9.0", "kvCache": "fp8", "kvBytesPerToken": 163840,
                     "maxTokensPerReplica": 1234567, "sequencesPerReplica": 18},
        "ladder": [{"kvCache": "nvfp4", "outcome": "Unsupported", "message": "needs compute capability 10.0"},
                   {"kvCache": "fp8", "outcome": "Selected"}],
        "calibration": {"job": "llama-3f2a9c01-fp8-calibrate", "dataset": "cnn_dailymail", "samples": 512,
                        "report": {"kvFormat": "fp8", "worstLayer": 41, "worstLayerKL": "0.0031",
                                   "fallbackLayers": [0, 79]},
                        "completedAt": "2026-11-23T10:05:00Z"},
        "engine": {"job": "llama-3f2a9c01-fp8-build", "artifact": "pvc://qfleet-artifacts/llama/3f2a9c01/fp8",
                   "kvCacheDtype": "fp8", "computeCapability": "9.0", "builtAt": "2026-11-23T10:20:00Z"},
        "evaluation": {"job": "llama-3f2a9c01-fp8-evaluate", "score": "0.7712", "baselineScore": "0.7741",
                       "qualityDrop": "0.0029", "passed": True, "completedAt": "2026-11-23T10:30:00Z"},
        "history": [{"revision": "0123456789", "kvCache": "bf16", "outcome": "Promoted", "at": "2026-11-01T09:00:00Z",
                     "reason": "AnalysisPassed", "message": "all gates passed"}],
        "conditions": [
            cond("Ready", "False", "RolloutInProgress", "ready for the canary", "2026-11-23T10:30:00Z"),
            cond("Evaluated", "True", "EvaluationPassed", "quality drop 0.29% <= 1%", "2026-11-23T10:30:00Z"),
            cond("Calibrated", "True", "CalibrationSucceeded", "worst layer 41", "2026-11-23T10:05:00Z"),
            cond("EngineBuilt", "True", "EngineBuildSucceeded", "fp8 engine for 9.0", "2026-11-23T10:20:00Z"),
        ],
    },
}

EVALUATED_TEXT = """\
QuantizedModel ml/llama
  Phase       Canary   (generation 2, observed 2)
  Model       hf://meta-llama/Llama-3.3-70B-Instruct
  Requested   weights bf16, KV cache auto
  Revision    current 3f2a9c01, stable 0123456789

Conditions
  TYPE         STATUS  REASON                SINCE                 MESSAGE
  Calibrated   True    CalibrationSucceeded  2026-11-23T10:05:00Z  worst layer 41
  EngineBuilt  True    EngineBuildSucceeded  2026-11-23T10:20:00Z  fp8 engine for 9.0
  Evaluated    True    EvaluationPassed      2026-11-23T10:30:00Z  quality drop 0.29% <= 1%
  Ready        False   RolloutInProgress     2026-11-23T10:30:00Z  ready for the canary

Capacity
  GPU H100-80GB, compute capability 9.0, KV fp8, bytes/token 163,840, tokens/replica 1,234,567, sequences/replica 18

KV-cache ladder
  FORMAT  OUTCOME      MESSAGE
  nvfp4   Unsupported  needs compute capability 10.0
  fp8     Selected

Calibration
  job llama-3f2a9c01-fp8-calibrate, data cnn_dailymail, samples 512, completed 2026-11-23T10:05:00Z, age 2d1h
  KV format fp8, worst layer 41, KL 0.0031, fallback layers 0, 79

Engine
  job llama-3f2a9c01-fp8-build, KV dtype fp8, compute capability 9.0, built 2026-11-23T10:20:00Z
  artifact pvc://qfleet-artifacts/llama/3f2a9c01/fp8

Evaluation
  job llama-3f2a9c01-fp8-evaluate, score 0.7712, baseline 0.7741, quality drop 0.0029, result passed, \
completed 2026-11-23T10:30:00Z

History
  AT                    REVISION    KV    OUTCOME   WHY
  2026-11-01T09:00:00Z  0123456789  bf16  Promoted  AnalysisPassed: all gates passed
"""


NOW = datetime(2026, 11, 25, 11, 10, tzinfo=UTC)


def test_timeline_of_an_evaluated_model():
    assert render_status(EVALUATED, NOW) == EVALUATED_TEXT


def test_conditions_follow_the_pipeline_and_unknown_types_come_last():
    conditions = [cond(t, "Unknown", "Reconciling", "") for t in
                  ("Ready", "Custom", "RolledBack", "CanaryHealthy", "Evaluated", "EngineBuilt", "Calibrated")]
    assert [c["type"] for c in ordered_conditions(conditions)] == [
        "Calibrated", "EngineBuilt", "Evaluated", "CanaryHealthy", "RolledBack", "Ready", "Custom"]


def test_a_model_the_operator_has_not_visited():
    document = yaml.safe_load((REPO / "examples" / "llama-70b-nvfp4.yaml").read_text())
    document["metadata"]["namespace"] = "ml"
    text = render_status(document)
    assert "Phase       Pending" in text
    assert "none yet: the operator has not visited this QuantizedModel" in text
    assert "no revision has left a canary yet" in text
    assert "Capacity" not in text and "Engine" not in text


def test_a_failed_step_shows_its_reason_and_message():
    document = {"metadata": {"name": "llama", "namespace": "ml", "generation": 3},
                "spec": {}, "status": {"observedGeneration": 2, "phase": "Failed", "conditions": [
                    cond("Calibrated", "False", "CalibrationFailed", "exit code 3; QFLEET_FAULT_STEP=calibrate")]}}
    text = render_status(document)
    assert "Calibrated  False   CalibrationFailed  2026-11-23T10:00:00Z  exit code 3; QFLEET_FAULT_STEP=calibrate" \
        in text
    assert "the operator has not yet observed the latest spec" in text


@pytest.mark.parametrize("output, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_machine_outputs_carry_the_whole_status(output, load):
    view = load(format_status(EVALUATED, output))
    assert view == {"name": "llama", "namespace": "ml", "generation": 2, "status": EVALUATED["status"]}


def test_status_command_reads_through_the_reader(capsys):
    asked = []

    def reader(name, namespace):
        asked.append((name, namespace))
        return EVALUATED

    assert main(["status", "llama", "-n", "ml"], reader=reader, now=NOW) == 0
    assert asked == [("llama", "ml")]
    assert capsys.readouterr().out == EVALUATED_TEXT
    assert main(["status", "llama", "-o", "json"], reader=reader) == 0
    assert asked[-1] == ("llama", None)
    assert json.loads(capsys.readouterr().out)["status"]["phase"] == "Canary"


def test_status_of_a_missing_model_is_an_error(capsys):
    def reader(name, namespace):
        raise kube.NotFound(f"QuantizedModel {namespace}/{name} not found")

    assert main(["status", "nope", "-n", "ml"], reader=reader) == 1
    assert "QuantizedModel ml/nope not found" in capsys.readouterr().err


def test_plan_is_qfleet_plan(capsys):
    example = str(REPO / "examples" / "llama-70b-nvfp4.yaml")
    assert main(["plan", "--model", example, "--gpu", "B200", "-o", "json"]) == 0
    via_plugin = capsys.readouterr().out
    from qfleet.cli.main import main as qfleet
    assert qfleet(["plan", "--model", example, "--gpu", "B200", "-o", "json"]) == 0
    assert capsys.readouterr().out == via_plugin


CANARY_RUNNING = {"metadata": {"name": "llama"}, "status": {"revision": {"stable": "52aa0c1d2e",
                                                                          "canary": "7c85199be1"}}}


@pytest.mark.parametrize("verb, patch", [
    ("promote", {"metadata": {"annotations": {"qfleet.io/rollout-action": "promote:7c85199be1"}}}),
    ("abort", {"metadata": {"annotations": {"qfleet.io/rollout-action": "abort:7c85199be1"}}}),
    ("pause", {"spec": {"rollout": {"paused": True}}}),
    ("resume", {"spec": {"rollout": {"paused": False}}}),
])
def test_rollout_verbs_send_one_merge_patch_and_say_what_they_did(verb, patch, capsys):
    sent = []

    def patcher(name, namespace, body):
        sent.append((name, namespace, body))
        return CANARY_RUNNING

    assert main([verb, "llama", "-n", "ml"], reader=lambda name, namespace: CANARY_RUNNING, patcher=patcher) == 0
    assert sent == [("llama", "ml", patch)]
    assert capsys.readouterr().out == f"quantizedmodel.qfleet.io/llama {verb} requested (canary 7c85199be1)\n"


@pytest.mark.parametrize("verb", ["promote", "abort"])
def test_promote_or_abort_with_no_canary_running_refuses_and_writes_nothing(verb, capsys):
    serving = {"metadata": {"name": "llama"}, "status": {"revision": {"stable": "52aa0c1d2e"}}}
    sent = []
    assert main([verb, "llama", "-n", "ml"], reader=lambda name, namespace: serving,
                patcher=lambda *call: sent.append(call)) == 1
    assert sent == []
    assert (f"kubectl qfleet {verb}: error: no canary is running (revision 52aa0c1d2e is stable): there is nothing "
            f"to {verb}") in capsys.readouterr().err


def test_a_rollout_verb_on_a_missing_model_is_an_error(capsys):
    def patcher(name, namespace, body):
        raise kube.NotFound(f"QuantizedModel {namespace}/{name} not found")

    assert main(["pause", "nope", "-n", "ml"], patcher=patcher) == 1
    assert "kubectl qfleet pause: error: QuantizedModel ml/nope not found" in capsys.readouterr().err


def test_the_last_analysis_shows_each_gate_with_its_interval_and_samples():
    document = {"metadata": {"name": "llama", "namespace": "ml"}, "spec": {}, "status": {"canary": {
        "step": 0, "weight": "1", "stepStartedAt": "2026-11-23T10:00:00Z", "lastAnalysis": {
            "at": "2026-11-23T11:00:00Z", "since": "2026-11-23T10:00:00Z", "verdict": "Inconclusive",
            "confidence": "0.95", "requests": 180, "gates": [
                {"name": "p99LatencyRatio", "value": "1.02", "lower": "0.91", "upper": "1.31", "max": "1.2",
                 "verdict": "Inconclusive", "window": "step", "canarySamples": 180, "stableSamples": 17820,
                 "minSamples": 500},
                {"name": "ttft", "value": "0.4", "max": "0.8", "verdict": "Pass", "window": "step"}]}}}}
    text = render_status(document)
    assert "since 2026-11-23T10:00:00Z, verdict Inconclusive, canary requests 180, confidence 0.95" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("    ")]
    assert rows[0][:3] == ["GATE", "VALUE", "INTERVAL"]
    assert rows[1] == ["p99LatencyRatio", "1.02", "[0.91,", "1.31]", "1.2", "180", "17,820", "500", "step",
                       "Inconclusive"]
    assert rows[2] == ["ttft", "0.4", "-", "0.8", "-", "-", "-", "step", "Pass"]


REFRESHED = {**EVALUATED, "status": {
    **EVALUATED["status"],
    "calibration": {**EVALUATED["status"]["calibration"], "generation": 2, "refreshReason": "fallbackRate",
                    "datasetMix": {"configured": 384, "recent": 128}},
    "refresh": {"generation": 2, "reason": "fallbackRate", "outcome": "InProgress", "revision": "3f2a9c01",
                "basedOn": "0123456789", "requestedAt": "2026-11-23T09:55:00Z",
                "lastCheckedAt": "2026-11-23T09:55:00Z",
                "drift": [{"name": "fallbackRate", "value": "0.0123", "max": "0.005", "for": "1h", "samples": 52000,
                           "aboveSince": "2026-11-23T08:50:00Z"},
                          {"name": "outOfRange", "max": "0.001", "for": "30m"}]},
    "conditions": [*EVALUATED["status"]["conditions"],
                   cond("CalibrationStale", "True", "DriftDetected", "fallbackRate 0.0123 (max 0.005)")]}}


@pytest.mark.parametrize("expected", [
    "data 384 from cnn_dailymail + 128 from recent traffic",
    "age 2d1h, generation 2, refresh reason fallbackRate",
    "Calibration refresh\n  generation 2, reason fallbackRate, outcome InProgress, revision 3f2a9c01",
    "TRIGGER       VALUE    MAX    FOR  SAMPLES  ABOVE SINCE",
    "fallbackRate  0.0123   0.005  1h   52,000   2026-11-23T08:50:00Z",
    "outOfRange    no data  0.001  30m  -        -",
    "CalibrationStale  True    DriftDetected",
])
def test_the_timeline_shows_calibration_age_data_and_drift(expected: str):
    assert expected in render_status(REFRESHED, NOW)


@pytest.mark.parametrize("since, now, shown", [
    ("2026-11-23T10:05:00Z", datetime(2026, 11, 23, 10, 5, tzinfo=UTC), "0m"),
    ("2026-11-23T10:05:00Z", datetime(2026, 11, 23, 11, 0, tzinfo=UTC), "55m"),
    ("2026-11-23T10:05:00Z", datetime(2026, 11, 23, 13, 35, tzinfo=UTC), "3h30m"),
    ("2026-11-23T10:05:00Z", datetime(2026, 11, 30, 13, 35, tzinfo=UTC), "7d3h"),
    ("2026-11-23T10:05:00Z", None, None),
    ("not a time", NOW, None),
])
def test_age(since, now, shown):
    from qfleet.cli.timeline import age

    assert age(since, now) == shown
