"""The revision: a short, stable hash of everything that changes the served artifact.

Artifact fields are `spec.model` (uri and revision), `spec.quantization`, `spec.engine`,
`spec.runtime.env` (it changes what the runtime produces) and the replica's GPU count (the engine is built for a world size: tensor x pipeline parallel). Rollout,
serving replicas, node selection, the token Secret and the planner's shape hint do not change the
artifact, so editing them keeps the revision. Hashing the typed spec makes key order, defaults
written out or left implicit, and spellings such as "0.90" versus "0.9" irrelevant.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qfleet.api.spec import QuantizedModelSpec

REVISION_LENGTH = 10


def artifact_fields(spec: QuantizedModelSpec) -> dict[str, Any]:
    """The canonical JSON-ready view of the fields that define the artifact."""
    engine = spec.engine.model_dump(mode="json", exclude_none=True)
    engine["tensorParallel"] = spec.tensor_parallel
    return {
        "model": {"uri": spec.model.uri, "revision": spec.model.revision},
        "quantization": spec.quantization.model_dump(mode="json", exclude_none=True),
        "engine": engine,
        "gpusPerReplica": spec.node_pool.gpus_per_replica,
        "runtimeEnv": sorted((var.name, var.value) for var in spec.runtime.env or ()),
    }


def revision_of(spec: QuantizedModelSpec) -> str:
    """First 10 hex digits of the SHA-256 of the artifact fields as canonical JSON."""
    canonical = json.dumps(artifact_fields(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]


def artifact_spec(spec: QuantizedModelSpec) -> str:
    """The artifact fields in the spec's own layout (camelCase, defaults written out) as compact JSON: written into
    `status.history[].artifact`, and back into a spec by `kubectl qfleet rollback --to`."""
    return json.dumps({
        "model": {"uri": spec.model.uri, "revision": spec.model.revision},
        "quantization": spec.quantization.model_dump(mode="json", by_alias=True, exclude_none=True),
        "engine": spec.engine.model_dump(mode="json", by_alias=True, exclude_none=True),
        "nodePool": {"gpusPerReplica": spec.node_pool.gpus_per_replica},
        "runtime": {"env": [var.model_dump(mode="json", by_alias=True) for var in spec.runtime.env or ()]},
    }, sort_keys=True, separators=(",", ":"))
