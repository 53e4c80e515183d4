"""The one module that talks to Prometheus: instant queries through prometheus-api-client, as numbers (or counts by
bucket) or None."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect

QUERY_TIMEOUT_SECONDS = 10
CONCURRENT_QUERIES = 4
"""Per Prometheus address: analyses of many models share it, a few queries at a time."""
_CLIENTS: dict[str, tuple[PrometheusConnect, threading.BoundedSemaphore]] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(address: str, timeout: float) -> tuple[PrometheusConnect, threading.BoundedSemaphore]:
    """One client per address for the operator's life: its HTTP session keeps connections open between analyses."""
    with _CLIENTS_LOCK:
        if address not in _CLIENTS:
            _CLIENTS[address] = (PrometheusConnect(url=address, disable_ssl=True, timeout=timeout),
                                 threading.BoundedSemaphore(CONCURRENT_QUERIES))
        return _CLIENTS[address]


@dataclass(frozen=True)
class Measurements:
    values: dict[str, Decimal | None]
    histograms: dict[str, list[tuple[float, Decimal]] | None] = field(default_factory=dict)
    """Per histogram query, (le, count) of every bucket it returned."""
    errors: dict[str, str] = field(default_factory=dict)
    """Per query, why there is no value (unreachable Prometheus, a bad query); no data at all is not an error."""


def measure(address: str, queries: dict[str, str], histograms: dict[str, str] | None = None,
            timeout: float = QUERY_TIMEOUT_SECONDS) -> Measurements:
    """Runs each query; a query that returns nothing, NaN or infinity (e.g. 0/0 with no traffic) has the value None,
    and so does every query when Prometheus cannot be reached: the gates then read Inconclusive. A histogram query
    (`sum by (le)`) gives its buckets, or None when it returns none."""
    client, slots = _client(address, timeout)
    values: dict[str, Decimal | None] = {}
    buckets: dict[str, list[tuple[float, Decimal]] | None] = {}
    errors: dict[str, str] = {}
    unreachable = None
    for into, read, asked in ((values, _number, queries), (buckets, _buckets, histograms or {})):
        for name, query in asked.items():
            into[name] = None
            if unreachable is not None:  # an analysis asks some twenty queries: one timeout is enough
                errors[name] = unreachable
                continue
            if not slots.acquire(timeout=timeout):
                errors[name] = unreachable = f"Prometheus {address} is busy: no free query slot in {timeout:g}s"
                continue
            try:
                into[name] = read(client.custom_query(query))
            except PrometheusApiClientException as error:
                errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
            except requests.RequestException as error:
                errors[name] = unreachable = f"{type(error).__name__}: {str(error)[:300]}"
            finally:
                slots.release()
    return Measurements(values, buckets, errors)


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
