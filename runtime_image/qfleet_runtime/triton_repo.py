"""Triton model repositories as files: the qfleet Python-backend model (CPU path) and the TensorRT-LLM one (GPU path).

CPU path (verified here): `<engine>/triton/qfleet/{config.pbtxt, 1/model.py}`. `backend: "python"`; the parameter
EXECUTION_ENV_PATH names the virtual environment whose packages the stub imports (torch, transformers), and
QFLEET_PYTHONPATH the directories holding `qfleet_runtime` and `qfleet` (the stub ignores PYTHONPATH). `serve`
rewrites both for the machine it runs on (they are paths of the build machine here).

GPU path (written, **not verified**: no GPU here): `<engine>/trtllm/` with
- `llm_api_options.yaml`: TensorRT-LLM LLM-API arguments (`kv_cache_config.dtype`, `free_gpu_memory_fraction`,
  `max_batch_size`, `max_seq_len`, `max_num_tokens`, `tensor_parallel_size`), for `trtllm-serve --config` as well;
- `model_repository/tensorrt_llm/{config.pbtxt, 1/model.yaml}`: the layout of TensorRT-LLM's
  `triton_backend/all_models/llmapi/tensorrt_llm` (a Python model whose `model.py` comes with the
  `nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3` image; `model.yaml` holds the LLM() arguments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "qfleet"
"""The Triton model name clients use (/v2/models/qfleet/...): fixed, so stable and canary answer the same calls."""
TRTLLM_MODEL_NAME = "tensorrt_llm"
CPU_DIR = "triton"
GPU_DIR = "trtllm"

MODEL_PY = '''"""qfleet's Triton Python-backend model: the code lives in qfleet_runtime.triton_model (written by qfleet-runtime build)."""
import json
import sys


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters") or {}
        extra = parameters.get("QFLEET_PYTHONPATH", {}).get("string_value", "")
        for path in reversed([p for p in extra.split(":") if p]):
            if path not in sys.path:
                sys.path.insert(0, path)
        from qfleet_runtime.triton_model import QfleetModel

        self._model = QfleetModel()
        self._model.initialize(args)

    def execute(self, requests):
        return self._model.execute(requests)

    def finalize(self):
        self._model.finalize()
