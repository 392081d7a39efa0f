"""Cron expressions: parse the five-field form and tell whether a run is due."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_RANGES = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class CronError(ValueError):
    """A cron expression that cannot be parsed."""


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok  # cron's rule: either restricted day field may match

    def previous(self, before: datetime, horizon_days: int = 366) -> datetime | None:
        """The latest minute strictly before `before` that this expression fires on."""
        t = before.replace(second=0, microsecond=0)
        if t == before:
            t -= timedelta(minutes=1)
        end = before - timedelta(days=horizon_days)
        while t > end:
            if t.month not in self.months:
                t = t.replace(day=1, hour=0, minute=0) - timedelta(minutes=1)
                continue
            if t.hour not in self.hours or not self._day_ok(t):
                t = t.replace(minute=0) - timedelta(minutes=1)
                continue
            if t.minute in self.minutes:
                return t
            t -= timedelta(minutes=1)
        return None

    def _day_ok(self, t: datetime) -> bool:
        day_ok = t.day in self.days
        weekday_ok = (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if part == "*":
            start, stop = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise CronError(f"{name}: range {part!r} must be two numbers")
            start, stop = int(a), int(b)
        elif part.isdigit():
            start = stop = int(part)
            if step != 1:
                stop = high
        else:
            raise CronError(f"{name}: {part!r} is not a number, range, list or *")
        if not (low <= start <= high and low <= stop <= high and start <= stop):
            raise CronError(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    if name == "day of week" and 7 in values:  # 7 is Sunday too
        values = (values - {7}) | {0}
    return frozenset(values)


def parse_cron(expr: str) -> Cron:
    """Parse 'minute hour day month weekday'."""
    if not isinstance(expr, str):
        raise CronError(f"expected a string, got {type(expr).__name__}")
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"{expr!r} has {len(fields)} fields")
    minute, hour, day, month, weekday = (_field(f, name, lo, hi)
                                         for f, (name, lo, hi) in zip(fields, _RANGES, strict=True))
    return Cron(minute, hour, day, month, weekday, any_day=fields[2] == "*", any_weekday=fields[4] == "*")


def is_due(expr: str, last_run: datetime | None, now: datetime) -> bool:
    """True when the expression fired after `last_run` (or ever, if never run) and by `now`."""
    fired = parse_cron(expr).previous(now + timedelta(minutes=1))
    if fired is None or fired > now:
        return False
    return last_run is None or fired > last_run
