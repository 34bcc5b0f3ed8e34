"""Schedule maths: intervals, one-offs, and crontab across daylight-saving changes."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from celeriac.beat.entries import parse_entry
from celeriac.beat.schedules import (
    Schedule,
    clocked,
    crontab,
    from_spec,
    schedule,
    to_schedule,
)
from celeriac.exceptions import ConfigurationError

UTC = dt.timezone.utc
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")

# 2024's changes: London 31 Mar (01:00 GMT -> 02:00 BST) and 27 Oct (02:00 BST -> 01:00 GMT);
# New York 10 Mar (02:00 EST -> 03:00 EDT) and 3 Nov (02:00 EDT -> 01:00 EST).
CHANGE_DAYS = [
    pytest.param(LONDON, dt.date(2024, 3, 31), id="london-spring"),
    pytest.param(LONDON, dt.date(2024, 10, 27), id="london-fall"),
    pytest.param(NEW_YORK, dt.date(2024, 3, 10), id="new-york-spring"),
    pytest.param(NEW_YORK, dt.date(2024, 11, 3), id="new-york-fall"),
]


def local_ticks(sched: Schedule, tz: dt.tzinfo, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Ticks in [start, end) as local 'MM-DD HH:MM+ZZZZ' strings."""
    out = []
    t = start.timestamp() - 0.5
    while True:
        nxt = sched.next_after(t, tz)
        if nxt is None or nxt >= end.timestamp():
            return out
        out.append(dt.datetime.fromtimestamp(nxt, tz).strftime("%m-%d %H:%M%z"))
        t = nxt


def on_day(sched: Schedule, tz: ZoneInfo, day: dt.date) -> list[str]:
    start = dt.datetime.combine(day, dt.time(), tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
    return local_ticks(sched, tz, start, end)


# -- intervals ---------------------------------------------------------------------------------
def test_interval_ticks_on_a_grid_through_the_tick_before() -> None:
    every = schedule(run_every=2.5)
    assert every.next_after(100.0, UTC) == 102.5
    assert every.latest_in(100.0, 110.0, UTC) == 110.0
    assert every.latest_in(100.0, 109.9, UTC) == 107.5
    assert every.latest_in(100.0, 102.4, UTC) is None
    assert every.first_anchor(123.0) == 123.0


def test_interval_latest_in_is_arithmetic_after_a_long_outage() -> None:
    every = schedule(dt.timedelta(seconds=1))
    assert every.seconds == 1.0 and every.run_every == dt.timedelta(seconds=1)
    latest = every.latest_in(0.25, 86_400 * 365.0, UTC)
    assert latest == 86_400 * 365 - 0.75


def test_fractional_interval_stays_inside_the_window() -> None:
    every = schedule(0.1)
    for until in (1.0, 0.3, 0.7000000000000001):
        latest = every.latest_in(0.0, until, UTC)
        assert latest is not None and 0.0 < latest <= until


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "30", True, None])
def test_bad_interval_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        schedule(bad).validate()  # type: ignore[arg-type]


# -- clocked -----------------------------------------------------------------------------------
def test_clocked_runs_once_even_when_first_seen_late() -> None:
    at = dt.datetime(2030, 1, 1, 12, tzinfo=UTC)
    once = clocked(at)
    assert once.next_after(0.0, UTC) == at.timestamp()
    assert once.next_after(at.timestamp(), UTC) is None
    assert once.first_anchor(at.timestamp() + 3600) == 0.0  # so a late first sight still runs
    assert once.latest_in(0.0, at.timestamp() + 5, UTC) == at.timestamp()
    assert once.catchup_default is True
    naive = clocked(dt.datetime(2030, 1, 1, 12))  # naive: UTC
    assert naive.next_after(0.0, UTC) == at.timestamp()


# -- crontab, plain ----------------------------------------------------------------------------
def test_crontab_fields_take_celery_forms() -> None:
    assert crontab().expression == "* * * * *"
    assert crontab(minute=[30, 0], hour=7).expression == "0,30 7 * * *"
    assert crontab(minute=0, day_of_week="Monday-Friday").expression == "0 * * * Mon-Fri"
    assert crontab(minute=0, month_of_year="january").expression == "0 * * jan *"
    assert crontab.from_string("*/5 9-17 * * mon-fri") == crontab(
        minute="*/5", hour="9-17", day_of_week="mon-fri"
    )


