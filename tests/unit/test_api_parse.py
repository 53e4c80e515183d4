"""The parser: typed data from YAML, or one SpecError naming every bad field and its fix."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from qfleet.api import SpecError, parse_document, parse_spec
from qfleet.api.rules import KV_AUTO_NEEDS_LADDER, STEPS_STRICTLY_INCREASE

from .support import EXAMPLES, invalid_cases, load_yaml

MINIMAL_SPEC: dict[str, Any] = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
    "quantization": {"kvCache": "fp8"},
    "serving": {"image": "ghcr.io/qfleet/qfleet-runtime:0.1.0"},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
}


def spec_with(**sections: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(sections)
    return spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_parses(path) -> None:
    model = parse_document(load_yaml(path))

    assert model.name == path.stem
    assert model.spec.model.resolved_shape() is not None


def test_example_set_is_the_documented_one() -> None:
    assert {path.name for path in EXAMPLES} == {
        "llama-70b-nvfp4.yaml",
        "llama-70b-fp8.yaml",
        "llama-70b-auto.yaml",
    }


def test_defaults_follow_the_runbook() -> None:
    rollout = parse_spec(MINIMAL_SPEC).rollout

    assert [(step.weight, step.pause) for step in rollout.steps] == [
        (Decimal(1), timedelta(hours=72)),
        (Decimal(10), timedelta(hours=48)),
        (Decimal(100), None),
    ]
    gates = rollout.analysis.gates
    assert (gates.p99_latency_ratio.max, gates.p99_latency_ratio.abort_above) == (Decimal("1.2"), Decimal("1.5"))
    assert (gates.fallback_rate.max, gates.fallback_rate.abort_above) == (Decimal("0.005"), None)
    assert (gates.quality_drop.max, gates.quality_drop.abort_above) == (Decimal("0.01"), Decimal("0.01"))
    assert gates.kv_cache_hit_rate_drop is None
    assert rollout.analysis.interval == timedelta(minutes=5)
    assert (rollout.analysis.failure_limit, rollout.analysis.inconclusive_limit) == (2, 3)
    assert rollout.traffic_routing.replicas is not None and rollout.traffic_routing.gateway_api is None
    assert rollout.auto_rollback and not rollout.paused


def test_nvfp4_example_writes_the_runbook_out_in_full() -> None:
    example = parse_document(load_yaml(EXAMPLES[[p.name for p in EXAMPLES].index("llama-70b-nvfp4.yaml")]))
    defaults = parse_spec(spec_with(rollout={"trafficRouting": {"gatewayAPI": {"httpRoute": "llama-route"}}}))

    assert example.spec.rollout == defaults.rollout
    assert example.spec.node_pool.gpus_per_replica == 8


def test_auto_offers_the_ladder_in_order() -> None:
    spec = parse_spec(spec_with(quantization={"kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]}))

    assert spec.quantization.candidate_kv_formats == ("nvfp4", "fp8", "bf16")
    assert parse_spec(MINIMAL_SPEC).quantization.candidate_kv_formats == ("fp8",)


def test_step_weights_accept_integers_and_decimal_strings() -> None:
    steps = parse_spec(
        spec_with(rollout={"steps": [{"weight": "0.1"}, {"weight": 5}, {"weight": "100"}]})
    ).rollout.steps

    assert [step.weight for step in steps] == [Decimal("0.1"), Decimal(5), Decimal(100)]


def test_tensor_parallel_defaults_to_the_replica_gpus() -> None:
    assert parse_spec(spec_with(nodePool={"gpusPerReplica": 8})).tensor_parallel == 8
    spec = parse_spec(spec_with(nodePool={"gpusPerReplica": 8}, engine={"tensorParallel": 4}))
    assert spec.tensor_parallel == 4


@pytest.mark.parametrize("case", invalid_cases(), ids=lambda case: case["name"])
def test_invalid_document_is_rejected_at_exactly_the_listed_paths(case: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as raised:
        parse_document(case["document"])

    assert sorted(raised.value.paths) == sorted(case["paths"])
    assert all(message for _, message in raised.value.errors)


def test_invalid_table_is_well_formed() -> None:
    cases = invalid_cases()
    names = [case["name"] for case in cases]

    assert len(cases) >= 12
    assert len(names) == len(set(names))
    for case in cases:
        assert set(case) == {"name", "layer", "why", "paths", "document"}
        assert case["layer"] in {"openapi", "cel", "listType"}
        assert case["document"]["metadata"]["name"] == case["name"]
        assert "namespace" not in case["document"]["metadata"]


def test_three_mistakes_are_reported_in_one_error() -> None:
    (case,) = [case for case in invalid_cases() if case["name"] == "three-mistakes"]

    with pytest.raises(SpecError) as raised:
        parse_document(case["document"])

    error = raised.value
    assert len(error.errors) == 3
    assert str(error).startswith("3 invalid fields:")
    for path in (
        "spec.quantization.kvCache",
        "spec.rollout.steps[0].pause",
        "spec.rollout.analysis.gates.fallbackRate.max",
    ):
        assert f"  {path}: " in str(error)


@dataclass(frozen=True)
class MessageCase:
    reason: str
    spec: dict[str, Any]
    path: str
    says: str


MESSAGE_CASES = [
    MessageCase(
        "a float threshold asks for quotes",
        spec_with(rollout={"analysis": {"gates": {"fallbackRate": {"max": 0.005}}}}),
        "spec.rollout.analysis.gates.fallbackRate.max",
        'write it as a string in quotes, e.g. "0.005"',
    ),
    MessageCase(
        "an unknown format lists the known ones",
        spec_with(quantization={"kvCache": "fp4"}),
        "spec.quantization.kvCache",
        "write one of bf16, fp8, int8, nvfp4, auto",
    ),
    MessageCase(
        "a misspelt field suggests the right one",
        spec_with(quantization={"kvCache": "fp8", "kvcacheLadder": ["fp8"]}),
        "spec.quantization.kvcacheLadder",
        "unknown field 'kvcacheLadder': remove it; did you mean kvCacheLadder?",
    ),
    MessageCase(
        "a missing field gives an example",
        spec_with(model={"revision": "main"}),
        "spec.model.uri",
        "required: add uri, e.g. uri: hf://meta-llama/Llama-3.3-70B-Instruct",
    ),
    MessageCase(
        "a quoted count asks to drop the quotes",
        spec_with(nodePool={"gpusPerReplica": "8"}),
        "spec.nodePool.gpusPerReplica",
        "must be a whole number: write 8 without quotes",
    ),
    MessageCase(
        "a bad duration shows Go durations",
        spec_with(rollout={"steps": [{"weight": 1, "pause": "3 days"}, {"weight": 100}]}),
        "spec.rollout.steps[0].pause",
        "write a Go duration such as 5m, 72h or 1h30m",
    ),
    MessageCase(
        "auto without a ladder shows a ladder",
        spec_with(quantization={"kvCache": "auto"}),
        "spec.quantization.kvCacheLadder",
        KV_AUTO_NEEDS_LADDER,
    ),
    MessageCase(
        "decreasing weights show the weights",
        spec_with(rollout={"steps": [{"weight": 10}, {"weight": 5}, {"weight": 100}]}),
        "spec.rollout.steps",
        f"{STEPS_STRICTLY_INCREASE}; got 10, 5, 100",
    ),
    MessageCase(
        "a node selector value must be a string",
        spec_with(nodePool={"nodeSelector": {"nvidia.com/gpu.count": 8}}),
        "spec.nodePool.nodeSelector[nvidia.com/gpu.count]",
        'must be a string: write "8" in quotes',
    ),
    MessageCase(
        "a node selector value that is too long for a label",
        spec_with(nodePool={"nodeSelector": {"example.com/pool": "v" * 64}}),
        "spec.nodePool.nodeSelector[example.com/pool]",
        "at most 63 characters",
    ),
    MessageCase(
        "a fractional weight as a float asks for quotes",
        spec_with(rollout={"steps": [{"weight": 0.5}, {"weight": 100}]}),
        "spec.rollout.steps[0].weight",
        'write fractional percents as a string in quotes, e.g. "0.5"',
    ),
    MessageCase(
        "an enum of the engine lists its values",
        spec_with(engine={"backend": "vllm"}),
        "spec.engine.backend",
        "must be one of 'tensorrt-llm' or 'qfleet-python'",
    ),
]


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda case: case.reason)
def test_messages_say_what_to_write_instead(case: MessageCase) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(case.spec)

    messages = dict(raised.value.errors)
    assert case.path in messages, raised.value
    assert case.says in messages[case.path]


def test_unknown_fields_are_rejected_with_a_clear_message() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(spec_with(replicas=3))

    assert raised.value.errors == [
        ("spec.replicas", raised.value.errors[0].message),
    ]
    assert "unknown field 'replicas': remove it" in raised.value.errors[0].message


@pytest.mark.parametrize(
    "document, path",
    [
        ({"apiVersion": "qfleet.io/v1", "kind": "QuantizedModel", "spec": MINIMAL_SPEC}, "apiVersion"),
        ({"apiVersion": "qfleet.io/v1alpha1", "kind": "QuantisedModel", "spec": MINIMAL_SPEC}, "kind"),
        ({"apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel"}, "spec"),
    ],
)
def test_document_envelope_is_checked(document: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_document(document)

    assert raised.value.paths == [path]


def test_a_spec_that_is_not_an_object() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(["not", "an", "object"])

    assert raised.value.paths == ["spec"]
    assert "must be an object" in raised.value.errors[0].message


def test_status_is_read_leniently() -> None:
    document = {
        "apiVersion": "qfleet.io/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m", "generation": 3},
        "spec": MINIMAL_SPEC,
        "status": {
            "observedGeneration": 3,
            "phase": "Canary",
            "revision": {"stable": "52aa52aa52", "canary": "7c1f7c1f7c"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "RolloutInProgress",
                    "message": "",
                    "lastTransitionTime": "2026-01-02T03:04:05Z",
                    "observedGeneration": 3,
                },
            ],
            "somethingNewer": True,
        },
    }

    status = parse_document(document).status

    assert status is not None
    assert status.phase == "Canary"
    assert status.revision is not None and status.revision.canary == "7c1f7c1f7c"
    assert status.conditions[0].last_transition_time.isoformat() == "2026-01-02T03:04:05+00:00"
