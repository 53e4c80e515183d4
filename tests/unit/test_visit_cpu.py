"""What keeps a visit's CPU down (issue 17) without changing what it decides: the cache hands out its stored dicts
uncopied (safe because a change replaces them, never edits them), the parsed spec and the capacity plan are kept,
created children are read from the apiserver's JSON; and the visit profile (benchmarks.fleet.visit_profile) runs."""
from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable
from fractions import Fraction

import pytest
from kubernetes.client import rest

from benchmarks.fleet import visit_profile
from qfleet import controller, kube, prom
from qfleet.api import SpecError, parse_spec
from qfleet.cache import DELETED, FleetCache, _copied
from qfleet.capacity import plan_capacity
from qfleet.formats import kv_format, weight_format
from qfleet.gpus import GPUS
from qfleet.pipeline.steps import _capacity_plan
from qfleet.shapes import known_shape

from .test_cache import MODEL, owned

decide_module = importlib.import_module("qfleet.pipeline.decide")  # the package exports the function by that name
JOB = owned({"status": {"active": 1, "conditions": []}}, "llama-abc-fp8-build")
SERVICE = owned({"spec": {"selector": {"qfleet.io/revision": "abc"}}}, "llama-stable")
ROUTE = {"metadata": {"name": "llama-route", "namespace": "ml", "resourceVersion": "9"},
         "spec": {"rules": [{"backendRefs": [{"name": "llama-stable", "weight": 100}]}]}}


def _model_status(cache: FleetCache) -> dict:
    return cache.snapshot(("ml", "llama")).body["status"]


def _service_selector(cache: FleetCache) -> dict:
    return cache.snapshot(("ml", "llama")).services["llama-stable"]["spec"]["selector"]


def _route_rules(cache: FleetCache) -> list:
    return cache.snapshot(("ml", "llama")).route["spec"]["rules"]


def _job_status(cache: FleetCache) -> dict:
    return cache.jobs[("ml", "llama")]["llama-abc-fp8-build"]["status"]


# (what is applied, how the cache is fed it, what a snapshot reads of it, where the event changes it)
SHARED = [
    pytest.param(MODEL, FleetCache.apply_model, _model_status, lambda body: body["status"].update(phase="Failed"),
                 id="model"),
    pytest.param(SERVICE, FleetCache.apply_service, _service_selector,
                 lambda body: body["spec"]["selector"].update(other="x"), id="service"),
    pytest.param(ROUTE, FleetCache.apply_route, _route_rules,
                 lambda body: body["spec"]["rules"][0]["backendRefs"][0].update(weight=0), id="route"),
    pytest.param(JOB, FleetCache.apply_job, _job_status, lambda body: body["status"]["conditions"].append({}),
                 id="job"),
]


@pytest.mark.parametrize(("body", "apply", "read", "edit"), SHARED)
def test_the_cache_keeps_its_own_copy_hands_it_out_uncopied_and_replaces_it_on_a_change(
        body: dict, apply: Callable, read: Callable, edit: Callable) -> None:
    cache = FleetCache()
    cache.apply_model(None, MODEL)
    event = copy.deepcopy(body)
    apply(cache, None, event)
    before = copy.deepcopy(read(cache))
    assert read(cache) is read(cache)  # no copy per snapshot
    edit(event)  # the event's body stays Kopf's: editing it changes nothing stored
    assert read(cache) == before
    held = read(cache)
    changed = copy.deepcopy(event)
    changed["metadata"]["resourceVersion"] = "99"
    apply(cache, None, changed)
    assert read(cache) is not held and held == before  # a change replaces; what a visit holds stays as it read it


def test_snapshots_do_not_share_the_per_model_maps_the_cache_keeps_changing() -> None:
    cache = FleetCache()
    cache.apply_model(None, MODEL)
    cache.apply_service(None, SERVICE)
    held = cache.snapshot(("ml", "llama"))
    cache.apply_service(None, owned({"spec": {"selector": {}}}, "llama-canary"))
    cache.apply_service(DELETED, SERVICE)
    assert set(held.services) == {"llama-stable"}


