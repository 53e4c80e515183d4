"""The typed QuantizedModel API: spec and status models, condition vocabulary, and the parser.

`parse_spec` and `parse_document` turn raw YAML into typed data or raise one `SpecError` that lists
every invalid field by its path, with what to write instead.
"""

from qfleet.api.conditions import (
    PIPELINE_STEPS,
    ConditionStatus,
    ConditionType,
    Outcome,
    Phase,
    Reason,
    Verdict,
)
from qfleet.api.document import QuantizedModel, parse_document, parse_spec
from qfleet.api.errors import FieldError, SpecError
from qfleet.api.group import API_VERSION, GROUP, KIND, PLURAL, VERSION
from qfleet.api.rollout_spec import Analysis, CustomGate, Gate, Gates, Rollout, Step, TrafficRouting
from qfleet.api.spec import Engine, ModelSource, NodePool, Quantization, QuantizedModelSpec, Serving
from qfleet.api.status import Condition, QuantizedModelStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PIPELINE_STEPS",
    "PLURAL",
    "VERSION",
    "Analysis",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "CustomGate",
    "Engine",
    "FieldError",
    "Gate",
    "Gates",
    "ModelSource",
    "NodePool",
    "Outcome",
    "Phase",
    "Quantization",
    "QuantizedModel",
    "QuantizedModelSpec",
    "QuantizedModelStatus",
    "Reason",
    "Rollout",
    "Serving",
    "SpecError",
    "Step",
    "TrafficRouting",
    "Verdict",
    "parse_document",
    "parse_spec",
]
