"""Recurring jobs: when a schedule fires, and what one fire enqueues.

A schedule is a pure function of time: the set of instants (whole Unix seconds) at
which it fires. Every replica of the scheduler computes the same set, and every fire
is enqueued under the key `schedule:{id}:{fire_ts}`, so the broker's key dedup makes
each fire happen once however many replicas see it. There is no leader and no lock.

    Every(60)                          # each whole minute, UTC (epoch-aligned)
    Cron("0 3 * * *", tz="Europe/Paris")   # 03:00 Paris wall-clock time

Cron expressions are parsed and matched by `croniter` on the *local wall clock*; this
module then maps each matching wall time to one UTC instant, with fixed daylight-saving
rules (croniter's own handling of aware datetimes varies with the starting point, and
replicas must agree exactly):

- a wall time that does not exist (the skipped hour in spring) fires at the instant the
  clock jumps, the first moment after the gap (02:30 Paris → 03:00 CEST);
- a wall time that exists twice (the repeated hour in autumn) fires once, at its first
  occurrence (summer time);
- wall times that map to the same instant are one fire.

So a daily 02:30 job runs every day exactly once, and an hourly job has 23 fires on the
spring day and 24 (not 25) on the autumn day. For a steady rhythm through DST, use
`Every` or `tz="UTC"`.
"""

from __future__ import annotations

import abc
import copy
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from offload.errors import ConfigurationError, InvalidSchedule
from offload.validation import MAX_DURATION_S, MAX_KEY_LENGTH, MAX_TIME

if TYPE_CHECKING:
    from croniter import croniter

    from offload.options import Declared

__all__ = [
    "Cron",
    "Every",
    "Misfire",
    "Overlap",
    "Schedule",
    "ScheduleEntry",
    "fire_key",
    "make_entry",
]

#: What to do with a tick while the previous fire's job is unfinished.
Overlap = Literal["skip", "allow", "replace"]
#: What to do with ticks that passed while no scheduler was running.
Misfire = Literal["skip", "run_once", "run_all"]

#: Longer than any daylight-saving shift in use (2 hours): how far past a repeated
#: hour a backward search starts.
_DST_MARGIN = timedelta(hours=3)


def fire_key(schedule_id: str, fire_ts: int) -> str:
    """The idempotency key of one fire: the same on every replica."""
    return f"schedule:{schedule_id}:{fire_ts}"


class Schedule(abc.ABC):
    """When something fires: an infinite, strictly increasing set of whole seconds."""

    tz: str = "UTC"

    @abc.abstractmethod
    def after(self, ts: float) -> Iterator[int]:
        """Fire instants strictly after `ts`, ascending, without end."""

    @abc.abstractmethod
    def until(self, ts: float) -> Iterator[int]:
        """Fire instants at or before `ts`, descending."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human form, for `offload schedules` and logs."""

    def next_fires(self, ts: float, count: int) -> list[int]:
        """The next `count` fire instants after `ts`."""
        return list(islice(self.after(ts), count))


