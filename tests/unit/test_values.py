from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest

from qfleet.api.values import format_decimal, format_duration, parse_duration


@dataclass(frozen=True)
class DurationCase:
    reason: str
    text: str
    value: timedelta
    canonical: str


DURATION_CASES = [
    DurationCase("hours", "72h", timedelta(hours=72), "72h"),
    DurationCase("minutes", "5m", timedelta(minutes=5), "5m"),
    DurationCase("hours and minutes", "1h30m", timedelta(minutes=90), "1h30m"),
    DurationCase("fractional hours, as Go parses them", "1.5h", timedelta(minutes=90), "1h30m"),
    DurationCase("ninety minutes is written as an hour and a half", "90m", timedelta(minutes=90), "1h30m"),
    DurationCase("milliseconds", "250ms", timedelta(milliseconds=250), "250ms"),
    DurationCase("seconds and milliseconds", "1.5s", timedelta(seconds=1, milliseconds=500), "1s500ms"),
    DurationCase("zero", "0s", timedelta(0), "0s"),
]


@pytest.mark.parametrize("case", DURATION_CASES, ids=lambda case: case.reason)
def test_go_durations(case: DurationCase) -> None:
    assert parse_duration(case.text) == case.value
    assert format_duration(case.value) == case.canonical


@pytest.mark.parametrize("text", ["5", "5min", "1d", "3 days", "-5m", ""])
def test_not_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "value, text", [("1.20", "1.2"), ("100", "100"), ("0.0050", "0.005"), ("1E+2", "100"), ("0.9", "0.9")]
)
def test_decimals_are_written_shortest(value: str, text: str) -> None:
    assert format_decimal(Decimal(value)) == text
