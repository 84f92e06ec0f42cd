"""Flow control: rate limits and concurrency limits, declared on tasks and held by the
broker (`Broker.take_rate`, `Broker.acquire_slot`), so they hold across every worker.

This module holds what is the same everywhere: parsing `"10/s"`, the GCRA arithmetic
that the Python brokers run under their lock or transaction (the Redis script and the
PostgreSQL statement do the same sums), and the per-task `Limits` the worker checks
right after reserving a job (see `offload.worker.admission`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offload.errors import ConfigurationError
from offload.validation import MAX_DURATION_S

__all__ = ["EPSILON_S", "MAX_CONCURRENCY", "Limits", "Rate", "gcra", "parse_rate"]

#: Slack in the GCRA comparison, in seconds, so float rounding never refuses a token
#: that is due (a millionth of a second, far below any real rate's interval).
EPSILON_S = 1e-6

#: The largest concurrency limit: what every broker's slot check can compare against
#: (SQLite refused a bigger one at each reservation, leaving the job stuck `running`).
MAX_CONCURRENCY = 2**31 - 1

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` tokens per `per_s` seconds; a burst of `limit` when idle."""

    limit: int
    per_s: float


def parse_rate(value: str | Rate) -> Rate:
    """`"10/s"`, `"600/m"`, `"1000/h"`, `"5000/d"` (or `"10/5s"`) as a `Rate`.

    Raises:
        ConfigurationError: not of that form, or zero; the message names the value.
    """
    if isinstance(value, Rate):
        return value
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigurationError(
            f"invalid rate_limit {value!r}: expected '<count>/<unit>' with unit s, m, h "
            "or d, e.g. '10/s', '600/m', '1000/h'"
        )
    count, multiple, unit = match.groups()
    if multiple == ".":  # the pattern admits a lone dot, which float() refuses unnamed
        raise ConfigurationError(f"invalid rate_limit {value!r}: '.' is not a number of {unit}")
    per_s = (float(multiple) if multiple else 1.0) * _UNITS[unit]
    if int(count) < 1 or per_s <= 0:
        raise ConfigurationError(f"invalid rate_limit {value!r}: count and period must be > 0")
    if per_s > MAX_DURATION_S:
        raise ConfigurationError(
            f"invalid rate_limit {value!r}: the period may be at most {MAX_DURATION_S:.0f} s"
        )
    return Rate(int(count), per_s)


def gcra(tat: float | None, now: float, limit: int, per_s: float) -> tuple[float | None, float]:
    """One GCRA step: from the stored theoretical arrival time `tat` (None: idle key),
    `(new_tat, 0.0)` if a token is taken, else `(None, seconds until one is free)`."""
    interval = per_s / limit
    tolerance = per_s - interval  # a burst of `limit`
    start = now if tat is None else max(tat, now)
    wait = start - now - tolerance
    if wait > EPSILON_S:
        return None, wait
    return start + interval, 0.0


KeyFn = Callable[..., str]


@dataclass(frozen=True, slots=True)
class Limits:
    """A task's flow limits, as the worker checks them.

    Keys are namespaced by task name: `rate:{task}` or `rate:{task}:{rate_key(...)}`,
    likewise `slots:...`, so two tasks never share a limit by accident.
    """

    task: str
    rate: Rate | None = None
    rate_key: KeyFn | None = None
    concurrency: int | None = None
    concurrency_key: KeyFn | None = None

    def rate_name(self, args: list[Any], kwargs: dict[str, Any]) -> str:
        return _name("rate", self.task, self.rate_key, args, kwargs)

    def slot_name(self, args: list[Any], kwargs: dict[str, Any]) -> str:
        return _name("slots", self.task, self.concurrency_key, args, kwargs)


def _name(kind: str, task: str, fn: KeyFn | None, args: list[Any], kwargs: dict[str, Any]) -> str:
    if fn is None:
        return f"{kind}:{task}"
    key = fn(*args, **kwargs)
    if not isinstance(key, str):
        raise ConfigurationError(f"{kind} key function of {task!r} returned {key!r}, not str")
    return f"{kind}:{task}:{key}"


def make_limits(
    task: str,
    *,
    rate_limit: str | Rate | None,
    rate_key: KeyFn | None,
    concurrency_limit: int | None,
    concurrency_key: KeyFn | None,
) -> Limits | None:
    """Validated limits of a task, None if it has none.

    Raises:
        ConfigurationError: a bad rate string, a concurrency limit outside 1 to
            `MAX_CONCURRENCY`, a key function that is not callable or lacks its limit.
    """
    if rate_key is not None and rate_limit is None:
        raise ConfigurationError(f"task {task!r}: rate_key needs a rate_limit")
    if concurrency_key is not None and concurrency_limit is None:
        raise ConfigurationError(f"task {task!r}: concurrency_key needs a concurrency_limit")
    if concurrency_limit is not None and (
        type(concurrency_limit) is not int or not 1 <= concurrency_limit <= MAX_CONCURRENCY
    ):
        raise ConfigurationError(
            f"invalid concurrency_limit {concurrency_limit!r} for task {task!r}: "
            f"expected an int from 1 to {MAX_CONCURRENCY}"
        )
    for option, fn in (("rate_key", rate_key), ("concurrency_key", concurrency_key)):
        if fn is not None and not callable(fn):
            # Else every job of the task is buried (InvalidLimitKey) when it is reserved.
            raise ConfigurationError(
                f"task {task!r}: {option} must be a function of the job's arguments, got {fn!r}"
            )
    if rate_limit is None and concurrency_limit is None:
        return None
    rate = None if rate_limit is None else parse_rate(rate_limit)
    return Limits(task, rate, rate_key, concurrency_limit, concurrency_key)
