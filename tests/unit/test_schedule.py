"""refresh.schedule: intervals and five-field cron, read by qfleet.api.schedule (table-driven)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from qfleet.api.schedule import Cron, Interval, ScheduleError, parse_schedule
from qfleet.api.values import SCHEDULE_PATTERN

MONDAY = datetime(2026, 11, 30, 19, 2, 30, tzinfo=UTC)

NEXT_CASES = [
    # schedule, after, next
    ("168h", MONDAY, MONDAY + timedelta(hours=168)),
    ("1h30m", MONDAY, MONDAY + timedelta(minutes=90)),
    ("0 3 * * 0", MONDAY, datetime(2026, 12, 6, 3, 0, tzinfo=UTC)),
    ("0 3 * * 7", MONDAY, datetime(2026, 12, 6, 3, 0, tzinfo=UTC)),
    ("*/15 * * * *", MONDAY, datetime(2026, 11, 30, 19, 15, tzinfo=UTC)),
    ("5/20 * * * *", MONDAY, datetime(2026, 11, 30, 19, 5, tzinfo=UTC)),
    ("0 9-17 * * 1-5", MONDAY, datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
    ("30 22-2 * * *", MONDAY, datetime(2026, 11, 30, 22, 30, tzinfo=UTC)),
    ("30 22-2/2 * * *", datetime(2026, 11, 30, 23, 0, tzinfo=UTC), datetime(2026, 12, 1, 0, 30, tzinfo=UTC)),
    ("0 0 1 1 *", MONDAY, datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ("0 0 29 2 *", MONDAY, datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
    # both day fields restricted: either matches (the 1st, or a Friday)
    ("0 0 1 * 5", MONDAY, datetime(2026, 12, 1, 0, 0, tzinfo=UTC)),
    ("0 0 13 * 5", MONDAY, datetime(2026, 12, 4, 0, 0, tzinfo=UTC)),
    ("0,30 12 * * *", datetime(2026, 11, 30, 12, 0, tzinfo=UTC), datetime(2026, 11, 30, 12, 30, tzinfo=UTC)),
    ("0 0 31 2 *", MONDAY, None),
]


@pytest.mark.parametrize("text, after, expected", NEXT_CASES, ids=[case[0] for case in NEXT_CASES])
def test_next_time(text: str, after: datetime, expected: datetime | None) -> None:
    assert parse_schedule(text).next_after(after) == expected


KIND_CASES = [("168h", Interval), ("1h", Interval), ("0 3 * * 0", Cron), ("*/5 * * * *", Cron)]


@pytest.mark.parametrize("text, kind", KIND_CASES)
def test_kind(text: str, kind: type) -> None:
    assert isinstance(parse_schedule(text), kind)


BAD_CASES = [
    ("30m", "at least 1h"),
    ("59m59s", "at least 1h"),
    ("61 * * * *", "five cron fields"),
    ("0 24 * * *", "five cron fields"),
    ("0 0 0 * *", "five cron fields"),
    ("0 0 * 13 *", "five cron fields"),
    ("0 0 * * 8", "five cron fields"),
    ("0 3 * * sun", "five cron fields"),
    ("*/0 * * * *", "five cron fields"),
    ("* * * *", "five cron fields"),
    ("0  3 * * 0", "five cron fields"),
    ("1d", "five cron fields"),
    ("", "five cron fields"),
]


@pytest.mark.parametrize("text, says", BAD_CASES, ids=[case[0] or "empty" for case in BAD_CASES])
def test_refused_with_the_fix(text: str, says: str) -> None:
    with pytest.raises(ScheduleError, match=says):
        parse_schedule(text)


@pytest.mark.parametrize("text", [case[0] for case in NEXT_CASES + KIND_CASES])
def test_the_crd_pattern_accepts_what_the_reader_accepts(text: str) -> None:
    assert re.fullmatch(SCHEDULE_PATTERN, text)
