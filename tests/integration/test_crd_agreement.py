"""The CRD (schema and CEL rules, judged by the real apiserver) and the parser accept and reject the same documents."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from qfleet.api import GROUP, PLURAL, VERSION, SpecError, parse_document

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = yaml.safe_load((ROOT / "tests" / "data" / "invalid_models.yaml").read_text())


def dry_run_create(api, namespace: str, document: dict) -> None:
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document,
                                                              dry_run="All")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_apiserver_and_parser_accept_every_example(api, crd, namespace, path):
    document = yaml.safe_load(path.read_text())
    document["metadata"].pop("namespace", None)
    parse_document(copy.deepcopy(document))
    dry_run_create(api, namespace, document)


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_apiserver_and_parser_reject_every_invalid_document(api, crd, namespace, case):
    with pytest.raises(SpecError) as parsed:
        parse_document(copy.deepcopy(case["document"]))
    assert {e.path for e in parsed.value.errors} == set(case["paths"])

    with pytest.raises(ApiException) as rejected:
        dry_run_create(api, namespace, copy.deepcopy(case["document"]))
    assert rejected.value.status == 422, rejected.value.body
    causes = json.loads(rejected.value.body)["details"]["causes"]
    assert set(case["paths"]) <= {c.get("field") for c in causes}, causes
