"""qfleet.prom.measure against a stand-in for Prometheus's query API: one request for every query, and each query
alone when the combined one is refused for a query's fault (tests/integration/test_prom.py asks a real one)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import requests

from qfleet import prom
from qfleet.promql import BATCH_LABEL

PART = re.compile(r'label_replace\((.*?)\n, "' + BATCH_LABEL + r'", "(\d+)", "", ""\)', re.S)
ADDRESS = "http://prometheus.test:9090"


@dataclass(frozen=True)
class Refuse:
    status: int
    type: str
    error: str


@dataclass(frozen=True)
class Scalar:
    value: str


@dataclass
class FakePrometheus:
    """Answers as Prometheus does: each query its series (a list), an error (Refuse) or a scalar. A combined query
    fails whole when a part is refused or is a scalar (label_replace needs an instant vector); else it gives every
    part's series with the part's index as a label (none with `drops_batch_label`, as a server that drops `__` labels
    would). After `down_after` requests, nothing answers."""

    answers: dict[str, Any]
    down_after: int | None = None
    drops_batch_label: bool = False
    attempts: int = 0

    def post(self, url: str, data: dict[str, str], timeout: float) -> FakeResponse:
        assert url == f"{ADDRESS}/api/v1/query" and timeout == prom.QUERY_TIMEOUT_SECONDS
        self.attempts += 1
        if self.down_after is not None and self.attempts > self.down_after:
            raise requests.ConnectionError("Connection refused")
        parts = PART.findall(data["query"])
        if not parts:
            return self._answer(self.answers[data["query"]])
        combined = []
        for query, index in parts:
            answer = self.answers[query]
            if isinstance(answer, Scalar):
                answer = Refuse(400, "bad_data", 'expected type instant vector in call to function "label_replace"')
            if isinstance(answer, Refuse):
                return self._answer(answer)
            label = {} if self.drops_batch_label else {BATCH_LABEL: index}
            combined += [{**s, "metric": {**s["metric"], **label}} for s in answer]
        return self._answer(combined)

    @staticmethod
    def _answer(answer: Any) -> FakeResponse:
        if isinstance(answer, Refuse):
            return FakeResponse(answer.status, {"status": "error", "errorType": answer.type, "error": answer.error})
        if isinstance(answer, Scalar):
            return FakeResponse(200, {"status": "success", "data": {"resultType": "scalar",
                                                                    "result": [1796078954.8, answer.value]}})
        return FakeResponse(200, {"status": "success", "data": {"resultType": "vector", "result": answer}})


@dataclass(frozen=True)
class FakeResponse:
    status_code: int
    body: dict

    def json(self) -> dict:
        return self.body

    @property
    def text(self) -> str:
        return str(self.body)


def series(value: str, **labels: str) -> dict:
    return {"metric": labels, "value": [1796078954.8, value]}


HIST = [series("3", le="0.5"), series("7", le="+Inf")]
BUCKETS = [(0.5, Decimal(3)), (float("inf"), Decimal(7))]
PROMETHEUS = {
    "one": [series("1")], "nan": [series("NaN")], "inf": [series("+Inf")], "silent": [],
    "unaggregated": [series("5", pod="b"), series("6", pod="a")], "hist": HIST,
    "scalar": Scalar("2"), "broken": Refuse(400, "bad_data", "parse error: unclosed left parenthesis"),
    "many-to-one": Refuse(422, "execution", "multiple matches for labels"),
}


@dataclass(frozen=True)
class Case:
    reason: str
    queries: dict[str, str]
    histograms: dict[str, str]
    values: dict[str, Decimal | None]
    buckets: dict[str, Any]
    errors: dict[str, str]
    requests: int
    answers: dict[str, Any] = field(default_factory=lambda: PROMETHEUS)
    down_after: int | None = None
    drops_batch_label: bool = False


CASES = [
    Case("every query in one request; NaN, infinity and no data are None; an unaggregated query gives its first",
         {"a": "one", "b": "nan", "c": "inf", "d": "silent", "e": "unaggregated"}, {"h": "hist", "empty": "silent"},
         {"a": Decimal(1), "b": None, "c": None, "d": None, "e": Decimal(5)}, {"h": BUCKETS, "empty": None}, {}, 1),
    Case("nothing asked, no request", {}, {}, {}, {}, {}, 0),
    Case("a scalar fails the combined query: each is asked alone, and the scalar reads None as it always did",
         {"a": "one", "s": "scalar"}, {"h": "hist"}, {"a": Decimal(1), "s": None}, {"h": BUCKETS}, {}, 4),
    Case("a broken query: its error is its own, the others get their values",
         {"a": "one", "x": "broken"}, {"h": "hist"}, {"a": Decimal(1), "x": None}, {"h": BUCKETS},
         {"x": "HTTP 400 bad_data: parse error: unclosed left parenthesis"}, 4),
    Case("an execution error is a query's fault too",
         {"m": "many-to-one", "a": "one"}, {}, {"m": None, "a": Decimal(1)}, {},
         {"m": "HTTP 422 execution: multiple matches for labels"}, 3),
    Case("refused for no query's fault: every query has that error, from one request",
         {"a": "one"}, {"h": "hist"}, {"a": None}, {"h": None},
         {"a": "HTTP 401 unauthorized: no token", "h": "HTTP 401 unauthorized: no token"}, 1,
         answers={"one": Refuse(401, "unauthorized", "no token"), "hist": HIST}),
    Case("unreachable: every query has the error, from one request",
         {"a": "one"}, {"h": "hist"}, {"a": None}, {"h": None},
         {"a": "ConnectionError: Connection refused", "h": "ConnectionError: Connection refused"}, 1, down_after=0),
    Case("asked one by one, the first unreachable query stops the rest",
         {"x": "broken", "a": "one", "b": "one"}, {}, {"x": None, "a": None, "b": None}, {},
         {"x": "HTTP 400 bad_data: parse error: unclosed left parenthesis", "a": "ConnectionError: Connection refused",
          "b": "ConnectionError: Connection refused"}, 3, down_after=2),
    Case("a server that drops the batch label: the answer cannot be split, so each query is asked alone",
         {"a": "one", "e": "unaggregated"}, {"h": "hist"}, {"a": Decimal(1), "e": Decimal(5)}, {"h": BUCKETS}, {}, 4,
         drops_batch_label=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.reason)
def test_measure(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePrometheus(case.answers, case.down_after, case.drops_batch_label)
    monkeypatch.setattr(prom, "_client", lambda address: (fake, threading.BoundedSemaphore(1)))
    result = prom.measure(ADDRESS, case.queries, case.histograms)
    assert (result.values, result.histograms, result.errors) == (case.values, case.buckets, case.errors)
    assert fake.attempts == case.requests


def test_no_free_query_slot_is_an_error_for_every_query(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, slots = FakePrometheus(PROMETHEUS), threading.BoundedSemaphore(1)
    slots.acquire()  # another analysis holds the only slot
    monkeypatch.setattr(prom, "_client", lambda address: (fake, slots))
    result = prom.measure(ADDRESS, {"a": "one"}, {"h": "hist"}, timeout=0)
    busy = f"Prometheus {ADDRESS} is busy: no free query slot in 0s"
    assert result.errors == {"a": busy, "h": busy} and result.values == {"a": None} and fake.attempts == 0


def test_the_slot_is_given_back_after_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    fake, slots = FakePrometheus(PROMETHEUS), threading.BoundedSemaphore(1)
    monkeypatch.setattr(prom, "_client", lambda address: (fake, slots))
    prom.measure(ADDRESS, {"x": "broken", "a": "one"})
    assert fake.attempts == 3 and slots.acquire(timeout=0)
