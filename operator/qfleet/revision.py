"""The revision: a short, stable hash of everything that changes the served artifact.

Artifact fields are `spec.model` (uri and revision), `spec.quantization`, `spec.engine`, the images that produce and
run the artifact (`spec.runtime.image`, `spec.serving.image`: an engine is bound to the engine version in its image),
`spec.runtime.env` (it changes what the runtime produces) and the replica's GPU count (the engine is built for a
world size: tensor x pipeline parallel). Rollout, serving replicas, node selection, the token Secret and the
planner's shape hint do not change the artifact, so editing them keeps the revision; nor does
`spec.quantization.calibration.refresh` (policy). The calibration generation (`status.refresh.generation`, bumped by a
scheduled or drift-triggered refresh) is an artifact input that is not in the spec: from 1 on it is hashed in, so a
refresh is a new revision; generation 0 hashes exactly as before refreshes existed. Hashing the typed spec makes key
order, defaults written out or left implicit, and spellings such as "0.90" versus "0.9" irrelevant; an image left out
hashes as the default it stands for (docs/api.md, "What starts a revision").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qfleet.api.spec import DEFAULT_RUNTIME_IMAGE, QuantizedModelSpec

REVISION_LENGTH = 10
_POLICY = {"calibration": {"refresh"}}
"""Fields inside spec.quantization that are policy, not artifact."""


def artifact_fields(spec: QuantizedModelSpec, default_runtime_image: str = DEFAULT_RUNTIME_IMAGE,
                    generation: int = 0) -> dict[str, Any]:
    """The canonical JSON-ready view of the fields that define the artifact."""
    spec = spec.with_images(default_runtime_image)
    engine = spec.engine.model_dump(mode="json", exclude_none=True)
    engine["tensorParallel"] = spec.tensor_parallel
    fields = {
        "model": {"uri": spec.model.uri, "revision": spec.model.revision},
        "quantization": spec.quantization.model_dump(mode="json", exclude_none=True, exclude=_POLICY),
        "engine": engine,
        "gpusPerReplica": spec.node_pool.gpus_per_replica,
        "runtimeEnv": sorted((var.name, var.value) for var in spec.runtime.env or ()),
        "runtimeImage": spec.runtime_image,
        "servingImage": spec.serving_image,
    }
    if generation:
        fields["calibrationGeneration"] = generation
    return fields


def revision_of(spec: QuantizedModelSpec, default_runtime_image: str = DEFAULT_RUNTIME_IMAGE,
                generation: int = 0) -> str:
    """First 10 hex digits of the SHA-256 of the artifact fields as canonical JSON."""
    return _digest(artifact_fields(spec, default_runtime_image, generation))


def calibration_key(spec: QuantizedModelSpec, kv_format: str, generation: int = 0) -> str:
    """What a KV calibration depends on, hashed: the model, the weight format, the KV format, the calibration settings,
    the layer fallback, the runtime image and environment that run it, and where it is stored. Neither the engine
    settings nor the serving image: a revision that changes only those reuses the calibration (images resolved). A
    refresh's generation is in it from 1 on, so a refresh calibrates again instead of reusing the stale scales."""
    quantization = spec.quantization
    key: dict[str, Any] = {
        "model": {"uri": spec.model.uri, "revision": spec.model.revision},
        "weights": quantization.weights,
        "kvFormat": kv_format,
        "calibration": quantization.calibration.model_dump(mode="json", exclude={"refresh"}),
        "layerFallback": quantization.layer_fallback.model_dump(mode="json") if quantization.layer_fallback else None,
        "runtimeImage": spec.runtime_image,
        "runtimeEnv": sorted((var.name, var.value) for var in spec.runtime.env or ()),
        "artifacts": spec.artifacts.uri,
    }
    if generation:
        key["calibrationGeneration"] = generation
    return _digest(key)


def _digest(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]


def artifact_spec(spec: QuantizedModelSpec, default_runtime_image: str = DEFAULT_RUNTIME_IMAGE) -> str:
    """The artifact fields in the spec's own layout (camelCase, defaults and images written out) as compact JSON:
    written into `status.history[].artifact`, and back into a spec by `kubectl qfleet rollback --to`."""
    spec = spec.with_images(default_runtime_image)
    return json.dumps({
        "model": {"uri": spec.model.uri, "revision": spec.model.revision},
        "quantization": spec.quantization.model_dump(mode="json", by_alias=True, exclude_none=True,
                                                     exclude=_POLICY),
        "engine": spec.engine.model_dump(mode="json", by_alias=True, exclude_none=True),
        "nodePool": {"gpusPerReplica": spec.node_pool.gpus_per_replica},
        "runtime": {"image": spec.runtime_image,
                    "env": [var.model_dump(mode="json", by_alias=True) for var in spec.runtime.env or ()]},
        "serving": {"image": spec.serving_image},
    }, sort_keys=True, separators=(",", ":"))
