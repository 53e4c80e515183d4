"""Spec fuzzing against the real apiserver: generated QuantizedModels, valid and invalid, judged by the CRD (schema and
CEL) and by the operator's parser; the two must agree, and the operator must process what the apiserver stores.

`QFLEET_FUZZ_EXAMPLES` sets how many documents (200 in `make test`, 1,000 in `make chaos`, QFLEET_CHAOS=full);
`QFLEET_CHAOS_SEED` the seed (printed). A disagreement is printed with the document's spec and both verdicts, then fails the test.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from collections import Counter

import pytest
from chaos import FULL, SEED, Row
from conftest import install_crd
from hypothesis import HealthCheck, given, seed, settings
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from spec_strategies import BASE, documents

from localfleet import kube
from localfleet.fleet import Fleet
from localfleet.operator_process import OperatorProcess
from localfleet.processes import wait_until
from qfleet.api import GROUP, PLURAL, VERSION, SpecError, parse_document

EXAMPLES = int(os.environ.get("QFLEET_FUZZ_EXAMPLES") or (1000 if FULL else 200))
APPLIED = int(os.environ.get("QFLEET_FUZZ_APPLIED") or (100 if FULL else 30))


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """etcd and kube-apiserver alone, with the CRD: all the apiserver's half of the agreement needs."""
    fleet = Fleet(tmp_path_factory.mktemp("fuzz-fleet"), name="qfleet-fuzz", control_plane_only=True)
    fleet.up(log=lambda *_: None)
    api = kube.client(fleet.kubeconfig)
    install_crd(api)
    k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name="fuzz")))
    yield fleet, api
    fleet.down(log=lambda *_: None)


def _verdict_of_apiserver(custom: k8s.CustomObjectsApi, document: dict, dry_run: bool) -> tuple[dict | None, list]:
    """(the stored object, []) when accepted; (None, the causes' field paths) when rejected (422, or 400 for an
    unknown field)."""
    try:
        stored = custom.create_namespaced_custom_object(GROUP, VERSION, "fuzz", PLURAL, copy.deepcopy(document),
                                                        dry_run="All" if dry_run else None,
                                                        field_validation="Strict")
        return stored, []
    except ApiException as error:
        return None, _rejection_paths(error)


def _rejection_paths(error: ApiException) -> list[str]:
    """The field paths of a refusal: 422 (schema, CEL) or an unknown field (field validation Strict, as kubectl apply
    sends it: 400 on a create, 422 with the cause's field `patch` on a JSON patch; the paths are in the message);
    anything else is not a refusal and is raised."""
    if error.status in (400, 422) and "strict decoding error" in (error.body or ""):
        return re.findall(r'unknown field \\"([^"\\]+)\\"', error.body)
    if error.status != 422:
        raise error
    return [cause.get("field") or "" for cause in json.loads(error.body).get("details", {}).get("causes", [])]


def _parser_paths(document: dict) -> set[str] | None:
    """None when the parser accepts; else the field paths of its errors."""
    try:
        parse_document(copy.deepcopy(document))
        return None
    except SpecError as error:
        return {e.path for e in error.errors}


def _normal(path: str) -> str:
    """The parser writes a map key as `[key]`, the apiserver as `.key`."""
    return re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", path)


def _overlap(parsed: set[str], api_paths: list[str]) -> bool:
    """Some error both name: the same path, or one inside the other (`env[1]` and `env[1].name`)."""
    ours = {_normal(p) for p in parsed}
    return any(a == b or a.startswith(b + ".") or b.startswith(a + ".") or a.startswith(b + "[")
               or b.startswith(a + "[") for a in ours for b in api_paths if b and b != "<nil>")


def _judge(custom: k8s.CustomObjectsApi, document: dict, tally: Counter, findings: list[str],
           dry_run: bool = True) -> dict | None:
    stored, api_paths = _verdict_of_apiserver(custom, document, dry_run)
    parsed = _parser_paths(document)
    spec = json.dumps(document["spec"], sort_keys=True)[:600]
    if stored is not None:
        tally["accepted"] += 1
        on_stored = _parser_paths({k: v for k, v in stored.items() if k != "status"})
        if on_stored is not None:
            findings.append(f"apiserver accepted, parser rejects {sorted(on_stored)}: {spec}")
        return stored
    tally["rejected"] += 1
    if not any(p.startswith("spec") for p in api_paths):
        findings.append(f"apiserver rejected without a spec field path {api_paths}: {spec}")
    if parsed is None:
        findings.append(f"apiserver rejected {sorted(api_paths)}, parser accepts: {spec}")
    elif not _overlap(parsed, api_paths):
        tally["rejected, different paths"] += 1
        print(f"  rejected by both, parser {sorted(parsed)} apiserver {sorted(api_paths)}: {spec}")
        if not all(p.startswith("spec") for p in parsed):
            findings.append(f"parser rejected without a spec field path {sorted(parsed)}: {spec}")
    return None