class Every(Schedule):
    """Fire every `interval` (whole seconds, 1 to 10**9), aligned to the Unix epoch.

    Aligned, not relative to a start time, so every replica agrees on the instants:
    `Every(3600)` fires on each hour UTC, `Every(timedelta(days=1))` at midnight UTC.

    Raises:
        InvalidSchedule: the interval is not a positive whole number of seconds.
    """

    def __init__(self, interval: float | timedelta) -> None:
        value = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSchedule(f"Every() takes seconds or a timedelta, got {interval!r}")
        if not math.isfinite(value) or value < 1 or value != int(value):
            raise InvalidSchedule(f"Every() needs a whole number of seconds >= 1, got {value}")
        if value > MAX_DURATION_S:
            # Its fires would pass the year 9999 that datetimes (`offload schedules`,
            # the scheduler's logs) and every broker can hold.
            raise InvalidSchedule(
                f"Every() takes at most {MAX_DURATION_S:.0f} seconds (~31 years), got {value}"
            )
        self.interval_s = int(value)

    def __repr__(self) -> str:
        return f"Every({self.interval_s})"

    def after(self, ts: float) -> Iterator[int]:
        fire = (math.floor(ts) // self.interval_s + 1) * self.interval_s
        while True:
            yield fire
            fire += self.interval_s

    def until(self, ts: float) -> Iterator[int]:
        fire = (math.floor(ts) // self.interval_s) * self.interval_s
        while True:
            yield fire
            fire -= self.interval_s

    def describe(self) -> str:
        s = self.interval_s
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if s % size == 0:
                return f"every {s // size}{unit}"
        return f"every {s}s"


class Cron(Schedule):
    """Fire at the wall-clock times matched by a cron expression, in time zone `tz`.

    Five fields (minute hour day month weekday), or six with seconds last, as croniter
    reads them; `@daily`-style aliases work too. Daylight-saving rules: see the module
    docstring.

    Raises:
        InvalidSchedule: the expression does not parse, or `tz` is not a known IANA
            time zone.
    """

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        self.expr = expr
        self.tz = tz
        self._zone = _zone(tz)
        self._template = _parse(expr)

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, tz={self.tz!r})"

    def describe(self) -> str:
        return self.expr

    def after(self, ts: float) -> Iterator[int]:
        # Walls up to wall(ts) map to instants <= ts (the mapping is monotonic and
        # wall(ts) maps to ts, or to its first occurrence), so start the search there.
        walls = self._walls(self._wall(ts))
        last = math.floor(ts)
        while True:
            fire = self._instant(walls.get_next(datetime))
            if fire > last:  # drops wall times that merged into an earlier instant
                last = fire
                yield fire

    def until(self, ts: float) -> Iterator[int]:
        start = self._wall(ts)
        if self._instant(start) != math.floor(ts):
            # ts is in the second pass of a repeated hour: later walls of that hour
            # fired in the first pass, before ts, so search from beyond the fold.
            start += _DST_MARGIN
        # get_prev is strictly before its start; one second more includes ts itself.
        walls = self._walls(start + timedelta(seconds=1))
        last = math.floor(ts) + 1
        while True:
            fire = self._instant(walls.get_prev(datetime))
            if fire < last:
                last = fire
                yield fire

    def _walls(self, start: datetime) -> croniter:
        """A croniter at `start`: a copy of the parsed template (parsing is the slow
        part), so concurrent searches do not share a cursor."""
        walls = copy.copy(self._template)
        walls.set_current(start, force=True)
        return walls

    def _wall(self, ts: float) -> datetime:
        wall = datetime.fromtimestamp(math.floor(ts), self._zone)
        return wall.replace(tzinfo=None, fold=0)

    def _instant(self, wall: datetime) -> int:
        """The UTC instant of a local wall time, by the DST rules above.

        `fold=0` is the first occurrence of a repeated time. A time in the spring gap
        does not survive the round trip; it fires when the gap ends.
        """
        first = int(wall.replace(tzinfo=self._zone, fold=0).timestamp())
        if datetime.fromtimestamp(first, self._zone).replace(tzinfo=None) == wall:
            return first
        before_gap = int(wall.replace(tzinfo=self._zone, fold=1).timestamp())
        return self._transition(before_gap, first)

    def _transition(self, lo: int, hi: int) -> int:
        """The first second in (lo, hi] on the far side of the offset change."""
        target = datetime.fromtimestamp(hi, self._zone).utcoffset()
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self._zone).utcoffset() == target:
                hi = mid
            else:
                lo = mid
        return hi


#: Names the zone database resolves to the host's own setting (`/etc/localtime`), so
#: replicas on hosts set differently would fire one tick at different instants, under
#: different keys: each fire twice.
_HOST_ZONES = frozenset({"localtime", "posixrules"})


