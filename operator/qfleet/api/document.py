"""Whole QuantizedModel documents, and the two entry points that turn raw YAML into typed data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qfleet.api.errors import spec_error
from qfleet.api.spec import QuantizedModelSpec
from qfleet.api.status import QuantizedModelStatus


class QuantizedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_alias=True, serialize_by_alias=True)

    api_version: Literal["qfleet.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["QuantizedModel"]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuantizedModelSpec
    status: QuantizedModelStatus | None = None

    @property
    def name(self) -> str | None:
        name = self.metadata.get("name")
        return name if isinstance(name, str) else None


def parse_spec(spec: Mapping[str, Any] | Any) -> QuantizedModelSpec:
    """Typed spec from raw YAML; raises one SpecError naming every bad field (`spec.…` paths)."""
    try:
        return QuantizedModelSpec.model_validate(spec)
    except ValidationError as exc:
        raise spec_error(exc, QuantizedModelSpec, "spec") from None


def parse_document(document: Mapping[str, Any] | Any) -> QuantizedModel:
    """A typed QuantizedModel from a whole raw document; raises one SpecError naming every bad field."""
    try:
        return QuantizedModel.model_validate(document)
    except ValidationError as exc:
        raise spec_error(exc, QuantizedModel, "") from None
