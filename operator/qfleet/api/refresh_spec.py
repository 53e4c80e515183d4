"""`spec.quantization.calibration.refresh`: when a calibration is made again, and on what data.

A refresh is policy, not artifact: editing it starts no revision. What it starts, when it fires, is a new calibration
generation, which is an artifact input (qfleet.revision) and so a new revision that is calibrated, built, evaluated
and canaried like any other while the stable revision keeps serving (docs/api.md, "Calibration refresh").
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, PlainValidator

from qfleet.api import rules
from qfleet.api.base import SpecObject
from qfleet.api.errors import FieldError
from qfleet.api.schedule import Schedule, ScheduleError, parse_schedule
from qfleet.api.values import Duration, RecentShare, Threshold, _string, invalid

FALLBACK_RATE, QUALITY_DROP, OUT_OF_RANGE = "fallbackRate", "qualityDrop", "outOfRange"
TRIGGER_NAMES = (FALLBACK_RATE, QUALITY_DROP, OUT_OF_RANGE)
MAX_PROMPTS_LIMIT = 4096


def _schedule(value: Any) -> str:
    text = _string(value, '"168h"', max_length=64)
    try:
        parse_schedule(text)
    except ScheduleError as error:
        raise invalid(str(error)) from None
    return text


RefreshSchedule = Annotated[str, PlainValidator(_schedule)]
"""A Go duration of at least 1h, or a five-field cron expression (UTC)."""


class Trigger(SpecObject):
    """The stable revision's live figure must stay at most `max`; above it at every check for `for`, the calibration
    is stale and a refresh starts."""

    max: Threshold = Field(examples=['"0.01"'])
    for_: Duration = Field(default=timedelta(minutes=30), alias="for")


class Triggers(SpecObject):
    fallback_rate: Trigger | None = None
    """Share of quantized KV entries kept at higher precision (docs/metrics.md, fallback rate)."""
    quality_drop: Trigger | None = None
    """Live quality drop against BF16 KV on sampled requests."""
    out_of_range: Trigger | None = None
    """Share of KV values above the calibrated amax."""

    def configured(self) -> list[tuple[str, Trigger]]:
        """(name, trigger) of each trigger set, in TRIGGER_NAMES order."""
        found = ((FALLBACK_RATE, self.fallback_rate), (QUALITY_DROP, self.quality_drop),
                 (OUT_OF_RANGE, self.out_of_range))
        return [(name, trigger) for name, trigger in found if trigger is not None]


class SampleTraffic(SpecObject):
    """Opt-in: serving pods keep a bounded sample of served prompts in the artifact store for re-calibration."""

    enabled: bool = False
    max_prompts: int = Field(default=256, ge=1, le=MAX_PROMPTS_LIMIT)
    retention: Duration = timedelta(hours=168)


class Refresh(SpecObject):
    schedule: RefreshSchedule | None = None
    triggers: Triggers | None = None
    sample_traffic: SampleTraffic = Field(default_factory=SampleTraffic)
    recent_share: RecentShare = Decimal("0.5")

    def violations(self) -> Iterator[FieldError]:
        if self.schedule is None and not self.configured_triggers():
            yield FieldError("", rules.REFRESH_NEEDS_A_CAUSE)

    def configured_triggers(self) -> list[tuple[str, Trigger]]:
        return self.triggers.configured() if self.triggers else []

    def parsed_schedule(self) -> Schedule | None:
        return parse_schedule(self.schedule) if self.schedule else None
