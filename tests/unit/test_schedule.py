"""Cron parsing and due-ness used by backup and drill schedules."""

from datetime import datetime

import pytest

from dbfleet.schedule import CronError, is_due, parse_cron


def test_fields_expand() -> None:
    cron = parse_cron("*/15 2,14 1-3 * 1-5")
    assert cron.minutes == {0, 15, 30, 45} and cron.hours == {2, 14} and cron.days == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("expr", ["", "* * * *", "61 * * * *", "* * * * 8", "a * * * *", "*/0 * * * *", "5-1 * * * *"])
def test_bad_expressions(expr: str) -> None:
    with pytest.raises(CronError):
        parse_cron(expr)


def test_sunday_is_0_or_7() -> None:
    assert parse_cron("0 0 * * 7").weekdays == {0}
    assert parse_cron("0 0 * * 0").matches(datetime(2026, 11, 29, 0, 0))  # a Sunday


def test_previous_fire() -> None:
    cron = parse_cron("0 2 * * *")
    assert cron.previous(datetime(2026, 11, 25, 1, 0)) == datetime(2026, 11, 24, 2, 0)
    assert cron.previous(datetime(2026, 11, 25, 2, 0, 30)) == datetime(2026, 11, 25, 2, 0)


def test_is_due() -> None:
    now = datetime(2026, 11, 25, 3, 0)
    assert is_due("0 2 * * *", None, now)
    assert not is_due("0 2 * * *", datetime(2026, 11, 25, 2, 5), now)
    assert is_due("0 2 * * *", datetime(2026, 11, 24, 2, 5), now)


def test_day_of_month_or_weekday() -> None:
    cron = parse_cron("0 0 13 * 5")  # the 13th, or any Friday
    assert cron.matches(datetime(2026, 11, 13, 0, 0))
    assert cron.matches(datetime(2026, 11, 27, 0, 0))  # a Friday
    assert not cron.matches(datetime(2026, 11, 26, 0, 0))


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_a_schedule_that_can_never_fire_is_refused(expr: str) -> None:
    with pytest.raises(CronError, match="never fires"):
        parse_cron(expr)


@pytest.mark.parametrize("expr", ["* * * * * *", "@daily", "0 0 ? * *"])
def test_forms_dbfleet_does_not_take_are_refused(expr: str) -> None:
    with pytest.raises(CronError):
        parse_cron(expr)


def test_rare_schedules_still_fire() -> None:
    assert parse_cron("0 0 29 2 *").previous(datetime(2026, 11, 25), horizon_days=3 * 366) == datetime(2024, 2, 29)
    assert parse_cron("0 0 31 2 1").matches(datetime(2026, 2, 2))  # day 31 never comes, but Mondays do
    assert parse_cron("0 0 L * *").previous(datetime(2024, 3, 15)) == datetime(2024, 2, 29)


def test_a_schedule_is_due_in_the_minute_before_its_next_firing_too() -> None:
    # Asking for the firing before now + 1 minute found the coming one (after now), so an every-minute schedule
    # was never due past second 0, and any schedule went quiet for the minute before each firing.
    now = datetime(2026, 11, 30, 18, 0, 30)
    assert is_due("* * * * *", datetime(2026, 11, 30, 17, 50), now)
    assert not is_due("* * * * *", datetime(2026, 11, 30, 18, 0, 10), now)  # ran since this minute's firing
    assert is_due("15 * * * *", datetime(2026, 11, 30, 17, 0), datetime(2026, 11, 30, 18, 14, 30))