@pytest.mark.parametrize(("value", "inner"), [
    ({"a": [1, 2.5, {"b": None, "c": True}], "d": "e"}, lambda v: v["a"][2]),
    ([{"deep": [{"deeper": {}}]}], lambda v: v[0]["deep"][0]["deeper"]),
    ({}, None), ([], None), ("text", None), (7, None), (None, None),
], ids=["mixed", "nested", "empty dict", "empty list", "str", "int", "None"])
def test_copied_is_an_equal_deep_copy_of_json_data(value: object, inner: Callable | None) -> None:
    copied = _copied(value)
    assert copied == value and json.dumps(copied) == json.dumps(value)
    if inner is not None:
        inner(copied)["added"] = 1
        assert "added" not in inner(value)


SPEC = {"model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "quantization": {"weights": "bf16", "kvCache": "fp8"},
        "serving": {"replicas": 1},
        "artifacts": {"uri": "pvc://qfleet-artifacts/m"}}


def _with(path: tuple[str, str], value: object) -> dict:
    spec = copy.deepcopy(SPEC)
    spec[path[0]][path[1]] = value
    return spec


@pytest.mark.parametrize(("first", "second", "same"), [
    (SPEC, copy.deepcopy(SPEC), True),
    (SPEC, _with(("serving", "replicas"), 2), False),
    (SPEC, {**SPEC, "serving": {"image": "bench/server:v2", "replicas": 1}}, False),
    (_with(("serving", "replicas"), 2), _with(("serving", "replicas"), 2.0), False),
    (_with(("serving", "replicas"), 1), _with(("serving", "replicas"), True), False),
], ids=["equal specs share one parse", "a changed field", "a new field", "2 and 2.0", "1 and True"])
def test_a_parsed_spec_is_kept_for_equal_specs_only(first: dict, second: dict, same: bool) -> None:
    parsed = decide_module._spec(first, "runtime:1")
    assert parsed == parse_spec(first).with_images("runtime:1")
    try:
        again = decide_module._spec(second, "runtime:1")
    except SpecError as error:  # strict validation: 2.0 and True are not replicas
        assert not same
        with pytest.raises(SpecError) as direct:
            parse_spec(second)
        assert str(error) == str(direct.value)
        return
    assert (again is parsed) == same
    assert again == parse_spec(second).with_images("runtime:1")


def test_the_runtime_image_is_part_of_a_kept_parse_and_invalid_specs_are_not_kept() -> None:
    assert decide_module._spec(SPEC, "runtime:1").runtime_image == "runtime:1"
    assert decide_module._spec(SPEC, "runtime:2").runtime_image == "runtime:2"
    invalid = _with(("serving", "replicas"), "1")
    for _ in range(2):
        with pytest.raises(SpecError):
            decide_module._spec(invalid, "runtime:1")
    assert all(key[0] != repr(invalid) for key in decide_module._parsed)


def test_the_parsed_specs_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decide_module, "PARSED_SPECS", 3)
    monkeypatch.setattr(decide_module, "_parsed", type(decide_module._parsed)())
    specs = [_with(("serving", "replicas"), replicas) for replicas in range(1, 6)]
    for spec in specs:
        decide_module._spec(spec, "runtime:1")
    assert [key[0] for key in decide_module._parsed] == [repr(spec) for spec in specs[2:]]


