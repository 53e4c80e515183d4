"""A visit refused because the model's namespace is being deleted is dropped quietly (no traceback, no retry); any
other failure is retried with back-off."""
from __future__ import annotations

import json
import logging

import pytest
from kubernetes.client.rest import ApiException

from qfleet import kube
from qfleet.cache import FleetCache
from qfleet.controller import Controller, LoopSettings
from tests.unit.support import run_worker_until

KEY = ("team-a", "llama")


def _api_error(status: int, body: dict | str | None) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = json.dumps(body) if isinstance(body, dict) else body
    return error


TERMINATING = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": 'deployments.apps "llama-abc" is forbidden: unable to create new content in namespace team-a '
                          "because it is being terminated",
               "details": {"name": "llama-abc", "group": "apps", "kind": "deployments",
                           "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                       "message": "namespace team-a is being terminated"}]}}


@pytest.mark.parametrize("error, terminating", [
    (_api_error(403, TERMINATING), True),
    (_api_error(403, {**TERMINATING, "details": {"causes": []}}), False),  # RBAC: a real refusal
    (_api_error(409, TERMINATING), False),
    (_api_error(403, "not json"), False),
    (_api_error(403, None), False),
    (RuntimeError("boom"), False),
])
def test_only_the_namespace_terminating_refusal_counts(error: BaseException, terminating: bool) -> None:
    assert kube.namespace_terminating(error) is terminating


def _one_visit(error: BaseException, caplog: pytest.LogCaptureFixture) -> Controller:
    controller = Controller(api=None, cache=FleetCache(), settings=LoopSettings(workers=1), post_event=lambda *_: None)

    def visit(key):
        raise error

    controller.visit = visit  # type: ignore[method-assign]

    with caplog.at_level(logging.INFO, logger="qfleet.controller"):
        run_worker_until(controller, KEY, lambda: True)
    controller.pool.shutdown()
    return controller


def test_a_visit_refused_in_a_terminating_namespace_is_dropped_without_a_traceback(caplog) -> None:
    controller = _one_visit(_api_error(403, TERMINATING), caplog)
    assert controller.failures == {} and controller.queue.scheduled == 0
    assert [r.exc_info for r in caplog.records] == [None]
    assert "its namespace is being deleted" in caplog.records[0].getMessage()


def test_any_other_failure_is_logged_and_retried_with_back_off(caplog) -> None:
    controller = _one_visit(RuntimeError("boom"), caplog)
    assert controller.failures == {KEY: 1} and controller.queue.scheduled == 1
    assert caplog.records[0].exc_info is not None
