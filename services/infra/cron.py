"""Cron expressions for the scheduler: the usual five fields (minute hour day month
weekday), or six with a leading seconds field (used by tests and fine-grained setups)."""

from __future__ import annotations

from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

_FIELDS5 = ("minute", "hour", "day", "month", "day_of_week")
_FIELDS6 = ("second", *_FIELDS5)


def parse_cron(expression: str, timezone: str = "UTC") -> CronTrigger:
    """A trigger for ``expression``; ``ValueError`` with the reason when it is not valid."""
    parts = expression.split()
    if len(parts) not in (5, 6):
        raise ValueError(f"expected 5 fields (or 6 with seconds), got {len(parts)}: {expression!r}")
    names = _FIELDS5 if len(parts) == 5 else _FIELDS6
    try:
        return CronTrigger(**dict(zip(names, parts, strict=True)), timezone=timezone)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None


def current_slot(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The latest fire time at or before ``now`` (the slot a run that fires now belongs to)."""
    for lookback in (timedelta(hours=1), timedelta(days=2), timedelta(days=400)):
        fire: datetime | None = trigger.get_next_fire_time(None, now - lookback)
        latest: datetime | None = None
        while fire is not None and fire <= now:
            latest = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        if latest is not None:
            return latest
    return None
