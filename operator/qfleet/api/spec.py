"""`QuantizedModel.spec`: what to serve (model, quantization, engine), where, and how to roll it out."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from qfleet.api import rules
from qfleet.api.base import SpecObject
from qfleet.api.errors import FieldError
from qfleet.api.refresh_spec import Refresh
from qfleet.api.rollout_spec import Rollout
from qfleet.api.values import (
    ArtifactsUri,
    DnsSubdomain,
    EnvVarName,
    KvCacheChoice,
    LadderFormat,
    MemoryFraction,
    ModelUri,
    ParameterCount,
    Quantity,
    SampleShare,
    SecretKey,
    Threshold,
    WeightFormatName,
)
from qfleet.formats import AUTO
from qfleet.shapes import ModelShape, dense_shape, known_shape

MAX_GPUS_PER_REPLICA = 72
"""One GB200 NVL72 rack."""
DEFAULT_RUNTIME_IMAGE = "ghcr.io/qfleet/qfleet-runtime:0.1.0"
"""The image built from runtime_image/Dockerfile at this version: what calibration, build and evaluation run in, and
what serves, unless the chart (QFLEET_RUNTIME_IMAGE) or the model (spec.runtime.image, spec.serving.image) says
otherwise."""

EngineBackend = Literal["tensorrt-llm", "qfleet-python"]
LabelValue = Annotated[str, StringConstraints(max_length=63)]


class SecretKeyRef(SpecObject):
    name: DnsSubdomain = Field(examples=["hf-token"])
    key: SecretKey = "token"


class ModelShapeSpec(SpecObject):
    num_layers: int = Field(ge=1, le=1024, examples=["80"])
    num_key_value_heads: int = Field(ge=1, le=1024, examples=["8"])
    head_dim: int = Field(ge=1, le=4096, examples=["128"])
    parameter_count: ParameterCount = Field(examples=['"70.6e9"'])

    def to_shape(self) -> ModelShape:
        return dense_shape(
            num_layers=self.num_layers,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            parameter_count=self.parameter_count,
        )


class ModelSource(SpecObject):
    uri: ModelUri = Field(examples=["hf://meta-llama/Llama-3.3-70B-Instruct"])
    revision: str = Field(default="main", min_length=1, max_length=253)
    token_secret_ref: SecretKeyRef | None = None
    shape: ModelShapeSpec | None = None

    def resolved_shape(self) -> ModelShape | None:
        """`shape` when given, else the built-in catalog's shape for `uri`, else None."""
        return self.shape.to_shape() if self.shape else known_shape(self.uri)


class Calibration(SpecObject):
    dataset: str = Field(default="cnn_dailymail", min_length=1, max_length=253)
    samples: int = Field(default=512, ge=1, le=65536)
    max_seq_len: int = Field(default=512, ge=1, le=131072)
    refresh: Refresh | None = None
    """When to calibrate again (qfleet.api.refresh_spec); policy, not artifact: not hashed into the revision."""


class LayerFallback(SpecObject):
    max_layer_kl: Threshold = Field(alias="maxLayerKL", examples=['"0.05"'])


class Quantization(SpecObject):
    weights: WeightFormatName = "bf16"
    kv_cache: KvCacheChoice = Field(examples=["nvfp4"])
    kv_cache_ladder: list[LadderFormat] | None = Field(default=None, max_length=5)
    calibration: Calibration = Field(default_factory=Calibration)
    layer_fallback: LayerFallback | None = None

    def violations(self) -> Iterator[FieldError]:
        if self.weights != "bf16":
            yield FieldError("weights", rules.WEIGHTS_BF16_ONLY)
        if self.kv_cache == AUTO and not self.kv_cache_ladder:
            yield FieldError("kvCacheLadder", rules.KV_AUTO_NEEDS_LADDER)
        if self.kv_cache != AUTO and self.kv_cache_ladder is not None:
            yield FieldError("kvCacheLadder", rules.KV_LADDER_ONLY_WITH_AUTO)
        ladder = self.kv_cache_ladder or []
        for index, name in enumerate(ladder):
            if name in ladder[:index]:
                yield FieldError(f"kvCacheLadder[{index}]", f"{name} is already on the ladder: list each format once")

    @property
    def candidate_kv_formats(self) -> tuple[str, ...]:
        """The formats to try, best first: the ladder for `auto`, else just `kvCache`."""
        return tuple(self.kv_cache_ladder or ()) if self.kv_cache == AUTO else (self.kv_cache,)


