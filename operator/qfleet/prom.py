"""The one module that talks to Prometheus: instant queries through prometheus-api-client, as numbers or None."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect

QUERY_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Measurements:
    values: dict[str, Decimal | None]
    errors: dict[str, str] = field(default_factory=dict)
    """Per query, why there is no value (unreachable Prometheus, a bad query); no data at all is not an error."""


def measure(address: str, queries: dict[str, str], timeout: float = QUERY_TIMEOUT_SECONDS) -> Measurements:
    """Runs each query; a query that returns nothing, NaN or infinity (e.g. 0/0 with no traffic) has the value None,
    and so does every query when Prometheus cannot be reached: the gates then read Inconclusive."""
    client = PrometheusConnect(url=address, disable_ssl=True, timeout=timeout)
    values: dict[str, Decimal | None] = {}
    errors: dict[str, str] = {}
    for name, query in queries.items():
        try:
            values[name] = _number(client.custom_query(query))
        except (PrometheusApiClientException, requests.RequestException) as error:
            values[name] = None
            errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
    return Measurements(values, errors)


def _number(result: list[dict]) -> Decimal | None:
    """The single sample of an instant vector (or the first, for a query that forgot to aggregate)."""
    if not result:
        return None
    try:
        value = Decimal(result[0]["value"][1])
    except (InvalidOperation, KeyError, IndexError, TypeError):
        return None
    return value if value.is_finite() else None