def _zone(tz: str) -> ZoneInfo:
    if tz in ("UTC", "Etc/UTC"):
        return ZoneInfo("UTC")
    if tz in _HOST_ZONES:
        raise InvalidSchedule(
            f"time zone {tz!r} is whatever each host is set to, so replicas would not "
            "agree on a fire's instant; name the zone (e.g. 'Europe/Paris')"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidSchedule(f"unknown time zone {tz!r} (expected e.g. 'Europe/Paris')") from exc


#: croniter's random field (`R`, `R(0-30)`, `R/5`): drawn anew by every parse.
_RANDOM = re.compile(r"^r(\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)


def _parse(expr: str) -> croniter:
    """The expression parsed (on naive wall-clock datetimes), or InvalidSchedule."""
    from croniter import CroniterError, croniter

    if not isinstance(expr, str) or not expr.strip():
        raise InvalidSchedule(f"empty cron expression {expr!r}")
    if len(expr.split()) > 6:
        # croniter reads a seventh field as years: a schedule that ends. Its last fire
        # passed, every tick of every scheduler raised (CroniterBadDateError) and no
        # schedule of the app fired any more.
        raise InvalidSchedule(
            f"bad cron expression {expr!r}: five fields, or six with seconds last "
            "(a year field would end the schedule)"
        )
    if any(_RANDOM.match(part) for part in re.split(r"[\s,]+", expr.strip())):
        raise InvalidSchedule(
            f"bad cron expression {expr!r}: an 'R' (random) field picks another time in "
            "each process, so replicas would not agree on a fire; write the time"
        )
    try:
        parsed = croniter(expr, datetime(2000, 1, 1))
        copy.copy(parsed).get_next(datetime)
    except (CroniterError, ValueError, TypeError, KeyError) as exc:
        raise InvalidSchedule(f"bad cron expression {expr!r}: {exc}") from exc
    return parsed


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One recurring job: which task, when, with what arguments, under which policies.

    Attributes:
        id: stable name of the schedule; part of every fire's key, so renaming it
            makes the next scheduler start afresh.
        overlap: `skip` (default) does not enqueue a tick while the previous fire's job
            is scheduled, queued or running; `allow` always enqueues; `replace` cancels
            the unfinished previous job (a running one is flagged for cooperative
            cancellation) and enqueues the new one.
        misfire: ticks more than `grace_s` old when a scheduler first sees them were
            missed (every scheduler was down). `skip` drops them; `run_once` (default)
            enqueues the latest one; `run_all` enqueues each, up to `max_catch_up`.
        max_catch_up: how many missed ticks a scheduler looks back (see
            `offload.scheduler`), and the bound of `run_all`.
        grace_s: a tick this late (seconds) or less is on time, whatever the policy.
    """

    id: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    overlap: Overlap = "skip"
    misfire: Misfire = "run_once"
    max_catch_up: int = 10
    grace_s: float = 60.0

    def key(self, fire_ts: int) -> str:
        return fire_key(self.id, fire_ts)

    def keep_s(self, first_ts: int, last_ts: int) -> float:
        """How long the jobs of fires `first_ts..last_ts` must outlive them: until
        `max_catch_up + 1` ticks after the last (and the grace) have passed. A
        restarting scheduler looks that far back for the last fire (see
        `offload.scheduler`), so the job must still be there to be found."""
        later = self.schedule.next_fires(last_ts, self.max_catch_up + 1)
        # A sparse schedule (a leap day: 11 fires span 44 years) or a long grace would
        # ask for more than any TTL may be, and the fire's enqueue would refuse it at
        # every tick; the longest TTL keeps the fire for its ~31 years instead.
        return min(later[-1] - first_ts + self.grace_s, MAX_DURATION_S)


def make_entry(
    tasks: Mapping[str, Declared],
    task: Declared | str,
    schedule: Schedule,
    *,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    id: str | None = None,
    overlap: Overlap = "skip",
    misfire: Misfire = "run_once",
    max_catch_up: int = 10,
    grace: float | timedelta = 60.0,
) -> ScheduleEntry:
    """Validate a declaration (see `Offload.schedule`) and build its entry."""
    from offload import validation

    name = task if isinstance(task, str) else task.name
    if not isinstance(schedule, Schedule):
        raise InvalidSchedule(f"expected Cron(...) or Every(...), got {schedule!r}")
    _check_choice("overlap", overlap, Overlap)
    _check_choice("misfire", misfire, Misfire)
    _check_catch_up(max_catch_up)
    grace_s = validation.seconds(grace, "grace")
    if grace_s < MIN_GRACE_S:
        raise ConfigurationError(
            f"grace must be at least {MIN_GRACE_S:g} s, got {grace_s:g}: a scheduler sees "
            "each tick a moment after it (it wakes at each fire), so with less every tick "
            "would count as missed"
        )
    entry_id = validation.task_name(id or name, "schedule id")
    if ":" in entry_id:
        raise ConfigurationError(f"a schedule id may not contain ':', got {entry_id!r}")
    if len(entry_id) > MAX_SCHEDULE_ID_LENGTH:
        # Else every fire's key is too long, and each tick of every scheduler raised.
        raise ConfigurationError(
            f"a schedule id may be at most {MAX_SCHEDULE_ID_LENGTH} characters (its fires' "
            f"keys, schedule:ID:TIME, at most {validation.MAX_KEY_LENGTH}), got "
            f"{len(entry_id)}: pass a shorter id="
        )
    if not isinstance(args, list | tuple):
        # A string was taken as its characters: args="sales" meant ("s", "a", ...).
        raise ConfigurationError(f"args must be a list or tuple, got {args!r:.80}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigurationError(f"kwargs must be a dict, got {kwargs!r:.80}")
    kw = dict(kwargs or {})
    registered = tasks.get(name)
    if registered is not None:
        registered.check_arguments(tuple(args), kw)
    validation.arguments(name, list(args), kw)
    return ScheduleEntry(
        entry_id, name, schedule, tuple(args), kw, overlap, misfire, max_catch_up, grace_s
    )


#: The longest schedule id whose fire keys (`fire_key`, with the longest fire time:
#: `MAX_TIME`, or a negative one) fit in a job key.
MAX_SCHEDULE_ID_LENGTH = MAX_KEY_LENGTH - len(fire_key("", -int(MAX_TIME)))

#: The least `grace` (seconds): a scheduler wakes just after each fire instant (and at
#: least every second), so a tick is always a little late when it is seen. With grace=0
#: every tick was "missed": `misfire="skip"` never fired at all.
MIN_GRACE_S = 1.0

#: The most ticks `max_catch_up` may name: a restarting replica looks up that many fire
#: keys, one broker call each, and every fire computes that many next ticks.
MAX_CATCH_UP = 1000


def _check_catch_up(value: object) -> None:
    """Refuse at declaration what would break every tick later (a float fails the
    look-back's `islice`, a huge count makes each fire compute that many ticks)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CATCH_UP:
        raise ConfigurationError(
            f"max_catch_up must be an int from 1 to {MAX_CATCH_UP}, got {value!r}"
        )


def _check_choice(option: str, value: object, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ConfigurationError(f"{option} must be one of {', '.join(allowed)}; got {value!r}")


def utc_iso(ts: int) -> str:
    """A fire instant for humans (logs, the CLI)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