@pytest.mark.parametrize(("uri", "gpu", "weights", "gpus", "tensor_parallel", "fraction", "length", "kv"), [
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "B200", "bf16", 1, 1, "0.9", 8192, "fp8"),
    ("hf://meta-llama/Llama-3.3-70B-Instruct", "H100", "fp8", 8, 8, "0.85", 4096, "bf16"),
    ("hf://meta-llama/Llama-3.3-70B-Instruct", "B200", "nvfp4", 4, 2, "0.9", 16384, "nvfp4"),
])
def test_the_kept_capacity_plan_is_the_planners(uri: str, gpu: str, weights: str, gpus: int, tensor_parallel: int,
                                                 fraction: str, length: int, kv: str) -> None:
    shape = known_shape(uri)
    kept = _capacity_plan(shape, GPUS[gpu], weights, gpus, tensor_parallel, fraction, length, kv)
    assert kept == plan_capacity(shape, GPUS[gpu], weight_format(weights), gpus_per_replica=gpus,
                                 tensor_parallel=tensor_parallel, kv_memory_fraction=Fraction(fraction),
                                 sequence_length=length, kv_formats=[kv_format(kv)])
    assert _capacity_plan(shape, GPUS[gpu], weights, gpus, tensor_parallel, fraction, length, kv) is kept


class _Apiserver:
    """The kubernetes client's REST layer, answering one status."""

    def __init__(self, status: int, answer: dict) -> None:
        self.status, self.answer = status, answer

    def request(self, method: str, url: str, **_: object) -> rest.RESTResponse:
        response = type("Response", (), {"status": self.status, "reason": "", "headers": {},
                                         "data": json.dumps(self.answer).encode()})()
        return rest.RESTResponse(response)


POD = {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}
JOB_MANIFEST = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "llama-abc-fp8-build", "namespace": "ml"},
                "spec": {"template": {"spec": POD}}}
DEPLOYMENT_MANIFEST = {"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "llama-abc", "namespace": "ml"},
                       "spec": {"selector": {"matchLabels": {"a": "b"}},
                                "template": {"metadata": {"labels": {"a": "b"}}, "spec": POD}}}


@pytest.mark.parametrize(("create", "manifest"), [(kube.create_job, JOB_MANIFEST),
                                                  (kube.create_deployment, DEPLOYMENT_MANIFEST)],
                         ids=["Job", "Deployment"])
def test_a_created_child_is_the_apiservers_json_and_an_existing_one_is_none(create: Callable, manifest: dict) -> None:
    answer = {**manifest, "metadata": {**manifest["metadata"], "uid": "u1", "resourceVersion": "5",
                                       "creationTimestamp": "2026-12-01T12:00:00Z"}, "status": {}}
    api = visit_profile.api_client(_Apiserver(201, answer))
    assert create(api, manifest) == answer  # the timestamp as the watch has it, not re-rendered by the client
    assert create(visit_profile.api_client(_Apiserver(409, {"kind": "Status", "code": 409})), manifest) is None
    with pytest.raises(kube.ApiException):
        create(visit_profile.api_client(_Apiserver(403, {"kind": "Status", "code": 403})), manifest)


@pytest.fixture
def profiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile stands in for the clock and for Prometheus; both are put back afterwards."""
    monkeypatch.setattr(controller, "_now", controller._now)
    monkeypatch.setattr(prom, "_ask", visit_profile.ask_prometheus)


@pytest.mark.parametrize(("state", "writes"), [
    ("serving", []), ("pipeline", []), ("step-done", ["POST jobs", "PUT status"]), ("canary", ["PUT status"]),
])
def test_the_visit_profile_reaches_each_state_and_its_visits_read_the_cache_without_changing_it(
        profiled: None, state: str, writes: list[str]) -> None:
    fleet = visit_profile.reach(state, models=3, nodes=3)
    held = fleet.cache.snapshot(fleet.key)
    before = copy.deepcopy((held.body, held.services, held.route))
    fleet.controller.visit(fleet.key)
    assert (held.body, held.services, held.route) == before
    result = visit_profile.measure_state(state, models=3, nodes=3, visits=2, profile=False)
    assert result["writes"] == writes and "," not in result["digest"]  # the same writes and events every time
