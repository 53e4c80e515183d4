"""The Job contract: what the operator renders, the runtime parses; failures end with a one-line summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from qfleet.api import parse_document  # noqa: E402
from qfleet.api.jobs import GRPC_PORT, HTTP_PORT, METRICS_PORT, SUMMARY_LIMIT_BYTES, Step, serve_args, step_invocation  # noqa: E402,E501
from qfleet.manifests.jobs import Owner, step_job  # noqa: E402
from qfleet_runtime import cli  # noqa: E402
from qfleet_runtime.common import compact  # noqa: E402

from .conftest import SMOLLM, calibrate_args, common  # noqa: E402

DOCUMENT = {
    "apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel",
    "metadata": {"name": "smollm", "namespace": "default"},
    "spec": {
        "model": {"uri": SMOLLM},
        "quantization": {"kvCache": "nvfp4", "calibration": {"dataset": "builtin", "samples": 8, "maxSeqLen": 128},
                         "layerFallback": {"maxLayerKL": "0.05"}},
        "nodePool": {"gpusPerReplica": 1},
        "serving": {"image": "qfleet-runtime:dev", "replicas": 1},
        "artifacts": {"uri": "pvc://qfleet-artifacts/smollm"},
    },
}


@pytest.mark.parametrize("step", list(Step), ids=str)
def test_a_rendered_job_parses_with_the_runtimes_own_parser(step: Step) -> None:
    spec = parse_document(DOCUMENT).spec
    invocation = step_invocation(step, spec, "7f3a9c", "nvfp4", (10, 0))
    job = step_job(Owner("smollm", "default", "uid-1"), spec, "7f3a9c", "nvfp4", (10, 0), invocation)
    (container,) = job["spec"]["template"]["spec"]["containers"]

    assert container["command"] == ["qfleet-runtime"]
    args = cli.build_parser().parse_args(container["args"])

    assert args.step == step.value
    assert args.revision == "7f3a9c" and args.kv_format == "nvfp4"
    assert args.artifacts == invocation.artifacts.path == "/var/lib/qfleet/artifacts/smollm/7f3a9c/nvfp4"
    assert args.summary_file == container["terminationMessagePath"]
    if step is Step.CALIBRATE:
        assert (args.model_uri, args.dataset, args.samples, args.max_seq_len, args.max_layer_kl) == (
            SMOLLM, "builtin", 8, 128, "0.05")
    elif step is Step.EVALUATE:
        assert args.baseline_kv_format == "bf16"
    else:
        assert args.compute_capability == "10.0"


def test_the_serving_args_parse_with_the_runtimes_own_parser() -> None:
    spec = parse_document(DOCUMENT).spec
    args = cli.build_parser().parse_args(list(serve_args(spec, "7f3a9c", "nvfp4")))

    assert (args.step, args.revision, args.kv_format) == ("serve", "7f3a9c", "nvfp4")
    assert args.artifacts == "/var/lib/qfleet/artifacts/smollm/7f3a9c/nvfp4"
    assert (args.http_port, args.grpc_port, args.metrics_port) == (HTTP_PORT, GRPC_PORT, METRICS_PORT)
    assert args.address == "0.0.0.0"  # the pod's address


def test_serve_without_a_build_fails_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["serve", "--revision", "r", "--kv-format", "fp8", "--artifacts", str(tmp_path),
                     "--http-port", "1", "--grpc-port", "2", "--metrics-port", "3"])
    assert code == 1
    assert "no build manifest" in capsys.readouterr().err


def test_an_unknown_argument_is_refused() -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["evaluate", "--revision", "r", "--kv-format", "fp8", "--artifacts", "a",
                                       "--summary-file", "s", "--model-uri", "u", "--model-revision", "m",
                                       "--baseline-kv-format", "bf16", "--no-such-flag"])
    assert exited.value.code == 2


def _summary(path: Path) -> dict:
    text = path.read_text()
    assert len(text.encode()) <= SUMMARY_LIMIT_BYTES
    return json.loads(text)


@pytest.mark.parametrize(("exit_code", "expected"), [(None, 3), ("7", 7)])
def test_the_fault_switch_fails_the_named_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               exit_code: str | None, expected: int) -> None:
    monkeypatch.setenv("QFLEET_FAULT_STEP", "calibrate")
    if exit_code:
        monkeypatch.setenv("QFLEET_FAULT_EXIT_CODE", exit_code)
    summary = tmp_path / "summary.json"

    assert cli.main(calibrate_args("fp8", tmp_path / "a", summary)) == expected
    result = _summary(summary)
    assert "QFLEET_FAULT_STEP=calibrate" in result["error"] and result["exitCode"] == expected
    assert "\n" not in result["error"]


def test_the_fault_switch_leaves_other_steps_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFLEET_FAULT_STEP", "evaluate")
    summary = tmp_path / "summary.json"
    args = calibrate_args("fp8", tmp_path / "a", summary)
    args[args.index("--dataset") + 1] = "no-such-dataset"  # fails fast, after the fault check passed it by

    assert cli.main(args) == 1
    assert "unknown calibration dataset 'no-such-dataset'" in _summary(summary)["error"]


def test_a_missing_model_fails_with_a_reason(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    args = calibrate_args("fp8", tmp_path / "a", summary)
    args[args.index("--model-uri") + 1] = f"file://{tmp_path}/nothing-here"

    assert cli.main(args) == 1
    assert "no HF checkpoint at" in _summary(summary)["error"]


def test_a_hub_model_that_is_not_cached_is_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    summary = tmp_path / "summary.json"
    args = calibrate_args("fp8", tmp_path / "a", summary)
    args[args.index("--model-uri") + 1] = "hf://meta-llama/Llama-3.3-70B-Instruct"

    assert cli.main(args) == 1
    assert "does not download from the hub" in _summary(summary)["error"]


def test_weight_quantization_says_not_implemented(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    args = calibrate_args("fp8", tmp_path / "a", summary)
    args[args.index("--weights") + 1] = "nvfp4"
    assert cli.main(args) == 4
    assert "not implemented" in _summary(summary)["error"]


def build_args(kv: str, artifacts: Path, summary: Path, capability: str) -> list[str]:
    return [*common("build", kv, artifacts, summary), "--backend", "tensorrt-llm", "--max-batch-size", "8",
            "--max-seq-len", "512", "--max-num-tokens", "512", "--tensor-parallel", "1",
            "--kv-cache-free-gpu-memory-fraction", "0.9", "--compute-capability", capability]


def test_build_refuses_a_format_the_gpu_cannot_run_naming_both(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert cli.main(build_args("nvfp4", tmp_path / "a", summary, "9.0")) == 1
    error = _summary(summary)["error"]
    assert "nvfp4" in error and "10.0" in error and "9.0" in error


def test_build_needs_the_calibrated_checkpoint_of_its_format(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert cli.main(build_args("fp8", tmp_path / "a", summary, "9.0")) == 1
    assert "no calibrated checkpoint" in _summary(summary)["error"]

    checkpoint = tmp_path / "a" / "calibrated"
    checkpoint.mkdir(parents=True)
    (checkpoint / "hf_quant_config.json").write_text('{"quantization": {"kv_cache_quant_algo": "NVFP4"}}')
    assert cli.main(build_args("fp8", tmp_path / "a", summary, "9.0")) == 1
    assert "declares KV NVFP4" in _summary(summary)["error"]


def test_build_records_a_manifest_with_input_hashes(tmp_path: Path) -> None:
    import hashlib
    import json

    checkpoint = tmp_path / "a" / "calibrated"
    checkpoint.mkdir(parents=True)
    quant = '{"quantization": {"kv_cache_quant_algo": "FP8"}}'
    config = json.dumps({"model_type": "llama", "num_hidden_layers": 30, "num_attention_heads": 9,
                         "num_key_value_heads": 3, "hidden_size": 576, "head_dim": 64})
    (checkpoint / "hf_quant_config.json").write_text(quant)
    (checkpoint / "config.json").write_text(config)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    summary = tmp_path / "summary.json"

    assert cli.main(build_args("fp8", tmp_path / "a", summary, "8.9")) == 0
    result = _summary(summary)
    assert (result["kvCacheDtype"], result["computeCapability"], result["inputFiles"]) == ("fp8", "8.9", 3)
    engine = tmp_path / "a" / "engine"
    manifest = json.loads((engine / "manifest.json").read_text())
    assert {row["path"]: row["sha256"] for row in manifest["inputs"]} == {
        "config.json": hashlib.sha256(config.encode()).hexdigest(),
        "hf_quant_config.json": hashlib.sha256(quant.encode()).hexdigest(),
        "model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    assert manifest["settings"]["maxBatchSize"] == 8
    # the planner's figure for this shape (2 x 30 x 3 x 64 x 1 byte) and the KV budget of a full batch
    assert manifest["kvBytesPerToken"] == 11520 and manifest["kvCacheBudgetBytes"] == 8 * 512 * 11520
    assert manifest["target"] == "qfleet-python-backend" and manifest["model"] == str(checkpoint)
    pbtxt = (engine / "triton" / "qfleet" / "config.pbtxt").read_text()
    assert 'backend: "python"' in pbtxt and "max_batch_size: 8" in pbtxt and 'string_value: "fp8"' in pbtxt
    assert "class TritonPythonModel" in (engine / "triton" / "qfleet" / "1" / "model.py").read_text()
    assert 'dtype: "fp8"' in (engine / "trtllm" / "llm_api_options.yaml").read_text()


def test_build_needs_to_know_the_model_to_serve(tmp_path: Path) -> None:
    checkpoint = tmp_path / "a" / "calibrated"
    checkpoint.mkdir(parents=True)
    (checkpoint / "hf_quant_config.json").write_text('{"quantization": {"kv_cache_quant_algo": "FP8"}}')
    summary = tmp_path / "summary.json"
    assert cli.main(build_args("fp8", tmp_path / "a", summary, "8.9")) == 1
    assert "no model to serve" in _summary(summary)["error"]


def test_a_bf16_build_needs_no_calibration_and_serves_the_model_the_operator_names(tmp_path: Path) -> None:
    """The operator does not calibrate bf16 (CalibrationNotRequired), so the build gets the model in its args."""
    import json

    from qfleet_runtime.common import resolve_model

    summary = tmp_path / "summary.json"
    args = [*build_args("bf16", tmp_path / "a", summary, "9.0"), "--model-uri", SMOLLM]
    assert cli.main(args) == 0, _summary(summary)
    manifest = json.loads((tmp_path / "a" / "engine" / "manifest.json").read_text())
    assert manifest["model"] == str(resolve_model(SMOLLM, "main"))
    assert manifest["kvBytesPerToken"] == 2 * 30 * 3 * 64 * 2  # the planner's bf16 figure for SmolLM2-135M


def test_a_format_without_a_kv_path_is_refused(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert cli.main(calibrate_args("mxfp4", tmp_path / "a", summary)) == 1
    assert "mxfp4" in _summary(summary)["error"]


def test_the_summary_is_cut_to_4_kib() -> None:
    text = compact({"kvFormat": "fp8", "worstLayer": 3, "fallbackLayers": list(range(2000)), "note": "x" * 9000})
    assert len(text.encode()) <= SUMMARY_LIMIT_BYTES
    assert json.loads(text)["worstLayer"] == 3
