"""The documentation names every field, condition, reason and phase, and shows real output."""

from __future__ import annotations

import re

import pytest

from qfleet.api import ConditionType, Phase, Reason, SpecError, parse_document
from qfleet.cli.main import main

from .support import REPO, invalid_cases, openapi_schema, walk

API_DOC = (REPO / "docs" / "api.md").read_text()
FORMATS_DOC = (REPO / "docs" / "formats.md").read_text()
DESCRIBED_IN_PROSE = re.compile(r"gates\.|tolerations\[\]\.|resources\.")


def _spec_paths() -> list[str]:
    spec = openapi_schema()["properties"]["spec"]
    return [
        path
        for path, _ in walk(spec)
        if path and not path.endswith(("[]", "[*]")) and not DESCRIBED_IN_PROSE.search(path)
    ]


@pytest.mark.parametrize("path", _spec_paths())
def test_api_doc_lists_every_spec_field(path: str) -> None:
    assert f"`{path}`" in API_DOC


@pytest.mark.parametrize("name", [*ConditionType, *Reason, *Phase], ids=str)
def test_api_doc_names_every_condition_reason_and_phase(name: str) -> None:
    assert f"`{name}`" in API_DOC


def test_formats_doc_shows_the_planner_output_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "--model", str(REPO / "examples" / "llama-70b-nvfp4.yaml"), "--gpu", "B200"])

    assert capsys.readouterr().out in FORMATS_DOC


def test_api_doc_shows_the_three_mistakes_error_as_it_is() -> None:
    (case,) = [case for case in invalid_cases() if case["name"] == "three-mistakes"]

    with pytest.raises(SpecError) as raised:
        parse_document(case["document"])

    assert str(raised.value) in API_DOC
