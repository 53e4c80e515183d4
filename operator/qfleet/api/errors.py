"""SpecError: every mistake in a document at once, each named by its path and told how to fix it.

Paths use the apiserver's spelling (`spec.rollout.steps[2].weight`, `spec.nodePool.nodeSelector[key]`)
so that a message from `qfleet` and one from `kubectl apply` point at the same place.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

RULES_ERROR = "qfleet_rules"
"""The pydantic error type that carries cross-field violations (see `SpecObject`)."""


class FieldError(NamedTuple):
    path: str
    message: str


class SpecError(ValueError):
    """A QuantizedModel document with one or more invalid fields."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__(str(self))

    @property
    def paths(self) -> list[str]:
        return [error.path for error in self.errors]

    def __str__(self) -> str:
        count = len(self.errors)
        lines = [f"{count} invalid field{'s' if count != 1 else ''}:"]
        lines += [f"  {path}: {message}" for path, message in self.errors]
        return "\n".join(lines)


def join_path(base: str, relative: str) -> str:
    if not base:
        return relative
    if not relative:
        return base
    return f"{base}{relative}" if relative.startswith("[") else f"{base}.{relative}"


def spec_error(exc: ValidationError, root: type[BaseModel], prefix: str) -> SpecError:
    """Translate pydantic's errors for `root` (validated at `prefix`) into one SpecError."""
    found: list[FieldError] = []
    for detail in exc.errors(include_url=False):
        path, field, parent = _resolve(root, detail["loc"], prefix)
        if detail["type"] == RULES_ERROR:
            found += [FieldError(join_path(path, rel), message) for rel, message in detail["ctx"]["violations"]]
        else:
            found.append(FieldError(path, _describe(detail, field, parent)))
    return SpecError(_unique(found))


def _unique(errors: Sequence[FieldError]) -> Iterator[FieldError]:
    seen = set()
    for error in errors:
        if error not in seen:
            seen.add(error)
            yield error


def _resolve(
    root: type[BaseModel], loc: tuple[int | str, ...], prefix: str
) -> tuple[str, FieldInfo | None, type[BaseModel] | None]:
    """The printable path of `loc`, the field it names and the model that holds that field."""
    path, current, field, parent = prefix, unwrap_type(root), None, None
    for part in loc:
        if part == "[key]":  # a bad key of a map is reported at the map entry, as the apiserver does
            continue
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            parent, field = current, _field_by_alias(current, part)
            path = join_path(path, part)
            current = unwrap_type(field.annotation) if field else None
        elif typing.get_origin(current) is dict and isinstance(part, str):
            path, field, parent = f"{path}[{part}]", None, None
            current = unwrap_type(typing.get_args(current)[1])
        else:
            path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, str(part))
            field, parent = None, None
            args = typing.get_args(current)
            current = unwrap_type(args[0]) if typing.get_origin(current) is list and args else None
    return path, field, parent


def unwrap_type(annotation: Any) -> Any:
    """Strip Optional and Annotated from a field's type, so that models, lists and dicts can be walked."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _field_by_alias(model: type[BaseModel], alias: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias:
            return field
    return None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(detail: ErrorDetails, field: FieldInfo | None, parent: type[BaseModel] | None) -> str:
    kind, given, ctx = detail["type"], detail.get("input"), detail.get("ctx", {})
    name = str(detail["loc"][-1]) if detail["loc"] else "spec"
    if kind == "missing":
        example = f", e.g. {name}: {field.examples[0]}" if field and field.examples else ""
        return f"required: add {name}{example}"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(name, _aliases(parent), n=1) if parent else []
        hint = (
            f"; did you mean {close[0]}?"
            if close
            else f"; known fields: {', '.join(_aliases(parent))}"
            if parent
            else ""
        )
        return f"unknown field {name!r}: remove it{hint}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        if isinstance(given, str) and given.strip().lstrip("-").isdigit():
            return f"must be a whole number: write {given.strip()} without quotes"
        return f"must be a whole number, e.g. 8; got {given!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, without quotes; got {given!r}"
    if kind == "string_type":
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            return f'must be a string: write "{given}" in quotes'
        return f"must be a string; got {given!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be an object (a mapping of fields); got {given!r}"
    if kind == "list_type":
        return f"must be a list (one '- item' per line in YAML); got {given!r}"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} items; got {ctx.get('actual_length')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}; got {given!r}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}; got {given!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}; got {given!r}"
    return str(detail["msg"])