class Engine(SpecObject):
    backend: EngineBackend = "tensorrt-llm"
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_seq_len: int = Field(default=8192, ge=1, le=1_048_576)
    max_num_tokens: int = Field(default=8192, ge=1, le=1_048_576)
    tensor_parallel: int | None = Field(default=None, ge=1, le=MAX_GPUS_PER_REPLICA)
    kv_cache_free_gpu_memory_fraction: MemoryFraction = Decimal("0.9")


class Toleration(SpecObject):
    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class NodePool(SpecObject):
    node_selector: dict[str, LabelValue] | None = Field(default=None, max_length=20)
    tolerations: list[Toleration] | None = Field(default=None, max_length=20)
    gpus_per_replica: int = Field(default=1, ge=1, le=MAX_GPUS_PER_REPLICA)


class Resources(SpecObject):
    limits: dict[str, Quantity] | None = Field(default=None, max_length=20)
    requests: dict[str, Quantity] | None = Field(default=None, max_length=20)


class Serving(SpecObject):
    image: str | None = Field(default=None, min_length=1, max_length=512,
                              examples=["ghcr.io/qfleet/qfleet-runtime:0.1.0"])
    replicas: int = Field(default=1, ge=1, le=1000)
    resources: Resources | None = None
    quality_sample_share: SampleShare = Decimal("0.1")


class EnvVar(SpecObject):
    name: EnvVarName = Field(examples=["HF_HUB_OFFLINE"])
    value: str = Field(default="", max_length=4096)


class Runtime(SpecObject):
    image: str | None = Field(default=None, min_length=1, max_length=512,
                              examples=["ghcr.io/qfleet/qfleet-runtime:0.1.0"])
    env: list[EnvVar] | None = Field(default=None, max_length=50)

    def violations(self) -> Iterator[FieldError]:
        seen: set[str] = set()
        for index, var in enumerate(self.env or ()):
            if var.name in seen:
                yield FieldError(f"env[{index}].name", f"{var.name} is set twice: give each variable once")
            seen.add(var.name)


class Artifacts(SpecObject):
    uri: ArtifactsUri = Field(examples=["pvc://qfleet-artifacts/llama"])


class QuantizedModelSpec(SpecObject):
    model: ModelSource = Field(examples=["{uri: hf://meta-llama/Llama-3.3-70B-Instruct}"])
    quantization: Quantization = Field(examples=["{kvCache: fp8}"])
    engine: Engine = Field(default_factory=Engine)
    node_pool: NodePool = Field(default_factory=NodePool)
    serving: Serving = Field(default_factory=Serving)
    rollout: Rollout = Field(default_factory=Rollout)
    runtime: Runtime = Field(default_factory=Runtime)
    artifacts: Artifacts = Field(examples=["{uri: pvc://qfleet-artifacts/llama}"])

    def violations(self) -> Iterator[FieldError]:
        tensor_parallel = self.engine.tensor_parallel
        if tensor_parallel is not None and self.node_pool.gpus_per_replica % tensor_parallel:
            yield FieldError("engine.tensorParallel", rules.TENSOR_PARALLEL_DIVIDES_GPUS)

    def with_images(self, default_runtime_image: str) -> QuantizedModelSpec:
        """The spec with both images written out: `runtime.image` defaults to the operator's runtime image, and
        `serving.image` to the runtime image (it runs `qfleet-runtime serve`)."""
        runtime_image = self.runtime.image or default_runtime_image
        return self.model_copy(update={
            "runtime": self.runtime.model_copy(update={"image": runtime_image}),
            "serving": self.serving.model_copy(update={"image": self.serving.image or runtime_image}),
        })

    @property
    def runtime_image(self) -> str:
        """The image of the calibration, build and evaluation Jobs (after `with_images`)."""
        return self.runtime.image or DEFAULT_RUNTIME_IMAGE

    @property
    def serving_image(self) -> str:
        """The image of the serving Deployment (after `with_images`)."""
        return self.serving.image or self.runtime_image

    @property
    def tensor_parallel(self) -> int:
        """`engine.tensorParallel`, or all the replica's GPUs when it is not set."""
        return self.engine.tensor_parallel or self.node_pool.gpus_per_replica
