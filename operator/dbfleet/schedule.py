"""Cron schedules: five-field expressions read and evaluated by cronsim, and whether a run is due.

cronsim (the parser behind Healthchecks.io) does the parsing and the
next/previous computation; this module keeps dbfleet's small interface on top
of it, refuses the forms dbfleet does not take (a seconds field, @daily) and
refuses a schedule that can never fire, such as `0 0 31 2 *`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_CRONSIM_FIELDS = {"Bad minute": 0, "Bad hour": 1, "Bad day-of-month": 2, "Bad month": 3, "Bad day-of-week": 4}
_PROBE = datetime(2024, 1, 1)
"""Where a new expression is first tried: a leap year's first day, so a Feb 29 schedule is found in four years."""


class CronError(ValueError):
    """A cron expression that cannot be parsed, or one that never fires."""


@dataclass(frozen=True)
class Cron:
    """A parsed schedule. The field sets are cronsim's: `days` may hold its markers for `L` and `LW`, and
    `weekdays` (Sunday 0) may hold (weekday, n) pairs for `5#2` or `5L`."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int | tuple[int, int]]

    def matches(self, when: datetime) -> bool:
        """True when the schedule fires at `when`'s minute."""
        minute = when.replace(second=0, microsecond=0)
        return next(CronSim(self.expr, minute - timedelta(minutes=1)), None) == minute

    def previous(self, before: datetime, horizon_days: int = 366) -> datetime | None:
        """The latest minute strictly before `before` that this expression fires on, within the horizon."""
        fired = next(CronSim(self.expr, before, reverse=True), None)
        if fired is None or fired <= before - timedelta(days=horizon_days):
            return None
        return fired


def _explain(fields: list[str], message: str) -> str:
    """cronsim's 'Bad hour' as which field, what it allows, and whether the days never exist at all."""
    index = _CRONSIM_FIELDS.get(message)
    if index is None:
        return message
    if index == 2:
        try:
            CronSim(" ".join([*fields[:3], "*", fields[4]]), _PROBE)
        except CronSimError:
            pass
        else:
            return (f"day of month {fields[2]!r} never falls in month {fields[3]!r}, so the schedule never fires")
    name, low, high = _FIELDS[index]
    return f"{name}: {fields[index]!r} is outside {low}-{high}, or not a number, name, range, list or step"


def parse_cron(expr: str) -> Cron:
    """Parse 'minute hour day month weekday'; raise CronError for anything else or a schedule that never fires."""
    if not isinstance(expr, str):
        raise CronError(f"expected a string, got {type(expr).__name__}")
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"{expr!r} has {len(fields)} fields")
    text = " ".join(fields)
    try:
        sim = CronSim(text, _PROBE)
    except CronSimError as exc:
        raise CronError(_explain(fields, str(exc))) from None
    if next(sim, None) is None:
        raise CronError(f"{text!r} never fires (no matching minute in the next 50 years)")
    weekdays = frozenset((w[0] % 7, w[1]) if isinstance(w, tuple) else w % 7 for w in sim.weekdays)
    return Cron(text, frozenset(sim.minutes), frozenset(sim.hours), frozenset(sim.days), frozenset(sim.months),
                weekdays)


def is_due(expr: str, last_run: datetime | None, now: datetime) -> bool:
    """True when the expression fired after `last_run` (or ever, if never run) and by `now`."""
    # The latest firing at or before now: strictly before the minute after now's minute.
    fired = parse_cron(expr).previous(now.replace(second=0, microsecond=0) + timedelta(minutes=1))
    if fired is None or fired > now:
        return False
    return last_run is None or fired > last_run


@dataclass(frozen=True)
class WindowState:
    """Where `now` stands in a window that opens on one cron schedule and closes on another (UTC)."""

    open: bool
    next_start: datetime | None
    """The next opening strictly after now (None if the start schedule never fires again within a year)."""
    closes: datetime | None
    """While open: the next closing at or after now."""

    def describe(self) -> str:
        if self.open:
            until = f" until {self.closes:%Y-%m-%d %H:%M} UTC" if self.closes else ""
            return f"inside the window{until}"
        start = f"{self.next_start:%Y-%m-%d %H:%M} UTC" if self.next_start else "never within a year"
        return f"waiting for the window (next start {start})"


def _latest_at_or_before(expr: str, now: datetime) -> datetime | None:
    """The latest minute at or before `now` that the expression fires on, within a year."""
    return parse_cron(expr).previous(now.replace(second=0, microsecond=0) + timedelta(minutes=1))


def window_state(start: str, end: str, now: datetime) -> WindowState:
    """Open when the latest start at or before now is later than the latest end at or before now.

    A window opens at its start minute and is closed from its end minute on; a minute where both schedules
    fire closes it. `now` is naive UTC or aware (compared in UTC).
    """
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    opened = _latest_at_or_before(start, now)
    closed = _latest_at_or_before(end, now)
    is_open = opened is not None and (closed is None or opened > closed)
    next_start = next(CronSim(" ".join(start.split()), now.replace(second=0, microsecond=0)), None)
    closes = next(CronSim(" ".join(end.split()), now.replace(second=0, microsecond=0)), None) if is_open else None
    if next_start is not None and next_start > now + timedelta(days=366):
        next_start = None
    return WindowState(is_open, next_start, closes)
