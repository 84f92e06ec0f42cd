"""Task and enqueue options: a task's defaults (`TaskOptions`), one enqueue's or one
workflow step's overrides (`Overrides`, built by `make_overrides`), and one job's
arguments (`Call`).

These records sit below the producer, the tasks and the workflow engine, which all
read them, so that none of those has to import another to learn an option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from offload import validation as v
from offload.envelope import Backoff
from offload.errors import ConfigurationError
from offload.retry import DEFAULT_BACKOFF, RetryPolicy

if TYPE_CHECKING:
    from offload.limits import Limits

__all__ = ["Call", "Declared", "KeySpec", "Overrides", "TaskOptions", "make_overrides"]

#: A key may be given as a string, or computed from each call's arguments.
KeySpec = str | Callable[..., str]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task defaults; every enqueue starts from these.

    Attributes:
        expires_s: a job not started within this many seconds of its enqueue is
            marked `expired` and never runs.
        timeout_s: a running attempt is stopped after this many seconds (async
            handlers are cancelled; sync handlers run in a child process that is
            killed), and the attempt fails with `JobTimeout`.
        result_ttl_s: how long a succeeded job and its result are kept.
        limits: rate and concurrency limits, checked by the worker at admission.
        max_depth: enqueue raises `QueueFull` past this many waiting jobs in the
            task's queue (None: the app's `max_queue_depth`).
    """

    queue: str = "default"
    priority: int = 0
    max_attempts: int = 5
    backoff: Backoff = DEFAULT_BACKOFF
    timeout_s: float | None = None
    expires_s: float | None = None
    result_ttl_s: float | None = 24 * 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits | None = None
    max_depth: int | None = None


class Declared(Protocol):
    """What the producer and the workflows read of a registered task (`Task`)."""

    @property
    def name(self) -> str: ...

    @property
    def defaults(self) -> TaskOptions: ...

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One set of arguments for a task, for `enqueue_many` and workflows (`task.call`
    also records the task, so `chain`, `group` and `chord` know what to run)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: Declared | None = field(default=None, compare=False, repr=False)
    partial: bool = False  # `task.partial`: the first argument comes from the stage before
    overrides: Overrides | None = None  # `task.options(...).call(...)`: this call's options


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-enqueue options; None means "the task's default"."""

    delay_s: float | None = None
    at: float | None = None
    priority: int | None = None
    queue: str | None = None
    key: KeySpec | None = None
    expires_at: float | None = None
    expires_s: float | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    backoff: Backoff | None = None


def make_overrides(
    *,
    delay: float | timedelta | None = None,
    at: datetime | float | None = None,
    priority: int | None = None,
    queue: str | None = None,
    key: KeySpec | None = None,
    expires: float | timedelta | datetime | None = None,
    max_attempts: int | None = None,
    timeout: float | timedelta | None = None,
    backoff: Backoff | None = None,
) -> Overrides:
    """Validate and normalise the public enqueue options (rules: `offload.validation`).

    Raises:
        ConfigurationError: an option is out of bounds; the message names it.
    """
    if delay is not None and at is not None:
        raise ConfigurationError("give either delay= or at=, not both")
    if isinstance(expires, datetime):
        expires_at: float | None = v.timestamp(expires.timestamp(), "expires")
        expires_s = None
    else:
        expires_at, expires_s = None, v.duration(expires, "expires", positive=True)
    return Overrides(
        delay_s=v.duration(delay, "delay"),
        at=None if at is None else v.timestamp(_unix(at), "at"),
        priority=None if priority is None else v.priority(priority),
        queue=None if queue is None else v.queue_name(queue),
        key=key if key is None or callable(key) else v.job_key(key),
        expires_at=expires_at,
        expires_s=expires_s,
        max_attempts=None if max_attempts is None else v.attempts(max_attempts),
        timeout_s=v.duration(timeout, "timeout", positive=True),
        backoff=None if backoff is None else v.backoff(backoff),
    )


def _unix(at: datetime | float) -> float:
    return at.timestamp() if isinstance(at, datetime) else at
