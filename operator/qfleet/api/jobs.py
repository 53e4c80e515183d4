"""The Job contract between the operator and the runtime: each step's program, arguments and result.

The operator renders a step's container from `step_invocation`; the runtime (`qfleet-runtime <step> ...`) parses
exactly these arguments. Results come back as a compact JSON summary (at most 4 KiB) that the runtime writes to
`TERMINATION_MESSAGE_PATH`, which Kubernetes copies into the pod's terminated container state; the full report stays
under the artifact directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from qfleet.api.spec import QuantizedModelSpec

PROGRAM = "qfleet-runtime"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
"""Triton's ports in a serving pod; the metrics port is named `metrics`, which Prometheus discovery keys on."""
ARTIFACTS_MOUNT = "/var/lib/qfleet/artifacts"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TRAFFIC_SAMPLE_DIR = "traffic-sample"
"""Under `<artifacts root>/<model name>/`: the opt-in sample of served prompts, shared by every revision's pods."""
TRAFFIC_SAMPLE_MOUNT = "/var/lib/qfleet/traffic-sample"
"""Where a serving pod mounts that directory writable (the revision's own artifacts are mounted read-only)."""
SUMMARY_LIMIT_BYTES = 4096


class Step(StrEnum):
    CALIBRATE = "calibrate"
    BUILD = "build"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class ArtifactLocation:
    """Where a revision's artifacts live: a PersistentVolumeClaim mounted at ARTIFACTS_MOUNT, or an object store."""

    claim: str | None
    path: str

    @classmethod
    def parse(cls, uri: str, revision: str, kv_format: str) -> ArtifactLocation:
        scheme, _, rest = uri.partition("://")
        leaf = f"{revision}/{kv_format}"
        if scheme == "pvc":
            claim, _, sub = rest.partition("/")
            return cls(claim=claim, path="/".join(p for p in (ARTIFACTS_MOUNT, sub.strip("/"), leaf) if p))
        return cls(claim=None, path=f"{uri.rstrip('/')}/{leaf}")


def traffic_sample(uri: str, model: str) -> ArtifactLocation:
    """The model's traffic sample directory: on a claim, as the calibration Job sees it (the claim at ARTIFACTS_MOUNT);
    in an object store, its URI."""
    scheme, _, rest = uri.partition("://")
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        return ArtifactLocation(claim=claim, path="/".join(
            p for p in (ARTIFACTS_MOUNT, sub.strip("/"), model, TRAFFIC_SAMPLE_DIR) if p))
    return ArtifactLocation(claim=None, path=f"{uri.rstrip('/')}/{model}/{TRAFFIC_SAMPLE_DIR}")


def samples_traffic(spec: QuantizedModelSpec) -> bool:
    refresh = spec.quantization.calibration.refresh
    return refresh is not None and refresh.sample_traffic.enabled


@dataclass(frozen=True)
class StepInvocation:
    step: Step
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    artifacts: ArtifactLocation


def step_invocation(
    step: Step, spec: QuantizedModelSpec, revision: str, kv_format: str, compute_capability: tuple[int, int],
    calibrated_by: str | None = None, model: str | None = None, generation: int = 0,
) -> StepInvocation:
    """`calibrated_by`: the earlier revision whose calibration this one reuses (its inputs are unchanged); build and
    evaluation then read that revision's calibration directory instead of their own. A refresh's calibration
    (`generation` from 1) of a model that samples its traffic also reads `model`'s traffic sample."""
    artifacts = ArtifactLocation.parse(spec.artifacts.uri, revision, kv_format)
    common = ("--revision", revision, "--kv-format", kv_format, "--artifacts", artifacts.path,
              "--summary-file", TERMINATION_MESSAGE_PATH)
    if step is not Step.CALIBRATE and calibrated_by not in (None, revision):
        common += ("--calibration", ArtifactLocation.parse(spec.artifacts.uri, calibrated_by, kv_format).path)
    calibration = spec.quantization.calibration
    if step is Step.CALIBRATE:
        specific: tuple[str, ...] = (
            "--model-uri", spec.model.uri, "--model-revision", spec.model.revision,
            "--weights", spec.quantization.weights,
            "--dataset", calibration.dataset, "--samples", str(calibration.samples),
            "--max-seq-len", str(calibration.max_seq_len),
        )
        if spec.quantization.layer_fallback is not None:
            specific += ("--max-layer-kl", str(spec.quantization.layer_fallback.max_layer_kl))
        refresh = calibration.refresh
        if generation and model and refresh is not None and refresh.sample_traffic.enabled:
            specific += ("--recent-sample", traffic_sample(spec.artifacts.uri, model).path,
                         "--recent-share", str(refresh.recent_share),
                         "--recent-retention", str(int(refresh.sample_traffic.retention.total_seconds())))
    elif step is Step.BUILD:
        engine = spec.engine
        specific = (
            "--backend", engine.backend, "--max-batch-size", str(engine.max_batch_size),
            "--max-seq-len", str(engine.max_seq_len), "--max-num-tokens", str(engine.max_num_tokens),
            "--tensor-parallel", str(spec.tensor_parallel),
            "--kv-cache-free-gpu-memory-fraction", str(engine.kv_cache_free_gpu_memory_fraction),
            "--compute-capability", f"{compute_capability[0]}.{compute_capability[1]}",
            # bf16 is not calibrated, so the build learns the model from here rather than from a calibration report.
            "--model-uri", spec.model.uri, "--model-revision", spec.model.revision,
        )
    else:
        specific = ("--model-uri", spec.model.uri, "--model-revision", spec.model.revision,
                    "--baseline-kv-format", "bf16")
    env = tuple((var.name, var.value) for var in spec.runtime.env or ())
    return StepInvocation(step=step, args=(step.value, *common, *specific), env=env, artifacts=artifacts)


def serve_args(spec: QuantizedModelSpec, revision: str, kv_format: str, model: str | None = None) -> tuple[str, ...]:
    """`qfleet-runtime serve ...`: Triton on the pod's address with the revision's engine and KV format; with the
    traffic sample opted in, also where `model`'s pods keep it and its bounds."""
    artifacts = ArtifactLocation.parse(spec.artifacts.uri, revision, kv_format)
    args = ("serve", "--revision", revision, "--kv-format", kv_format, "--artifacts", artifacts.path,
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT),
            "--quality-sample-share", str(spec.serving.quality_sample_share))
    refresh = spec.quantization.calibration.refresh
    if model and refresh is not None and refresh.sample_traffic.enabled:
        sample = traffic_sample(spec.artifacts.uri, model)
        args += ("--prompt-sample-dir", TRAFFIC_SAMPLE_MOUNT if sample.claim else sample.path,
                 "--prompt-sample-max", str(refresh.sample_traffic.max_prompts),
                 "--prompt-sample-retention", str(int(refresh.sample_traffic.retention.total_seconds())))
    return args


def parse_summary(message: str | None) -> dict[str, Any]:
    """The step's summary from a termination message; {} when there is none or it is not a JSON object."""
    if not message:
        return {}
    try:
        summary = json.loads(message)
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}
