"""Scalar types of the spec: decimals written as strings, Go durations, weights, names and URIs.

Each type validates the raw YAML value itself, so a mistake is reported with a message that says
what to write instead. The regular expressions are the ones the CRD's `pattern`s use (a unit test
checks that every CRD pattern is one of `PATTERNS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from qfleet.api import rules
from qfleet.formats import AUTO, SELECTABLE_KV_FORMATS, WEIGHT_FORMATS

DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
PARAMETER_COUNT_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|[KMBT])?$"
MODEL_URI_PATTERN = r"^(hf|s3|gs|pvc)://[^\s]+$"
ARTIFACTS_URI_PATTERN = r"^(s3|gs|pvc)://[^\s]+$"
HTTP_URL_PATTERN = r"^https?://[^\s]+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
ENV_VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _cron_field(number: str) -> str:
    item = rf"(\*|({number})(-({number}))?)(/[1-9][0-9]{{0,2}})?"
    return rf"{item}(,{item})*"


_CRON_NUMBERS = (r"[0-5]?[0-9]", r"[01]?[0-9]|2[0-3]", r"0?[1-9]|[12][0-9]|3[01]", r"0?[1-9]|1[0-2]", r"0?[0-7]")
SCHEDULE_PATTERN = rf"^(([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+|{' '.join(map(_cron_field, _CRON_NUMBERS))})$"
"""refresh.schedule: a Go duration, or five cron fields (minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7)
of `*`, numbers, ranges, steps and lists, separated by single spaces (qfleet.api.schedule reads them)."""
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

PATTERNS = frozenset(
    {
        DECIMAL_PATTERN,
        DURATION_PATTERN,
        PARAMETER_COUNT_PATTERN,
        MODEL_URI_PATTERN,
        ARTIFACTS_URI_PATTERN,
        HTTP_URL_PATTERN,
        DNS_LABEL_PATTERN,
        DNS_SUBDOMAIN_PATTERN,
        SECRET_KEY_PATTERN,
        ENV_VAR_NAME_PATTERN,
        QUANTITY_PATTERN,
        SCHEDULE_PATTERN,
    }
)

MAX_DECIMAL_LENGTH = 32
MAX_DURATION_LENGTH = 64
MAX_URI_LENGTH = 512

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_NANOSECONDS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_PARAMETER_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def invalid(message: str) -> PydanticCustomError:
    """The error a spec type raises; its message is shown as is, after the field's path."""
    return PydanticCustomError("qfleet_value", "{message}", {"message": message})


