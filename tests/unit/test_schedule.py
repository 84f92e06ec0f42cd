"""Schedules: fire instants, the daylight-saving rules, and declaration errors."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from offload import (
    ConfigurationError,
    Cron,
    Every,
    InvalidArguments,
    InvalidSchedule,
    Offload,
    SerializationError,
)
from offload.schedule import fire_key


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def local_day(tz: str, year: int, month: int, day: int) -> tuple[int, int]:
    """The [start, end) instants of one local calendar day."""
    zone = ZoneInfo(tz)
    start = datetime(year, month, day, tzinfo=zone)
    end = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), zone)
    return int(start.timestamp()), int(end.timestamp())


def fires_in(schedule: Cron | Every, start: int, end: int) -> list[int]:
    """Fires in [start, end)."""
    out: list[int] = []
    for f in schedule.after(start - 1):
        if f >= end:
            return out
        out.append(f)
    raise AssertionError("unreachable")


# -- the daylight-saving rules (Europe/Paris and America/New_York, 2025) ------------------


def test_wall_time_in_the_spring_gap_fires_when_the_gap_ends() -> None:
    # Paris 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00Z); 02:30 never happens.
    paris = Cron("30 2 * * *", tz="Europe/Paris")
    assert paris.next_fires(utc(2025, 3, 28), 4) == [
        utc(2025, 3, 28, 1, 30),
        utc(2025, 3, 29, 1, 30),
        utc(2025, 3, 30, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2025, 3, 31, 0, 30),
    ]
    # New York 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00Z).
    ny = Cron("30 2 * * *", tz="America/New_York")
    assert ny.next_fires(utc(2025, 3, 8), 3) == [
        utc(2025, 3, 8, 7, 30),
        utc(2025, 3, 9, 7, 0),
        utc(2025, 3, 10, 6, 30),
    ]


def test_repeated_wall_time_fires_once_at_its_first_occurrence() -> None:
    # Paris 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    paris = Cron("30 2 * * *", tz="Europe/Paris")
    assert paris.next_fires(utc(2025, 10, 25), 3) == [
        utc(2025, 10, 25, 0, 30),
        utc(2025, 10, 26, 0, 30),  # 02:30 CEST; not again at 02:30 CET (01:30Z)
        utc(2025, 10, 27, 1, 30),
    ]
    # New York 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    ny = Cron("30 1 * * *", tz="America/New_York")
    assert ny.next_fires(utc(2025, 11, 1), 3) == [
        utc(2025, 11, 1, 5, 30),
        utc(2025, 11, 2, 5, 30),  # 01:30 EDT only
        utc(2025, 11, 3, 6, 30),
    ]


@pytest.mark.parametrize(
    ("tz", "spring", "autumn"),
    [
        ("Europe/Paris", (2025, 3, 30), (2025, 10, 26)),
        ("America/New_York", (2025, 3, 9), (2025, 11, 2)),
    ],
)
def test_hourly_cron_fires_once_per_wall_hour(
    tz: str, spring: tuple[int, int, int], autumn: tuple[int, int, int]
) -> None:
    hourly = Cron("0 * * * *", tz=tz)
    assert len(fires_in(hourly, *local_day(tz, *spring))) == 23  # a 23-hour day
    assert len(fires_in(hourly, *local_day(tz, *autumn))) == 24  # 25 hours, 24 wall hours
    steady = Every(3600)
    assert len(fires_in(steady, *local_day(tz, *autumn))) == 25  # Every keeps the rhythm


def test_wall_times_in_the_gap_merge_into_one_fire() -> None:
    quarter = Cron("*/15 * * * *", tz="Europe/Paris")
    fires = fires_in(quarter, utc(2025, 3, 30, 0, 30), utc(2025, 3, 30, 1, 31))
    # 01:30 01:45 CET, then 02:00-02:45 (absent) and 03:00 CEST are one fire at 01:00Z
    assert fires == [
        utc(2025, 3, 30, 0, 30),
        utc(2025, 3, 30, 0, 45),
        utc(2025, 3, 30, 1, 0),
        utc(2025, 3, 30, 1, 15),
        utc(2025, 3, 30, 1, 30),
    ]


@pytest.mark.parametrize(
    "schedule",
    [
        Cron("30 2 * * *", tz="Europe/Paris"),
        Cron("*/15 * * * *", tz="Europe/Paris"),
        Cron("30 1 * * *", tz="America/New_York"),
        Cron("0 * * * *", tz="America/New_York"),
        Cron("0 0 * * * 30"),
        Every(600),
    ],
    ids=repr,
)
def test_after_and_until_agree_from_any_starting_point(schedule: Cron | Every) -> None:
    """Replicas start searching from arbitrary instants: the answer must not depend on
    it, including inside the skipped and the repeated hour."""
    windows = [(utc(2025, 3, 8), utc(2025, 3, 11)), (utc(2025, 3, 29), utc(2025, 4, 1))]
    windows += [(utc(2025, 10, 25), utc(2025, 10, 28)), (utc(2025, 11, 1), utc(2025, 11, 4))]
    rng = random.Random(5)
    for start, end in windows:
        truth = fires_in(schedule, start - 4 * 86400, end)
        assert truth == sorted(set(truth))
        for _ in range(150):
            t = rng.uniform(start, end - 86400)
            later = [f for f in truth if f > t]
            earlier = [f for f in truth if f <= t]
            assert next(schedule.after(t)) == later[0]
            assert list(islice(schedule.until(t), 3)) == earlier[::-1][:3]


def test_every_is_aligned_to_the_epoch() -> None:
    assert Every(60).next_fires(125.5, 2) == [180, 240]
    assert list(islice(Every(60).until(180), 2)) == [180, 120]
    assert Every(timedelta(hours=1)).describe() == "every 1h"
    assert Every(90).describe() == "every 90s"


# -- declaration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "61 * * * *",
        "* * *",
        "",
        "every day",
        "* * * * mon-xyz",
        # croniter's year field: once its last fire passed, every scheduler tick raised
        # and no schedule of the app fired any more.
        "0 3 1 1 * 0 2020",
        "0 3 * * * 0 2030",
    ],
)
def test_bad_cron_expression_fails_at_declaration(expr: str) -> None:
    with pytest.raises(InvalidSchedule, match="cron expression"):
        Cron(expr)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "Europe/../etc/passwd", "CET+1"])
def test_unknown_time_zone_fails_at_declaration(tz: str) -> None:
    with pytest.raises(InvalidSchedule, match="time zone"):
        Cron("0 3 * * *", tz=tz)


@pytest.mark.parametrize("expr", ["R 3 * * *", "0 r * * *", "R(0-30)/5 * * * *", "0,R 3 * * *"])
def test_a_random_cron_field_fails_at_declaration(expr: str) -> None:
    """croniter draws an `R` field at each parse: every replica (and every restart)
    fired at its own instant, under its own key, so one daily tick ran once per
    replica."""
    with pytest.raises(InvalidSchedule, match="random"):
        Cron(expr)
    assert Cron("0 3 * MAR FRI").next_fires(0, 1)  # names holding an R are fine


@pytest.mark.parametrize("tz", ["localtime", "posixrules"])
def test_a_time_zone_that_is_the_hosts_own_setting_fails_at_declaration(tz: str) -> None:
    """`tz="localtime"` loaded /etc/localtime: replicas on hosts set to different zones
    computed different instants for one tick, so it fired once per zone, under
    different keys."""
    with pytest.raises(InvalidSchedule, match="replicas would not agree"):
        Cron("0 3 * * *", tz=tz)


@pytest.mark.parametrize("interval", [0, -5, 0.5, 1.5, timedelta(milliseconds=10)])
def test_bad_interval_fails_at_declaration(interval: float | timedelta) -> None:
    with pytest.raises(InvalidSchedule):
        Every(interval)


@pytest.mark.parametrize("interval", [10**9 + 1, 10**12, timedelta(days=10**6)])
def test_an_interval_whose_fires_pass_year_9999_fails_at_declaration(
    interval: float | timedelta,
) -> None:
    """`Every(10**12)` was accepted, and `offload schedules` then died with a traceback
    (`ValueError: year 33658 is out of range`) showing its next fires."""
    with pytest.raises(InvalidSchedule, match="at most 1000000000 seconds"):
        Every(interval)
    assert Every(10**9).next_fires(0, 3) == [10**9, 2 * 10**9, 3 * 10**9]


def test_invalid_schedule_is_a_configuration_error() -> None:
    assert issubclass(InvalidSchedule, ConfigurationError)
    assert issubclass(InvalidSchedule, ValueError)


def test_app_schedule_validates_the_declaration() -> None:
    app = Offload("memory://")

    @app.task(name="reports.daily")
    def daily(day: str = "today") -> None: ...

    entry = app.schedule(daily, Cron("0 3 * * *", tz="Europe/Paris"), args=["yesterday"])
    assert app.schedules == {"reports.daily": entry}
    assert entry.key(1_700_000_000) == fire_key("reports.daily", 1_700_000_000)
    assert entry.key(1_700_000_000) == "schedule:reports.daily:1700000000"
    with pytest.raises(ConfigurationError, match="exists; pass id="):
        app.schedule(daily, Every(60))
    app.schedule("reports.daily", Every(60), id="reports.often")  # by name, own id
    with pytest.raises(InvalidArguments):
        app.schedule(daily, Every(60), id="x", args=[1, 2])
    with pytest.raises(SerializationError):
        app.schedule(daily, Every(60), id="y", args=[object()])
    with pytest.raises(ConfigurationError, match="overlap must be one of"):
        app.schedule(daily, Every(60), id="z", overlap="never")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="misfire must be one of"):
        app.schedule(daily, Every(60), id="z", misfire="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_catch_up"):
        app.schedule(daily, Every(60), id="z", max_catch_up=0)
    # Its fires' keys would pass 512 characters: each tick of every scheduler raised.
    with pytest.raises(ConfigurationError, match="at most 489 characters"):
        app.schedule(daily, Every(60), id="x" * 490)
    long_id = Offload("memory://").schedule("t", Every(60), id="x" * 489).id
    assert len(fire_key(long_id, -253_402_300_799)) == 512
    # args="sales" was read as its characters, and kwargs=[...] raised a bare TypeError.
    with pytest.raises(ConfigurationError, match="args must be a list or tuple, got 'sales'"):
        app.schedule(daily, Every(60), id="z", args="sales")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"kwargs must be a dict, got \[1\]"):
        app.schedule(daily, Every(60), id="z", kwargs=[1])  # type: ignore[arg-type]
    for grace in (0, 0.5):  # every tick was seen late, so counted missed (skip: never)
        with pytest.raises(ConfigurationError, match="grace must be at least 1 s"):
            app.schedule(daily, Every(60), id="z", grace=grace)
    for bad in (2.5, "3", True, 10**12):  # each broke every tick of the scheduler later
        with pytest.raises(ConfigurationError, match="max_catch_up must be an int"):
            app.schedule(daily, Every(60), id="z", max_catch_up=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="may not contain ':'"):
        app.schedule(daily, Every(60), id="a:b")
    with pytest.raises(InvalidSchedule, match="Cron"):
        app.schedule(daily, "0 3 * * *", id="z")  # type: ignore[arg-type]
    assert sorted(app.schedules) == ["reports.daily", "reports.often"]
