"""`qfleet-runtime build`: turn a calibrated checkpoint into what a server runs, under `<artifacts>/engine/`.

Checks first: the format runs on the compute capability the engine is built for (naming both when not), the
calibrated checkpoint exists and declares this KV format. Then it writes:

- `triton/qfleet/` (every machine; what `serve` runs on CPU): a Triton model repository for the qfleet Python
  backend (`config.pbtxt` with `backend: "python"`, `1/model.py`), whose parameters carry the KV format, the model
  to load (the calibrated checkpoint, or for bf16 the calibration report's model), the calibration report (scales,
  fallback layers), the maximum sequence length and the serving defaults; `max_batch_size` is --max-batch-size.
- `trtllm/` (the GPU path, **not verified here**: no GPU in this version's tests): the TensorRT-LLM LLM-API options
  (`kv_cache_config.dtype`, `free_gpu_memory_fraction`, batch, sequence, token limits, tensor parallelism) and a
  Triton model repository in the layout of TensorRT-LLM's llmapi backend. `target` says which one `serve` runs:
  `tensorrt-llm` where CUDA and the `tensorrt_llm` package are present, else `qfleet-python-backend`.
- `manifest.json`: format, target, settings, the planner's KV bytes per token for the model's shape and the KV
  budget they imply (maxBatchSize x maxSeqLen x bytes per token), and the SHA-256 and size of every input file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from qfleet.capacity import kv_bytes_per_token
from qfleet.formats import format_compute_capability, kv_format
from qfleet.shapes import ShapeError, shape_from_hf_config

from . import triton_repo
from .calibrate import CHECKPOINT, REPORT
from .common import StepError, Timer, resolve_model, write_report

ENGINE_DIR = "engine"
MANIFEST = "manifest.json"
TARGET_CPU = "qfleet-python-backend"
TARGET_GPU = "tensorrt-llm"
DEFAULT_PREFIX_CACHE_BYTES = 64 << 20


def source_paths() -> str:
    """The directories holding qfleet_runtime and qfleet (for the Python backend's stub, which ignores
    PYTHONPATH); in an installed image both are in site-packages."""
    import qfleet

    here = Path(__file__).resolve().parent.parent
    operator = Path(qfleet.__file__).resolve().parent.parent
    return ":".join(dict.fromkeys([str(here), str(operator)]))


def _compute_capability(text: str) -> tuple[int, int]:
    try:
        major, minor = (int(part) for part in text.split("."))
    except ValueError:
        raise StepError(f"--compute-capability {text!r} is not MAJOR.MINOR, e.g. 10.0") from None
    return major, minor


def _gpu_path_available() -> bool:
    if importlib.util.find_spec("tensorrt_llm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _file_digests(directory: Path, only: str | None = None) -> list[dict[str, Any]]:
    rows = []
    found = [directory / only] if only else directory.rglob("*")
    for path in sorted(p for p in found if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        rows.append({"path": str(path.relative_to(directory)), "bytes": path.stat().st_size,
                     "sha256": digest.hexdigest()})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    timer = Timer()
    fmt = kv_format(args.kv_format)
    capability = _compute_capability(args.compute_capability)
    if not fmt.runs_on(capability):
        raise StepError(f"KV format {fmt.name} needs compute capability "
                        f"{format_compute_capability(fmt.min_compute_capability)} or newer; the engine is being built "
                        f"for {format_compute_capability(capability)}")
    target = TARGET_GPU if _gpu_path_available() else TARGET_CPU
    artifacts = Path(args.artifacts)
    calibration = Path(args.calibration or args.artifacts)
    checkpoint = calibration / CHECKPOINT
    inputs: list[dict[str, Any]] = []
    if fmt.needs_calibration:
        quant_config = checkpoint / "hf_quant_config.json"
        if not quant_config.is_file():
            raise StepError(f"no calibrated checkpoint at {checkpoint}: the calibration step must run first")
        declared = json.loads(quant_config.read_text()).get("quantization", {}).get("kv_cache_quant_algo")
        if declared != fmt.trtllm_kv_cache_quant_algo:
            raise StepError(f"the calibrated checkpoint declares KV {declared}, not {fmt.trtllm_kv_cache_quant_algo}")
        inputs = _file_digests(checkpoint)
    for name, value in (("--max-batch-size", args.max_batch_size), ("--max-seq-len", args.max_seq_len),
                        ("--max-num-tokens", args.max_num_tokens), ("--tensor-parallel", args.tensor_parallel)):
        if value < 1:
            raise StepError(f"{name} must be at least 1, got {value}")
    report = calibration / REPORT
    model_path = _model_to_serve(checkpoint, report, fmt.name, args.model_uri, args.model_revision)
    per_token = _kv_bytes_per_token(model_path, fmt)
    engine = artifacts / ENGINE_DIR
    engine.mkdir(parents=True, exist_ok=True)
    cpu = triton_repo.CpuModel(
        kv_format=fmt.name, model_path=str(model_path), calibration_report=str(report),
        max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
        prefix_cache_bytes=DEFAULT_PREFIX_CACHE_BYTES, execution_env=sys.prefix, pythonpath=source_paths())
    repository = engine / triton_repo.CPU_DIR
    triton_repo.write_cpu_repository(repository, cpu)
    options = triton_repo.llm_api_options(fmt.name, args.max_batch_size, args.max_seq_len, args.max_num_tokens,
                                          args.tensor_parallel, args.kv_cache_free_gpu_memory_fraction)
    trtllm = triton_repo.write_trtllm_repository(engine / triton_repo.GPU_DIR, str(model_path), options)
    manifest = {
        "kvFormat": fmt.name, "kvCacheQuantAlgo": fmt.trtllm_kv_cache_quant_algo,
        "computeCapability": format_compute_capability(capability), "requestedBackend": args.backend,
        "target": target, "modelName": triton_repo.MODEL_NAME, "model": str(model_path),
        "modelRepository": str(repository),
        "trtllm": trtllm | {"verified": False, "kvCacheDtype": triton_repo.TRTLLM_KV_DTYPE[fmt.name]},
        "settings": {"maxBatchSize": args.max_batch_size, "maxSeqLen": args.max_seq_len,
                     "maxNumTokens": args.max_num_tokens, "tensorParallel": args.tensor_parallel,
                     "kvCacheFreeGpuMemoryFraction": args.kv_cache_free_gpu_memory_fraction,
                     "prefixCacheBytes": DEFAULT_PREFIX_CACHE_BYTES},
        "kvBytesPerToken": per_token,
        "kvCacheBudgetBytes": (None if per_token is None
                               else round(args.max_batch_size * args.max_seq_len * per_token)),
        "calibrationReport": _file_digests(calibration, only=REPORT),
        "inputs": inputs, "inputBytes": sum(row["bytes"] for row in inputs),
    }
    path = write_report(engine, MANIFEST, manifest)
    return {"step": "build", "kvFormat": fmt.name, "kvCacheDtype": fmt.name, "artifact": str(engine),
            "manifest": str(path), "path": "gpu" if target == TARGET_GPU else "cpu", "target": target,
            "computeCapability": manifest["computeCapability"], "kvBytesPerToken": per_token,
            "inputFiles": len(inputs), "inputBytes": manifest["inputBytes"], "durationSeconds": timer.seconds}


def _model_to_serve(checkpoint: Path, report: Path, name: str, model_uri: str | None = None,
                    model_revision: str | None = None) -> Path:
    """The calibrated checkpoint when there is one (fp8, int8, nvfp4); else the model the calibration ran on; else,
    for a format that needs no calibration (bf16, which the operator does not calibrate), the model named in args."""
    if (checkpoint / "config.json").is_file():
        return checkpoint
    if report.is_file():
        model = json.loads(report.read_text()).get("model") or {}
        if model.get("uri"):
            return resolve_model(model["uri"], model.get("revision") or "main")
    if model_uri:
        return resolve_model(model_uri, model_revision or "main")
    raise StepError(f"no model to serve: neither a checkpoint with config.json at {checkpoint} nor a calibration "
                    f"report naming the model at {report}, and no --model-uri (the calibration step must run first "
                    f"for {name})")


def _kv_bytes_per_token(model_path: Path, fmt) -> float | None:  # type: ignore[no-untyped-def]
    """The capacity planner's KV bytes per token for the model's shape (None when config.json has no usable shape)."""
    try:
        config = json.loads((model_path / "config.json").read_text())
        shape = shape_from_hf_config(config, parameter_count=1)
    except (OSError, ValueError, ShapeError):
        return None
    return float(kv_bytes_per_token(shape, fmt))