def test_crontab_weekday_range_fires_on_weekdays_only() -> None:
    sched = crontab(minute=0, hour=9, day_of_week="mon-fri")
    got = local_ticks(
        sched,
        LONDON,
        dt.datetime(2024, 6, 1, tzinfo=LONDON),
        dt.datetime(2024, 6, 10, tzinfo=LONDON),
    )
    # 1 June 2024 is a Saturday.
    assert got == [f"06-{d:02d} 09:00+0100" for d in (3, 4, 5, 6, 7)]


def test_day_of_month_and_day_of_week_must_both_match_as_in_celery() -> None:
    first_monday = crontab(minute=0, hour=0, day_of_week="mon", day_of_month="1-7")
    got = local_ticks(
        first_monday, UTC, dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 6, 1, tzinfo=UTC)
    )
    assert got == ["02-05 00:00+0000", "03-04 00:00+0000", "04-01 00:00+0000", "05-06 00:00+0000"]


def test_crontab_latest_in_finds_the_last_tick_of_a_range() -> None:
    sched = crontab(minute=15, hour="*/6")
    after = dt.datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    until = dt.datetime(2024, 5, 3, 13, tzinfo=UTC).timestamp()
    assert (
        sched.latest_in(after, until, UTC)
        == dt.datetime(2024, 5, 3, 12, 15, tzinfo=UTC).timestamp()
    )
    assert sched.latest_in(until, until + 60, UTC) is None
    exact = dt.datetime(2024, 5, 3, 12, 15, tzinfo=UTC).timestamp()
    assert sched.latest_in(after, exact, UTC) == exact


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"minute": 61}, "minute='61'"),
        ({"hour": "25"}, "hour='25'"),
        ({"day_of_week": "funday"}, "day_of_week='funday'"),
        ({"day_of_month": "0"}, "day_of_month='0'"),
        ({"month_of_year": 13}, "month_of_year='13'"),
        ({"minute": "*/0"}, "minute='*/0'"),
        ({"minute": "1 2"}, "minute='1 2'"),
    ],
)
def test_bad_crontab_field_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"bad crontab {field}")):
        crontab(**kwargs).validate()  # type: ignore[arg-type]


def test_bad_crontab_string_and_impossible_dates() -> None:
    with pytest.raises(ConfigurationError, match="expected 5 fields"):
        crontab.from_string("* * *").validate()
    with pytest.raises(ConfigurationError, match="day_of_month"):
        crontab(day_of_month=30, month_of_year=2).validate()


def test_bad_schedule_error_names_the_entry() -> None:
    with pytest.raises(ConfigurationError, match=r"entry 'nightly'.*minute='61'"):
        parse_entry("nightly", {"task": "t", "schedule": crontab(minute=61)})
    with pytest.raises(ConfigurationError, match=r"entry 'cron-str'.*expected 5 fields"):
        parse_entry("cron-str", {"task": "t", "schedule": "61 * *"})
    with pytest.raises(ConfigurationError, match=r"entry 'neg'.*positive"):
        parse_entry("neg", {"task": "t", "schedule": -5})
    with pytest.raises(ConfigurationError, match=r"entry 'typo'.*did you mean 'kwargs'"):
        parse_entry("typo", {"task": "t", "schedule": 5, "kwarg": {}})


# -- crontab across daylight-saving changes ------------------------------------------------------
@pytest.mark.parametrize(("tz", "day"), CHANGE_DAYS)
@pytest.mark.parametrize("at", [dt.time(2, 30), dt.time(1, 30)])
def test_fixed_time_daily_job_runs_once_on_change_days(
    tz: ZoneInfo, day: dt.date, at: dt.time
) -> None:
    sched = crontab(minute=at.minute, hour=at.hour)
    assert len(on_day(sched, tz, day)) == 1
    # ... and still once a day around it.
    for other in (day - dt.timedelta(days=1), day + dt.timedelta(days=1)):
        assert len(on_day(sched, tz, other)) == 1