def _string(value: Any, example: str, *, max_length: int, quote_numbers: bool = False) -> str:
    if not isinstance(value, str):
        if quote_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise invalid(
                f'write it as a string in quotes, e.g. "{value}": numbers with decimals are strings in this API'
            )
        raise invalid(f"must be a string such as {example}, not {_kind(value)}")
    if len(value) > max_length:
        raise invalid(f"at most {max_length} characters, got {len(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return f"a {type(value).__name__}"


def format_decimal(value: Decimal) -> str:
    """The shortest plain spelling of a decimal: Decimal('1.20') -> '1.2', Decimal('100') -> '100'."""
    return format(value.normalize(), "f")


def _decimal_text(value: Any, example: str) -> Decimal:
    text = _string(value, f'"{example}"', max_length=MAX_DECIMAL_LENGTH, quote_numbers=True)
    if not re.fullmatch(DECIMAL_PATTERN, text):
        raise invalid(f'write a plain decimal number such as "{example}", not {text!r}')
    return Decimal(text)


def _positive_decimal(value: Any) -> Decimal:
    number = _decimal_text(value, "0.005")
    if number <= 0:
        raise invalid(f"{rules.THRESHOLD_POSITIVE}; got {value!r}")
    return number


def _memory_fraction(value: Any) -> Decimal:
    number = _decimal_text(value, "0.9")
    if not 0 < number <= 1:
        raise invalid(f"{rules.MEMORY_FRACTION_RANGE}; got {value!r}")
    return number


def _sample_share(value: Any) -> Decimal:
    number = _decimal_text(value, "0.1")
    if not 0 < number <= 1:
        raise invalid(f"{rules.SAMPLE_SHARE_RANGE}; got {value!r}")
    return number


def _recent_share(value: Any) -> Decimal:
    number = _decimal_text(value, "0.5")
    if not 0 <= number <= 1:
        raise invalid(f"{rules.RECENT_SHARE_RANGE}; got {value!r}")
    return number


def _confidence(value: Any) -> Decimal:
    number = _decimal_text(value, "0.95")
    if not Decimal("0.5") <= number < 1:
        raise invalid(f"{rules.CONFIDENCE_RANGE}; got {value!r}")
    return number


def _step_weight(value: Any) -> Decimal:
    if isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    elif isinstance(value, str):
        if len(value) > MAX_DECIMAL_LENGTH or not re.fullmatch(DECIMAL_PATTERN, value):
            raise invalid(f'a percent of traffic such as 1, 10, 100 or "0.5", not {value!r}')
        number = Decimal(value)
    elif isinstance(value, float):
        raise invalid(f'write fractional percents as a string in quotes, e.g. "{value}"')
    else:
        raise invalid(f'a percent of traffic such as 1, 10, 100 or "0.5", not {_kind(value)}')
    if not 0 < number <= 100:
        raise invalid(f"{rules.WEIGHT_RANGE}; got {value!r}")
    return number


def _step_weight_out(value: Decimal) -> int | str:
    return int(value) if value == value.to_integral_value() else format_decimal(value)


def parse_duration(text: str) -> timedelta:
    """A Go duration ("72h", "1h30m", "1.5s", "250ms") as a timedelta (microsecond precision)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a Go duration: {text!r}")
    nanoseconds = sum(Decimal(amount) * _NANOSECONDS[unit] for amount, unit in _DURATION_PART.findall(text))
    return timedelta(microseconds=int(nanoseconds / 1000))


def format_duration(value: timedelta) -> str:
    """The Go spelling of a duration, shortest units first dropped: 3h -> "3h", 90 min -> "1h30m"."""
    microseconds = value // timedelta(microseconds=1)
    if microseconds == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600 * 10**6), ("m", 60 * 10**6), ("s", 10**6), ("ms", 10**3), ("us", 1)):
        amount, microseconds = divmod(microseconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def _duration(value: Any) -> timedelta:
    text = _string(value, '"5m"', max_length=MAX_DURATION_LENGTH)
    if not re.fullmatch(DURATION_PATTERN, text):
        raise invalid(f"write a Go duration such as 5m, 72h or 1h30m (units ns, us, ms, s, m, h), not {text!r}")
    return parse_duration(text)


def _analysis_interval(value: Any) -> timedelta:
    interval = _duration(value)
    if interval < timedelta(seconds=1):
        raise invalid(f"{rules.INTERVAL_AT_LEAST_ONE_SECOND}; got {value!r}")
    return interval


def _parameter_count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and len(value) <= MAX_DECIMAL_LENGTH and re.fullmatch(PARAMETER_COUNT_PATTERN, value):
        count = _scaled_count(value)
    else:
        raise invalid(
            f'a whole number of parameters such as 70553706496, or a string such as "70.6e9" or "135M"; got {value!r}'
        )
    if count < 1:
        raise invalid(f"must be at least 1, got {value!r}")
    return count


def _scaled_count(text: str) -> int:
    suffix = text[-1]
    if suffix in _PARAMETER_SUFFIXES:
        return int(Decimal(text[:-1]) * _PARAMETER_SUFFIXES[suffix])
    return int(Decimal(text))


def _choice(kind: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str):
            raise invalid(f"unknown {kind} {value!r}: write one of {', '.join(choices)}")
        raise invalid(f"write one of {', '.join(choices)}, not {_kind(value)}")

    return check


def _patterned(example: str, pattern: str, what: str, max_length: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value, example, max_length=max_length)
        if not re.fullmatch(pattern, text):
            raise invalid(f"{what}, e.g. {example}; got {text!r}")
        return text

    return check


_decimal_out = PlainSerializer(format_decimal, return_type=str)
_duration_out = PlainSerializer(format_duration, return_type=str)

Threshold = Annotated[Decimal, PlainValidator(_positive_decimal), _decimal_out]
"""A positive decimal written as a string: "1.2", "0.005"."""

MemoryFraction = Annotated[Decimal, PlainValidator(_memory_fraction), _decimal_out]
"""A decimal string above 0 and at most 1: "0.9"."""

SampleShare = Annotated[Decimal, PlainValidator(_sample_share), _decimal_out]
"""A decimal string above 0 and at most 1: "0.1" of the requests."""

RecentShare = Annotated[Decimal, PlainValidator(_recent_share), _decimal_out]
"""A decimal string from 0 to 1: "0.5" of the calibration samples."""

Confidence = Annotated[Decimal, PlainValidator(_confidence), _decimal_out]
"""A decimal string from 0.5 to below 1: "0.95"."""

StepWeight = Annotated[Decimal, PlainValidator(_step_weight), PlainSerializer(_step_weight_out)]
"""A percent of traffic above 0 and at most 100: an integer, or a decimal string such as "0.5"."""

Duration = Annotated[timedelta, PlainValidator(_duration), _duration_out]
"""A Go duration string: "5m", "72h", "1h30m"."""

AnalysisInterval = Annotated[timedelta, PlainValidator(_analysis_interval), _duration_out]
"""A Go duration of at least one second."""

ParameterCount = Annotated[int, PlainValidator(_parameter_count)]
"""An integer, or a string such as "70.6e9" or "135M"."""

KvCacheChoice = Annotated[str, PlainValidator(_choice("KV-cache format", (*SELECTABLE_KV_FORMATS, AUTO)))]
LadderFormat = Annotated[str, PlainValidator(_choice("KV-cache format for the ladder", SELECTABLE_KV_FORMATS))]
WeightFormatName = Annotated[str, PlainValidator(_choice("weight format", tuple(WEIGHT_FORMATS)))]

ModelUri = Annotated[
    str,
    PlainValidator(
        _patterned(
            "hf://meta-llama/Llama-3.3-70B-Instruct",
            MODEL_URI_PATTERN,
            "a model location hf://org/name, s3://bucket/path, gs://bucket/path or pvc://claim/path",
            MAX_URI_LENGTH,
        )
    ),
]
ArtifactsUri = Annotated[
    str,
    PlainValidator(
        _patterned(
            "pvc://qfleet-artifacts/llama",
            ARTIFACTS_URI_PATTERN,
            "a writable location pvc://claim/path, s3://bucket/path or gs://bucket/path",
            MAX_URI_LENGTH,
        )
    ),
]
HttpUrl = Annotated[
    str,
    PlainValidator(
        _patterned("http://prometheus-operated.monitoring.svc:9090", HTTP_URL_PATTERN, "an http(s) URL", MAX_URI_LENGTH)
    ),
]
DnsLabel = Annotated[
    str,
    PlainValidator(_patterned("ttft-p95", DNS_LABEL_PATTERN, "a lowercase name of letters, digits and '-'", 63)),
]
DnsSubdomain = Annotated[
    str,
    PlainValidator(
        _patterned("llama-route", DNS_SUBDOMAIN_PATTERN, "a Kubernetes object name (lowercase, '-', '.')", 253)
    ),
]
EnvVarName = Annotated[
    str,
    PlainValidator(_patterned("HF_HUB_OFFLINE", ENV_VAR_NAME_PATTERN, "an environment variable name (letters, digits, '_')", 253)),
]

SecretKey = Annotated[
    str,
    PlainValidator(_patterned("token", SECRET_KEY_PATTERN, "a Secret key (letters, digits, '-', '_', '.')", 253)),
]


def _quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 64 and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise invalid(f'a Kubernetes quantity such as 8, "16Gi" or "500m"; got {value!r}')


Quantity = Annotated[int | str, PlainValidator(_quantity)]
