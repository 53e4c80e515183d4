"""The CRD schema: structure, documentation, CEL hygiene, and agreement with the typed models."""

from __future__ import annotations

import copy
import typing
from typing import Any

import jsonschema
import pytest
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, PlainValidator
from pydantic.fields import FieldInfo

from qfleet.api import QuantizedModelSpec, parse_document, parse_spec
from qfleet.api.errors import unwrap_type
from qfleet.api.rules import CEL_MESSAGES
from qfleet.api.status import QuantizedModelStatus
from qfleet.api.values import PATTERNS
from qfleet.formats import AUTO, SELECTABLE_KV_FORMATS, WEIGHT_FORMATS

from .support import (
    EXAMPLES,
    apply_defaults,
    crd,
    crd_version,
    invalid_cases,
    load_yaml,
    openapi_schema,
    to_json_schema,
    walk,
)

MINIMAL_DOCUMENT = {
    "apiVersion": "qfleet.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "minimal"},
    "spec": {
        "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
        "quantization": {"kvCache": "nvfp4"},
        "serving": {"image": "ghcr.io/qfleet/qfleet-runtime:0.1.0"},
        "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
    },
}


def test_names_scope_and_version() -> None:
    spec = crd()["spec"]
    version = crd_version()

    assert crd()["metadata"]["name"] == "quantizedmodels.qfleet.io"
    assert spec["group"] == "qfleet.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] | {} == {
        "kind": "QuantizedModel",
        "listKind": "QuantizedModelList",
        "plural": "quantizedmodels",
        "singular": "quantizedmodel",
        "shortNames": ["qm"],
        "categories": ["qfleet"],
    }
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {column["name"]: column for column in crd_version()["additionalPrinterColumns"]}

    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["KV"]["jsonPath"] == ".spec.quantization.kvCache"
    assert columns["Engine KV"]["jsonPath"] == ".status.engine.kvCacheDtype"
    assert columns["Stable"]["jsonPath"] == ".status.revision.stable"
    assert columns["Canary"]["jsonPath"] == ".status.revision.canary"
    assert columns["Weight"]["jsonPath"] == ".status.canary.weight"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_schema_is_structural_at_both_roots() -> None:
    schema = openapi_schema()

    for root in ("spec", "status"):
        assert schema["properties"][root]["type"] == "object"
        assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"][root]
    assert not [path for path, sub in walk(schema) if sub.get("x-kubernetes-preserve-unknown-fields")]


def test_every_field_has_a_description() -> None:
    undocumented = [
        path
        for path, sub in walk(openapi_schema())
        if path and path != "metadata" and not path.endswith(("[]", "[*]")) and not sub.get("description")
    ]

    assert undocumented == []


def test_every_spec_list_and_string_is_bounded_for_cel_cost() -> None:
    spec = openapi_schema()["properties"]["spec"]
    unbounded = [
        path
        for path, sub in walk(spec, "spec")
        if (sub.get("type") == "array" and "maxItems" not in sub)
        or (sub.get("type") == "string" and "maxLength" not in sub and "enum" not in sub)
        or (sub.get("type") == "object" and "additionalProperties" in sub and "maxProperties" not in sub)
    ]

    assert unbounded == []


def test_conditions_are_a_map_keyed_by_type_in_metav1_shape() -> None:
    conditions = openapi_schema()["properties"]["status"]["properties"]["conditions"]

    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}


def test_format_enums_come_from_the_format_table() -> None:
    quantization = openapi_schema()["properties"]["spec"]["properties"]["quantization"]["properties"]

    assert quantization["kvCache"]["enum"] == [*SELECTABLE_KV_FORMATS, AUTO]
    assert quantization["kvCacheLadder"]["items"]["enum"] == list(SELECTABLE_KV_FORMATS)
    assert quantization["weights"]["enum"] == list(WEIGHT_FORMATS)


def test_cel_messages_are_the_parser_messages() -> None:
    messages = {
        rule["message"] for _, sub in walk(openapi_schema()) for rule in sub.get("x-kubernetes-validations", [])
    }

    assert messages == CEL_MESSAGES


