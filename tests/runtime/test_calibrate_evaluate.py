"""Real calibration and evaluation of SmolLM2-135M-Instruct on CPU (small sample counts: a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from qfleet.api.jobs import SUMMARY_LIMIT_BYTES  # noqa: E402

from .conftest import LAYERS, calibrate_args, evaluate_args, run_cli  # noqa: E402

CALIBRATE_KEYS = {"kvFormat", "worstLayer", "worstLayerKL", "fallbackLayers", "samples", "datasetHash",
                  "modelOptVersion", "device", "durationSeconds", "path"}
EVALUATE_KEYS = {"kvFormat", "qualityDrop", "score", "baselineScore", "kl", "perplexity", "baselinePerplexity",
                 "top1Agreement", "device", "durationSeconds", "path"}


def test_fp8_calibration_exports_a_checkpoint_with_fp8_kv_scales(fp8_calibration: tuple[Path, dict]) -> None:
    import torch
    from safetensors import safe_open

    artifacts, summary = fp8_calibration
    checkpoint = artifacts / "calibrated"
    quant = json.loads((checkpoint / "hf_quant_config.json").read_text())
    assert quant["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert quant["producer"]["name"] == "modelopt"
    assert json.loads((checkpoint / "config.json").read_text())["quantization_config"]["quant_method"] == "modelopt"

    report = json.loads((artifacts / "calibrate-report.json").read_text())
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as tensors:
        for row in report["layers"]:
            for kind, proj in (("k", "k_proj"), ("v", "v_proj")):
                scale = tensors.get_tensor(f"model.layers.{row['layer']}.self_attn.{proj}.{kind}_scale")
                assert scale.dtype == torch.float32
                assert float(scale) == pytest.approx(row[f"{kind}Amax"] / 448, rel=1e-5)
    assert summary["path"] == str(checkpoint)
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_the_calibration_report_lists_every_layer(fp8_calibration: tuple[Path, dict]) -> None:
    artifacts, summary = fp8_calibration
    report = json.loads((artifacts / "calibrate-report.json").read_text())

    assert [row["layer"] for row in report["layers"]] == list(range(LAYERS))
    for row in report["layers"]:
        assert row["kAmax"] > 0 and row["vAmax"] > 0
        assert 0 < row["kRelError"] < 0.1 and 0 < row["vRelError"] < 0.1  # FP8: a few percent
        assert row["kl"] >= 0
    worst = max(report["layers"], key=lambda row: row["kl"])
    assert summary["worstLayer"] == worst["layer"] and summary["worstLayerKL"] == worst["kl"]
    assert summary["fallbackLayers"] == []  # no --max-layer-kl: no fallback


def test_the_calibration_summary_has_the_keys_the_operator_reads(fp8_calibration: tuple[Path, dict]) -> None:
    artifacts, summary = fp8_calibration
    assert CALIBRATE_KEYS <= set(summary)
    assert summary["kvFormat"] == "fp8" and summary["samples"] == 4 and summary["device"] == "cpu"
    assert summary["modelOptVersion"].startswith("0.47")
    assert summary["datasetHash"].startswith("sha256:")
    assert len((artifacts.parent / "calibrate-summary.json").read_bytes()) <= SUMMARY_LIMIT_BYTES


def test_layers_above_max_layer_kl_are_fallback_layers(fp8_calibration: tuple[Path, dict], tmp_path: Path) -> None:
    _, first = fp8_calibration
    bound = first["worstLayerKL"] / 2
    summary_file = tmp_path / "summary.json"
    code, summary, stderr = run_cli(calibrate_args("fp8", tmp_path / "fp8", summary_file,
                                                   "--max-layer-kl", f"{bound:.6g}"))
    assert code == 0, stderr[-3000:]
    report = json.loads((tmp_path / "fp8" / "calibrate-report.json").read_text())

    expected = [row["layer"] for row in report["layers"] if row["kl"] > float(f"{bound:.6g}")]
    assert summary["fallbackLayers"] == expected
    assert summary["worstLayer"] in expected
    assert 0 < len(expected) < LAYERS
    assert all(row["fallback"] == (row["layer"] in expected) for row in report["layers"])


@pytest.fixture(scope="module")
def evaluations(fp8_calibration: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    fp8_artifacts, _ = fp8_calibration
    root = tmp_path_factory.mktemp("evaluate")
    results = {}
    for name, artifacts in (("bf16", root / "bf16"), ("fp8", fp8_artifacts), ("nvfp4", root / "nvfp4")):
        code, summary, stderr = run_cli(evaluate_args(name, artifacts, root / f"{name}.json"))
        assert code == 0, stderr[-3000:]
        results[name] = summary
    return results


def test_bf16_kv_has_zero_kl_and_zero_drop(evaluations: dict[str, Any]) -> None:
    bf16 = evaluations["bf16"]
    assert EVALUATE_KEYS <= set(bf16)
    assert bf16["kl"] == 0.0 and bf16["qualityDrop"] == 0.0 and bf16["top1Agreement"] == 1.0
    assert bf16["perplexity"] == bf16["baselinePerplexity"]


def test_nvfp4_loses_more_than_fp8_which_loses_something(evaluations: dict[str, Any]) -> None:
    fp8, nvfp4 = evaluations["fp8"], evaluations["nvfp4"]
    assert fp8["scales"] == "calibrated" and nvfp4["scales"] == "dynamic"
    assert nvfp4["kl"] > fp8["kl"] > 0
    assert nvfp4["perplexity"] > fp8["perplexity"]
    assert nvfp4["top1Agreement"] < fp8["top1Agreement"] < 1.0
    for summary in (fp8, nvfp4):
        assert 0 < summary["baselineScore"] < 1
        assert summary["qualityDrop"] == pytest.approx(summary["baselineScore"] - summary["score"], abs=2e-6)


def test_the_quality_fault_damages_the_kv_cache_for_real(evaluations: dict[str, Any], tmp_path: Path) -> None:
    code, summary, stderr = run_cli(evaluate_args("fp8", tmp_path / "fp8", tmp_path / "s.json"),
                                    env={"QFLEET_FAULT_QUALITY_DROP": "0.05"})
    assert code == 0, stderr[-3000:]
    assert summary["faultQualityNoise"] == 0.05
    assert summary["kl"] > 10 * evaluations["fp8"]["kl"]
    assert summary["qualityDrop"] > 0.01  # above the default gate
