"""A visit that fails for want of the apiserver is visited again as soon as one probe finds the apiserver ready, not
after a back-off grown over the outage: the watches resume where they were and bring no event for what did not
change, so nothing else would wake it."""
from __future__ import annotations

import logging

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from qfleet import controller as loop
from qfleet import kube
from qfleet.cache import FleetCache
from qfleet.controller import Controller, LoopSettings
from tests.unit.support import run_worker_until

KEY = ("team-a", "llama")
REFUSED = urllib3.exceptions.MaxRetryError(None, "/apis/qfleet.io/v1alpha1/namespaces/team-a/quantizedmodels",
                                           urllib3.exceptions.NewConnectionError(None, "Connection refused"))


@pytest.mark.parametrize("error, unavailable", [
    (REFUSED, True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (TimeoutError("read timed out"), True),
    (ApiException(status=503, reason="Service Unavailable"), True),
    (ApiException(status=500, reason="etcdserver: request timed out"), True),
    (ApiException(status=429, reason="Too Many Requests"), True),
    (ApiException(status=409, reason="Conflict"), False),
    (ApiException(status=403, reason="Forbidden"), False),
    (ApiException(status=422, reason="Invalid"), False),
    (RuntimeError("a bug"), False),
])
def test_what_counts_as_the_apiserver_unavailable(error: BaseException, unavailable: bool) -> None:
    assert kube.unavailable(error) is unavailable


def test_a_visit_that_found_no_apiserver_is_visited_again_once_the_probe_finds_it_ready(monkeypatch, caplog) -> None:
    probes: list[object] = []
    ready_after = 2

    def ready(api: object) -> bool:
        probes.append(api)
        return len(probes) >= ready_after

    monkeypatch.setattr(kube, "ready", ready)
    monkeypatch.setattr(loop, "READY_PROBE_SECONDS", 0.01)
    controller = Controller(api="api", cache=FleetCache(), settings=LoopSettings(workers=1),
                            post_event=lambda *_: None)
    visits: list[tuple[str, str]] = []

    def visit(key):
        visits.append(key)
        if len(visits) == 1:
            raise REFUSED
        return None

    controller.visit = visit  # type: ignore[method-assign]

    with caplog.at_level(logging.INFO, logger="qfleet.controller"):
        run_worker_until(controller, KEY, lambda: len(visits) == 2)
    controller.pool.shutdown()
    assert visits == [KEY, KEY], "not visited again once the apiserver was ready"
    assert len(probes) == ready_after and controller.unavailable == set()
    assert controller.failures == {}  # the second visit succeeded
    warning = caplog.records[0]
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert "the apiserver is unavailable" in warning.getMessage()
    assert any("ready again" in r.getMessage() for r in caplog.records)


class _Answer:
    def __init__(self, status: int) -> None:
        self.status = status

    def read(self) -> bytes:
        return b"ok" if self.status == 200 else b"[-]etcd failed"


class _Api:
    """The two calls of the Kubernetes client that `kube.ready` makes (the fleet tests make them for real)."""

    def __init__(self, answer: int | BaseException) -> None:
        self.answer, self.asked = answer, []

    def param_serialize(self, method: str, resource_path: str, auth_settings: list[str]):
        self.asked.append((method, resource_path, tuple(auth_settings)))
        return method, f"https://apiserver{resource_path}", {}, None, []

    def call_api(self, method, url, header_params=None, _request_timeout=None):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return _Answer(self.answer)


@pytest.mark.parametrize("answer, ready", [(200, True), (500, False), (REFUSED, False)])
def test_ready_asks_readyz_once(answer: int | BaseException, ready: bool) -> None:
    api = _Api(answer)
    assert kube.ready(api) is ready
    assert api.asked == [("GET", "/readyz", ("BearerToken",))]
