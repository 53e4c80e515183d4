"""The pipeline decision as tables: admission against node pools, and one visit's step, status and Jobs."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from qfleet.api import parse_spec
from qfleet.gpus import GPUS, gfd_labels
from qfleet.manifests.jobs import job_name
from qfleet.manifests.names import MAX_NAME, child_name
from qfleet.api.jobs import Step
from qfleet.pipeline import JobState, JobView, NodeView, Observed, admit, decide, records
from qfleet.revision import revision_of
from tests.unit.test_release import NVFP4, serving_stable, start_canary
from tests.unit.test_release import SPEC as STABLE_SPEC
from tests.unit.test_release import revision as release_revision

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC = {
    "model": {"uri": "hf://meta-llama/Llama-3.3-70B-Instruct"},
    "quantization": {"weights": "bf16", "kvCache": "nvfp4"},
    "nodePool": {"nodeSelector": {"pool": "gpu"}, "gpusPerReplica": 8},
    "serving": {"image": "qfleet/runtime:test"},
    "artifacts": {"uri": "pvc://qfleet-artifacts/llama"},
}


def nodes(*kinds: tuple[str, int]) -> list[NodeView]:
    """(GPU name, allocatable GPUs) per node, all in pool=gpu."""
    return [NodeView(f"{gpu.lower()}-{i}", {"pool": "gpu", **gfd_labels(GPUS[gpu], count)}, count)
            for i, (gpu, count) in enumerate(kinds)]


def spec_with(**changes: Any) -> dict:
    spec = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return spec


@dataclass
class AdmitCase:
    reason: str
    spec: dict
    nodes: list[NodeView]
    kv_format: str | None
    compute_capability: tuple[int, int] | None = None
    message_has: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()


ADMIT_CASES = [
    AdmitCase("nvfp4 on B200", SPEC, nodes(("B200", 8)), "nvfp4", (10, 0)),
    AdmitCase("nvfp4 on H100 only", SPEC, nodes(("H100", 8), ("H100", 8)), None,
              message_has=("10.0", "9.0", "NVIDIA-H100-80GB-HBM3", "nvfp4")),
    AdmitCase("mixed pool pins the Blackwell nodes", SPEC, nodes(("H100", 8), ("B200", 8)), "nvfp4", (10, 0)),
    AdmitCase("fp8 on a mixed pool pins the newest capability", spec_with(quantization__kvCache="fp8"),
              nodes(("H100", 8), ("B200", 8), ("L40S", 8)), "fp8", (10, 0)),
    AdmitCase("fp8 on L40S (8.9)", spec_with(quantization__kvCache="fp8"), nodes(("L40S", 8)), "fp8", (8, 9)),
    AdmitCase("fp8 on A100 (8.0) is refused", spec_with(quantization__kvCache="fp8"), nodes(("A100", 8)), None,
              message_has=("8.9", "8.0")),
    AdmitCase("int8 on A100", spec_with(quantization__kvCache="int8"), nodes(("A100", 8)), "int8", (8, 0)),
    AdmitCase("too few GPUs per node", SPEC, nodes(("B200", 4)), None, message_has=("gpusPerReplica", "8", "4")),
    AdmitCase("selector matches nothing", spec_with(nodePool__nodeSelector={"pool": "none"}), nodes(("B200", 8)),
              None, message_has=("nodeSelector",)),
    AdmitCase("auto on H100 picks fp8",
              spec_with(quantization={"kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]}),
              nodes(("H100", 8)), "fp8", (9, 0)),
    AdmitCase("auto passes over an excluded format",
              spec_with(quantization={"kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]}),
              nodes(("B200", 8)), "fp8", (10, 0), excluded=("nvfp4",)),
    AdmitCase("unschedulable nodes do not count", SPEC,
              [NodeView("b200-0", {"pool": "gpu", **gfd_labels(GPUS["B200"], 8)}, 8, schedulable=False)], None),
]


@pytest.mark.parametrize("case", ADMIT_CASES, ids=lambda c: c.reason)
def test_admission(case: AdmitCase) -> None:
    result = admit(parse_spec(case.spec), case.nodes, excluded=case.excluded)
    assert result.kv_format == case.kv_format, result.message
    assert result.compute_capability == case.compute_capability
    for fragment in case.message_has:
        assert fragment in result.message


def observed(spec: dict | None = None, jobs: dict[str, JobView] | None = None, status: dict | None = None,
             pool: list[NodeView] | None = None, generation: int = 1) -> Observed:
    return Observed(name="llama", namespace="ns", uid="uid-1", generation=generation, spec=spec or SPEC,
                    status=status or {}, jobs=jobs or {}, nodes=nodes(("B200", 8)) if pool is None else pool,
                    now=NOW)


def conditions(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


REVISION = revision_of(parse_spec(SPEC))


def job(step: Step, state: JobState, fmt: str = "nvfp4", spec: dict | None = None, **kwargs: Any) -> JobView:
    revision = revision_of(parse_spec(spec)) if spec else REVISION
    return JobView(job_name("llama", revision, fmt, step), state, **kwargs)


def jobs(*views: JobView) -> dict[str, JobView]:
    return {v.name: v for v in views}


CALIBRATED = job(Step.CALIBRATE, JobState.SUCCEEDED, summary={"kvFormat": "nvfp4", "worstLayer": 3,
                                                               "worstLayerKL": "0.02", "fallbackLayers": [3]})
BUILT = job(Step.BUILD, JobState.SUCCEEDED, summary={"kvCacheDtype": "nvfp4", "artifact": "/a/engine"})


@dataclass
class VisitCase:
    reason: str
    observed: Observed
    conditions: dict[str, tuple[str, str]]
    creates: list[str] = field(default_factory=list)
    phase: str | None = None


AUTO = spec_with(quantization={"kvCache": "auto", "kvCacheLadder": ["nvfp4", "fp8", "bf16"]})
AUTO_REVISION_JOBS = dict(spec=AUTO)

VISIT_CASES = [
    VisitCase("first visit creates the calibration Job", observed(),
              {"Calibrated": ("Unknown", "Calibrating"), "EngineBuilt": ("Unknown", "WaitingForPreviousStep"),
               "Ready": ("False", "RolloutInProgress")}, ["calibrate"], "Calibrating"),
    VisitCase("a running calibration creates nothing", observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING))),
              {"Calibrated": ("Unknown", "Calibrating")}, [], "Calibrating"),
    VisitCase("calibrated: the build Job comes next", observed(jobs=jobs(CALIBRATED)),
              {"Calibrated": ("True", "CalibrationSucceeded"), "EngineBuilt": ("Unknown", "Building")}, ["build"],
              "Building"),
    VisitCase("built: the evaluation Job comes next", observed(jobs=jobs(CALIBRATED, BUILT)),
              {"EngineBuilt": ("True", "EngineBuildSucceeded"), "Evaluated": ("Unknown", "Evaluating")},
              ["evaluate"], "Evaluating"),
    VisitCase("evaluation within the gate",
              observed(jobs=jobs(CALIBRATED, BUILT, job(Step.EVALUATE, JobState.SUCCEEDED,
                                                        summary={"qualityDrop": "0.004"}))),
              {"Evaluated": ("True", "EvaluationPassed"), "Ready": ("False", "RolloutInProgress")}, []),
    VisitCase("evaluation above the gate stops a fixed format",
              observed(jobs=jobs(CALIBRATED, BUILT, job(Step.EVALUATE, JobState.SUCCEEDED,
                                                        summary={"qualityDrop": "0.03"}))),
              {"Evaluated": ("False", "QualityGateFailed"), "Ready": ("False", "QualityGateFailed")}, [], "Failed"),
    VisitCase("an evaluation without a qualityDrop fails rather than passes",
              observed(jobs=jobs(CALIBRATED, BUILT, job(Step.EVALUATE, JobState.SUCCEEDED, summary={}))),
              {"Evaluated": ("False", "EvaluationFailed")}, [], "Failed"),
    VisitCase("failed calibration stops the pipeline",
              observed(jobs=jobs(job(Step.CALIBRATE, JobState.FAILED, failure="exit code 3"))),
              {"Calibrated": ("False", "CalibrationFailed"), "EngineBuilt": ("Unknown", "WaitingForPreviousStep"),
               "Ready": ("False", "CalibrationFailed")}, [], "Failed"),
    VisitCase("failed build", observed(jobs=jobs(CALIBRATED, job(Step.BUILD, JobState.FAILED))),
              {"EngineBuilt": ("False", "EngineBuildFailed")}, [], "Failed"),
    VisitCase("bf16 needs no calibration", observed(spec=spec_with(quantization__kvCache="bf16")),
              {"Calibrated": ("True", "CalibrationNotRequired"), "EngineBuilt": ("Unknown", "Building")}, ["build"]),
    VisitCase("no compatible pool creates nothing", observed(pool=nodes(("H100", 8))),
              {"Ready": ("False", "NoCompatibleNodePool")}, [], "Failed"),
    VisitCase("an invalid spec creates nothing",
              observed(spec=spec_with(quantization={"kvCache": "auto"})),
              {"Ready": ("False", "InvalidSpec")}, [], "Invalid"),
    VisitCase("auto: a format that fails the quality gate gives way to the next",
              observed(spec=AUTO, jobs=jobs(
                  job(Step.CALIBRATE, JobState.SUCCEEDED, spec=AUTO),
                  job(Step.BUILD, JobState.SUCCEEDED, spec=AUTO),
                  job(Step.EVALUATE, JobState.SUCCEEDED, spec=AUTO, summary={"qualityDrop": "0.2"})),
                  pool=nodes(("B200", 8)) + nodes(("H100", 8))),
              {"Calibrated": ("Unknown", "Calibrating")}, ["calibrate"], "Calibrating"),
    VisitCase("auto: when every format fails the gate the model stops",
              observed(spec=AUTO, jobs=jobs(*[
                  job(step, JobState.SUCCEEDED, fmt=fmt, spec=AUTO, summary={"qualityDrop": "0.2"})
                  for fmt in ("nvfp4", "fp8", "bf16") for step in Step]), pool=nodes(("B200", 8))),
              {"Ready": ("False", "QualityGateFailed")}, [], "Failed"),
]


@pytest.mark.parametrize("case", VISIT_CASES, ids=lambda c: c.reason)
def test_one_visit(case: VisitCase) -> None:
    decision = decide(case.observed)
    found = conditions(decision.status)
    for kind, expected in case.conditions.items():
        assert found[kind] == expected, decision.status["conditions"]
    assert [m["metadata"]["labels"]["qfleet.io/step"] for m in decision.create] == case.creates
    assert decision.status["observedGeneration"] == case.observed.generation
    if case.phase:
        assert decision.status["phase"] == case.phase


def test_a_visit_with_nothing_new_changes_nothing() -> None:
    first = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING))))
    again = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING)), status=first.status))
    assert again.status == first.status
    assert again.events == [] and again.create == []


def test_the_visit_after_a_job_is_created_finds_nothing_to_write_once_the_uid_is_recorded() -> None:
    """The visit that creates a Job writes its uid from the create's answer (`with_created_uids`), so the visit
    woken by the Job's first event has nothing left to write: one status write per step started, not two."""
    first = decide(observed())
    [created] = first.create
    name = created["metadata"]["name"]
    written = records.with_created_uids(first.status, {name: "uid-new", "llama-other-job": "uid-x"})
    assert written["calibration"] == {**first.status["calibration"], "jobUid": "uid-new"}
    assert {k: v for k, v in written.items() if k != "calibration"} == \
        {k: v for k, v in first.status.items() if k != "calibration"}
    seen = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING, uid="uid-new")), status=written))
    assert seen.status == written and seen.create == [] and seen.events == []
    assert records.with_created_uids(first.status, {}) == first.status
    # A recorded uid is never replaced (a Job created again is a new step record, made by the decision).
    assert records.with_created_uids(written, {name: "uid-other"})["calibration"]["jobUid"] == "uid-new"


