"""`kubectl qfleet rollback NAME --to REVISION`: the spec patch built from status.history, on histories that the
release decisions themselves wrote (the in-memory world of test_release)."""
from __future__ import annotations

import copy
import json

import pytest

from qfleet.cli.plugin import main
from qfleet.cli.rollback import RollbackRefused, apply_merge_patch, merge_patch_to, rollback_patch

from .answers import Traffic, answers
from .test_release import NVFP4, PASSING, SPEC, STABLE, T0, World, revision, serving_stable, start_canary

TUNED = {**copy.deepcopy(SPEC), "quantization": {"weights": "bf16", "kvCache": "fp8",
                                                 "layerFallback": {"maxLayerKL": "0.05"}},
         "engine": {"maxSeqLen": 65536}, "runtime": {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]}}


def promoted(world: World, spec: dict) -> World:
    start_canary(world, spec)
    for _ in range(80):  # 5 s apart: every step's pause and analysis
        world.at(world_seconds(world) + 5).visit()
        if world.status["revision"]["stable"] == revision(spec):
            return world
    raise AssertionError(f"not promoted: {world.status}")


def world_seconds(world: World) -> float:
    return (world.now - T0).total_seconds()


def document(world: World) -> dict:
    return {"metadata": {"name": "llama", "namespace": "ns"}, "spec": world.spec, "status": world.status}


@pytest.mark.parametrize("first, second", [(TUNED, NVFP4), (SPEC, NVFP4), (NVFP4, TUNED)],
                         ids=["tuned-then-nvfp4", "fp8-then-nvfp4", "nvfp4-then-tuned"])
def test_the_patch_names_the_earlier_revision_again(first: dict, second: dict) -> None:
    world = promoted(serving_stable(first), second)
    assert [h["outcome"] for h in world.status["history"]][-2:] == ["Superseded", "Promoted"]
    assert all(h.get("artifact") for h in world.status["history"])  # the superseded entry kept its fields
    patch = rollback_patch(document(world), revision(first))
    restored = apply_merge_patch(world.spec, patch["spec"])
    assert revision(restored) == revision(first)
    assert restored["rollout"] == world.spec["rollout"] and restored["serving"] == world.spec["serving"]
    assert restored["nodePool"]["nodeSelector"] == world.spec["nodePool"]["nodeSelector"]

    world.spec = restored  # the operator sees the earlier revision as the current one: a canary again
    world.measurements = [PASSING]
    world.at(world_seconds(world) + 5).visit()
    assert world.status["revision"]["canary"] == revision(first)


def test_refusals_say_why() -> None:
    world = start_canary(serving_stable(), measurements=[answers(Traffic(4000, median_seconds=1.2), STABLE)])
    world.at(1).visit()
    world.at(11).visit()
    with pytest.raises(RollbackRefused, match="was rolled back"):
        rollback_patch(document(world), revision(NVFP4))
    with pytest.raises(RollbackRefused, match="not in llama's status.history"):
        rollback_patch(document(world), "0000000000")
    old = document(world)
    old["status"] = {**old["status"], "history": [{k: v for k, v in h.items() if k != "artifact"}
                                                  for h in old["status"]["history"]]}
    with pytest.raises(RollbackRefused, match="restore them from Git"):
        rollback_patch(old, revision(SPEC))


@pytest.mark.parametrize("current, target", [
    ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 4}}),
    ({"a": [1, 2]}, {"a": [3]}),
    ({}, {"x": {"y": 1}}),
    ({"x": {"y": 1}}, {}),
])
def test_merge_patch_round_trip(current: dict, target: dict) -> None:
    assert apply_merge_patch(current, merge_patch_to(current, target)) == target


def test_the_command_reads_patches_and_says_what_it_did(capsys) -> None:
    world = promoted(serving_stable(), NVFP4)
    sent = []
    code = main(["rollback", "llama", "--to", revision(SPEC), "-n", "ns"], reader=lambda name, ns: document(world),
                patcher=lambda name, ns, body: sent.append((name, ns, body)) or {})
    assert code == 0 and sent[0][:2] == ("llama", "ns")
    assert revision(apply_merge_patch(world.spec, sent[0][2]["spec"])) == revision(SPEC)
    assert f"set back to revision {revision(SPEC)}" in capsys.readouterr().out
    assert main(["rollback", "llama", "--to", "nope"], reader=lambda name, ns: document(world),
                patcher=lambda *_: {}) == 1
    assert "not in llama's status.history" in capsys.readouterr().err
    json.dumps(sent)  # the patch is plain JSON