def test_spring_forward_runs_a_skipped_time_right_after_the_gap() -> None:
    # New York has no 02:30 on 10 March 2024: the job runs at 03:00 EDT.
    sched = crontab(minute=30, hour=2)
    assert on_day(sched, NEW_YORK, dt.date(2024, 3, 10)) == ["03-10 03:00-0400"]
    # London has no 01:30 on 31 March 2024: the job runs at 02:00 BST.
    assert on_day(crontab(minute=30, hour=1), LONDON, dt.date(2024, 3, 31)) == ["03-31 02:00+0100"]


def test_fall_back_runs_a_repeated_time_at_its_first_pass() -> None:
    assert on_day(crontab(minute=30, hour=1), LONDON, dt.date(2024, 10, 27)) == ["10-27 01:30+0100"]
    assert on_day(crontab(minute=30, hour=1), NEW_YORK, dt.date(2024, 11, 3)) == [
        "11-03 01:30-0400"
    ]
    assert on_day(crontab(minute=30, hour=2), LONDON, dt.date(2024, 10, 27)) == ["10-27 02:30+0000"]


def test_next_after_inside_the_repeated_hour_never_goes_back() -> None:
    # Started during the second pass of 01:xx, after the 01:30 job ran in the first pass: the
    # next run is the next day, never the first pass of this one (which is in the past).
    sched = crontab(minute=30, hour=1)
    second_pass = dt.datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=NEW_YORK).timestamp()
    nxt = sched.next_after(second_pass, NEW_YORK)
    assert nxt is not None and nxt > second_pass
    assert dt.datetime.fromtimestamp(nxt, NEW_YORK).strftime("%m-%d %H:%M%z") == "11-04 01:30-0500"


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (LONDON, dt.date(2024, 3, 31), 23),
        (LONDON, dt.date(2024, 10, 27), 25),
        (NEW_YORK, dt.date(2024, 3, 10), 23),
        (NEW_YORK, dt.date(2024, 11, 3), 25),
    ],
)
def test_hourly_job_runs_every_real_hour(tz: ZoneInfo, day: dt.date, hours: int) -> None:
    # Jobs with a wildcard hour are not special-cased: they follow elapsed time.
    ticks = on_day(crontab(minute=0), tz, day)
    assert len(ticks) == hours


def test_every_half_hour_covers_both_passes_of_the_repeated_hour() -> None:
    start = dt.datetime(2024, 11, 3, 0, 50, tzinfo=NEW_YORK)
    end = dt.datetime.fromtimestamp(start.timestamp() + 3 * 3600, NEW_YORK)  # 3 real hours
    got = local_ticks(crontab(minute="*/30"), NEW_YORK, start, end)
    assert got == [
        "11-03 01:00-0400",
        "11-03 01:30-0400",
        "11-03 01:00-0500",
        "11-03 01:30-0500",
        "11-03 02:00-0500",
        "11-03 02:30-0500",
    ]


def test_latest_in_across_a_fall_back_day() -> None:
    sched = crontab(minute=30, hour=1)
    after = dt.datetime(2024, 10, 20, tzinfo=LONDON).timestamp()
    until = dt.datetime(2024, 10, 27, 3, tzinfo=LONDON).timestamp()
    latest = sched.latest_in(after, until, LONDON)
    assert latest == dt.datetime(2024, 10, 27, 1, 30, fold=0, tzinfo=LONDON).timestamp()


# -- specs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sched",
    [
        schedule(30),
        crontab(minute=0, hour="*/3", day_of_week="mon-fri"),
        clocked(dt.datetime(2030, 1, 1, 12, 30, tzinfo=UTC)),
    ],
)
def test_specs_round_trip(sched: Schedule) -> None:
    assert from_spec(sched.to_spec()) == sched


def test_to_schedule_accepts_celery_forms() -> None:
    assert to_schedule(30) == schedule(30)
    assert to_schedule(dt.timedelta(minutes=1)) == schedule(60)
    assert to_schedule("0 4 * * *") == crontab(minute=0, hour=4)
    assert isinstance(to_schedule(dt.datetime(2030, 1, 1)), clocked)
    with pytest.raises(ConfigurationError, match="schedule must be"):
        to_schedule(object())
    with pytest.raises(ConfigurationError, match="schedule kind"):
        from_spec({"yearly": 1})