def test_a_finished_pipeline_visited_again_changes_nothing() -> None:
    evaluated = job(Step.EVALUATE, JobState.SUCCEEDED, summary={"qualityDrop": "0.004"},
                    finished_at="2026-11-23T11:00:00Z")
    views = jobs(CALIBRATED, BUILT, evaluated)
    first = decide(observed(jobs=views))
    later = Observed(**{**observed(jobs=views, status=first.status).__dict__, "now": NOW.replace(hour=13)})
    again = decide(later)
    assert again.status == first.status and again.create == [] and again.events == []
    assert first.status["evaluation"]["completedAt"] == "2026-11-23T11:00:00Z"


def test_transitions_post_events_once() -> None:
    running = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING))))
    done = decide(observed(jobs=jobs(CALIBRATED), status=running.status))
    assert ("Normal", "CalibrationSucceeded") in {(e.type, e.reason) for e in done.events}
    failed = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.FAILED)), status=running.status))
    assert ("Warning", "CalibrationFailed") in {(e.type, e.reason) for e in failed.events}


def test_the_stable_revision_and_history_are_kept_through_a_failure() -> None:
    status = {"revision": {"stable": "0123456789"}, "history": [
        {"revision": "0123456789", "outcome": "Promoted", "at": "2026-11-20T00:00:00Z"}]}
    decision = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.FAILED)), status=status))
    assert decision.status["revision"] == {"current": REVISION, "stable": "0123456789"}
    assert decision.status["history"][0]["revision"] == "0123456789"


