"""What a job may carry, checked once at the producer, the same for every broker.

Every producer path (`task.enqueue` and its async and batch twins, `app.enqueue` by
name, workflows, schedules, `offload enqueue`) normalises its options with the checks
below and sends each envelope through `checked`, before any broker call; a batch is
checked whole before its first job is written, so a bad job refuses the batch and
stores nothing. Brokers differ in what they would accept (PostgreSQL refuses a NUL
byte, SQLite overflows past 64-bit integers, Redis stores times as doubles), so the
one rule is the intersection, documented in the README:

- queue names: 1 to 200 printable characters, no comma (the CLI's list separator),
  no surrounding whitespace; task names: 1 to 1000 printable characters;
- keys: 1 to 512 characters, no NUL;
- priority: an int in the signed 32-bit range; max_attempts: 1 to 1,000,000;
- durations (delay, expires, timeout, result TTL, backoff): finite, not negative
  (expires and timeout above 0), at most `MAX_DURATION_S`; times (`at`, a datetime
  `expires`): finite, between the epoch and the end of year 9999;
- arguments: JSON, without NaN or ±Infinity (JSON has no form for them; msgspec would
  write `null`), nested at most `MAX_DEPTH` lists/objects deep.

Options raise `ConfigurationError`, arguments `SerializationError`; both name the
field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from offload.codec import encode_envelope, encode_value, value_children, where
from offload.envelope import Backoff, ChordRef, Envelope, Step
from offload.errors import ConfigurationError, SerializationError

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_DEPTH",
    "MAX_DURATION_S",
    "MAX_KEY_LENGTH",
    "MAX_QUEUE_LENGTH",
    "MAX_TASK_LENGTH",
    "MAX_TIME",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "arguments",
    "attempts",
    "backoff",
    "checked",
    "depth",
    "duration",
    "job_key",
    "priority",
    "queue_name",
    "seconds",
    "task_name",
    "timestamp",
    "value_bytes",
]

MAX_QUEUE_LENGTH = 200
MAX_TASK_LENGTH = 1000
#: PostgreSQL indexes keys (a b-tree entry holds at most ~2,700 bytes: 512 characters
#: of up to 4 bytes each fit).
MAX_KEY_LENGTH = 512
#: PostgreSQL's `integer`, the narrowest priority column of the brokers.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
MAX_ATTEMPTS = 1_000_000
#: About 31 years: any delay, expiry, timeout or TTL a job can mean.
MAX_DURATION_S = 1e9
#: 9999-12-31T23:59:59Z, the last second every broker and `datetime` can represent.
MAX_TIME = 253_402_300_799.0
#: Lists and objects nested deeper than this are refused (the decoders' recursion
#: limits are near a thousand, and shrink with the stack).
MAX_DEPTH = 100


def queue_name(value: object, what: str = "queue") -> str:
    """A queue name, or `ConfigurationError` naming `what`."""
    name = _name(value, what, MAX_QUEUE_LENGTH)
    if "," in name or name != name.strip():
        raise ConfigurationError(
            f"{what} must not contain ',' or start or end with whitespace, got {name!r}"
        )
    return name


def task_name(value: object, what: str = "task name") -> str:
    return _name(value, what, MAX_TASK_LENGTH)


def job_key(value: object, what: str = "key") -> str:
    """An idempotency key: 1 to 512 characters, no NUL."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH or "\0" in value:
        raise ConfigurationError(
            f"{what} must be a string of 1 to {MAX_KEY_LENGTH} characters without NUL,"
            f" got {_show(value)}"
        )
    return value


def priority(value: object, what: str = "priority") -> int:
    if type(value) is not int or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ConfigurationError(
            f"{what} must be an int from {PRIORITY_MIN} to {PRIORITY_MAX}, got {_show(value)}"
        )
    return value


