"""The qfleet model inside Triton's Python backend: `TritonPythonModel` around `engine.Engine`.

The model repository's `model.py` (written by `qfleet-runtime build`) puts the directories named by the parameter
QFLEET_PYTHONPATH on sys.path (the backend's stub ignores PYTHONPATH) and delegates here. Parameters (config.pbtxt):

    kv_format, artifacts, model_path, calibration_report, max_seq_len, prefix_cache_bytes, block_tokens,
    outlier_factor, quality_sample_share, threads, prompt_sample_dir, prompt_sample_max, prompt_sample_retention

Inputs: `text_input` (BYTES) and optional `max_tokens` (INT32), each [batch, 1]. Outputs: `text_output` (BYTES),
`num_input_tokens`, `num_output_tokens`, `prefix_cache_hit_blocks` (INT32). The requests of one `execute` call run
one after the other; each one's latency counts from its arrival at the pod (`request_start`: the parameter
`qfleet-arrival-ns` that serve's HTTP front stamps), or, without it (gRPC), from the start of that call. The fault switch (QFLEET_FAULT_*) comes
from the server's environment, which Triton passes to the stub.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import engine as eng
from . import prompt_sample
from .serving_metrics import TritonSink

DEFAULT_MAX_TOKENS = 32
ARRIVAL_PARAMETER = "qfleet-arrival-ns"
"""front.ARRIVAL_HEADER, as Triton forwards it (front imports nothing the stub needs)."""


def engine_config(parameters: dict[str, str]) -> eng.EngineConfig:
    """The engine's configuration from the model's config.pbtxt parameters (strings)."""
    kv_format = parameters["kv_format"]
    amax, fallback_layers = None, frozenset()
    if kv_format != "bf16":
        amax, fallback_layers = eng.calibrated_amax(Path(parameters["calibration_report"]), kv_format)

    def number(key: str, default: float) -> float:
        raw = parameters.get(key, "")
        return float(raw) if raw.strip() else default

    return eng.EngineConfig(
        kv_format=kv_format, model_path=Path(parameters["model_path"]), amax=amax, fallback_layers=fallback_layers,
        max_seq_len=int(number("max_seq_len", 2048)),
        prefix_cache_bytes=int(number("prefix_cache_bytes", eng.DEFAULT_PREFIX_CACHE_BYTES)),
        block_tokens=int(number("block_tokens", eng.DEFAULT_BLOCK_TOKENS)),
        outlier_factor=number("outlier_factor", eng.DEFAULT_OUTLIER_FACTOR),
        quality_share=number("quality_sample_share", eng.DEFAULT_QUALITY_SHARE),
        faults=eng.Faults.from_env(), threads=int(number("threads", 0)),
        prompt_sample_dir=Path(sample_dir) if (sample_dir := parameters.get("prompt_sample_dir", "").strip()) else None,
        prompt_sample_max=int(number("prompt_sample_max", prompt_sample.DEFAULT_MAX_ENTRIES)),
        prompt_sample_retention=number("prompt_sample_retention", prompt_sample.DEFAULT_RETENTION_SECONDS))


def request_start(parameters: str | None, execute_started: float, wall: Callable[[], float] = time.time,
                  monotonic: Callable[[], float] = time.monotonic) -> float:
    """When the request arrived, on the monotonic clock: from the front's wall-clock stamp (nanoseconds) in the
    request parameters when there is one, else `execute_started`. Never later than `execute_started` (a stamp from a
    clock that stepped forward is not believed beyond the work's own start)."""
    try:
        stamp = json.loads(parameters or "{}").get(ARRIVAL_PARAMETER)
        arrival_wall = int(stamp) / 1e9
    except (TypeError, ValueError, AttributeError):
        return execute_started
    return min(execute_started, monotonic() - max(0.0, wall() - arrival_wall))


class QfleetModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside the stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        parameters = {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}
        self.name = args.get("model_name") or config.get("name", "qfleet")
        settings = engine_config(parameters)
        self.sink = TritonSink(pb_utils, self.name, settings.kv_format)
        started = time.monotonic()
        self.engine = eng.Engine(settings, self.sink, self.name)
        self.engine.warm_up()  # before initialize returns, so /v2/health/ready waits for it
        sample = (f"{settings.prompt_sample_dir} (at most {settings.prompt_sample_max}, kept "
                  f"{settings.prompt_sample_retention:g} s)" if settings.prompt_sample_dir else "off")
        logging.getLogger("qfleet.serve").warning(
            "qfleet model %s loaded: KV %s, fallback layers %s, faults %s, prompt sample %s, in %.1f s", self.name,
            settings.kv_format, sorted(settings.fallback_layers), settings.faults, sample, time.monotonic() - started)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        started = time.monotonic()
        responses = []
        for request in requests:
            try:
                parameters = request.parameters() if hasattr(request, "parameters") else None
                arrived = request_start(parameters, started)
                texts = pb.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)
                max_tensor = pb.get_input_tensor_by_name(request, "max_tokens")
                limits = (max_tensor.as_numpy().reshape(-1) if max_tensor is not None
                          else np.full(len(texts), DEFAULT_MAX_TOKENS))
                if len(limits) == 1 and len(texts) > 1:
                    limits = np.repeat(limits, len(texts))
                rows = [self.engine.request(_text(t), int(n), arrived) for t, n in zip(texts, limits)]
                shape = (len(rows), 1)
                outputs = [
                    pb.Tensor("text_output", np.array([r.text.encode() for r in rows], dtype=np.object_).reshape(shape)),
                    pb.Tensor("num_input_tokens", np.array([r.prompt_tokens for r in rows], np.int32).reshape(shape)),
                    pb.Tensor("num_output_tokens",
                              np.array([r.generated_tokens for r in rows], np.int32).reshape(shape)),
                    pb.Tensor("prefix_cache_hit_blocks",
                              np.array([r.prefix_hits for r in rows], np.int32).reshape(shape)),
                ]
                responses.append(pb.InferenceResponse(output_tensors=outputs))
            except Exception as error:  # noqa: BLE001 - every failure becomes that request's error response
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    f"{type(error).__name__}: {error}")))
        return responses

    def finalize(self) -> None:
        self.engine.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