def test_apiserver_and_parser_agree_on_generated_documents(control_plane):
    _, api = control_plane
    custom = k8s.CustomObjectsApi(api)
    tally: Counter = Counter()
    findings: list[str] = []
    started = time.monotonic()
    print(f"\nspec fuzzing: seed {SEED}, {EXAMPLES} documents")

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(documents())
    def judge(document):
        tally["documents"] += 1
        _judge(custom, document, tally, findings)

    judge()
    row = Row("spec fuzzing: CRD vs parser", faults=tally["documents"])
    row.notes.append(f"{tally['accepted']} accepted, {tally['rejected']} rejected, {len(findings)} disagreements")
    row.record(not findings and tally["documents"] >= EXAMPLES)
    print(f"spec fuzzing: {dict(tally)} in {time.monotonic() - started:.0f} s; {len(findings)} disagreements")
    for finding in findings[:30]:
        print("  FINDING", finding)
    assert tally["documents"] >= EXAMPLES, tally
    # Both sides exercised: hypothesis adapts its draws, and one seed in many leaves fewer than one in ten valid.
    assert tally["accepted"] >= EXAMPLES // 20 and tally["rejected"] >= EXAMPLES // 20, tally
    assert not findings, f"{len(findings)} disagreements between the CRD and the parser (printed above)"


def test_operator_processes_every_accepted_document(control_plane, tmp_path):
    """Applied for real with the operator running: each accepted document gets a status for its generation (processed
    or InvalidSpec with a field path), no operator traceback, no children for an invalid one."""
    fleet, api = control_plane
    custom = k8s.CustomObjectsApi(api)
    tally: Counter = Counter()
    findings: list[str] = []
    names: list[str] = []

    @seed(SEED + 1)
    @settings(max_examples=APPLIED * 6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(documents())
    def apply(document):
        if len(names) >= APPLIED:
            return
        document["metadata"]["name"] = f"fuzz-{len(names) + tally['rejected']}"
        stored = _judge(custom, document, tally, findings, dry_run=False)
        if stored is not None:
            names.append(stored["metadata"]["name"])

    apply()
    assert names, "no generated document was accepted"
    log = tmp_path / "operator.log"
    operator = OperatorProcess(fleet.kubeconfig, log)
    operator.start()
    try:
        def statuses() -> dict[str, dict]:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, "fuzz", PLURAL)["items"]
            return {i["metadata"]["name"]: i for i in items if i["metadata"]["name"] in names}

        def all_processed() -> bool:
            assert operator.process.poll() is None, f"the operator exited:\n{operator.log_tail()}"
            return all((item.get("status") or {}).get("observedGeneration") == item["metadata"]["generation"]
                       for item in statuses().values())

        wait_until(f"the operator to process {len(names)} models", all_processed, 180, interval=1)
    finally:
        operator.stop()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 2000:][:6000]
    batch, apps, core = k8s.BatchV1Api(api), k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    for name, item in statuses().items():
        invalid = [c for c in item["status"].get("conditions", []) if c["type"] == "InvalidSpec"
                   and c["status"] == "True"]
        if invalid:
            tally["marked InvalidSpec"] += 1
            assert "spec." in invalid[0]["message"], invalid[0]
            selector = f"qfleet.io/model={name}"
            children = (batch.list_namespaced_job("fuzz", label_selector=selector).items
                        + apps.list_namespaced_deployment("fuzz", label_selector=selector).items
                        + core.list_namespaced_service("fuzz", label_selector=selector).items)
            assert not children, f"{name} is InvalidSpec but has children {[c.metadata.name for c in children]}"
        else:
            tally["processed"] += 1
    print(f"\nspec fuzzing, applied: {dict(tally)}")
    row = Row("spec fuzzing: applied, operator", faults=len(names))
    row.notes.append(f"{tally['processed']} processed, {tally['marked InvalidSpec']} InvalidSpec, 0 tracebacks")
    row.record(not findings)
    assert not findings, findings


def test_an_edit_that_makes_a_valid_model_invalid_is_refused_and_the_model_keeps_its_spec(control_plane):
    """The spec stays the last valid one (so whatever serves it, stable or canary, keeps serving): every invalid edit
    is refused with a field path and leaves the stored object's generation and spec as they were."""
    _, api = control_plane
    custom = k8s.CustomObjectsApi(api)
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, "fuzz", PLURAL,
                                                    {**copy.deepcopy(BASE), "metadata": {"name": "edited"}})
    tally: Counter = Counter()
    baseline = {"stored": stored}

    @seed(SEED + 2)
    @settings(max_examples=EXAMPLES // 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(documents())
    def edit(document):
        if _parser_paths(document) is None:
            return
        tally["invalid edits"] += 1
        try:
            written = custom.patch_namespaced_custom_object(
                GROUP, VERSION, "fuzz", PLURAL, "edited", [{"op": "replace", "path": "/spec", "value": document["spec"]}],
                field_validation="Strict", _content_type="application/json-patch+json")
        except ApiException as error:
            paths = _rejection_paths(error)
            assert any(p.startswith("spec") for p in paths), error.body
            tally["refused"] += 1
            return
        # accepted: only an edit whose mistakes were nulls, which the apiserver prunes, may land, and what it stored
        # must be valid
        on_stored = _parser_paths({k: v for k, v in written.items() if k != "status"})
        assert on_stored is None, f"an invalid edit was stored ({sorted(on_stored)}): {json.dumps(written['spec'])[:600]}"
        tally["nulls pruned, stored valid"] += 1
        baseline["stored"] = written

    edit()
    now = custom.get_namespaced_custom_object(GROUP, VERSION, "fuzz", PLURAL, "edited")
    print(f"\ninvalid edits: {dict(tally)}")
    assert tally["invalid edits"] >= EXAMPLES // 8, tally
    assert tally["refused"] + tally["nulls pruned, stored valid"] == tally["invalid edits"], tally
    last = baseline["stored"]
    assert now["metadata"]["generation"] == last["metadata"]["generation"] and now["spec"] == last["spec"]
    Row("invalid edits of a valid model", faults=tally["invalid edits"]).record(True)