def test_status_records_results_and_provenance() -> None:
    calibrated = job(Step.CALIBRATE, JobState.SUCCEEDED, summary={
        "kvFormat": "nvfp4", "worstLayer": 3, "worstLayerKL": 0.02, "fallbackLayers": [3], "samples": 64,
        "datasetHash": "sha256:ab", "modelOptVersion": "0.47.0", "device": "cuda:0 (NVIDIA B200)"})
    status = decide(observed(jobs=jobs(calibrated, BUILT))).status
    assert status["calibration"]["report"] == {"kvFormat": "nvfp4", "worstLayer": 3, "worstLayerKL": "0.02",
                                               "fallbackLayers": [3]}
    assert status["calibration"]["modelOptVersion"] == "0.47.0"
    assert status["calibration"]["samples"] == 64
    assert status["engine"]["computeCapability"] == "10.0"
    assert status["capacity"]["kvBytesPerToken"] == 79 * 1_152 + 4_096  # layer 3 keeps bf16 KV: 95,104


PROVENANCE_CASES = [
    # (what the calibration Job reported, status.calibration's dataset fields, what the Calibrated message adds)
    ({"datasetUsed": "cnn_dailymail", "datasetHash": "sha256:cd"}, ("cnn_dailymail", None, "sha256:cd"), None),
    ({"datasetUsed": "builtin", "datasetHash": "sha256:b1", "datasetNote": "cnn_dailymail cannot be downloaded"},
     ("builtin", "cnn_dailymail", "sha256:b1"),
     "calibration dataset cnn_dailymail could not be loaded, so builtin (sha256:b1) was substituted"),
    ({"datasetHash": "sha256:00"}, ("cnn_dailymail", None, "sha256:00"), None),  # an older runtime: no datasetUsed
]


