"""The one module that talks to Prometheus: all of a visit's instant queries as one request (qfleet.promql.combine),
answered as numbers (or counts by bucket) or None."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from qfleet.promql import combine, split

QUERY_TIMEOUT_SECONDS = 10
"""Per request, so for a whole analysis (its queries are one request), and as long to wait for a free slot."""
CONCURRENT_QUERIES = 4
"""Requests in flight per Prometheus address, however many workers visit. An analysis is one request (one query to
Prometheus), so this is how many of Prometheus's query slots (`--query.max-concurrency`, 20 by default) the operator
holds at most, leaving the rest to rules and dashboards; more would not make a saturated Prometheus answer sooner,
only move the queue from here into it. Only the workers whose visit asks this address wait for a slot."""
RETRY = Retry(total=3, backoff_factor=1, status_forcelist=(408, 429, 500, 502, 503, 504), allowed_methods=None)
"""prometheus-api-client's policy, which qfleet used before; a query reads only, so its POST is retried like a GET."""
QUERY_FAULTS = (400, 422)
"""bad_data (a query that does not parse, or is a scalar or a range where combine needs an instant vector) and
execution errors: one query's fault, so each is then asked alone."""
_CLIENTS: dict[str, tuple[requests.Session, threading.BoundedSemaphore]] = {}
_CLIENTS_LOCK = threading.Lock()
_Part = tuple[str, str, dict[str, Any], Callable[[Any], Any]]
"""A query's name, its PromQL, the dict its answer goes into, and how it is read (_number or _buckets)."""


class _Unanswered(Exception):
    """No answer: Prometheus could not be reached, did not answer in time, or had no free query slot."""


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _client(address: str) -> tuple[requests.Session, threading.BoundedSemaphore]:
    """One HTTP session per address for the operator's life: it keeps connections open between analyses."""
    with _CLIENTS_LOCK:
        if address not in _CLIENTS:
            session = requests.Session()
            session.verify = False  # as before (prometheus-api-client's disable_ssl=True)
            session.mount(address, HTTPAdapter(max_retries=RETRY))
            _CLIENTS[address] = (session, threading.BoundedSemaphore(CONCURRENT_QUERIES))
        return _CLIENTS[address]


def _ask(address: str, expression: str, timeout: float) -> Any:
    """One instant query, POSTed as a form (a combined query is long; Prometheus's documented way for that): its
    `data.result`."""
    session, slots = _client(address)
    if not slots.acquire(timeout=timeout):
        raise _Unanswered(f"Prometheus {address} is busy: no free query slot in {timeout:g}s")
    try:
        response = session.post(f"{address.rstrip('/')}/api/v1/query", data={"query": expression}, timeout=timeout)
        if response.status_code != 200:
            raise _Refused(response.status_code, _reason(response))
        return response.json()["data"]["result"]
    except requests.RequestException as error:
        raise _Unanswered(f"{type(error).__name__}: {str(error)[:300]}") from error
    finally:
        slots.release()


@dataclass(frozen=True)
class Measurements:
    values: dict[str, Decimal | None]
    histograms: dict[str, list[tuple[float, Decimal]] | None] = field(default_factory=dict)
    """Per histogram query, (le, count) of every bucket it returned."""
    errors: dict[str, str] = field(default_factory=dict)
    """Per query, why there is no value (unreachable Prometheus, a bad query); no data at all is not an error."""


def measure(address: str, queries: dict[str, str], histograms: dict[str, str] | None = None,
            timeout: float = QUERY_TIMEOUT_SECONDS) -> Measurements:
    """Asks every query in one request; a query that returns nothing, NaN or infinity (e.g. 0/0 with no traffic) has
    the value None, and so does every query when Prometheus cannot be reached: the gates then read Inconclusive. A
    histogram query (`sum by (le)`) gives its buckets, or None when it returns none. When Prometheus refuses the
    request for a query's fault, each query is asked alone: the error is that query's, the others get their values
    (and so when the answer cannot be split back)."""
    histograms = histograms or {}
    values: dict[str, Decimal | None] = dict.fromkeys(queries)
    buckets: dict[str, list[tuple[float, Decimal]] | None] = dict.fromkeys(histograms)
    parts: list[_Part] = [
        *((name, q, values, _number) for name, q in queries.items()),
        *((name, q, buckets, _buckets) for name, q in histograms.items())]
    if not parts:
        return Measurements(values, buckets)
    try:
        results = split(_ask(address, combine([q for _, q, _, _ in parts]), timeout), len(parts))
    except (_Unanswered, _Refused) as error:
        if isinstance(error, _Refused) and error.status in QUERY_FAULTS:
            return Measurements(values, buckets, _one_by_one(address, parts, timeout))
        # unreachable, busy, or refused for no query's fault (a 401): asking each alone would say the same
        return Measurements(values, buckets, {name: str(error) for name, *_ in parts})
    if results is None:
        return Measurements(values, buckets, _one_by_one(address, parts, timeout))
    for (name, _, into, read), result in zip(parts, results, strict=True):
        into[name] = read(result)
    return Measurements(values, buckets)


def _one_by_one(address: str, parts: list[_Part], timeout: float) -> dict[str, str]:
    """Asks each query alone, its answer into its dict; the errors by query."""
    errors: dict[str, str] = {}
    unreachable = None
    for name, expression, into, read in parts:
        if unreachable is not None:  # one timeout is enough
            errors[name] = unreachable
            continue
        try:
            into[name] = read(_ask(address, expression, timeout))
        except _Refused as error:
            errors[name] = str(error)
        except _Unanswered as error:
            errors[name] = unreachable = str(error)
    return errors


def _reason(response: requests.Response) -> str:
    try:
        body = response.json()
        return f"HTTP {response.status_code} {body['errorType']}: {body['error']}"[:300]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text}"[:300]


def _buckets(result: list[dict]) -> list[tuple[float, Decimal]] | None:
    found = []
    for sample in result:
        try:
            le, count = float(sample["metric"]["le"]), Decimal(sample["value"][1])
        except (InvalidOperation, KeyError, IndexError, TypeError, ValueError):
            continue
        if count.is_finite():
            found.append((le, count))
    return found or None


def _number(result: list[dict]) -> Decimal | None:
    """The single sample of an instant vector (or the first, for a query that forgot to aggregate)."""
    if not result:
        return None
    try:
        value = Decimal(result[0]["value"][1])
    except (InvalidOperation, KeyError, IndexError, TypeError):
        return None
    return value if value.is_finite() else None