def attempts(value: object, what: str = "max_attempts") -> int:
    if type(value) is not int or not 1 <= value <= MAX_ATTEMPTS:
        raise ConfigurationError(
            f"{what} must be an int from 1 to {MAX_ATTEMPTS}, got {_show(value)}"
        )
    return value


def duration(value: object, what: str, *, positive: bool = False) -> float | None:
    """`seconds`, where None (no such limit) stays None."""
    return None if value is None else seconds(value, what, positive=positive)


def seconds(value: object, what: str, *, positive: bool = False) -> float:
    """Seconds (a number or a timedelta) as a float. Refuses NaN, infinity, negative
    values (and 0 when `positive`), and more than `MAX_DURATION_S`."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{what} must be seconds or a timedelta, got {_show(value)}")
    low_ok = seconds > 0 if positive else seconds >= 0
    if not (math.isfinite(seconds) and low_ok and seconds <= MAX_DURATION_S):
        low = "above 0" if positive else "0 or more"
        raise ConfigurationError(
            f"{what} must be finite seconds, {low} and at most {MAX_DURATION_S:.0f},"
            f" got {_show(value)}"
        )
    return seconds


def depth(value: object, what: str) -> int | None:
    """A queue-depth bound: an int of at least 1, or None (unbounded)."""
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigurationError(f"{what} must be an int >= 1 or None, got {value!r}")
    return value


def timestamp(value: object, what: str) -> float:
    """A Unix time between the epoch and the end of year 9999."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 <= float(value) <= MAX_TIME:  # type: ignore[arg-type]
        raise ConfigurationError(
            f"{what} must be a Unix time from 0 to {MAX_TIME:.0f} (year 9999), got {_show(value)}"
        )
    return float(value)  # type: ignore[arg-type]


def backoff(value: object, what: str = "backoff") -> Backoff:
    if not isinstance(value, Backoff):
        raise ConfigurationError(f"{what} must be a Backoff, got {_show(value)}")
    duration(value.base_s, f"{what}.base_s")
    duration(value.cap_s, f"{what}.cap_s")
    return value


def checked(envelope: Envelope) -> tuple[Envelope, bytes]:
    """The envelope and its bytes, after every rule above: the producer's last gate.

    Raises:
        ConfigurationError: an option (queue, key, priority, times...) is out of bounds.
        SerializationError: an argument is not JSON, is NaN or infinite, or nests too deep.
    """
    _check_options(envelope)
    try:
        data = encode_envelope(envelope)
    except SerializationError as exc:
        if isinstance(exc.__cause__, RecursionError):
            _check_payload(envelope)  # names the argument that nests too deep
        raise
    # msgspec writes NaN and ±Infinity as null: only a payload holding a null, or more
    # brackets than the depth limit, needs the (slower) walk through its values.
    if b"null" in data or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        _check_payload(envelope)
    return envelope, data


