"""`refresh.schedule`: an interval (a Go duration such as `168h`) or a five-field cron expression, and its next time.

A small reader of our own rather than a dependency. Five fields (minute, hour, day of month, month, day of week), each
`*`, a number, a range `a-b`, a step `*/n`, `a/n` or `a-b/n`, or a list of those; day of week 0-7, 0 and 7 both
Sunday. The CRD's pattern (`qfleet.api.values.SCHEDULE_PATTERN`) already bounds every number, so the apiserver and
this reader agree on what is valid; what a pattern cannot say is read leniently instead of refused: a range that runs
backwards wraps around (hours `22-2` are 22, 23, 0, 1, 2), and an expression that names no real day (`0 0 31 2 *`) is
valid and never due. As in cron, when both day fields are restricted a day matching either runs. Times are UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from qfleet.api import rules
from qfleet.api.values import DURATION_PATTERN, SCHEDULE_PATTERN, parse_duration

MIN_INTERVAL = timedelta(hours=1)
"""A refresh re-runs calibration, build and evaluation, then a canary of days: an hour between them is the least."""
SEARCH_LIMIT = timedelta(days=366 * 5)
"""Long enough for a leap day (`0 0 29 2 *`); an expression with no time in that span is never due."""
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
"""Minute, hour, day of month, month, day of week."""


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message says what to write instead."""


@dataclass(frozen=True)
class Interval:
    every: timedelta

    def next_after(self, last: datetime) -> datetime | None:
        return last + self.every


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 is Sunday (a 7 in the text is folded into 0)."""
    any_day: bool
    any_weekday: bool

    def next_after(self, last: datetime) -> datetime | None:
        """The first whole minute strictly after `last` (UTC) that the expression names; None if none in 5 years."""
        when = last.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        end = when + SEARCH_LIMIT
        while when < end:
            if when.month not in self.months:
                when = (when.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        return None

    def _day_matches(self, when: datetime) -> bool:
        weekday = (when.weekday() + 1) % 7
        by_day, by_weekday = when.day in self.days, weekday in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday


Schedule = Interval | Cron


def parse_schedule(text: str) -> Schedule:
    """An Interval for a Go duration of at least MIN_INTERVAL, else a Cron; ScheduleError says why neither."""
    if not re.fullmatch(SCHEDULE_PATTERN, text):
        raise ScheduleError(f'an interval such as 168h, or five cron fields "minute hour day month weekday" such as '
                            f'"0 3 * * 0" (UTC; numbers, *, a-b, */n and lists, one space apart); got {text!r}')
    if re.fullmatch(DURATION_PATTERN, text):
        every = parse_duration(text)
        if every < MIN_INTERVAL:
            raise ScheduleError(f"{rules.REFRESH_INTERVAL_AT_LEAST_ONE_HOUR}; got {text!r}")
        return Interval(every)
    fields = text.split(" ")
    minutes, hours, days, months, weekdays = (_field(value, *bounds) for value, bounds in
                                              zip(fields, _BOUNDS, strict=True))
    return Cron(minutes, hours, days, months, frozenset(0 if day == 7 else day for day in weekdays),
                any_day=fields[2] == "*", any_weekday=fields[4] == "*")


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text or 1)
        if span == "*":
            first, last = low, high
        else:
            start, _, stop = span.partition("-")
            first = int(start)
            last = int(stop) if stop else (high if step_text else first)
        sequence = list(range(first, last + 1)) if first <= last else \
            [*range(first, high + 1), *range(low, last + 1)]  # wraps around: 22-2 is 22, 23, 0, 1, 2
        values.update(sequence[::step])
    return frozenset(values)
