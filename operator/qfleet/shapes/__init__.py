"""Model shapes: what a model keeps in its KV cache per layer, and what its weights weigh.

`model` holds the types, `catalog` the models qfleet knows by URI, `hf_config` the derivation from a
Hugging Face `config.json` (with `parameters` counting the weights).
"""

from qfleet.shapes.catalog import KNOWN_SHAPES, known_shape
from qfleet.shapes.hf_config import FAMILIES, checkpoint_weight_format, shape_from_hf_config
from qfleet.shapes.model import (
    STATE_BYTES_PER_VALUE,
    CacheGroup,
    CacheKind,
    Checkpoint,
    ModelShape,
    ShapeError,
    dense_shape,
)

__all__ = [
    "FAMILIES",
    "KNOWN_SHAPES",
    "STATE_BYTES_PER_VALUE",
    "CacheGroup",
    "CacheKind",
    "Checkpoint",
    "ModelShape",
    "ShapeError",
    "checkpoint_weight_format",
    "dense_shape",
    "known_shape",
    "shape_from_hf_config",
]