def arguments(task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Check arguments on their own (a schedule's, at its declaration), as `checked`
    would at each enqueue.

    Raises:
        SerializationError: an argument is not JSON, is NaN or infinite, or nests too deep.
    """
    envelope = Envelope(id="", task=task, args=args, kwargs=kwargs)
    for owner, name, value in _arguments(envelope):
        label = _label(owner, name)
        _check_value(value, label, "", 0)
        encode_value(value, what=label)


def value_bytes(value: Any, what: str) -> bytes:
    """`encode_value` for what a handler gives back (a result, a progress report),
    refusing what msgspec would otherwise change silently: NaN and ±Infinity, which it
    writes as null (a handler returning `float("nan")` had its result read back as
    None, and passed on as None to the next step of its chain). Unlike arguments,
    values may nest deeper than `MAX_DEPTH`.

    Raises:
        SerializationError: the value is not JSON, or holds NaN or ±Infinity (named by
            `what` and where in it).
    """
    data = encode_value(value, what=what)
    if b"null" in data:  # only then can a NaN or infinity be in it
        _check_value(value, what, "", 0, limit=math.inf)  # a result: no depth limit
    return data


#: (task, queue) name pairs that passed their checks, so that the producer's hot path
#: checks each pair once (names are immutable strings; issue 16); at most this many.
MAX_CHECKED_NAMES = 1024
_checked_names: set[tuple[str, str]] = set()


def _check_options(e: Envelope) -> None:
    task, queue = e.task, e.queue
    if not (type(task) is str and type(queue) is str and (task, queue) in _checked_names):
        task_name(task)
        queue_name(queue)
        if len(_checked_names) < MAX_CHECKED_NAMES:
            _checked_names.add((task, queue))
    priority(e.priority)
    if e.key is not None:
        job_key(e.key)
    if e.max_attempts is not None:
        attempts(e.max_attempts)
    if e.backoff is not None:
        backoff(e.backoff)
    if e.not_before is not None:
        timestamp(e.not_before, "the job's start time (at=, delay=)")
    if e.expires_at is not None:
        timestamp(e.expires_at, "the job's expiry time (expires=)")
    duration(e.timeout_s, "timeout", positive=True)
    duration(e.result_ttl_s, "result_ttl")


def _check_payload(envelope: Envelope) -> None:
    for owner, name, value in _payloads(envelope):
        if not _clean(value, 0):  # then the slow walk that names the spot
            _check_value(value, _label(owner, name), "", 0)


def _clean(value: Any, depth: int) -> bool:
    """Whether `value` holds no NaN or infinity and nests at most `MAX_DEPTH` deep: the
    common types by exact type first, since this runs on every payload with a null."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_DEPTH:
            return False
        for item in value.values() if kind is dict else value:
            if not _clean(item, depth + 1):
                return False
        return True
    try:
        _check_value(value, "", "", depth)
    except SerializationError:
        return False
    return True


def _payloads(envelope: Envelope) -> Iterator[tuple[Envelope | Step, int | str, Any]]:
    """Each argument the envelope carries, with its owner (the job, a workflow step)
    and its index or name, from which `_label` names it in an error."""
    yield from _arguments(envelope)
    yield from _steps(envelope.then or [])
    chord: ChordRef | None = envelope.chord
    while chord is not None:
        yield from _steps(chord.then)
        chord = chord.parent


def _steps(steps: list[Step]) -> Iterator[tuple[Envelope | Step, int | str, Any]]:
    for step in steps:
        yield from _arguments(step)
        for branch in step.branches or []:
            yield from _steps(branch)


def _arguments(owner: Envelope | Step) -> Iterator[tuple[Envelope | Step, int | str, Any]]:
    for index, arg in enumerate(owner.args):
        yield owner, index, arg
    for name, arg in owner.kwargs.items():
        yield owner, name, arg


def _label(owner: Envelope | Step, name: int | str) -> str:
    which = "task" if isinstance(owner, Envelope) else "workflow step"
    return f"argument {name if isinstance(name, int) else repr(name)} of {which} {owner.task!r}"


def _check_value(value: Any, label: str, path: str, depth: int, limit: float = MAX_DEPTH) -> None:
    """Raise `SerializationError` naming where in `value` a NaN or ±Infinity sits,
    or where it nests lists/objects `limit` deep."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(
                f"{label} holds {value!r}{where(path)}: NaN and ±Infinity have no JSON form"
            )
        return
    children = None if isinstance(value, str | bytes | int | None) else value_children(value)
    if children is None:
        return
    if depth >= limit:
        raise SerializationError(
            f"{label} nests lists/objects more than {MAX_DEPTH} deep (the limit)"
        )
    for suffix, child in children:
        _check_value(child, label, path + suffix, depth + 1, limit)


def _name(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not value.isprintable():
        raise ConfigurationError(
            f"{what} must be 1 to {limit} printable characters (no NUL or control"
            f" characters), got {_show(value)}"
        )
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
