"""Base classes of the typed API: strict, camelCase, closed objects with cross-field rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from qfleet.api.errors import RULES_ERROR, FieldError


class SpecObject(BaseModel):
    """An object of the spec: unknown fields are errors, and no value is coerced (no "8" for 8).

    Validate raw YAML with `model_validate`; fields are read by their Python names and written
    by their camelCase aliases. Subclasses state their cross-field rules in `violations`.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )

    def violations(self) -> Iterator[FieldError]:
        """Rules that span fields (the CRD's CEL rules), as paths relative to this object."""
        return iter(())

    @model_validator(mode="after")
    def _apply_rules(self) -> Self:
        found = list(self.violations())
        if found:
            raise rules_error(found)
        return self


def rules_error(violations: Sequence[FieldError]) -> PydanticCustomError:
    """One pydantic error carrying rule violations; `spec_error` expands it into one error each."""
    summary = "; ".join(message for _, message in violations)
    return PydanticCustomError(RULES_ERROR, "{summary}", {"summary": summary, "violations": tuple(violations)})


class StatusObject(BaseModel):
    """An object of the status, written by the operator: lenient, and unknown fields are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )


Model = TypeVar("Model", bound=BaseModel)


def default_of(model: type[Model], raw: Mapping[str, Any] | None = None) -> Callable[[], Model]:
    """A default factory that validates `raw`, the default as it is written in the CRD."""
    return lambda: model.model_validate(dict(raw or {}))