@pytest.mark.parametrize(("summary", "fields", "says"), PROVENANCE_CASES)
def test_status_names_the_dataset_actually_used(summary: dict, fields: tuple, says: str | None) -> None:
    calibrated = job(Step.CALIBRATE, JobState.SUCCEEDED, summary={
        "kvFormat": "nvfp4", "worstLayer": 3, "worstLayerKL": 0.02, "fallbackLayers": [3], **summary})
    status = decide(observed(jobs=jobs(calibrated))).status
    calibration = status["calibration"]
    assert (calibration["dataset"], calibration.get("datasetRequested"), calibration["datasetHash"]) == fields
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Calibrated")
    assert (says in message) if says else ("substituted" not in message)


def test_the_capacity_plan_pays_for_the_calibrations_fallback_layers() -> None:
    """Llama 3.3 70B in NVFP4 on B200: 92,160 KV bytes a token; with 2 of its 80 layers kept in bf16 the plan costs
    78 x 1,152 + 2 x 4,096 bytes a layer-token (8 KV heads x 128 x K and V), and holds fewer tokens in proportion."""
    calibrated = job(Step.CALIBRATE, JobState.SUCCEEDED, summary={
        "kvFormat": "nvfp4", "worstLayer": 3, "worstLayerKL": 0.02, "fallbackLayers": [3, 7]})
    plain = decide(observed(jobs=jobs(job(Step.CALIBRATE, JobState.RUNNING)))).status["capacity"]
    mixed = decide(observed(jobs=jobs(calibrated, BUILT))).status["capacity"]
    assert plain["kvBytesPerToken"] == 92_160
    assert mixed["kvBytesPerToken"] == 78 * 1_152 + 2 * 4_096 == 98_048
    assert mixed["maxTokensPerReplica"] == int(plain["maxTokensPerReplica"] * 92_160 / 98_048)
    assert "2 fallback layer(s) [3, 7] keep bf16 KV" in mixed["message"]