'''


@dataclass(frozen=True)
class CpuModel:
    kv_format: str
    model_path: str
    calibration_report: str
    max_batch_size: int
    max_seq_len: int
    prefix_cache_bytes: int
    execution_env: str
    pythonpath: str
    block_tokens: int = 16
    outlier_factor: float = 0.0
    quality_sample_share: float = 0.1
    threads: int = 0

    def parameters(self) -> dict[str, str]:
        return {
            "EXECUTION_ENV_PATH": self.execution_env, "QFLEET_PYTHONPATH": self.pythonpath,
            "kv_format": self.kv_format, "model_path": self.model_path,
            "calibration_report": self.calibration_report, "max_seq_len": str(self.max_seq_len),
            "prefix_cache_bytes": str(self.prefix_cache_bytes), "block_tokens": str(self.block_tokens),
            "outlier_factor": repr(float(self.outlier_factor)),
            "quality_sample_share": repr(float(self.quality_sample_share)), "threads": str(self.threads),
        }


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_parameters(parameters: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}\n'
                   for k, v in parameters.items())


def cpu_config_pbtxt(model: CpuModel, name: str = MODEL_NAME) -> str:
    return (
        f'name: {_quote(name)}\n'
        'backend: "python"\n'
        f'max_batch_size: {model.max_batch_size}\n'
        'dynamic_batching { }\n'
        'input [\n'
        '  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },\n'
        '  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }\n'
        ']\n'
        'output [\n'
        '  { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },\n'
        '  { name: "num_input_tokens" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        '  { name: "num_output_tokens" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        '  { name: "prefix_cache_hit_blocks" data_type: TYPE_INT32 dims: [ 1 ] }\n'
        ']\n'
        'instance_group [ { kind: KIND_CPU count: 1 } ]\n'
        + render_parameters(model.parameters()))


def write_cpu_repository(root: Path, model: CpuModel, name: str = MODEL_NAME) -> Path:
    """<root>/<name>/{config.pbtxt, 1/model.py}; returns <root>/<name>."""
    directory = root / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(cpu_config_pbtxt(model, name))
    (directory / "1" / "model.py").write_text(MODEL_PY)
    return directory


def set_parameters(config_text: str, values: dict[str, str]) -> str:
    """config.pbtxt text with the named string parameters replaced (added when absent)."""
    lines = [line for line in config_text.splitlines()
             if not any(line.startswith(f'parameters {{ key: {_quote(key)} ') for key in values)]
    return "\n".join(lines).rstrip("\n") + "\n" + render_parameters(values)


def read_parameters(config_text: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt written by `render_parameters` (one per line)."""
    import re

    found = {}
    for match in re.finditer(r'^parameters \{ key: "((?:[^"\\]|\\.)*)" value \{ string_value: "((?:[^"\\]|\\.)*)" \} \}$',
                             config_text, flags=re.M):
        found[_unquote(match.group(1))] = _unquote(match.group(2))
    return found


def _unquote(text: str) -> str:
    return text.replace('\\"', '"').replace("\\\\", "\\")


# -- GPU path (TensorRT-LLM), not verified here ------------------------------------------------------------------------

TRTLLM_KV_DTYPE = {"bf16": "auto", "fp8": "fp8", "nvfp4": "nvfp4", "int8": "int8"}
"""kv_cache_config.dtype: "auto" keeps the checkpoint's (none for bf16); fp8 and nvfp4 are the documented values;
int8 comes from the checkpoint's kv_cache_quant_algo (not a documented dtype string)."""


def llm_api_options(kv_format: str, max_batch_size: int, max_seq_len: int, max_num_tokens: int,
                    tensor_parallel: int, free_gpu_memory_fraction: float) -> dict[str, object]:
    return {
        "backend": "pytorch",
        "tensor_parallel_size": tensor_parallel,
        "max_batch_size": max_batch_size,
        "max_seq_len": max_seq_len,
        "max_num_tokens": max_num_tokens,
        "kv_cache_config": {"dtype": TRTLLM_KV_DTYPE[kv_format], "free_gpu_memory_fraction": free_gpu_memory_fraction,
                            "enable_block_reuse": True},
        "enable_iter_perf_stats": True,
        "return_perf_metrics": True,
    }


def _yaml(value: object, indent: int = 0) -> str:
    """A tiny YAML writer for nested dicts of scalars (no dependency on PyYAML in the runtime)."""
    pad = "  " * indent
    out = []
    for key, item in value.items():  # type: ignore[attr-defined]
        if isinstance(item, dict):
            out.append(f"{pad}{key}:\n{_yaml(item, indent + 1).rstrip(chr(10))}")
        elif isinstance(item, bool):
            out.append(f"{pad}{key}: {'true' if item else 'false'}")
        elif isinstance(item, (int, float)):
            out.append(f"{pad}{key}: {item}")
        else:
            out.append(f'{pad}{key}: "{item}"')
    return "\n".join(out) + "\n"


def write_trtllm_repository(root: Path, checkpoint: str, options: dict[str, object]) -> dict[str, str]:
    """<root>/llm_api_options.yaml and <root>/model_repository/tensorrt_llm/{config.pbtxt, 1/model.yaml}."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "llm_api_options.yaml").write_text(
        "# TensorRT-LLM LLM-API arguments (trtllm-serve --config, or LLM(**options)). Written by qfleet-runtime build;\n"
        "# NOT verified on a GPU in this version (see docs/runtime.md).\n" + _yaml(options))
    model = root / "model_repository" / TRTLLM_MODEL_NAME
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "1" / "model.yaml").write_text(
        "# LLM() arguments for TensorRT-LLM's llmapi Triton model (triton_backend/all_models/llmapi). NOT verified.\n"
        + _yaml({"model": checkpoint, **options,
                 "triton_config": {"max_batch_size": 0, "decoupled": False}}))
    (model / "config.pbtxt").write_text(
        f'# TensorRT-LLM llmapi model; model.py comes from the tritonserver trtllm image. NOT verified here.\n'
        f'name: "{TRTLLM_MODEL_NAME}"\nbackend: "python"\nmax_batch_size: 0\n'
        'model_transaction_policy { decoupled: false }\n'
        'input [\n'
        '  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },\n'
        '  { name: "sampling_param_max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }\n'
        ']\n'
        'output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
        'instance_group [ { kind: KIND_MODEL count: 1 } ]\n')
    return {"llmApiOptions": str(root / "llm_api_options.yaml"), "modelRepository": str(root / "model_repository")}
