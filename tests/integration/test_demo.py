"""`make demo`'s shorter variant, run the way `make demo` runs it (`python -m localfleet.demo run --short`), on the
session's fleet: FP8 through the real pipeline to stable, a stale-calibration revision rolled back by the
fallback-rate gate under traffic through the gateway, `kvCache: auto` on the H100 pool choosing FP8, and the report
with its plots. The full demo adds the NVFP4 canary; `make demo` runs it."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from kubernetes import client as k8s

from qfleet.api import GROUP, PLURAL, VERSION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(2700)
def test_the_short_demo_plays_its_stories_and_reports_what_it_measured(fleet, api, session_operator_paused,
                                                                      tmp_path):
    namespace = f"demo-{uuid.uuid4().hex[:5]}"
    report = tmp_path / "report"
    demo = [sys.executable, "-m", "localfleet.demo"]
    where = ["--run-dir", str(fleet.run_dir), "--namespace", namespace]
    try:
        played = subprocess.run([*demo, "run", "--short", *where, "--report-dir", str(report)],
                                capture_output=True, text=True, timeout=2500)
        assert played.returncode == 0, played.stdout[-8000:] + played.stderr[-4000:]
        smollm = k8s.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "smollm")
    finally:
        subprocess.run([*demo, "down", *where, "--keep-fleet"], capture_output=True, text=True, timeout=600)

    out = played.stdout
    assert "p99x" in out and "fallback" in out  # the live rollout table's header
    assert "Every story passed" in out and "make demo-down" in out

    text = (report / "README.md").read_text()
    assert "every story passed" in text
    rolled_back = smollm["status"]["history"][-1]
    assert rolled_back["outcome"] == "RolledBack" and "fallbackRate" in rolled_back["message"]
    assert rolled_back["message"] in text  # the report quotes the run's own verdict
    assert "one-sided at 0.95" in text  # each verdict's interval and sample sizes
    deciding = next(g for g in rolled_back["analysis"]["gates"] if g["name"] == "fallbackRate")
    assert f"; n {deciding['canarySamples']:,}" in text
    assert smollm["status"]["evaluation"]["qualityDrop"] in text
    assert "auto picked fp8" in text and "nvfp4: Unsupported" in text
    for plot in ("weights.png", "gates.png", "capacity.png"):
        assert (report / plot).read_bytes()[:8] == PNG_MAGIC, plot
    samples = [json.loads(line) for line in (report / "samples.jsonl").read_text().splitlines()]
    canary = [s for s in samples if s["story"] == "regression-rolled-back" and s["weight"]]
    assert canary and canary[0]["weight"] == 20.0  # the first step's weight, as status reported it
    analysed = [s for s in samples if s["gates"].get("fallbackRate") is not None]
    assert max(s["gates"]["fallbackRate"] for s in analysed) > 0.005  # the default bound the fault crossed
    assert not k8s.CoreV1Api(api).list_namespace(field_selector=f"metadata.name={namespace}").items  # down cleaned
