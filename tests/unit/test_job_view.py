"""A Job and its pods as the pipeline reads them: a verdict is taken only with the pod's final state, or once the pods
are gone."""
from __future__ import annotations

from qfleet.views import job_view
from qfleet.pipeline import JobState

COMPLETE = {"metadata": {"name": "llama-r-fp8-evaluate", "uid": "j1"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-11-30T12:00:00Z"}}
RUNNING_POD = {"status": {"containerStatuses": [{"state": {"running": {}}}]}}
DONE_POD = {"status": {"containerStatuses": [{"state": {"terminated": {
    "exitCode": 0, "finishedAt": "2026-11-30T11:59:59Z", "message": '{"qualityDrop": "0.004"}'}}}]}}


def test_a_complete_job_whose_pod_has_not_yet_ended_in_the_cache_is_still_running() -> None:
    view = job_view(COMPLETE, [RUNNING_POD])
    assert view.state is JobState.RUNNING and view.uid == "j1"


def test_a_complete_job_reads_its_summary_from_the_ended_pod() -> None:
    view = job_view(COMPLETE, [DONE_POD])
    assert view.state is JobState.SUCCEEDED and view.summary == {"qualityDrop": "0.004"}


def test_a_complete_job_whose_pods_are_gone_is_complete_without_a_summary() -> None:
    view = job_view(COMPLETE, [])
    assert view.state is JobState.SUCCEEDED and view.summary == {}