def test_rollout_only_edits_keep_the_jobs() -> None:
    edited = spec_with(rollout={"steps": [{"weight": 5}, {"weight": 100}]}, serving__replicas=7)
    decision = decide(observed(spec=edited, jobs=jobs(CALIBRATED, BUILT), generation=2))
    assert decision.status["revision"]["current"] == REVISION
    assert [m["metadata"]["name"] for m in decision.create] == [job_name("llama", REVISION, "nvfp4", Step.EVALUATE)]


def test_jobs_are_pinned_owned_and_locked_down() -> None:
    manifest = decide(observed()).create[0]
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["ownerReferences"][0] == {
        "apiVersion": "qfleet.io/v1alpha1", "kind": "QuantizedModel", "name": "llama", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.compute.major": "10",
                                   "nvidia.com/gpu.compute.minor": "0"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"][:2] == ["calibrate", "--revision"]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "qfleet-artifacts"}} in pod["volumes"]
    assert f"/var/lib/qfleet/artifacts/llama/{REVISION}/nvfp4" in container["args"]


@pytest.mark.parametrize("model", ["llama", "a" * 40, "b" * 63])
def test_child_names_fit_a_label_and_stay_distinct(model: str) -> None:
    name = child_name(model, "0123456789", "nvfp4", "calibrate")
    assert len(name) <= MAX_NAME
    assert name.endswith("-0123456789-nvfp4-calibrate")
    assert child_name(model + "x", "0123456789", "nvfp4", "calibrate") != name


# -- durable step results ---------------------------------------------------------------------------------------------
EVALUATED = job(Step.EVALUATE, JobState.SUCCEEDED, summary={"qualityDrop": "0.004", "score": "15.3"})


def visits(spec: dict, views: dict[str, JobView], status: dict | None = None, count: int = 1,
           **changes: Any) -> Any:
    """`count` visits in a row, each starting from the status the one before wrote."""
    decision = None
    for _ in range(count):
        decision = decide(Observed(**{**observed(spec=spec, jobs=views, status=status).__dict__, **changes}))
        status = decision.status
    return decision


def test_recorded_results_outlive_their_jobs_and_pods() -> None:
    done = visits(SPEC, jobs(CALIBRATED, BUILT, EVALUATED))
    assert done.status["calibration"]["outcome"] == "Succeeded"
    assert done.status["evaluation"] == {**done.status["evaluation"], "qualityDrop": "0.004", "revision": REVISION}
    gone = visits(SPEC, {}, status=done.status, count=3)  # Jobs and pods deleted, several visits
    assert gone.create == [] and gone.events == []
    assert gone.status == done.status


def test_a_finished_job_whose_pod_went_keeps_the_summary_recorded_before() -> None:
    done = visits(SPEC, jobs(CALIBRATED, BUILT, EVALUATED))
    podless = jobs(job(Step.CALIBRATE, JobState.SUCCEEDED), job(Step.BUILD, JobState.SUCCEEDED),
                   job(Step.EVALUATE, JobState.SUCCEEDED))  # the Jobs stay, their pods (and summaries) are gone
    assert visits(SPEC, podless, status=done.status, count=2).status == done.status


def test_a_recorded_failure_is_not_retried_when_its_job_goes() -> None:
    failed = visits(SPEC, jobs(job(Step.CALIBRATE, JobState.FAILED, failure="exit code 3")))
    later = visits(SPEC, {}, status=failed.status, count=2)
    assert later.create == [] and conditions(later.status)["Calibrated"] == ("False", "CalibrationFailed")
    assert "exit code 3" in later.status["calibration"]["message"]


def test_a_job_deleted_before_it_finished_is_created_once_again_with_an_event() -> None:
    running = job(Step.CALIBRATE, JobState.RUNNING, uid="uid-a")
    seen = visits(SPEC, jobs(running), count=2)
    assert seen.status["calibration"]["jobUid"] == "uid-a" and seen.create == []
    again = visits(SPEC, {}, status=seen.status)
    assert [j["metadata"]["labels"]["qfleet.io/step"] for j in again.create] == ["calibrate"]
    assert [(e.type, e.reason) for e in again.events] == [("Warning", "JobRecreated")]
    calibrated = next(c for c in again.status["conditions"] if c["type"] == "Calibrated")
    assert "re-created 1 time(s)" in calibrated["message"]
    # Not yet seen again (the watch lags): created idempotently, counted once, no second Event.
    lagging = visits(SPEC, {}, status=again.status)
    assert lagging.status["calibration"]["recreations"] == 1 and lagging.events == []
    back = visits(SPEC, jobs(job(Step.CALIBRATE, JobState.RUNNING, uid="uid-b")), status=lagging.status)
    assert back.status["calibration"] == {**back.status["calibration"], "jobUid": "uid-b", "recreations": 1}


def test_a_job_deleted_again_and_again_fails_the_step_instead_of_looping() -> None:
    status = None
    for n in range(4):
        status = visits(SPEC, jobs(job(Step.CALIBRATE, JobState.RUNNING, uid=f"uid-{n}")), status=status).status
        status = visits(SPEC, {}, status=status).status
    status = visits(SPEC, jobs(job(Step.CALIBRATE, JobState.RUNNING, uid="uid-4")), status=status).status
    final = visits(SPEC, {}, status=status)
    assert final.create == [] and conditions(final.status)["Calibrated"] == ("False", "CalibrationFailed")
    assert "deleted before it finished, 4 times" in final.status["calibration"]["message"]


def test_a_pod_that_can_never_start_fails_its_step_with_the_reason() -> None:
    stuck = job(Step.CALIBRATE, JobState.RUNNING, uid="u",
                waiting="ErrImageNeverPull: image 'nvcr.io/nvidia/tritonserver:25.08' is not in the table")
    decision = visits(SPEC, jobs(stuck))
    assert conditions(decision.status)["Calibrated"] == ("False", "CalibrationFailed")
    assert "spec.runtime.image" in decision.status["calibration"]["message"]


IMAGE_BUMP = spec_with(serving__image="qfleet/runtime:test-2")


def test_a_serving_image_bump_reuses_the_calibration_and_rebuilds() -> None:
    done = visits(SPEC, jobs(CALIBRATED, BUILT, EVALUATED))
    bumped = visits(IMAGE_BUMP, {}, status=done.status)
    new = revision_of(parse_spec(IMAGE_BUMP))
    assert new != REVISION and bumped.status["revision"]["current"] == new
    assert [j["metadata"]["labels"]["qfleet.io/step"] for j in bumped.create] == ["build"]
    calibrated = next(c for c in bumped.status["conditions"] if c["type"] == "Calibrated")
    assert (calibrated["status"], calibrated["reason"]) == ("True", "CalibrationReused")
    assert REVISION in calibrated["message"] and bumped.status["calibration"]["revision"] == REVISION
    args = bumped.create[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--calibration") + 1].endswith(f"/llama/{REVISION}/nvfp4")
    assert args[args.index("--artifacts") + 1].endswith(f"/llama/{new}/nvfp4")


def test_a_runtime_image_bump_calibrates_again_in_the_new_image() -> None:
    done = visits(SPEC, jobs(CALIBRATED, BUILT, EVALUATED))
    bumped = visits(spec_with(runtime__image="qfleet/runtime:test-2"), {}, status=done.status)
    created = bumped.create[0]
    assert created["metadata"]["labels"]["qfleet.io/step"] == "calibrate"
    assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "qfleet/runtime:test-2"


def test_jobs_run_the_runtime_image_and_servers_the_serving_image() -> None:
    first = decide(observed(spec=spec_with(serving={}), ))
    container = first.create[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/qfleet/qfleet-runtime:0.1.0"
    chart = decide(Observed(**{**observed().__dict__, "runtime_image": "registry.local/qfleet-runtime:1"}))
    assert chart.create[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/qfleet-runtime:1"


def test_an_auto_ladder_rejection_is_recorded_and_not_evaluated_again() -> None:
    auto = AUTO
    rev = revision_of(parse_spec(auto))
    nvfp4 = jobs(*(JobView(job_name("llama", rev, "nvfp4", step), JobState.SUCCEEDED, summary)
                   for step, summary in ((Step.CALIBRATE, {"kvFormat": "nvfp4"}), (Step.BUILD, {}),
                                         (Step.EVALUATE, {"qualityDrop": "0.05"}))))
    rejected = visits(auto, nvfp4)
    assert [e["outcome"] for e in rejected.status["ladder"]][:2] == ["QualityGateFailed", "Selected"]
    later = visits(auto, {}, status=rejected.status)  # nvfp4's Jobs are gone; fp8's calibration runs
    assert [j["metadata"]["labels"]["qfleet.io/kv-format"] for j in later.create] == ["fp8"]
    assert later.status["ladder"] == rejected.status["ladder"]


def test_a_revision_that_returns_reuses_the_results_in_its_history_entry() -> None:
    world = start_canary(serving_stable())
    world.at(1).visit()
    world.action = f"abort:{release_revision(NVFP4)}"
    world.at(2).visit()
    rolled_back, stable = world.status["history"][-1], world.status["history"][0]
    assert rolled_back["outcome"] == "RolledBack" and rolled_back["evaluation"]["revision"] == release_revision(NVFP4)
    assert stable["engine"]["revision"] == world.status["revision"]["stable"] == release_revision(STABLE_SPEC)
    # The spec goes back to the stable revision and every Job is gone: its results come from its history entry.
    again = decide(replace(world.observed(), spec=STABLE_SPEC, jobs={}))
    assert again.create == [] and again.status["engine"]["revision"] == release_revision(STABLE_SPEC)
    assert conditions(again.status)["Evaluated"] == ("True", "EvaluationPassed")