def test_every_pattern_is_one_the_parser_uses() -> None:
    spec = openapi_schema()["properties"]["spec"]
    patterns = {sub["pattern"] for _, sub in walk(spec) if "pattern" in sub}

    assert patterns <= PATTERNS
    assert len(patterns) == len(PATTERNS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_validate_against_the_schema(path) -> None:
    jsonschema.Draft202012Validator(to_json_schema(openapi_schema())).validate(load_yaml(path))


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda case: case["name"])
def test_openapi_cases_fail_the_schema_and_cel_cases_need_cel(case: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(to_json_schema(openapi_schema()))
    errors = list(validator.iter_errors(case["document"]))

    if case["layer"] == "openapi":
        assert errors, "the OpenAPI schema alone must reject it"
    elif case["layer"] == "cel":
        assert errors == [], "only a CEL rule may reject it, so the case really tests the rule"


@pytest.mark.parametrize(
    "document",
    [MINIMAL_DOCUMENT, *(load_yaml(path) for path in EXAMPLES)],
    ids=["minimal", *(path.name for path in EXAMPLES)],
)
def test_crd_defaults_equal_parser_defaults(document: dict[str, Any]) -> None:
    defaulted = apply_defaults(copy.deepcopy(document), openapi_schema())

    parsed = parse_document(document).spec.model_dump(mode="json", exclude_none=True)

    assert parsed == defaulted["spec"]
    assert parse_spec(defaulted["spec"]) == parse_document(document).spec


_LIMIT_KEYS = ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties")


def _validates_itself(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return any(isinstance(item, PlainValidator) for item in annotation.__metadata__)
    return typing.get_origin(annotation) is not list and any(
        _validates_itself(arg) for arg in typing.get_args(annotation)
    )


def _limits_agree(field: FieldInfo, schema: dict[str, Any], path: str) -> list[str]:
    """Ranges and sizes of plain fields (spec types with their own validator check their own)."""
    if _validates_itself(field.annotation) or any(isinstance(item, PlainValidator) for item in field.metadata):
        return []
    sized = {"array": ("minItems", "maxItems"), "object": (None, "maxProperties")}.get(
        schema.get("type", ""), ("minLength", "maxLength")
    )
    model_limits: dict[str, Any] = {}
    for item in field.metadata:
        if isinstance(item, Ge):
            model_limits["minimum"] = item.ge
        elif isinstance(item, Le):
            model_limits["maximum"] = item.le
        elif isinstance(item, MinLen) and sized[0]:
            model_limits[sized[0]] = item.min_length
        elif isinstance(item, MaxLen):
            model_limits[sized[1]] = item.max_length
    schema_limits = {key: schema[key] for key in _LIMIT_KEYS if key in schema}
    return [] if model_limits == schema_limits else [f"{path}: model {model_limits} != schema {schema_limits}"]


def _properties_agree(model: type[BaseModel], schema: dict[str, Any], path: str, limits: bool = True) -> list[str]:
    problems = []
    fields = {(field.alias or name): field for name, field in model.model_fields.items()}
    properties = schema.get("properties", {})
    if set(fields) != set(properties):
        problems.append(f"{path}: model {sorted(fields)} != schema {sorted(properties)}")
    required = {alias for alias, field in fields.items() if field.is_required()}
    if required != set(schema.get("required", [])):
        problems.append(f"{path}: required {sorted(required)} != schema {sorted(schema.get('required', []))}")
    for alias in set(fields) & set(properties):
        if limits:
            problems += _limits_agree(fields[alias], properties[alias], f"{path}.{alias}")
        sub_model, sub_schema = unwrap_type(fields[alias].annotation), properties[alias]
        if typing.get_origin(sub_model) is list:
            sub_model, sub_schema = unwrap_type(typing.get_args(sub_model)[0]), sub_schema["items"]
        if isinstance(sub_model, type) and issubclass(sub_model, BaseModel):
            problems += _properties_agree(sub_model, sub_schema, f"{path}.{alias}", limits)
    return problems


@pytest.mark.parametrize("root, model", [("spec", QuantizedModelSpec), ("status", QuantizedModelStatus)])
def test_models_and_schema_have_the_same_fields(root: str, model: type[BaseModel]) -> None:
    schema = openapi_schema()["properties"][root]
    problems = _properties_agree(model, schema, root, limits=root == "spec")
    if root == "status":  # the model reads status leniently: compare the field names only
        problems = [problem for problem in problems if ": required " not in problem]

    assert problems == []
